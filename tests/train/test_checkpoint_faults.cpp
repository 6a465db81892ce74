// Checkpoints under faults: a full disk (a small tmpfs when this process may mount one; a
// file size limit, RLIMIT_FSIZE, always) gives an error naming the file and the errno text
// and keeps the previous checkpoint; temporaries left by a killed run are ignored and
// removed; a damaged checkpoint (cut short by an older writer, or changed on disk) is
// named, and resuming passes over it to the newest whole one; gradients accumulated
// before a save come back with it.
#include "minigpt4/common/error.h"
#include "minigpt4/io/torch_checkpoint.h"
#include "minigpt4/io/torch_save.h"
#include "minigpt4/train/checkpoint.h"
#include "minigpt4/train/grad_scaler.h"
#include "minigpt4/train/optimizer.h"
#include "tests/support/skip.h"
#include "tests/train/train_test_util.h"

#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

using namespace minigpt4;
using namespace minigpt4::train;
using Catch::Contains;
using minigpt4::test::ScratchDir;
using minigpt4::test::TinyNet;
namespace fs = std::filesystem;

namespace {

AdamWSettings settings() {
  AdamWSettings s;
  s.lr = 1e-2;
  s.weight_decay = 0.05;
  return s;
}

void step(TinyNet& net, Optimizer& opt, int64_t seed) {
  torch::manual_seed(static_cast<uint64_t>(seed));
  const auto x = torch::randn({5, 4}), y = torch::randn({5, 2});
  opt.zero_grad();
  net.loss(x, y).backward();
  opt.step();
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

TrainingProgress at_step(int64_t global_step) {
  TrainingProgress p;
  p.global_step = global_step;
  p.iter = global_step;
  return p;
}

// A model, its optimizer after a step, and a checkpoint of them saved at `path`.
struct Trained {
  Trained() : opt(split_parameters(net), settings()) { step(net, opt, 11); }
  TinyNet net;
  Optimizer opt;
};

// The checks every full-disk case makes: the error names the file and the errno text,
// no temporary is left, and the earlier checkpoint is byte for byte what it was and loads.
void check_failed_save(Trained& t, const std::string& dir, const std::string& path, const std::string& errno_text) {
  const std::string before = read_bytes(path);
  const auto files_before = names_in(dir);
  step(t.net, t.opt, 12);  // something new to save
  try {
    save_training_checkpoint(path, t.net, t.opt, nullptr, at_step(2));
    FAIL("the save succeeded; it should have run out of space");
  } catch (const Error& e) {
    const std::string message = e.what();
    INFO(message);
    CHECK_THAT(message, Contains(path) && Contains(errno_text));
    CHECK_THAT(message, Contains("temporary was removed"));
  }
  CHECK(names_in(dir) == files_before);  // no checkpoint_1.pth.tmp.<pid> left behind
  CHECK(read_bytes(path) == before);
  CHECK(verify_training_checkpoint(path).global_step == 1);
}

// Sets this process's file size limit (soft) for the scope and ignores SIGXFSZ, so a write
// past it fails with EFBIG instead of killing the process. Raising the soft limit back to
// the hard one needs no privilege.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &old_) == 0);
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    REQUIRE(::sigaction(SIGXFSZ, &ignore, &old_action_) == 0);
    struct rlimit limit = old_;
    limit.rlim_cur = bytes;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &limit) == 0);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &old_);
    ::sigaction(SIGXFSZ, &old_action_, nullptr);
  }

 private:
  struct rlimit old_ {};
  struct sigaction old_action_ {};
};

}  // namespace

TEST_CASE("a full disk while saving (file size limit): named error, no temporary, previous checkpoint kept",
          "[train][faults]") {
  ScratchDir dir("fsize");
  torch::manual_seed(2);
  Trained t;
  const std::string path = epoch_checkpoint_path(dir.str(), 0);
  save_training_checkpoint(path, t.net, t.opt, nullptr, at_step(1));
  const auto size = fs::file_size(path);
  REQUIRE(size > 1024);
  {
    FileSizeLimit limit(size / 2);  // the first half of the new file fits, the rest does not
    check_failed_save(t, dir.str(), path, std::strerror(EFBIG));
  }
  // With room again the same save succeeds and replaces the file.
  save_training_checkpoint(path, t.net, t.opt, nullptr, at_step(2));
  CHECK(verify_training_checkpoint(path).global_step == 2);
}

