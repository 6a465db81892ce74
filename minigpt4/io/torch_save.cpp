#include "minigpt4/io/torch_save.h"

#include "minigpt4/common/error.h"
#include "minigpt4/io/file_util.h"
#include "minigpt4/io/pickle.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/torch.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <thread>

namespace minigpt4::io {

PyValue PyValue::of(int64_t v) {
  PyValue p;
  p.kind = Kind::Int;
  p.integer = v;
  return p;
}

PyValue PyValue::of(std::string s) {
  PyValue p;
  p.kind = Kind::String;
  p.text = std::move(s);
  return p;
}

PyValue PyValue::of(at::Tensor t) {
  PyValue p;
  p.kind = Kind::Tensor;
  p.tensor = std::move(t);
  return p;
}

PyValue PyValue::dict(Kind kind) {
  PyValue p;
  p.kind = kind;
  return p;
}

PyValue PyValue::tuple(std::vector<PyValue> items) {
  PyValue p;
  p.kind = Kind::Tuple;
  p.items = std::move(items);
  return p;
}

PyValue& PyValue::set(std::string key, PyValue value) {
  keys.push_back(std::move(key));
  items.push_back(std::move(value));
  return *this;
}

namespace {

const char* storage_type(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "FloatStorage";
    case at::kDouble: return "DoubleStorage";
    case at::kHalf: return "HalfStorage";
    case at::kBFloat16: return "BFloat16Storage";
    case at::kLong: return "LongStorage";
    case at::kInt: return "IntStorage";
    case at::kShort: return "ShortStorage";
    case at::kChar: return "CharStorage";
    case at::kByte: return "ByteStorage";
    case at::kBool: return "BoolStorage";
    default: return nullptr;
  }
}

// Emits the pickle program torch.save would write, collecting the tensor storages.
class Pickler {
 public:
  explicit Pickler(std::string path) : path_(std::move(path)) {}

  struct Storage {
    at::Tensor owner;  // keeps the bytes alive until written
    std::string key;
  };

  void emit(const PyValue& v, const std::string& where) {
    using K = PyValue::Kind;
    switch (v.kind) {
      case K::None: w_.none(); break;
      case K::Int: w_.integer(v.integer); break;
      case K::String: w_.string(v.text); break;
      case K::Tensor: tensor(v.tensor, where); break;
      case K::Tuple:
        w_.mark();
        for (size_t i = 0; i < v.items.size(); ++i) emit(v.items[i], where + "/" + std::to_string(i));
        w_.tuple();
        break;
      case K::Dict:
      case K::OrderedDict:
        if (v.kind == K::Dict) {
          w_.empty_dict();
        } else {
          empty_ordered_dict();
        }
        if (v.items.empty()) break;
        w_.mark();
        for (size_t i = 0; i < v.items.size(); ++i) {
          w_.string(v.keys[i]);
          emit(v.items[i], where.empty() ? v.keys[i] : where + "/" + v.keys[i]);
        }
        w_.setitems();
        break;
    }
  }

  std::string finish() { return w_.finish(); }
  const std::vector<Storage>& storages() const { return storages_; }

 private:
  void empty_ordered_dict() {
    w_.global("collections", "OrderedDict");
    w_.mark();
    w_.tuple();
    w_.reduce();
  }

  // torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)
  void tensor(const at::Tensor& original, const std::string& where) {
    if (!original.defined()) fail("cannot save {}: tensor '{}' is undefined", path_, where);
    const char* type = storage_type(original.scalar_type());
    if (type == nullptr || original.layout() != at::kStrided)
      fail("cannot save {}: tensor '{}' has dtype {}, which this writer does not support", path_, where,
           c10::toString(original.scalar_type()));
    at::Tensor t = original.detach().cpu();
    const size_t item = t.element_size();
    if (t.storage().nbytes() % item != 0) t = t.clone(at::MemoryFormat::Contiguous);
    // One record per (storage, dtype): tied weights stay tied after loading.
    const auto id = std::make_pair(static_cast<const void*>(t.storage().unsafeGetStorageImpl()), t.scalar_type());
    auto [slot, inserted] = index_.emplace(id, storages_.size());
    if (inserted) storages_.push_back({t, std::to_string(storages_.size())});
    const Storage& s = storages_[slot->second];

    w_.global("torch._utils", "_rebuild_tensor_v2");
    w_.mark();
    w_.mark();  // persistent id: ('storage', torch.XStorage, key, location, numel)
    w_.string("storage");
    w_.global("torch", type);
    w_.string(s.key);
    w_.string("cpu");
    w_.integer(static_cast<int64_t>(t.storage().nbytes() / item));
    w_.tuple();
    w_.persistent_id();
    w_.integer(t.storage_offset());
    w_.int_tuple(t.sizes().vec());
    w_.int_tuple(t.strides().vec());
    w_.boolean(false);     // requires_grad
    empty_ordered_dict();  // backward hooks
    w_.tuple();
    w_.reduce();
  }

