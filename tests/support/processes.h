#pragma once
// For tests that run the minigpt4 binary as separate processes (distributed training,
// `minigpt4 evaluate`): a child process with its output collected, a scratch directory, and
// a port for a rendezvous.
#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <mutex>
#include <optional>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

namespace minigpt4::test {

// A child process whose stdout and stderr are collected by a reader thread.
class Child {
 public:
  using Clock = std::chrono::steady_clock;

  explicit Child(const std::vector<std::string>& argv) {
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_ = fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      dup2(fds[1], 1);
      dup2(fds[1], 2);
      close(fds[0]);
      close(fds[1]);
      execv(args[0], args.data());
      _exit(127);
    }
    close(fds[1]);
    reader_ = std::thread([this, fd = fds[0]] {
      char buffer[4096];
      for (ssize_t n; (n = read(fd, buffer, sizeof buffer)) > 0;) {
        std::lock_guard<std::mutex> lock(mutex_);
        output_.append(buffer, static_cast<size_t>(n));
      }
      close(fd);
    });
  }
  ~Child() {
    if (!exited_) {
      kill(pid_, SIGKILL);
      wait_for(std::chrono::seconds(10));
    }
    if (reader_.joinable()) reader_.join();
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  std::string output() {
    std::lock_guard<std::mutex> lock(mutex_);
    return output_;
  }
  // Waits until `pattern` appears in the output (its first sub-match is returned) or the time is up.
  std::string wait_for_output(const std::string& pattern, std::chrono::seconds limit) {
    const std::regex re(pattern);
    const auto deadline = Clock::now() + limit;
    while (Clock::now() < deadline) {
      std::smatch m;
      const auto text = output();
      if (std::regex_search(text, m, re)) return m.size() > 1 ? m[1].str() : m[0].str();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return "";
  }
  // The exit status (128 + signal when killed), or nullopt if it still runs after `limit`.
  std::optional<int> wait_for(std::chrono::seconds limit) {
    const auto deadline = Clock::now() + limit;
    while (Clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        if (reader_.joinable()) reader_.join();
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return std::nullopt;
  }

 private:
  pid_t pid_ = -1;
  bool exited_ = false;
  std::thread reader_;
  std::mutex mutex_;
  std::string output_;
};

// A fresh directory under the system temp dir, removed with everything in it.
struct Scratch {
  explicit Scratch(const std::string& tag)
      : dir(std::filesystem::temp_directory_path() / ("minigpt4_" + tag + "_" + std::to_string(getpid()))) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
  }
  ~Scratch() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  const std::filesystem::path& path() const { return dir; }
  std::filesystem::path dir;
};

// A port unlikely to be in use by an earlier test's lingering socket.
inline std::string free_port() {
  static std::mt19937 rng(static_cast<unsigned>(getpid()));
  return std::to_string(20000 + rng() % 20000);
}

}  // namespace minigpt4::test
