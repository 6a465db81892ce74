#include "minigpt4/io/torch_checkpoint.h"

#include "minigpt4/io/torch_save.h"

#include "minigpt4/common/error.h"
#include "minigpt4/io/file_util.h"
#include "minigpt4/io/pickle.h"

#include <caffe2/serialize/inline_container.h>
#include <fmt/ranges.h>
#include <caffe2/serialize/read_adapter_interface.h>
#include <torch/torch.h>

#include <cstring>
#include <map>
#include <optional>
#include <utility>

namespace minigpt4::io {

namespace {

using pickle::Value;
using pickle::ValuePtr;
using K = Value::Kind;

// torch.<Name>Storage as it appears in a storage's persistent id.
struct StorageType {
  const char* name;
  at::ScalarType dtype;
};

constexpr StorageType kStorageTypes[] = {
    {"FloatStorage", at::kFloat}, {"DoubleStorage", at::kDouble}, {"HalfStorage", at::kHalf},
    {"BFloat16Storage", at::kBFloat16}, {"LongStorage", at::kLong}, {"IntStorage", at::kInt},
    {"ShortStorage", at::kShort}, {"CharStorage", at::kChar}, {"ByteStorage", at::kByte},
    {"BoolStorage", at::kBool}, {"UntypedStorage", at::kByte},
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
    fail("{} is a legacy (pre-1.6, non-zip) torch.save file, which is not supported; re-save it "
         "with torch>=1.6 in Python: torch.save(torch.load(p, map_location='cpu'), p)",
         path);
  fail("{} is not a PyTorch checkpoint: torch.save files are zip archives and this is not one",
       path);
}

class Loader {
 public:
  explicit Loader(const std::string& path)
      : path_(path),
        file_(MappedFile::open(path)),
        reader_(std::make_shared<MappedReadAdapter>(file_)) {}

  StateDict load();

 private:
  at::Tensor record_bytes(const std::string& record);
  ValuePtr load_storage(const ValuePtr& pid);
  ValuePtr reduce(const std::string& name, const ValuePtr& args);
  ValuePtr rebuild_tensor(const std::string& name, const ValuePtr& args);
  void flatten(const ValuePtr& v, const std::string& prefix, StateDict& out, int depth);