  std::string path_;
  io::pickle::Writer w_;
  std::vector<Storage> storages_;
  std::map<std::pair<const void*, at::ScalarType>, size_t> index_;
};

// The file torch_save writes: a temporary beside `path` that becomes `path` only whole and
// on disk (see torch_save.h). Writes are buffered; the first failure is kept and reported
// by commit(), and later writes are dropped, so the zip writer (C code calling back) never
// sees an exception and never writes on after a failure.
class DurableFile {
 public:
  explicit DurableFile(std::string path) : path_(std::move(path)), tmp_(temporary_path(path_, ::getpid())) {
    if (const char* delay = std::getenv("MINIGPT4_TEST_SAVE_DELAY_MS")) delay_ms_ = std::atof(delay);
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("cannot save {}: cannot create the temporary file {}: {}", path_, tmp_, std::strerror(errno));
    if (delay_ms_ <= 0) buffer_.reserve(kBuffer);
  }
  ~DurableFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }
  DurableFile(const DurableFile&) = delete;
  DurableFile& operator=(const DurableFile&) = delete;

  void write(const void* data, size_t n) {
    if (error_ != 0 || n == 0) return;
    if (delay_ms_ > 0) {  // test-only: every piece reaches the file, then a pause
      write_through(static_cast<const char*>(data), n);
      pause();
      return;
    }
    if (buffer_.size() + n > kBuffer) flush();
    if (n >= kBuffer) {
      write_through(static_cast<const char*>(data), n);
    } else {
      buffer_.append(static_cast<const char*>(data), n);
    }
  }

  // Flush, fsync, rename over `path`, fsync the folder; or throw (the temporary removed).
  void commit() {
    flush();
    if (error_ == 0 && ::fsync(fd_) != 0) error_ = errno, failed_at_ = "fsync of";
    const int closed = ::close(fd_);
    const int close_errno = errno;
    fd_ = -1;
    if (error_ == 0 && closed != 0) error_ = close_errno, failed_at_ = "closing";
    if (error_ != 0) {
      ::unlink(tmp_.c_str());
      committed_ = true;  // nothing left to remove
      fail(
          "cannot save {}: {} the temporary file {} failed after {} bytes: {}. The temporary was removed; "
          "an earlier {} (if any) is unchanged",
          path_, failed_at_, tmp_, written_, std::strerror(error_), path_);
    }
    pause();
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
      const int err = errno;
      ::unlink(tmp_.c_str());
      committed_ = true;
      fail(
          "cannot save {}: renaming {} into place failed: {}. The temporary was removed; an earlier {} (if any) "
          "is unchanged",
          path_, tmp_, std::strerror(err), path_);
    }
    committed_ = true;
    sync_parent_folder(path_);  // the rename itself must reach the disk
  }

 private:
  static constexpr size_t kBuffer = size_t{1} << 20;

  void flush() {
    if (error_ == 0 && !buffer_.empty()) write_through(buffer_.data(), buffer_.size());
    buffer_.clear();
  }

  void write_through(const char* p, size_t n) {
    while (n > 0 && error_ == 0) {
      const ssize_t k = ::write(fd_, p, n);
      if (k < 0) {
        if (errno == EINTR) continue;
        error_ = errno, failed_at_ = "writing";
      } else if (k == 0) {
        error_ = EIO, failed_at_ = "writing";
      } else {
        p += k, n -= static_cast<size_t>(k), written_ += static_cast<uint64_t>(k);
      }
    }
  }

  void pause() const {
    if (delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(delay_ms_));
  }

  std::string path_, tmp_;
  int fd_ = -1;
  double delay_ms_ = 0;  // may be fractional: "0.5"
  bool committed_ = false;
  std::string buffer_;
  uint64_t written_ = 0;
  int error_ = 0;
  const char* failed_at_ = "";
};

}  // namespace

std::string temporary_path(const std::string& path, long pid) { return path + ".tmp." + std::to_string(pid); }

bool parse_temporary_name(const std::string& filename, std::string* final_name, long* pid) {
  static const std::string marker = ".tmp.";
  const size_t at = filename.rfind(marker);
  if (at == std::string::npos || at == 0) return false;
  const size_t digits = at + marker.size();
  if (digits == filename.size() || filename.size() - digits > 18) return false;
  long value = 0;
  for (size_t i = digits; i < filename.size(); ++i) {
    if (filename[i] < '0' || filename[i] > '9') return false;
    value = value * 10 + (filename[i] - '0');
  }
  if (final_name) *final_name = filename.substr(0, at);
  if (pid) *pid = value;
  return true;
}

void torch_save(const std::string& path, const PyValue& object) {
  Pickler pickler(path);
  pickler.emit(object, "");
  const std::string pkl = pickler.finish();

  DurableFile out(path);
  try {
    caffe2::serialize::PyTorchStreamWriter zip([&](const void* buf, size_t n) -> size_t {
      out.write(buf, n);  // never throws: a failure is kept for commit()
      return n;
    });
    zip.writeRecord("data.pkl", pkl.data(), pkl.size());
    zip.writeRecord("byteorder", "little", 6);
    for (const auto& s : pickler.storages())
      zip.writeRecord("data/" + s.key, s.owner.storage().data(), s.owner.storage().nbytes());
    zip.writeEndOfFile();
  } catch (const c10::Error& e) {
    fail("cannot save {}: {}", path, e.what_without_backtrace());
  }
  out.commit();
}

}  // namespace minigpt4::io