TEST_CASE("a full disk while saving (a small tmpfs): named error, no temporary, previous checkpoint kept",
          "[train][faults][conditional][needs_tmpfs_mount]") {
  ScratchDir dir("tmpfs");
  const std::string mount_point = dir.file("disk");
  fs::create_directories(mount_point);
  if (::mount("tmpfs", mount_point.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=256k,mode=0700") != 0) {
    const std::string why = std::strerror(errno);
    test::skip_test("cannot mount a 256 KiB tmpfs here (" + why +
                    "; needs root with CAP_SYS_ADMIN); the RLIMIT_FSIZE case covers a failing write without privilege");
    return;
  }
  struct Unmount {
    std::string at;
    ~Unmount() { ::umount2(at.c_str(), MNT_DETACH); }
  } unmount{mount_point};

  torch::manual_seed(3);
  Trained t;
  const std::string path = step_checkpoint_path(mount_point, 1);
  save_training_checkpoint(path, t.net, t.opt, nullptr, at_step(1));
  // The disk fills up (another writer) before the next save.
  const std::string filler = mount_point + "/filler";
  {
    std::FILE* f = std::fopen(filler.c_str(), "wb");
    REQUIRE(f != nullptr);
    const std::string block(4096, 'x');
    while (std::fwrite(block.data(), 1, block.size(), f) == block.size() && std::fflush(f) == 0) {}
    std::fclose(f);
  }
  check_failed_save(t, mount_point, path, std::strerror(ENOSPC));
  // Space freed: saving works again.
  fs::remove(filler);
  save_training_checkpoint(path, t.net, t.opt, nullptr, at_step(2));
  CHECK(verify_training_checkpoint(path).global_step == 2);
}

TEST_CASE("checkpoint names: a plain character check", "[train][faults]") {
  for (const char* good : {"checkpoint_0.pth", "checkpoint_12.pth", "checkpoint_step_7.pth", "checkpoint_step_000.pth"})
    CHECK(is_checkpoint_name(good));
  for (const char* bad :
       {"checkpoint_.pth", "checkpoint_step_.pth", "checkpoint_best.pth", "checkpoint_1.pth.tmp.123", "checkpoint_1.pt",
        "checkpoint_-1.pth", "xcheckpoint_1.pth", "checkpoint_1.pthx", "checkpoint_step_1_2.pth", "checkpoint_1 .pth",
        "checkpoint_step_step_1.pth", ".checkpoint_1.pth", ""})
    CHECK_FALSE(is_checkpoint_name(bad));
  // A long name is just a long scan (std::regex recursed once per character).
  CHECK(is_checkpoint_name("checkpoint_" + std::string(1 << 20, '7') + ".pth"));
  CHECK_FALSE(is_checkpoint_name("checkpoint_" + std::string(1 << 20, '7') + "x.pth"));

  std::string final_name;
  long pid = 0;
  CHECK(io::parse_temporary_name("checkpoint_step_4.pth.tmp.4242", &final_name, &pid));
  CHECK(final_name == "checkpoint_step_4.pth");
  CHECK(pid == 4242);
  CHECK(io::temporary_path("/a/b.pth", 9) == "/a/b.pth.tmp.9");
  for (const char* not_temp : {"checkpoint_4.pth", "checkpoint_4.pth.tmp.", "checkpoint_4.pth.tmp.12a", ".tmp.12"})
    CHECK_FALSE(io::parse_temporary_name(not_temp, nullptr, nullptr));
}

TEST_CASE("temporaries of a killed run: never resumed from, removed, a running writer's kept", "[train][faults]") {
  ScratchDir dir("temps");
  torch::manual_seed(4);
  Trained t;
  save_training_checkpoint(step_checkpoint_path(dir.str(), 3), t.net, t.opt, nullptr, at_step(3));
  const std::string whole = read_bytes(step_checkpoint_path(dir.str(), 3));

  // A process that has exited (its pid is free once reaped) left half a newer checkpoint.
  const pid_t dead = ::fork();
  REQUIRE(dead >= 0);
  if (dead == 0) ::_exit(0);
  REQUIRE(::waitpid(dead, nullptr, 0) == dead);
  const std::string left = io::temporary_path(step_checkpoint_path(dir.str(), 5), dead);
  write_bytes(left, whole.substr(0, whole.size() / 2));
  // Our parent still runs: its temporary may be a save in progress.
  const std::string live = io::temporary_path(step_checkpoint_path(dir.str(), 6), ::getppid());
  write_bytes(live, whole.substr(0, 10));
  const std::string other = dir.file("notes.txt.tmp.1");  // not a checkpoint's: not ours to remove
  write_bytes(other, "x");

  CHECK(find_latest_checkpoint(dir.str()) == step_checkpoint_path(dir.str(), 3));
  CHECK(find_resumable_checkpoint(dir.str()) == step_checkpoint_path(dir.str(), 3));
  const auto removed = remove_checkpoint_temporaries(dir.str());
  CHECK(removed == std::vector<std::string>{left});
  CHECK_FALSE(fs::exists(left));
  CHECK(fs::exists(live));
  CHECK(fs::exists(other));
}

TEST_CASE("damaged checkpoints: named on load, passed over by resume, an error when none is whole", "[train][faults]") {
  ScratchDir dir("damaged");
  torch::manual_seed(5);
  Trained t;
  {
    torch::NoGradGuard no_grad;
    t.net.table.fill_(1234.5f);  // a pattern to find in the file
  }
  const std::string older = step_checkpoint_path(dir.str(), 4), newer = step_checkpoint_path(dir.str(), 6);
  save_training_checkpoint(older, t.net, t.opt, nullptr, at_step(4));
  save_training_checkpoint(newer, t.net, t.opt, nullptr, at_step(6));
  CHECK(find_resumable_checkpoint(dir.str()) == newer);

  // One bit of a weight flips on disk: the zip is still valid, the digest is not.
  std::string bytes = read_bytes(newer);
  const float value = 1234.5f;
  const size_t at = bytes.find(std::string(reinterpret_cast<const char*>(&value), sizeof value));
  REQUIRE(at != std::string::npos);
  bytes[at] ^= 0x01;
  write_bytes(newer, bytes);
  CHECK(read_training_progress(newer).global_step == 6);  // the metadata still reads
  CHECK_THROWS_WITH(verify_training_checkpoint(newer), Contains(newer) && Contains("damaged"));
  TinyNet fresh;
  Optimizer fresh_opt(split_parameters(fresh), settings());
  const auto untouched = fresh.table.clone();
  CHECK_THROWS_WITH(load_training_checkpoint(newer, fresh, fresh_opt, nullptr), Contains(newer) && Contains("damaged"));
  CHECK(torch::equal(fresh.table, untouched));  // nothing was loaded from it
  CHECK(find_resumable_checkpoint(dir.str()) == older);

  // Cut short (as an older, non-atomic writer could leave it): passed over as well.
  const std::string cut = step_checkpoint_path(dir.str(), 8);
  write_bytes(cut, read_bytes(older).substr(0, read_bytes(older).size() * 2 / 3));
  CHECK(find_resumable_checkpoint(dir.str()) == older);

  // None whole: an error naming each, rather than a silent fresh start.
  write_bytes(older, read_bytes(older).substr(0, 100));
  CHECK_THROWS_WITH(find_resumable_checkpoint(dir.str()), Contains(older) && Contains(newer) && Contains(cut));
  // An empty folder is a fresh start.
  ScratchDir empty("damaged_empty");
  CHECK_FALSE(find_resumable_checkpoint(empty.str()).has_value());
}

TEST_CASE("a checkpoint inside a gradient accumulation window holds the gradients so far (and the rate)",
          "[train][faults]") {
  ScratchDir dir("grads");
  torch::manual_seed(6);
  Trained t;
  torch::manual_seed(60);
  const auto x = torch::randn({5, 4}), y = torch::randn({5, 2});
  t.opt.zero_grad();
  t.net.loss(x, y).backward();  // half of a window of two
  const std::string path = step_checkpoint_path(dir.str(), 1);
  t.opt.set_lr(0.00123);  // the last step's rate comes back too (a file saved again is the same)
  save_training_checkpoint(path, t.net, t.opt, nullptr, at_step(1), /*with_gradients=*/true);
  const auto all = io::load_torch_checkpoint(path);
  CHECK(all.count("grad/proj.weight"));
  CHECK_FALSE(all.count("grad/bn.weight"));  // never reached by the loss: no gradient

  TinyNet fresh;
  Optimizer fresh_opt(split_parameters(fresh), settings());
  load_training_checkpoint(path, fresh, fresh_opt, nullptr);
  CHECK(fresh_opt.lr() == 0.00123);
  for (const auto& p : t.net.named_parameters()) {
    if (!p.value().requires_grad()) continue;
    INFO(p.key());
    const auto& restored = fresh.named_parameters()[p.key()].grad();
    REQUIRE(restored.defined() == p.value().grad().defined());
    if (restored.defined()) CHECK(torch::equal(restored, p.value().grad()));
  }
  // A checkpoint without them leaves no stale gradient behind.
  save_training_checkpoint(path, t.net, t.opt, nullptr, at_step(2));
  load_training_checkpoint(path, fresh, fresh_opt, nullptr);
  CHECK_FALSE(fresh.proj->weight.grad().defined());
}
