#include "minigpt4/io/torch_save.h"

#include "minigpt4/common/error.h"
#include "minigpt4/io/file_util.h"
#include "minigpt4/io/pickle.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/torch.h>

#include <map>

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

}  // namespace

void torch_save(const std::string& path, const PyValue& object) {
  Pickler pickler(path);
  pickler.emit(object, "");
  const std::string pkl = pickler.finish();

  io::AtomicWriter out(path);
  std::string write_error;
  try {
    // The zip writer calls back from C code: report failure by a short count, not a throw.
    caffe2::serialize::PyTorchStreamWriter zip([&](const void* buf, size_t n) -> size_t {
      try {
        out.write(buf, n);
        return n;
      } catch (const Error& e) {
        write_error = e.what();
        return 0;
      }
    });
    zip.writeRecord("data.pkl", pkl.data(), pkl.size());
    zip.writeRecord("byteorder", "little", 6);
    for (const auto& s : pickler.storages())
      zip.writeRecord("data/" + s.key, s.owner.storage().data(), s.owner.storage().nbytes());
    zip.writeEndOfFile();
  } catch (const c10::Error& e) {
    fail("cannot write {}: {}", path, write_error.empty() ? e.what_without_backtrace() : write_error);
  }
  out.commit();
}

}  // namespace minigpt4::io
