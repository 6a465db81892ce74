#pragma once
// A small Python pickle interpreter (protocols 0-4 plus FRAME/MEMOIZE of 4/5), enough for
// the data.pkl that torch.save writes. Nothing is executed: a GLOBAL only names a callable,
// and REDUCE/NEWOBJ hand that name and the arguments to a hook; what the hook does not
// recognise becomes an opaque Object, so harmless classes (optimizer state, argparse
// Namespace, numpy scalars) parse without error and are simply ignored later.
//
// The input is a stranger's: a GLOBAL outside allowed_global() (os.system, builtins.eval,
// ...) is refused by name, as torch.load(weights_only=True) refuses it; values may not nest
// deeper than input_limits().max_pickle_depth nor hold a cycle; the program may create at
// most input_limits().max_pickle_items values and container items; every problem is a
// minigpt4::Error naming `source` and the byte offset. Values are freed iteratively, so
// even a deep chain never overflows the stack.
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
  std::string text;             // String, Bytes, Global ("module.name"), Object (its class, if known)
  std::vector<ValuePtr> items;  // Tuple, List
  std::vector<std::pair<ValuePtr, ValuePtr>> entries;  // Dict, in insertion order
  ValuePtr args;                                       // Object: its argument tuple (shared, not copied)
  ValuePtr state;                                      // Object: what BUILD gave it
  at::Tensor tensor;                                   // Tensor; Storage: the storage's bytes as a 1-D uint8 tensor
  at::ScalarType dtype = at::kByte;                    // Storage: its element type
  uint32_t height = 0;  // containers: nesting below, as far as the machine saw it while building

  explicit Value(Kind k) : kind(k) {}
  // Frees the children without recursion (a chain a million deep is a valid pickle).
  ~Value();
  Value(const Value&) = delete;
  Value& operator=(const Value&) = delete;
  bool is(Kind k) const { return kind == k; }
  bool is_container() const { return !items.empty() || !entries.empty() || args || state; }
};

ValuePtr make(Value::Kind kind);
ValuePtr make_int(int64_t v);
ValuePtr make_string(std::string s, Value::Kind kind = Value::Kind::String);

struct Hooks {
  // BINPERSID / PERSID: the persistent id -> the object it stands for.
  std::function<ValuePtr(const ValuePtr& pid)> persistent_load;
  // REDUCE / NEWOBJ of a GLOBAL `name` ("module.qualname") with its argument tuple;
  // nullptr means "not mine": the result becomes an opaque Object. A hook may return a new
  // container; its items count against max_pickle_items like the machine's own.
  std::function<ValuePtr(const std::string& name, const ValuePtr& args)> reduce;
};

// Whether a GLOBAL may appear: PyTorch's weights_only allowlist (torch/_weights_only_unpickler.py:
// OrderedDict, Counter, the torch._utils._rebuild_* functions, torch.Size / device / dtypes /
// storage and tensor types, Parameter, _codecs.encode, set, bytearray, complex), plus a few
// data-only types real training checkpoints hold: builtins.frozenset / bytes / slice,
// argparse.Namespace and numpy scalars, dtypes and arrays. Python 2 module names
// (__builtin__, copy_reg) are read as Python 3's.
bool allowed_global(const std::string& module, const std::string& name);

// Runs the pickle program in `data` and returns what STOP returns: an acyclic value no
// deeper than input_limits().max_pickle_depth. `source` names the input in errors (e.g.
// "model.pth: data.pkl"); malformed or refused input raises minigpt4::Error.
ValuePtr unpickle(const uint8_t* data, size_t size, const Hooks& hooks, const std::string& source);

// Builds a protocol-2 pickle program; only what torch.save-compatible files need.
class Writer {
 public:
  Writer();  // emits PROTO 2
  void none();
  void boolean(bool v);
  void integer(int64_t v);
  void string(const std::string& s);  // BINUNICODE
  void global(const std::string& module, const std::string& name);
  void mark();
  void tuple();  // TUPLE from the last mark
  void int_tuple(const std::vector<int64_t>& v);
  void empty_dict();
  void setitems();       // SETITEMS from the last mark
  void reduce();         // callable, args -> callable(*args)
  void persistent_id();  // BINPERSID
  std::string finish();  // emits STOP, returns the program

 private:
  void op(uint8_t code) { out_.push_back(static_cast<char>(code)); }
  std::string out_;
};

}  // namespace minigpt4::io::pickle
