#include "minigpt4/io/torch_checkpoint.h"

#include "minigpt4/io/torch_save.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/limits.h"
#include "minigpt4/common/untrusted.h"
#include "minigpt4/io/file_util.h"
#include "minigpt4/io/pickle.h"
#include "minigpt4/io/zip_index.h"

#include <caffe2/serialize/inline_container.h>
#include <fmt/ranges.h>
#include <caffe2/serialize/read_adapter_interface.h>
#include <torch/torch.h>

#include <cstring>
#include <map>
#include <new>
#include <optional>
#include <unordered_map>
#include <utility>

namespace minigpt4::io {

namespace {

using pickle::Value;
using pickle::ValuePtr;
using K = Value::Kind;

// A storage key is a decimal counter ("0", "1", ...); a tensor has at most 64 dimensions
// (PyTorch's own limit); a flattened name at most this many bytes. None comes near these in
// a real checkpoint; each stops a small file from making us copy or print gigabytes.
constexpr size_t kMaxStorageKeyBytes = 256;
constexpr size_t kMaxTensorDims = 64;
constexpr size_t kMaxNameBytes = 64 * 1024;
// Records the zip reader inflates on its own when it opens the archive (the format version,
// the serialization id): a few bytes each in every real file.
constexpr uint64_t kMaxSmallRecordBytes = 4096;

// torch.<Name>Storage as it appears in a storage's persistent id.
struct StorageType {
  const char* name;
  at::ScalarType dtype;
};

constexpr StorageType kStorageTypes[] = {
    {"FloatStorage", at::kFloat},       {"DoubleStorage", at::kDouble}, {"HalfStorage", at::kHalf},
    {"BFloat16Storage", at::kBFloat16}, {"LongStorage", at::kLong},     {"IntStorage", at::kInt},
    {"ShortStorage", at::kShort},       {"CharStorage", at::kChar},     {"ByteStorage", at::kByte},
    {"BoolStorage", at::kBool},         {"UntypedStorage", at::kByte},
};

std::optional<at::ScalarType> storage_dtype(std::string global) {
  for (const char* prefix : {"torch.cuda.", "torch."})  // old files name CUDA storages so
    if (global.rfind(prefix, 0) == 0) {
      global = global.substr(std::strlen(prefix));
      break;
    }
  for (const auto& t : kStorageTypes)
    if (global == t.name) return t.dtype;
  return std::nullopt;
}

// Lets the zip reader read from our mapping (one open file, no extra copy of the central
// directory) and never past its end, whatever a corrupt archive claims.
class MappedReadAdapter final : public caffe2::serialize::ReadAdapterInterface {
 public:
  explicit MappedReadAdapter(std::shared_ptr<MappedFile> file) : file_(std::move(file)) {}
  size_t size() const override { return file_->size(); }
  size_t read(uint64_t pos, void* buf, size_t n, const char* /*what*/) const override {
    if (pos >= file_->size()) return 0;
    n = std::min<uint64_t>(n, file_->size() - pos);
    std::memcpy(buf, file_->data() + pos, n);
    return n;
  }

 private:
  std::shared_ptr<MappedFile> file_;
};

// Before handing the file to the zip reader: say clearly what a non-zip file is.
void check_is_zip(const std::string& path) {
  const std::string head = read_prefix(path, 512);
  if (head.size() >= 4 && head.compare(0, 4, "PK\x03\x04", 4) == 0) return;
  const bool legacy_pickle = !head.empty() && static_cast<uint8_t>(head[0]) == 0x80;
  const bool legacy_tar = head.size() >= 262 && head.compare(257, 5, "ustar") == 0;
  if (legacy_pickle || legacy_tar)
    fail(
        "{} is a legacy (pre-1.6, non-zip) torch.save file, which is not supported; re-save it "
        "with torch>=1.6 in Python: torch.save(torch.load(p, map_location='cpu'), p)",
        path);
  fail("{} is not a PyTorch checkpoint: torch.save files are zip archives and this is not one", path);
}

std::string join(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : name.empty() ? prefix : prefix + "/" + name;
}

std::optional<std::string> key_text(const ValuePtr& k) {
  switch (k->kind) {
    case K::String: return k->text;
    case K::Int: return std::to_string(k->integer);
    case K::Bool: return k->boolean ? "True" : "False";
    default: return std::nullopt;  // tuple keys and the like: no sensible name
  }
}

class Loader {
 public:
  explicit Loader(const std::string& path)
      : path_(path),
        file_(MappedFile::open(path)),
        index_(file_->data(), file_->size(), path, static_cast<uint64_t>(input_limits().max_tensors_per_file) + 16) {
    // PyTorchStreamReader's rule: every record lives in one folder, named by the first.
    const std::string& first = index_.entries().front().name;
    const size_t slash = first.find('/');
    if (slash == std::string::npos)
      fail("{}: zip record '{}' is not inside a folder; torch.save puts every record in <archive>/", path_,
           excerpt(first, 100));
    prefix_ = first.substr(0, slash + 1);
  }

