#include "minigpt4/distributed/launcher.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <map>
#include <thread>

extern char** environ;

namespace minigpt4::distributed {

namespace {

std::atomic<int> g_forward_signal{0};  // a SIGINT/SIGTERM the launcher got, to pass on

void remember_signal(int sig) { g_forward_signal = sig; }

struct Rank {
  int rank = 0;
  pid_t pid = -1;
  bool running = true;
};

// This process's environment with the rank's variables put in place of any inherited ones.
std::vector<std::string> rank_environment(const std::map<std::string, std::string>& vars) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    const std::string entry(*e);
    const auto eq = entry.find('=');
    if (eq != std::string::npos && vars.count(entry.substr(0, eq))) continue;
    env.push_back(entry);
  }
  for (const auto& [key, value] : vars) env.push_back(key + "=" + value);
  return env;
}

pid_t spawn(const std::string& program, const std::vector<std::string>& arguments,
            const std::vector<std::string>& env) {
  // Everything execve needs is built before fork: the child only calls async-signal-safe
  // functions.
  std::vector<char*> argv{const_cast<char*>(program.c_str())};
  for (const auto& a : arguments) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  const pid_t pid = fork();
  if (pid < 0) fail("launch: fork failed: {}", std::strerror(errno));
  if (pid == 0) {
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    execve(program.c_str(), argv.data(), envp.data());
    _exit(127);  // could not execute the program
  }
  return pid;
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with code {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return fmt::format("was killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  return "stopped";
}

int exit_code_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

// Sends `sig` to the running ranks and waits up to `grace` for them to exit; returns
// whether all did.
bool stop_ranks(std::vector<Rank>& ranks, int sig, std::chrono::milliseconds grace) {
  for (auto& r : ranks)
    if (r.running) {
      kill(r.pid, sig);
      if (sig != SIGKILL) kill(r.pid, SIGCONT);  // a stopped (hung) rank must run to die of SIGTERM
    }
  const auto deadline = std::chrono::steady_clock::now() + grace;
  while (true) {
    bool any = false;
    for (auto& r : ranks) {
      if (!r.running) continue;
      int status = 0;
      if (waitpid(r.pid, &status, WNOHANG) == r.pid)
        r.running = false;
      else
        any = true;
    }
    if (!any) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace

int launch_ranks(const LaunchOptions& o) {
  if (o.nproc_per_node < 1) fail("launch: --nproc-per-node must be at least 1, got {}", o.nproc_per_node);
  if (o.nnodes < 1) fail("launch: --nnodes must be at least 1, got {}", o.nnodes);
  if (o.node_rank < 0 || o.node_rank >= o.nnodes)
    fail("launch: --node-rank {} is not in [0, --nnodes {})", o.node_rank, o.nnodes);
  if (o.master_port < 1 || o.master_port > 65535) fail("launch: --master-port {} is not a TCP port", o.master_port);
  if (o.arguments.empty())
    fail("launch: no command to run (e.g. `minigpt4 launch --nproc-per-node 2 -- train --cfg-path ...`)");
  if (access(o.program.c_str(), X_OK) != 0) fail("launch: cannot execute {}", o.program);

  const int world_size = o.nnodes * o.nproc_per_node;
  std::map<std::string, std::string> common = {{"WORLD_SIZE", std::to_string(world_size)},
                                               {"LOCAL_WORLD_SIZE", std::to_string(o.nproc_per_node)},
                                               {"GROUP_RANK", std::to_string(o.node_rank)},
                                               {"MASTER_ADDR", o.master_addr},
                                               {"MASTER_PORT", std::to_string(o.master_port)}};
  // As torchrun: several CPU-heavy ranks on one machine share its cores unless told otherwise.
  if (!std::getenv("OMP_NUM_THREADS") && o.nproc_per_node > 1) {
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    const unsigned threads = std::max(1u, cores / static_cast<unsigned>(o.nproc_per_node));
    common["OMP_NUM_THREADS"] = std::to_string(threads);
    log::info("launch: OMP_NUM_THREADS={} per rank ({} cores, {} ranks on this machine); set it to override", threads,
              cores, o.nproc_per_node);
  }

  struct sigaction action {};
  action.sa_handler = remember_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);

  std::vector<Rank> ranks;
  for (int local = 0; local < o.nproc_per_node; ++local) {
    auto vars = common;
    const int rank = o.node_rank * o.nproc_per_node + local;
    vars["RANK"] = std::to_string(rank);
    vars["LOCAL_RANK"] = std::to_string(local);
    const pid_t pid = spawn(o.program, o.arguments, rank_environment(vars));
    ranks.push_back({rank, pid, true});
    log::info("launch: rank {} of {} is pid {}", rank, world_size, pid);
  }

  int exit_code = 0;
  while (true) {
    if (const int sig = g_forward_signal.exchange(0)) {
      log::warn("launch: got signal {} ({}); stopping the ranks", sig, strsignal(sig));
      if (!stop_ranks(ranks, sig, o.stop_grace)) stop_ranks(ranks, SIGKILL, o.stop_grace);
      return 128 + sig;
    }
    int status = 0;
    const pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid < 0 && errno == ECHILD) break;
    if (pid <= 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    auto it = std::find_if(ranks.begin(), ranks.end(), [&](const Rank& r) { return r.pid == pid; });
    if (it == ranks.end()) continue;
    it->running = false;
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (ok) {
      if (std::none_of(ranks.begin(), ranks.end(), [](const Rank& r) { return r.running; })) break;
      continue;
    }
    exit_code = exit_code_of(status);
    const bool others = std::any_of(ranks.begin(), ranks.end(), [](const Rank& r) { return r.running; });
    log::error("launch: rank {} (pid {}) {}{}", it->rank, pid, describe_status(status),
               exit_code == 127 ? fmt::format(" (could {} run?)", o.program) : "");
    if (others) {
      log::error("launch: stopping the other ranks of this node");
      if (!stop_ranks(ranks, SIGTERM, o.stop_grace)) {
        log::error("launch: ranks still running {} ms after SIGTERM; sending SIGKILL", o.stop_grace.count());
        stop_ranks(ranks, SIGKILL, o.stop_grace);
      }
    }
    break;
  }
  if (exit_code == 0) log::info("launch: all {} rank(s) of this node finished", o.nproc_per_node);
  return exit_code;
}

}  // namespace minigpt4::distributed
