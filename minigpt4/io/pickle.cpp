#include "minigpt4/io/pickle.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/limits.h"
#include "minigpt4/common/untrusted.h"

#include <array>
#include <cstring>
#include <new>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the pickle reader assumes a little-endian host");

namespace minigpt4::io::pickle {

// --- Value ---

namespace {
// Moves the children of `v` onto `pending` (leaving `v` childless, so freeing it frees nothing
// below it).
void take_children(Value& v, std::vector<ValuePtr>& pending) {
  for (auto& item : v.items) pending.push_back(std::move(item));
  for (auto& [k, val] : v.entries) {
    pending.push_back(std::move(k));
    pending.push_back(std::move(val));
  }
  if (v.args) pending.push_back(std::move(v.args));
  if (v.state) pending.push_back(std::move(v.state));
  v.items.clear();
  v.entries.clear();
}
}  // namespace

Value::~Value() {
  if (!is_container()) return;
  // Children we hold the last reference to are emptied before they die, so each destructor
  // below this one returns at once: depth costs heap, never stack.
  std::vector<ValuePtr> pending;
  take_children(*this, pending);
  while (!pending.empty()) {
    ValuePtr v = std::move(pending.back());
    pending.pop_back();
    if (v && v.use_count() == 1) take_children(*v, pending);
  }
}

// --- the allowlist ---

namespace {

bool one_of(std::string_view s, std::initializer_list<std::string_view> names) {
  for (auto n : names)
    if (s == n) return true;
  return false;
}

// torch.<X>Storage, torch.cuda.<X>Storage (old files), torch.<X>Tensor and its cuda/sparse
// variants: the element types PyTorch ever had.
constexpr std::string_view kElementTypes[] = {"Float",  "Double", "Half",   "BFloat16", "Long",         "Int",
                                              "Short",  "Char",   "Byte",   "Bool",     "ComplexFloat", "ComplexDouble",
                                              "QUInt8", "QInt8",  "QInt32", "QUInt4x2", "QUInt2x4"};

bool typed_class(std::string_view name, std::string_view suffix) {
  if (name.size() <= suffix.size() || name.substr(name.size() - suffix.size()) != suffix) return false;
  const auto element = name.substr(0, name.size() - suffix.size());
  for (auto t : kElementTypes)
    if (element == t) return true;
  return false;
}

// str(dtype) without "torch." for every dtype torch has had (torch/_weights_only_unpickler.py
// allows all of them), plus their Python aliases.
bool torch_dtype(std::string_view name) {
  if (one_of(name, {"float32",
                    "float",
                    "float64",
                    "double",
                    "float16",
                    "half",
                    "bfloat16",
                    "complex32",
                    "chalf",
                    "complex64",
                    "cfloat",
                    "complex128",
                    "cdouble",
                    "uint8",
                    "int8",
                    "int16",
                    "short",
                    "int32",
                    "int",
                    "int64",
                    "long",
                    "bool",
                    "qint8",
                    "quint8",
                    "qint32",
                    "quint4x2",
                    "quint2x4",
                    "float8_e4m3fn",
                    "float8_e5m2",
                    "float8_e4m3fnuz",
                    "float8_e5m2fnuz",
                    "float8_e8m0fnu",
                    "float4_e2m1fn_x2",
                    "uint16",
                    "uint32",
                    "uint64",
                    "bits8",
                    "bits16",
                    "bits1x8",
                    "bits2x4",
                    "bits4x2"}))
    return true;
  // uint1..uint7, int1..int7
  for (std::string_view prefix : {"uint", "int"})
    if (name.size() == prefix.size() + 1 && name.substr(0, prefix.size()) == prefix && name.back() >= '1' &&
        name.back() <= '7')
      return true;
  return false;
}

}  // namespace

bool allowed_global(const std::string& module_in, const std::string& name) {
  std::string_view module = module_in;
  if (module == "__builtin__" || module == "exceptions") module = "builtins";  // Python 2 (torch's IMPORT_MAPPING)
  if (module == "copy_reg") module = "copyreg";
  if (module == "builtins") return one_of(name, {"set", "frozenset", "bytearray", "bytes", "complex", "slice"});
  if (module == "collections") return one_of(name, {"OrderedDict", "Counter"});
  if (module == "_codecs") return name == "encode";  // how protocol 2 spells a bytes object
  if (module == "torch._utils")
    return one_of(name, {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                         "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_sparse_tensor",
                         "_rebuild_meta_tensor_no_storage", "_rebuild_wrapper_subclass",
                         "_rebuild_device_tensor_from_numpy", "_rebuild_device_tensor_from_cpu_tensor"});
  if (module == "torch._tensor") return name == "_rebuild_from_type_v2";
  if (module == "torch.nn.parameter") return name == "Parameter";
  if (module == "torch.serialization") return name == "_get_layout";
  if (module == "torch.storage") return one_of(name, {"TypedStorage", "UntypedStorage"});
  if (module == "torch") {
    return one_of(name, {"Size", "Tensor", "device", "UntypedStorage", "TypedStorage", "per_tensor_affine",
                         "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric",
                         "per_channel_affine_float_qparams"}) ||
           torch_dtype(name) || typed_class(name, "Storage") || typed_class(name, "Tensor");
  }
  if (module == "torch.cuda") return typed_class(name, "Storage") || typed_class(name, "Tensor");
  if (module == "torch.sparse" || module == "torch.cuda.sparse") return typed_class(name, "Tensor");
  // Data-only types beyond PyTorch's default list (it asks for add_safe_globals for these);
  // nothing here runs, and real LAVIS / MiniGPT-4 training checkpoints may hold them.
  if (module == "argparse") return name == "Namespace";
  if (module == "numpy") return one_of(name, {"dtype", "ndarray"});
  if (module == "numpy.core.multiarray" || module == "numpy._core.multiarray")
    return one_of(name, {"scalar", "_reconstruct"});
  if (module == "numpy.dtypes") return name.size() > 5 && name.compare(name.size() - 5, 5, "DType") == 0;
  return false;
}

namespace {

using K = Value::Kind;

// The opcodes of pickle protocols 0-5 (Lib/pickletools.py documents each).
enum Op : uint8_t {
  MARK = '(',
  STOP = '.',
  POP = '0',
  POP_MARK = '1',
  DUP = '2',
  FLOAT = 'F',
  INT = 'I',
  BININT = 'J',
  BININT1 = 'K',
  LONG = 'L',
  BININT2 = 'M',
  NONE = 'N',
  PERSID = 'P',
  BINPERSID = 'Q',
  REDUCE = 'R',
  STRING = 'S',
  BINSTRING = 'T',
  SHORT_BINSTRING = 'U',
  UNICODE = 'V',
  BINUNICODE = 'X',
  APPEND = 'a',
  BUILD = 'b',
  GLOBAL = 'c',
  DICT = 'd',
  EMPTY_DICT = '}',
  APPENDS = 'e',
  GET = 'g',
  BINGET = 'h',
  INST = 'i',
  LONG_BINGET = 'j',
  LIST = 'l',
  EMPTY_LIST = ']',
  OBJ = 'o',
  PUT = 'p',
  BINPUT = 'q',
  LONG_BINPUT = 'r',
  SETITEM = 's',
  TUPLE = 't',
  EMPTY_TUPLE = ')',
  SETITEMS = 'u',
  BINFLOAT = 'G',
  PROTO = 0x80,
  NEWOBJ = 0x81,
  EXT1 = 0x82,
  EXT2 = 0x83,
  EXT4 = 0x84,
  TUPLE1 = 0x85,
  TUPLE2 = 0x86,
  TUPLE3 = 0x87,
  NEWTRUE = 0x88,
  NEWFALSE = 0x89,
  LONG1 = 0x8a,
  LONG4 = 0x8b,
  BINBYTES = 'B',
  SHORT_BINBYTES = 'C',
  SHORT_BINUNICODE = 0x8c,
  BINUNICODE8 = 0x8d,
  BINBYTES8 = 0x8e,
  EMPTY_SET = 0x8f,
  ADDITEMS = 0x90,
  FROZENSET = 0x91,
  NEWOBJ_EX = 0x92,
  STACK_GLOBAL = 0x93,
  MEMOIZE = 0x94,
  FRAME = 0x95,
  BYTEARRAY8 = 0x96,
  NEXT_BUFFER = 0x97,
  READONLY_BUFFER = 0x98,
};

// The children of a container, for the walks below.
template <typename F>
void for_each_child(const Value& v, F&& f) {
  for (const auto& item : v.items) f(item);
  for (const auto& [k, val] : v.entries) {
    f(k);
    f(val);
  }
  if (v.args) f(v.args);
  if (v.state) f(v.state);
}

class Machine {
 public:
  Machine(const uint8_t* data, size_t size, const Hooks& hooks, const std::string& source)
      : data_(data),
        size_(size),
        hooks_(hooks),
        source_(source),
        max_items_(input_limits().max_pickle_items),
        max_depth_(input_limits().max_pickle_depth) {}

