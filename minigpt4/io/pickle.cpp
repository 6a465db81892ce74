#include "minigpt4/io/pickle.h"

#include "minigpt4/common/error.h"

#include <cstring>
#include <unordered_map>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the pickle reader assumes a little-endian host");

namespace minigpt4::io::pickle {

namespace {

using K = Value::Kind;

// The opcodes of pickle protocols 0-5 (Lib/pickletools.py documents each).
enum Op : uint8_t {
  MARK = '(', STOP = '.', POP = '0', POP_MARK = '1', DUP = '2', FLOAT = 'F', INT = 'I',
  BININT = 'J', BININT1 = 'K', LONG = 'L', BININT2 = 'M', NONE = 'N', PERSID = 'P',
  BINPERSID = 'Q', REDUCE = 'R', STRING = 'S', BINSTRING = 'T', SHORT_BINSTRING = 'U',
  UNICODE = 'V', BINUNICODE = 'X', APPEND = 'a', BUILD = 'b', GLOBAL = 'c', DICT = 'd',
  EMPTY_DICT = '}', APPENDS = 'e', GET = 'g', BINGET = 'h', INST = 'i', LONG_BINGET = 'j',
  LIST = 'l', EMPTY_LIST = ']', OBJ = 'o', PUT = 'p', BINPUT = 'q', LONG_BINPUT = 'r',
  SETITEM = 's', TUPLE = 't', EMPTY_TUPLE = ')', SETITEMS = 'u', BINFLOAT = 'G',
  PROTO = 0x80, NEWOBJ = 0x81, EXT1 = 0x82, EXT2 = 0x83, EXT4 = 0x84, TUPLE1 = 0x85,
  TUPLE2 = 0x86, TUPLE3 = 0x87, NEWTRUE = 0x88, NEWFALSE = 0x89, LONG1 = 0x8a, LONG4 = 0x8b,
  BINBYTES = 'B', SHORT_BINBYTES = 'C', SHORT_BINUNICODE = 0x8c, BINUNICODE8 = 0x8d,
  BINBYTES8 = 0x8e, EMPTY_SET = 0x8f, ADDITEMS = 0x90, FROZENSET = 0x91, NEWOBJ_EX = 0x92,
  STACK_GLOBAL = 0x93, MEMOIZE = 0x94, FRAME = 0x95, BYTEARRAY8 = 0x96, NEXT_BUFFER = 0x97,
  READONLY_BUFFER = 0x98,
};

class Machine {
 public:
  Machine(const uint8_t* data, size_t size, const Hooks& hooks, const std::string& source)
      : data_(data), size_(size), hooks_(hooks), source_(source) {}

  ValuePtr run() {
    while (true) {
      op_pos_ = pos_;
      const uint8_t op = u8();
      if (op == STOP) return pop();
      step(op);
    }
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

  // --- the stack ---
  void push(ValuePtr v) { stack_.push_back(std::move(v)); }
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
    std::vector<ValuePtr> items(std::make_move_iterator(stack_.begin() + m),
                                std::make_move_iterator(stack_.end()));
    stack_.resize(m);
    return items;
  }
  ValuePtr tuple_of(std::vector<ValuePtr> items) {
    auto t = make(K::Tuple);
    t->items = std::move(items);
    return t;
  }
  void add_pairs(const ValuePtr& target, std::vector<ValuePtr> flat) {
    if (flat.size() % 2 != 0) error("odd number of items for a dict");
    if (!target->is(K::Dict)) return;  // items of a dict subclass we did not model
    for (size_t i = 0; i < flat.size(); i += 2) target->entries.emplace_back(flat[i], flat[i + 1]);
  }