  std::string path_;
  std::shared_ptr<MappedFile> file_;
  caffe2::serialize::PyTorchStreamReader reader_;
  std::map<std::string, ValuePtr> storages_;  // by key: views of one storage share it
};

StateDict Loader::load() {
  if (!reader_.hasRecord("data.pkl"))
    fail("{} has no data.pkl: not a torch.save checkpoint (TorchScript archives from "
         "torch.jit.save are not supported)",
         path_);
  if (reader_.hasRecord("byteorder")) {
    auto [ptr, n] = reader_.getRecord("byteorder");
    const std::string order(static_cast<const char*>(ptr.get()), n);
    if (order != "little") fail("{}: byte order '{}' is not supported (only little-endian)", path_, order);
  }
  auto [pkl, size] = reader_.getRecord("data.pkl");
  pickle::Hooks hooks;
  hooks.persistent_load = [this](const ValuePtr& pid) { return load_storage(pid); };
  hooks.reduce = [this](const std::string& name, const ValuePtr& args) { return reduce(name, args); };
  const ValuePtr root =
      pickle::unpickle(static_cast<const uint8_t*>(pkl.get()), size, hooks, path_ + ": data.pkl");
  StateDict out;
  flatten(root, "", out, 0);
  return out;
}

// A record's bytes as a uint8 tensor: pointing into the mapping when the record is stored
// uncompressed (torch.save never compresses), else decompressed into memory.
at::Tensor Loader::record_bytes(const std::string& record) {
  const size_t size = reader_.getRecordSize(record);
  const size_t header = reader_.getRecordHeaderOffset(record);
  // Zip local file header: signature "PK\3\4", compression method (0 = stored) at byte 8.
  auto is_stored = [&](const uint8_t* h) {
    return std::memcmp(h, "PK\x03\x04", 4) == 0 && h[8] == 0 && h[9] == 0;
  };
  const bool stored = header <= file_->size() && file_->size() - header >= 30 &&
                      is_stored(file_->data() + header);
  if (stored) {
    const size_t offset = reader_.getRecordOffset(record);
    if (offset <= file_->size() && size <= file_->size() - offset) return file_->bytes(offset, size);
  }
  auto [ptr, n] = reader_.getRecord(record);
  at::Storage storage(at::Storage::use_byte_size_t(), n, std::move(ptr), nullptr, false);
  return at::empty({0}, at::kByte).set_(storage, 0, {static_cast<int64_t>(n)}, {1});
}

// ('storage', torch.FloatStorage, key, location, numel) -> the bytes of record data/<key>.
ValuePtr Loader::load_storage(const ValuePtr& pid) {
  const auto& it = pid->items;
  if (!pid->is(K::Tuple) || it.size() < 5 || !it[0]->is(K::String) || it[0]->text != "storage" ||
      !it[1]->is(K::Global) || !it[4]->is(K::Int))
    fail("{}: data.pkl has a persistent id that is not a torch storage", path_);
  const auto dtype = storage_dtype(it[1]->text);
  if (!dtype) fail("{}: storage type {} is not supported", path_, it[1]->text);
  std::string key = it[2]->is(K::Int) ? std::to_string(it[2]->integer) : it[2]->text;
  if (auto cached = storages_.find(key); cached != storages_.end()) return cached->second;

  const std::string record = "data/" + key;
  if (!reader_.hasRecord(record)) fail("{}: storage record {} is missing from the archive", path_, record);
  at::Tensor bytes = record_bytes(record);
  const auto needed = static_cast<unsigned __int128>(it[4]->integer) * c10::elementSize(*dtype);
  if (it[4]->integer < 0 || static_cast<uint64_t>(bytes.numel()) < needed)
    fail("{}: storage record {} has {} bytes, fewer than the {} {} elements it should hold",
         path_, record, bytes.numel(), it[4]->integer, c10::toString(*dtype));
  // torch.save aligns records to 64 bytes; another writer might not: copy then.
  if (reinterpret_cast<uintptr_t>(bytes.data_ptr()) % c10::elementSize(*dtype) != 0) bytes = bytes.clone();

  auto storage = pickle::make(K::Storage);
  storage->tensor = bytes;
  storage->dtype = *dtype;
  storages_[key] = storage;
  return storage;
}

std::vector<int64_t> int_tuple(const std::string& path, const ValuePtr& v, const char* what) {
  if (!v->is(K::Tuple) && !v->is(K::List)) fail("{}: data.pkl: tensor {} is not a tuple", path, what);
  std::vector<int64_t> out;
  for (const auto& x : v->items) {
    if (!x->is(K::Int) || x->integer < 0) fail("{}: data.pkl: tensor {} holds a non-integer or negative value", path, what);
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

  // The highest element the view touches must lie inside the storage.
  const auto capacity = static_cast<unsigned __int128>(bytes.numel()) / c10::elementSize(dtype);
  bool empty = false;
  unsigned __int128 last = offset;
  for (size_t i = 0; i < size.size(); ++i) {
    empty |= size[i] == 0;
    if (size[i] > 0) last += static_cast<unsigned __int128>(size[i] - 1) * stride[i];
  }
  if (!empty && last >= capacity)
    fail("{}: data.pkl: a tensor view (offset {}, size {}, stride {}) reaches past the end of its "
         "{}-element storage",
         path_, offset, size, stride, static_cast<uint64_t>(capacity));

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

std::optional<std::string> key_text(const ValuePtr& k) {
  switch (k->kind) {
    case K::String: return k->text;
    case K::Int: return std::to_string(k->integer);
    case K::Bool: return k->boolean ? "True" : "False";
    default: return std::nullopt;  // tuple keys and the like: no sensible name
  }
}

void Loader::flatten(const ValuePtr& v, const std::string& prefix, StateDict& out, int depth) {
  if (depth > 64) return;  // a self-referencing (cyclic) pickle: nothing sane below
  auto child = [&](const std::string& k) { return prefix.empty() ? k : prefix + "/" + k; };
  switch (v->kind) {
    case K::Tensor:
      if (!out.emplace(prefix, v->tensor).second)
        fail("{}: two tensors flatten to the same name '{}'", path_, prefix);
      break;
    case K::Dict:
      for (const auto& [k, val] : v->entries)
        if (auto name = key_text(k)) flatten(val, child(*name), out, depth + 1);
      break;
    case K::List:
    case K::Tuple:
      for (size_t i = 0; i < v->items.size(); ++i) flatten(v->items[i], child(std::to_string(i)), out, depth + 1);
      break;
    case K::Object:  // e.g. an argparse Namespace: its attributes are its BUILD state
      if (v->state) flatten(v->state, prefix, out, depth + 1);
      break;
    default: break;  // numbers, strings, None: not weights
  }
}

}  // namespace

StateDict load_torch_checkpoint(const std::string& path) {
  check_is_zip(path);
  try {
    return Loader(path).load();
  } catch (const c10::Error& e) {  // the zip reader's errors: corrupt or truncated archive
    fail("cannot read torch checkpoint {}: {}", path, e.what_without_backtrace());
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