  ~Machine() {
    // On the way out with an error, what the program built may hold cycles (a list that
    // contains itself), which reference counting alone would never free: empty every
    // container a cycle could run through. (After a success the result is known acyclic.)
    if (!succeeded_) {
      std::vector<ValuePtr> pending;
      for (const auto& weak : containers_)
        if (ValuePtr v = weak.lock()) take_children(*v, pending);
      stack_.clear();
      memo_.clear();
    }
  }

  ValuePtr run() {
    ValuePtr result;
    try {
      while (true) {
        op_pos_ = pos_;
        const uint8_t op = u8();
        if (op == STOP) {
          result = pop();
          break;
        }
        step(op);
      }
    } catch (const std::bad_alloc&) {
      fail("{}: ran out of memory at byte {} of the pickle, after {} values (limits.max_pickle_items is {})", source_,
           op_pos_, items_, max_items_);
    }
    check_shape(result);
    succeeded_ = true;
    return result;
  }

 private:
  template <typename... Args>
  [[noreturn]] void error(fmt::format_string<Args...> f, Args&&... args) {
    fail("{}: corrupt or unsupported pickle at byte {}: {}", source_, op_pos_,
         fmt::format(f, std::forward<Args>(args)...));
  }

  // --- reading the program ---
  const uint8_t* take(uint64_t n) {
    if (n > size_ - pos_) error("unexpected end of data (needs {} more bytes)", n);
    const uint8_t* p = data_ + pos_;
    pos_ += n;
    return p;
  }
  template <typename T>
  T le() {
    T v;
    std::memcpy(&v, take(sizeof v), sizeof v);
    return v;
  }
  uint8_t u8() { return *take(1); }
  std::string bytes(uint64_t n) { return {reinterpret_cast<const char*>(take(n)), n}; }
  std::string line() {  // protocol-0 arguments end with '\n'
    const auto* start = data_ + pos_;
    const void* nl = std::memchr(start, '\n', size_ - pos_);
    if (nl == nullptr) error("unterminated text argument");
    const auto n = static_cast<const uint8_t*>(nl) - start;
    std::string s = bytes(n);
    ++pos_;
    return s;
  }