  // --- objects ---
  ValuePtr call(const ValuePtr& callable, const ValuePtr& args) {
    if (callable->is(K::Global) && hooks_.reduce)
      if (ValuePtr v = hooks_.reduce(callable->text, args)) return v;
    auto obj = make(K::Object);  // anything we do not model: keep parsing, ignore it later
    if (callable->is(K::Global)) obj->text = callable->text;
    obj->items = args->items;
    return obj;
  }
  ValuePtr persistent(const ValuePtr& pid) {
    if (!hooks_.persistent_load) error("persistent id without a persistent_load hook");
    return hooks_.persistent_load(pid);
  }
  ValuePtr global(const std::string& module, const std::string& name) {
    return make_string(module + "." + name, K::Global);
  }
  ValuePtr memo_get(uint64_t key) {
    auto it = memo_.find(key);
    if (it == memo_.end()) error("memo key {} was never stored", key);
    return it->second;
  }
  uint64_t text_key(const std::string& s) {  // protocol-0 PUT/GET argument
    char* end = nullptr;
    const uint64_t key = std::strtoull(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0') error("bad memo key '{}'", s);
    return key;
  }
  ValuePtr long_from_bytes(const std::string& b) {  // little-endian two's complement
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
    try {
      return make_int(std::stoll(s));
    } catch (const std::exception&) {
      return make_string("int", K::Object);
    }
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

  void step(uint8_t op);

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0, op_pos_ = 0;
  const Hooks& hooks_;
  const std::string& source_;
  std::vector<ValuePtr> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, ValuePtr> memo_;
};

void Machine::step(uint8_t op) {
  switch (op) {
    case PROTO: u8(); break;
    case FRAME: take(8); break;  // framing is only a read-ahead hint
    case MARK: marks_.push_back(stack_.size()); break;
    case POP: pop(); break;
    case POP_MARK: pop_mark(); break;
    case DUP: push(top()); break;

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
    case FLOAT: push(float_value(std::strtod(line().c_str(), nullptr))); break;
    case BINFLOAT: {  // the only big-endian field in pickle
      uint64_t bits = 0;
      for (const uint8_t* p = take(8), *e = p + 8; p != e; ++p) bits = bits << 8 | *p;
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
    case TUPLE: push(tuple_of(pop_mark())); break;
    case FROZENSET: push(tuple_of(pop_mark())); break;
    case TUPLE1: {
      auto a = pop();
      push(tuple_of({a}));
      break;
    }
    case TUPLE2: {
      auto b = pop(), a = pop();
      push(tuple_of({a, b}));
      break;
    }
    case TUPLE3: {
      auto c = pop(), b = pop(), a = pop();
      push(tuple_of({a, b, c}));
      break;
    }
    case LIST: {
      auto l = make(K::List);
      l->items = pop_mark();
      push(l);
      break;
    }
    case DICT: {
      auto d = make(K::Dict);
      add_pairs(d, pop_mark());
      push(d);
      break;
    }
    case APPEND: {
      auto v = pop();
      if (top()->is(K::List)) top()->items.push_back(v);
      break;
    }
    case APPENDS:
    case ADDITEMS: {
      auto items = pop_mark();
      if (top()->is(K::List)) top()->items.insert(top()->items.end(), items.begin(), items.end());
      break;
    }
    case SETITEM: {
      auto v = pop(), k = pop();
      add_pairs(top(), {k, v});
      break;
    }
    case SETITEMS: {
      auto items = pop_mark();
      add_pairs(top(), std::move(items));
      break;
    }

    case PUT: memo_[text_key(line())] = top(); break;
    case BINPUT: memo_[u8()] = top(); break;
    case LONG_BINPUT: memo_[le<uint32_t>()] = top(); break;
    case MEMOIZE: memo_[memo_.size()] = top(); break;
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
      if (!args->is(K::Tuple)) args = tuple_of({args});
      push(call(callable, args));
      break;
    }
    case NEWOBJ_EX: {
      pop();  // keyword arguments: torch never passes tensors this way
      auto args = pop(), cls = pop();
      if (!args->is(K::Tuple)) args = tuple_of({args});
      push(call(cls, args));
      break;
    }
    case INST: {
      std::string module = line();
      auto cls = global(module, line());
      push(call(cls, tuple_of(pop_mark())));
      break;
    }
    case OBJ: {
      auto items = pop_mark();
      if (items.empty()) error("OBJ without a class");
      auto cls = items.front();
      items.erase(items.begin());
      push(call(cls, tuple_of(std::move(items))));
      break;
    }
    case BUILD: {
      auto state = pop();
      // Only opaque objects keep their state (it may hold tensors); the state of a dict
      // (an OrderedDict's `_metadata`) or of a tensor carries no weights.
      if (top()->is(K::Object)) top()->state = state;
      break;
    }
    case PERSID: push(persistent(make_string(line()))); break;
    case BINPERSID: push(persistent(pop())); break;
    case EXT1:  // copyreg extension codes: a registry we do not have; opaque
    case EXT2:
    case EXT4:
      take(op == EXT1 ? 1 : op == EXT2 ? 2 : 4);
      push(make_string("extension", K::Object));
      break;
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
void Writer::setitem() { op(SETITEM); }
void Writer::reduce() { op(REDUCE); }
void Writer::persistent_id() { op(BINPERSID); }

std::string Writer::finish() {
  op(STOP);
  return std::move(out_);
}

}  // namespace minigpt4::io::pickle
