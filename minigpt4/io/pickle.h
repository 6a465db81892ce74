#pragma once
// A small Python pickle interpreter (protocols 0-4 plus FRAME/MEMOIZE of 4/5), enough for
// the data.pkl that torch.save writes. Nothing is executed: a GLOBAL only names a callable,
// and REDUCE/NEWOBJ hand that name and the arguments to a hook; what the hook does not
// recognise becomes an opaque Object, so unknown classes (optimizer state, argparse
// Namespace, numpy scalars) parse without error and are simply ignored later.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace minigpt4::io::pickle {

struct Value;
using ValuePtr = std::shared_ptr<Value>;

struct Value {
  enum class Kind { None, Bool, Int, Float, String, Bytes, Tuple, List, Dict, Global, Object, Storage, Tensor };
  Kind kind = Kind::None;
  bool boolean = false;
  int64_t integer = 0;  // Int (ints beyond 64 bits become an Object "int")
  double real = 0;
  std::string text;  // String, Bytes, Global ("module.name"), Object (its class, if known)
  std::vector<ValuePtr> items;                         // Tuple, List; Object: its arguments
  std::vector<std::pair<ValuePtr, ValuePtr>> entries;  // Dict, in insertion order
  ValuePtr state;                                      // Object: what BUILD gave it
  at::Tensor tensor;  // Tensor; Storage: the storage's bytes as a 1-D uint8 tensor
  at::ScalarType dtype = at::kByte;  // Storage: its element type

  explicit Value(Kind k) : kind(k) {}
  bool is(Kind k) const { return kind == k; }
};

ValuePtr make(Value::Kind kind);
ValuePtr make_int(int64_t v);
ValuePtr make_string(std::string s, Value::Kind kind = Value::Kind::String);

struct Hooks {
  // BINPERSID / PERSID: the persistent id -> the object it stands for.
  std::function<ValuePtr(const ValuePtr& pid)> persistent_load;
  // REDUCE / NEWOBJ of a GLOBAL `name` ("module.qualname") with its argument tuple;
  // nullptr means "not mine": the result becomes an opaque Object.
  std::function<ValuePtr(const std::string& name, const ValuePtr& args)> reduce;
};

// Runs the pickle program in `data` and returns what STOP returns. `source` names the
// input in errors (e.g. "model.pth: data.pkl"); malformed input raises minigpt4::Error.
ValuePtr unpickle(const uint8_t* data, size_t size, const Hooks& hooks, const std::string& source);

// Builds a protocol-2 pickle program; only what torch.save-compatible files need.
class Writer {
 public:
  Writer();                                  // emits PROTO 2
  void none();
  void boolean(bool v);
  void integer(int64_t v);
  void string(const std::string& s);         // BINUNICODE
  void global(const std::string& module, const std::string& name);
  void mark();
  void tuple();                              // TUPLE from the last mark
  void int_tuple(const std::vector<int64_t>& v);
  void empty_dict();
  void setitems();                           // SETITEMS from the last mark
  void setitem();
  void reduce();                             // callable, args -> callable(*args)
  void persistent_id();                      // BINPERSID
  std::string finish();                      // emits STOP, returns the program

 private:
  void op(uint8_t code) { out_.push_back(static_cast<char>(code)); }
  std::string out_;
};

}  // namespace minigpt4::io::pickle