  // --- counting: every value pushed and every item a hook copies is one item ---
  void count(uint64_t n) {
    items_ += n;
    if (items_ > static_cast<uint64_t>(max_items_))
      error("the program builds more than {} values and container items (limits.max_pickle_items)", max_items_);
  }
  // A cycle needs a mutable container that is reachable again after it was built: only the
  // memo and DUP make that possible, so those are the containers an error must empty.
  void remember(const ValuePtr& v) {
    if (v->is(K::List) || v->is(K::Dict) || v->is(K::Object)) containers_.push_back(v);
  }
  void memo_put(uint64_t key) {
    ValuePtr& v = top();
    remember(v);
    memo_[key] = v;
  }
  // A container's height is kept as its children arrive, so plain nesting (TUPLE1 a million
  // times, MARK ... LIST a million deep) is refused on the spot; check_shape() covers what
  // the memo can stitch together afterwards.
  void grow(Value& parent, const ValuePtr& child) {
    const uint32_t h = child->height + 1;
    if (h > parent.height) {
      if (h > static_cast<uint64_t>(max_depth_))
        error("values nest deeper than {} levels (limits.max_pickle_depth)", max_depth_);
      parent.height = h;
    }
  }

  // --- the stack ---
  void push(ValuePtr v) {
    count(1);
    stack_.push_back(std::move(v));
  }
  ValuePtr pop() {
    if (stack_.size() <= floor()) error("stack underflow");
    ValuePtr v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  ValuePtr& top() {
    if (stack_.size() <= floor()) error("stack underflow");
    return stack_.back();
  }
  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  std::vector<ValuePtr> pop_mark() {  // everything pushed since the last MARK
    if (marks_.empty()) error("no MARK on the stack");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<ValuePtr> items(std::make_move_iterator(stack_.begin() + m), std::make_move_iterator(stack_.end()));
    stack_.resize(m);
    return items;
  }
  ValuePtr sequence(K kind, std::vector<ValuePtr> items) {
    auto t = make(kind);
    for (const auto& item : items) grow(*t, item);
    t->items = std::move(items);
    return t;
  }
  void append(const ValuePtr& target, std::vector<ValuePtr> items) {
    if (!target->is(K::List)) return;  // items of a list subclass we did not model
    for (const auto& item : items) grow(*target, item);
    if (target->items.empty())
      target->items = std::move(items);
    else
      target->items.insert(target->items.end(), std::make_move_iterator(items.begin()),
                           std::make_move_iterator(items.end()));
  }
  void add_pairs(const ValuePtr& target, std::vector<ValuePtr> flat) {
    if (flat.size() % 2 != 0) error("odd number of items for a dict");
    if (!target->is(K::Dict)) return;  // items of a dict subclass we did not model
    for (size_t i = 0; i < flat.size(); i += 2) {
      grow(*target, flat[i]);
      grow(*target, flat[i + 1]);
      target->entries.emplace_back(std::move(flat[i]), std::move(flat[i + 1]));
    }
  }

  // --- objects ---
  ValuePtr call(const ValuePtr& callable, const ValuePtr& args, const char* opcode) {
    // Only a GLOBAL (already checked against the allowlist) may be called: calling what
    // another call returned is how pickle exploits chain getattr(...)(...).
    if (!callable->is(K::Global))
      error("{} calls a {} value, not an allowed global", opcode, kind_name(callable->kind));
    if (hooks_.reduce)
      if (ValuePtr v = hooks_.reduce(callable->text, args)) {
        if (v->is_container() && v != args) {
          count(v->items.size() + 2 * v->entries.size());
          for (const auto& item : v->items) grow(*v, item);
          for (const auto& [k, val] : v->entries) grow(*v, k), grow(*v, val);
        }
        return v;
      }
    auto obj = make(K::Object);  // anything we do not model: keep parsing, ignore it later
    obj->text = callable->text;
    grow(*obj, args);
    obj->args = args;  // shared: a memoized million-item tuple passed a million times costs nothing
    return obj;
  }
  static const char* kind_name(K k) {
    switch (k) {
      case K::None: return "None";
      case K::Bool: return "bool";
      case K::Int: return "int";
      case K::Float: return "float";
      case K::String: return "str";
      case K::Bytes: return "bytes";
      case K::Tuple: return "tuple";
      case K::List: return "list";
      case K::Dict: return "dict";
      case K::Global: return "global";
      case K::Object: return "object";
      case K::Storage: return "storage";
      case K::Tensor: return "tensor";
    }
    return "?";
  }
  ValuePtr persistent(const ValuePtr& pid) {
    if (!hooks_.persistent_load) error("persistent id without a persistent_load hook");
    return hooks_.persistent_load(pid);
  }
  ValuePtr global(const std::string& module, const std::string& name) {
    if (!allowed_global(module, name))
      error(
          "refuses global {}.{} (not a tensor or plain data type; torch.load(weights_only=True) refuses it too, "
          "and nothing in a weight file needs it)",
          excerpt(module, 80), excerpt(name, 80));
    return make_string(module + "." + name, K::Global);
  }
  ValuePtr memo_get(uint64_t key) {
    auto it = memo_.find(key);
    if (it == memo_.end()) error("memo key {} was never stored", key);
    return it->second;
  }
  uint64_t text_key(const std::string& s) {  // protocol-0 PUT/GET argument
    int64_t key = 0;
    if (!parse_int64(s, key) || key < 0) error("bad memo key '{}'", excerpt(s));
    return static_cast<uint64_t>(key);
  }
  ValuePtr long_from_bytes(const std::string& b) {           // little-endian two's complement
    if (b.size() > 8) return make_string("int", K::Object);  // beyond int64: unused by torch
    uint64_t u = 0;
    for (size_t i = 0; i < b.size(); ++i) u |= uint64_t(uint8_t(b[i])) << (8 * i);
    if (!b.empty() && b.size() < 8 && (uint8_t(b.back()) & 0x80)) u |= ~uint64_t(0) << (8 * b.size());
    return make_int(static_cast<int64_t>(u));
  }
  ValuePtr int_from_text(std::string s) {
    if (!s.empty() && s.back() == 'L') s.pop_back();
    if (s == "00") return bool_value(false);  // protocol 0 spells booleans this way
    if (s == "01") return bool_value(true);
    int64_t v = 0;
    if (parse_int64(s, v)) return make_int(v);
    const size_t start = !s.empty() && (s[0] == '-' || s[0] == '+') ? 1 : 0;
    if (s.size() > start && s.find_first_not_of("0123456789", start) == std::string::npos)
      return make_string("int", K::Object);  // beyond int64: unused by torch
    error("INT argument '{}' is not an integer", excerpt(s));
  }
  ValuePtr float_from_text(const std::string& s) {
    char* end = nullptr;
    const double d = std::strtod(s.c_str(), &end);
    if (s.empty() || end != s.c_str() + s.size()) error("FLOAT argument '{}' is not a number", excerpt(s));
    return float_value(d);
  }
  static ValuePtr bool_value(bool b) {
    auto v = make(K::Bool);
    v->boolean = b;
    return v;
  }
  static ValuePtr float_value(double d) {
    auto v = make(K::Float);
    v->real = d;
    return v;
  }
  static std::string unquote(std::string s) {  // protocol-0 STRING: 'text' or "text"
    if (s.size() >= 2 && (s.front() == '\'' || s.front() == '"') && s.back() == s.front())
      return s.substr(1, s.size() - 2);
    return s;
  }

  // After STOP: no cycles, and no path deeper than max_pickle_depth, whatever the memo
  // stitched together (APPEND into a list that is already inside another). One iterative
  // walk; a value reached twice (a DAG) is walked once.
  void check_shape(const ValuePtr& root) {
    if (!root->is_container()) return;
    struct Frame {
      const Value* v;
      std::vector<const Value*> children;
      size_t next = 0;
      uint32_t height = 0;
    };
    std::unordered_map<const Value*, uint32_t> done;  // finished container -> its height
    std::unordered_set<const Value*> on_path;
    std::vector<Frame> path;
    auto enter = [&](const Value* v) {
      Frame f{v, {}, 0, 0};
      for_each_child(*v, [&](const ValuePtr& c) {
        if (c->is_container()) f.children.push_back(c.get());
      });
      on_path.insert(v);
      path.push_back(std::move(f));
      if (path.size() > static_cast<uint64_t>(max_depth_))
        fail("{}: the pickle's values nest deeper than {} levels (limits.max_pickle_depth)", source_, max_depth_);
    };
    enter(root.get());
    while (!path.empty()) {
      Frame& f = path.back();
      if (f.next < f.children.size()) {
        const Value* c = f.children[f.next++];
        if (on_path.count(c))
          fail("{}: the pickle holds a cycle (a {} that contains itself, {} levels down); a weight file never does",
               source_, kind_name(c->kind), path.size());
        if (auto it = done.find(c); it != done.end()) {
          if (path.size() + it->second > static_cast<uint64_t>(max_depth_))
            fail("{}: the pickle's values nest deeper than {} levels (limits.max_pickle_depth)", source_, max_depth_);
          f.height = std::max(f.height, it->second + 1);
          continue;
        }
        enter(c);
        continue;
      }
      const uint32_t h = f.height;
      const Value* v = f.v;
      on_path.erase(v);
      done[v] = h;
      path.pop_back();
      if (!path.empty()) path.back().height = std::max(path.back().height, h + 1);
    }
  }

  void step(uint8_t op);

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0, op_pos_ = 0;
  const Hooks& hooks_;
  const std::string& source_;
  const int64_t max_items_, max_depth_;
  uint64_t items_ = 0;
  bool succeeded_ = false;
  std::vector<ValuePtr> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, ValuePtr> memo_;
  std::vector<std::weak_ptr<Value>> containers_;  // memoized or DUP'd mutable containers
};

void Machine::step(uint8_t op) {
  switch (op) {
    case PROTO: u8(); break;
    case FRAME: take(8); break;  // framing is only a read-ahead hint
    case MARK: marks_.push_back(stack_.size()); break;
    case POP: pop(); break;
    case POP_MARK: pop_mark(); break;
    case DUP:
      remember(top());
      push(top());
      break;

    case NONE: push(make(K::None)); break;
    case NEWTRUE: push(bool_value(true)); break;
    case NEWFALSE: push(bool_value(false)); break;
    case INT: push(int_from_text(line())); break;
    case LONG: push(int_from_text(line())); break;
    case BININT: push(make_int(le<int32_t>())); break;
    case BININT1: push(make_int(u8())); break;
    case BININT2: push(make_int(le<uint16_t>())); break;
    case LONG1: push(long_from_bytes(bytes(u8()))); break;
    case LONG4: {
      const int32_t n = le<int32_t>();
      if (n < 0) error("negative LONG4 length");
      push(long_from_bytes(bytes(n)));
      break;
    }
    case FLOAT: push(float_from_text(line())); break;
    case BINFLOAT: {  // the only big-endian field in pickle
      uint64_t bits = 0;
      for (const uint8_t *p = take(8), *e = p + 8; p != e; ++p) bits = bits << 8 | *p;
      double d;
      std::memcpy(&d, &bits, sizeof d);
      push(float_value(d));
      break;
    }

    case STRING: push(make_string(unquote(line()))); break;
    case BINSTRING: {
      const int32_t n = le<int32_t>();
      if (n < 0) error("negative BINSTRING length");
      push(make_string(bytes(n)));
      break;
    }
    case SHORT_BINSTRING: push(make_string(bytes(u8()))); break;
    case UNICODE: push(make_string(line())); break;  // raw-unicode-escape left as is
    case BINUNICODE: push(make_string(bytes(le<uint32_t>()))); break;
    case SHORT_BINUNICODE: push(make_string(bytes(u8()))); break;
    case BINUNICODE8: push(make_string(bytes(le<uint64_t>()))); break;
    case BINBYTES: push(make_string(bytes(le<uint32_t>()), K::Bytes)); break;
    case SHORT_BINBYTES: push(make_string(bytes(u8()), K::Bytes)); break;
    case BINBYTES8:
    case BYTEARRAY8: push(make_string(bytes(le<uint64_t>()), K::Bytes)); break;

    case EMPTY_TUPLE: push(make(K::Tuple)); break;
    case EMPTY_LIST: push(make(K::List)); break;
    case EMPTY_DICT: push(make(K::Dict)); break;
    case EMPTY_SET: push(make(K::List)); break;  // sets hold no tensors we care about
    case TUPLE: push(sequence(K::Tuple, pop_mark())); break;
    case FROZENSET: push(sequence(K::Tuple, pop_mark())); break;
    case TUPLE1: {
      auto a = pop();
      push(sequence(K::Tuple, {std::move(a)}));
      break;
    }
    case TUPLE2: {
      auto b = pop(), a = pop();
      push(sequence(K::Tuple, {std::move(a), std::move(b)}));
      break;
    }
    case TUPLE3: {
      auto c = pop(), b = pop(), a = pop();
      push(sequence(K::Tuple, {std::move(a), std::move(b), std::move(c)}));
      break;
    }
    case LIST: push(sequence(K::List, pop_mark())); break;
    case DICT: {
      auto d = make(K::Dict);
      add_pairs(d, pop_mark());
      push(d);
      break;
    }
    case APPEND: {
      auto v = pop();
      append(top(), {std::move(v)});
      break;
    }
    case APPENDS:
    case ADDITEMS: {
      auto items = pop_mark();
      append(top(), std::move(items));
      break;
    }
    case SETITEM: {
      auto v = pop(), k = pop();
      add_pairs(top(), {std::move(k), std::move(v)});
      break;
    }
    case SETITEMS: {
      auto items = pop_mark();
      add_pairs(top(), std::move(items));
      break;
    }

    case PUT: memo_put(text_key(line())); break;
    case BINPUT: memo_put(u8()); break;
    case LONG_BINPUT: memo_put(le<uint32_t>()); break;
    case MEMOIZE: memo_put(memo_.size()); break;
    case GET: push(memo_get(text_key(line()))); break;
    case BINGET: push(memo_get(u8())); break;
    case LONG_BINGET: push(memo_get(le<uint32_t>())); break;

    case GLOBAL: {
      std::string module = line();
      push(global(module, line()));
      break;
    }
    case STACK_GLOBAL: {
      auto name = pop(), module = pop();
      if (!module->is(K::String) || !name->is(K::String)) error("STACK_GLOBAL needs two strings");
      push(global(module->text, name->text));
      break;
    }
    case REDUCE:
    case NEWOBJ: {
      auto args = pop(), callable = pop();
      if (!args->is(K::Tuple)) args = sequence(K::Tuple, {args});
      push(call(callable, args, op == REDUCE ? "REDUCE" : "NEWOBJ"));
      break;
    }
    case NEWOBJ_EX: {
      pop();  // keyword arguments: torch never passes tensors this way
      auto args = pop(), cls = pop();
      if (!args->is(K::Tuple)) args = sequence(K::Tuple, {args});
      push(call(cls, args, "NEWOBJ_EX"));
      break;
    }
    case INST: {
      std::string module = line();
      auto cls = global(module, line());
      push(call(cls, sequence(K::Tuple, pop_mark()), "INST"));
      break;
    }
    case OBJ: {
      auto items = pop_mark();
      if (items.empty()) error("OBJ without a class");
      auto cls = items.front();
      items.erase(items.begin());
      push(call(cls, sequence(K::Tuple, std::move(items)), "OBJ"));
      break;
    }
    case BUILD: {
      auto state = pop();
      // Only opaque objects keep their state (it may hold tensors); the state of a dict
      // (an OrderedDict's `_metadata`) or of a tensor carries no weights.
      if (top()->is(K::Object)) {
        grow(*top(), state);
        top()->state = std::move(state);
      }
      break;
    }
    case PERSID: push(persistent(make_string(line()))); break;
    case BINPERSID: {
      auto pid = pop();
      push(persistent(pid));
      break;
    }
    case EXT1:  // copyreg extension codes name globals through a registry we cannot check
    case EXT2:
    case EXT4: error("extension codes (EXT1/EXT2/EXT4) name globals through copyreg's registry; not supported");
    case NEXT_BUFFER:
    case READONLY_BUFFER: error("out-of-band buffers (protocol 5) are not supported");
    default: error("unknown opcode 0x{:02x}", op);
  }
}

}  // namespace

ValuePtr make(Value::Kind kind) { return std::make_shared<Value>(kind); }

ValuePtr make_int(int64_t v) {
  auto p = make(K::Int);
  p->integer = v;
  return p;
}

ValuePtr make_string(std::string s, Value::Kind kind) {
  auto p = make(kind);
  p->text = std::move(s);
  return p;
}

ValuePtr unpickle(const uint8_t* data, size_t size, const Hooks& hooks, const std::string& source) {
  return Machine(data, size, hooks, source).run();
}

// --- Writer ---

Writer::Writer() {
  op(PROTO);
  op(2);
}

void Writer::none() { op(NONE); }
void Writer::boolean(bool v) { op(v ? NEWTRUE : NEWFALSE); }

void Writer::integer(int64_t v) {
  if (v >= INT32_MIN && v <= INT32_MAX) {
    op(BININT);
    const auto x = static_cast<int32_t>(v);
    out_.append(reinterpret_cast<const char*>(&x), 4);
  } else {
    op(LONG1);  // 8-byte two's complement always round-trips an int64
    op(8);
    out_.append(reinterpret_cast<const char*>(&v), 8);
  }
}

void Writer::string(const std::string& s) {
  op(BINUNICODE);
  const auto n = static_cast<uint32_t>(s.size());
  out_.append(reinterpret_cast<const char*>(&n), 4);
  out_ += s;
}

void Writer::global(const std::string& module, const std::string& name) {
  op(GLOBAL);
  out_ += module + "\n" + name + "\n";
}

void Writer::mark() { op(MARK); }
void Writer::tuple() { op(TUPLE); }

void Writer::int_tuple(const std::vector<int64_t>& v) {
  mark();
  for (int64_t x : v) integer(x);
  tuple();
}

void Writer::empty_dict() { op(EMPTY_DICT); }
void Writer::setitems() { op(SETITEMS); }
void Writer::reduce() { op(REDUCE); }
void Writer::persistent_id() { op(BINPERSID); }

std::string Writer::finish() {
  op(STOP);
  return std::move(out_);
}

}  // namespace minigpt4::io::pickle