  StateDict load();

 private:
  const ZipEntry* record(const std::string& name) const { return index_.find(prefix_ + name); }
  at::Tensor record_bytes(const ZipEntry& entry, const std::string& name);
  caffe2::serialize::PyTorchStreamReader& zip_reader();
  ValuePtr load_storage(const ValuePtr& pid);
  ValuePtr reduce(const std::string& name, const ValuePtr& args);
  ValuePtr rebuild_tensor(const std::string& name, const ValuePtr& args);
  StateDict flatten(const ValuePtr& root);

  std::string path_;
  std::shared_ptr<MappedFile> file_;
  ZipIndex index_;
  std::string prefix_;                                              // "<archive>/"
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader_;  // only for deflated records
  uint64_t inflated_bytes_ = 0;
  std::map<std::string, ValuePtr> storages_;  // by key: views of one storage share it
};

StateDict Loader::load() {
  const ZipEntry* pkl = record("data.pkl");
  if (pkl == nullptr)
    fail(
        "{} has no data.pkl: not a torch.save checkpoint (TorchScript archives from "
        "torch.jit.save are not supported)",
        path_);
  if (const ZipEntry* order = record("byteorder")) {
    if (order->uncompressed_size > 16)
      fail("{}: the byteorder record has {} bytes; it should say 'little'", path_, order->uncompressed_size);
    const at::Tensor bytes = record_bytes(*order, "byteorder");
    const std::string text(reinterpret_cast<const char*>(bytes.data_ptr()), bytes.numel());
    if (text != "little") fail("{}: byte order '{}' is not supported (only little-endian)", path_, excerpt(text));
  }
  const at::Tensor program = record_bytes(*pkl, "data.pkl");
  pickle::Hooks hooks;
  hooks.persistent_load = [this](const ValuePtr& pid) { return load_storage(pid); };
  hooks.reduce = [this](const std::string& name, const ValuePtr& args) { return reduce(name, args); };
  const ValuePtr root = pickle::unpickle(static_cast<const uint8_t*>(program.data_ptr()),
                                         static_cast<size_t>(program.numel()), hooks, path_ + ": data.pkl");
  return flatten(root);
}

caffe2::serialize::PyTorchStreamReader& Loader::zip_reader() {
  if (reader_) return *reader_;
  // Opening the archive inflates the version and serialization-id records: small, checked.
  for (const char* name : {"version", ".data/version", ".data/serialization_id"})
    if (const ZipEntry* z = record(name); z && z->uncompressed_size > kMaxSmallRecordBytes)
      fail("{}: the {} record claims {} bytes; it holds a few", path_, name, z->uncompressed_size);
  try {
    reader_ = std::make_unique<caffe2::serialize::PyTorchStreamReader>(std::make_shared<MappedReadAdapter>(file_));
  } catch (const c10::Error& e) {
    fail("cannot read torch checkpoint {}: {}", path_, excerpt(e.what_without_backtrace(), 300));
  } catch (const std::exception& e) {  // e.g. a version record that is not a number
    fail("cannot read torch checkpoint {}: its zip reader failed ({}) on the version record", path_,
         excerpt(e.what(), 100));
  }
  return *reader_;
}

// A record's bytes as a uint8 tensor: pointing into the mapping when the record is stored
// (torch.save never compresses), else inflated into memory, its size known beforehand
// (the caller has checked it is what it should be) and counted against
// limits.max_decompressed_bytes.
at::Tensor Loader::record_bytes(const ZipEntry& entry, const std::string& name) {
  if (entry.stored()) return file_->bytes(entry.data_offset, entry.uncompressed_size);
  const int64_t limit = input_limits().max_decompressed_bytes;
  if (entry.uncompressed_size > static_cast<uint64_t>(limit) ||
      inflated_bytes_ + entry.uncompressed_size > static_cast<uint64_t>(limit))
    fail(
        "{}: compressed record {} would inflate to {} bytes, beyond the {} this file's compressed records may "
        "inflate to in all (limits.max_decompressed_bytes)",
        path_, name, entry.uncompressed_size, limit);
  // Deflate cannot do better than about 1032:1; a record claiming more lies about its size.
  if (entry.uncompressed_size / 1032 > entry.compressed_size + 1)
    fail("{}: compressed record {} claims {} bytes from {} compressed bytes, more than deflate can produce", path_,
         name, entry.uncompressed_size, entry.compressed_size);
  inflated_bytes_ += entry.uncompressed_size;
  at::Tensor out;
  try {
    out = at::empty({static_cast<int64_t>(entry.uncompressed_size)}, at::kByte);
  } catch (const std::exception&) {  // c10::Error or bad_alloc from the allocator
    fail("{}: cannot allocate {} bytes to inflate record {}", path_, entry.uncompressed_size, name);
  }
  try {
    zip_reader().getRecord(name, out.data_ptr(), static_cast<size_t>(entry.uncompressed_size));
  } catch (const c10::Error& e) {
    fail("cannot read torch checkpoint {}: record {}: {}", path_, name, excerpt(e.what_without_backtrace(), 300));
  }
  return out;
}

// ('storage', torch.FloatStorage, key, location, numel) -> the bytes of record data/<key>.
ValuePtr Loader::load_storage(const ValuePtr& pid) {
  if (!pid->is(K::Tuple) || pid->items.size() < 5)
    fail("{}: data.pkl has a persistent id that is not a torch storage", path_);
  const auto& it = pid->items;
  if (!it[0]->is(K::String) || it[0]->text != "storage" || !it[1]->is(K::Global) || !it[4]->is(K::Int) ||
      !(it[2]->is(K::Int) || it[2]->is(K::String)))
    fail("{}: data.pkl has a persistent id that is not a torch storage", path_);
  const auto dtype = storage_dtype(it[1]->text);
  if (!dtype) fail("{}: storage type {} is not supported", path_, excerpt(it[1]->text, 100));
  if (it[2]->is(K::String) && it[2]->text.size() > kMaxStorageKeyBytes)
    fail("{}: data.pkl names a storage record by a {}-byte key '{}'; torch.save's keys are short counters", path_,
         it[2]->text.size(), excerpt(it[2]->text));
  const std::string key = it[2]->is(K::Int) ? std::to_string(it[2]->integer) : it[2]->text;
  if (auto cached = storages_.find(key); cached != storages_.end()) return cached->second;

  const std::string name = "data/" + key;
  const ZipEntry* entry = record(name);
  if (entry == nullptr) fail("{}: storage record {} is missing from the archive", path_, excerpt(name));
  const int64_t numel = it[4]->integer;
  const uint64_t element = c10::elementSize(*dtype);
  // The record holds numel elements (torch.save writes exactly those bytes; a typed view of
  // an odd-sized byte storage leaves a partial element at the end). Checked before reading:
  // a compressed record is never inflated to a size nobody asked for.
  const auto needed = static_cast<unsigned __int128>(static_cast<uint64_t>(numel)) * element;
  if (numel < 0 || entry->uncompressed_size < needed || entry->uncompressed_size - needed >= element)
    fail("{}: storage record {} has {} bytes, but {} {} elements take {}", path_, excerpt(name),
         entry->uncompressed_size, numel, c10::toString(*dtype),
         static_cast<uint64_t>(std::min<unsigned __int128>(needed, UINT64_MAX)));
  at::Tensor bytes = record_bytes(*entry, name);
  // torch.save aligns records to 64 bytes; another writer might not: copy then.
  if (reinterpret_cast<uintptr_t>(bytes.data_ptr()) % element != 0) bytes = bytes.clone();

  auto storage = pickle::make(K::Storage);
  storage->tensor = bytes;
  storage->dtype = *dtype;
  storages_[key] = storage;
  return storage;
}

std::vector<int64_t> int_tuple(const std::string& path, const ValuePtr& v, const char* what) {
  if (!v->is(K::Tuple) && !v->is(K::List)) fail("{}: data.pkl: tensor {} is not a tuple", path, what);
  if (v->items.size() > kMaxTensorDims)
    fail("{}: data.pkl: tensor {} has {} dimensions, more than PyTorch's {}", path, what, v->items.size(),
         kMaxTensorDims);
  std::vector<int64_t> out;
  for (const auto& x : v->items) {
    if (!x->is(K::Int) || x->integer < 0)
      fail("{}: data.pkl: tensor {} holds a non-integer or negative value", path, what);
    out.push_back(x->integer);
  }
  return out;
}

// _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, metadata])
// and the older _rebuild_tensor(storage, storage_offset, size, stride).
ValuePtr Loader::rebuild_tensor(const std::string& name, const ValuePtr& args) {
  const auto& a = args->items;
  if (a.size() < 4 || !a[0]->is(K::Storage) || !a[1]->is(K::Int))
    fail("{}: data.pkl: malformed arguments to {}", path_, name);
  const at::Tensor& bytes = a[0]->tensor;
  const at::ScalarType dtype = a[0]->dtype;
  const int64_t offset = a[1]->integer;
  const auto size = int_tuple(path_, a[2], "size");
  const auto stride = int_tuple(path_, a[3], "stride");
  if (size.size() != stride.size() || offset < 0)
    fail("{}: data.pkl: tensor size/stride/offset do not fit together", path_);

  // The highest element the view touches must lie inside the storage, and the element
  // count must fit in int64.
  const auto capacity = static_cast<unsigned __int128>(bytes.numel()) / c10::elementSize(dtype);
  bool empty = false;
  int64_t numel = 1;
  bool numel_overflows = false;
  for (int64_t s : size) {
    empty |= s == 0;
    numel_overflows |= __builtin_mul_overflow(numel, s, &numel);
  }
  unsigned __int128 last = static_cast<uint64_t>(offset);
  bool past_end = false;
  for (size_t i = 0; i < size.size() && !empty && !past_end; ++i) {
    if (size[i] > 0) last += static_cast<unsigned __int128>(size[i] - 1) * static_cast<uint64_t>(stride[i]);
    past_end = last >= capacity;  // stops before `last` could overflow
  }
  if (!empty && (past_end || last >= capacity))
    fail(
        "{}: data.pkl: a tensor view (offset {}, size {}, stride {}) reaches past the end of its "
        "{}-element storage",
        path_, offset, size, stride, static_cast<uint64_t>(capacity));
  if (!empty && numel_overflows)
    fail("{}: data.pkl: a tensor view of size {} has more elements than fit in 64 bits", path_, size);

  auto v = pickle::make(K::Tensor);
  v->tensor = at::empty({0}, at::TensorOptions().dtype(dtype)).set_(bytes.storage(), offset, size, stride);
  return v;
}

ValuePtr Loader::reduce(const std::string& name, const ValuePtr& args) {
  const auto& a = args->items;
  if (name == "torch._utils._rebuild_tensor_v2" || name == "torch._utils._rebuild_tensor")
    return rebuild_tensor(name, args);
  if (name == "torch._utils._rebuild_parameter" || name == "torch._utils._rebuild_parameter_with_state")
    return !a.empty() && a[0]->is(K::Tensor) ? a[0] : nullptr;  // a Parameter is its data
  if (name == "torch._tensor._rebuild_from_type_v2" && a.size() >= 3 && a[0]->is(K::Global))
    return reduce(a[0]->text, a[2]->is(K::Tuple) ? a[2] : args);  // tensor subclass: (func, type, args, state)
  if (name == "collections.OrderedDict") {
    auto dict = pickle::make(K::Dict);
    if (!a.empty() && (a[0]->is(K::List) || a[0]->is(K::Tuple)))  // OrderedDict([(k, v), ...])
      for (const auto& pair : a[0]->items)
        if (pair->is(K::Tuple) && pair->items.size() == 2) dict->entries.emplace_back(pair->items[0], pair->items[1]);
    return dict;
  }
  return nullptr;
}

// Every tensor under `root`, named by its path of keys and indices. One iterative walk: the
// unpickler has checked the value is acyclic and not too deep, and a container that the
// memo shares between several places is walked once, its tensors then named again under
// each further place (as Python would see them), so a DAG of shared lists costs its size,
// not its number of paths; the names in all are capped by limits.max_tensors_per_file.
StateDict Loader::flatten(const ValuePtr& root) {
  StateDict out;
  const auto max_names = static_cast<size_t>(input_limits().max_tensors_per_file);
  auto emit = [&](const std::string& name, const at::Tensor& t) {
    if (name.size() > kMaxNameBytes)
      fail("{}: data.pkl names a tensor with a {}-byte path '{}'", path_, name.size(), excerpt(name));
    if (out.size() >= max_names)
      fail("{}: data.pkl holds more than {} tensors (limits.max_tensors_per_file)", path_, max_names);
    if (!out.emplace(name, t).second) fail("{}: two tensors flatten to the same name '{}'", path_, excerpt(name, 200));
  };

  // How many places refer to each container (so we know which to remember).
  std::unordered_map<const Value*, uint32_t> refs;
  {
    std::vector<const Value*> todo{root.get()};
    refs[root.get()] = 1;
    auto visit = [&](const ValuePtr& c) {
      if (c->is_container() && refs[c.get()]++ == 0) todo.push_back(c.get());
    };
    while (!todo.empty()) {
      const Value* v = todo.back();
      todo.pop_back();
      if (v->is(K::Dict)) {
        for (const auto& [k, val] : v->entries) visit(val);
      } else if (v->is(K::List) || v->is(K::Tuple)) {
        for (const auto& item : v->items) visit(item);
      } else if (v->is(K::Object) && v->state) {
        visit(v->state);
      }
    }
  }

  using Named = std::vector<std::pair<std::string, at::Tensor>>;
  std::unordered_map<const Value*, Named> shared;  // tensors under a shared container, names relative to it
  Named log;                                       // every tensor emitted so far, full names, in order
  struct Frame {
    const Value* v;
    std::string prefix;
    size_t next = 0;
    size_t log_start = 0;
  };
  std::vector<Frame> stack;
  auto reach = [&](const ValuePtr& child, std::string name) {
    if (child->is(K::Tensor)) {
      emit(name, child->tensor);
      log.emplace_back(std::move(name), child->tensor);
    } else if (child->is_container()) {
      if (auto it = shared.find(child.get()); it != shared.end()) {
        for (const auto& [relative, t] : it->second) {
          std::string full = join(name, relative);
          emit(full, t);
          log.emplace_back(std::move(full), t);
        }
      } else {
        if (name.size() > kMaxNameBytes)
          fail("{}: data.pkl nests containers under a {}-byte path '{}'", path_, name.size(), excerpt(name));
        stack.push_back({child.get(), std::move(name), 0, log.size()});
      }
    }
  };
  reach(root, "");
  while (!stack.empty()) {
    Frame& f = stack.back();
    const Value* v = f.v;
    const size_t i = f.next++;
    if (v->is(K::Dict) && i < v->entries.size()) {
      const auto& [k, val] = v->entries[i];
      if (auto name = key_text(k)) reach(val, join(f.prefix, *name));
      continue;
    }
    if ((v->is(K::List) || v->is(K::Tuple)) && i < v->items.size()) {
      reach(v->items[i], join(f.prefix, std::to_string(i)));
      continue;
    }
    if (v->is(K::Object) && v->state && i == 0) {  // e.g. an argparse Namespace: its attributes
      reach(v->state, f.prefix);
      continue;
    }
    // Done with this container: remember its tensors if another place refers to it too.
    if (refs[v] > 1) {
      Named mine;
      const size_t cut = f.prefix.empty() ? 0 : f.prefix.size() + 1;
      for (size_t j = f.log_start; j < log.size(); ++j)
        mine.emplace_back(log[j].first.size() > f.prefix.size() ? log[j].first.substr(cut) : std::string(),
                          log[j].second);
      shared.emplace(v, std::move(mine));
    }
    stack.pop_back();
  }
  return out;
}

}  // namespace

StateDict load_torch_checkpoint(const std::string& path) {
  check_is_zip(path);
  try {
    return Loader(path).load();
  } catch (const c10::Error& e) {  // the zip reader's errors: corrupt or truncated archive
    fail("cannot read torch checkpoint {}: {}", path, excerpt(e.what_without_backtrace(), 300));
  } catch (const std::bad_alloc&) {
    fail("cannot read torch checkpoint {}: out of memory (a limit in limits.* may be set too high for this machine)",
         path);
  }
}

void save_torch_checkpoint(const std::string& path, const StateDict& tensors, const std::string& wrap_key) {
  PyValue state = PyValue::dict(PyValue::Kind::OrderedDict);
  for (const auto& [name, tensor] : tensors) {
    if (!tensor.defined()) fail("cannot save {}: tensor '{}' is undefined", path, name);
    state.set(name, PyValue::of(tensor));
  }
  if (wrap_key.empty()) return torch_save(path, state);
  PyValue root = PyValue::dict();
  root.set(wrap_key, std::move(state));
  torch_save(path, root);
}

}  // namespace minigpt4::io
