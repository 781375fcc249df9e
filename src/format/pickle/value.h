// The value model the safe unpickler produces and the pickler consumes.
//
// A pickle stream becomes a graph of Values owned by an Arena (the memo lets a
// stream share one object in several places, and even build cycles; an arena
// frees them all at once). Nothing is ever imported or called: a GLOBAL
// becomes a kGlobal value naming module and name, and REDUCE / NEWOBJ / BUILD
// on it become a kObject that records the callable, its arguments and its
// state, so it can be shown and written back unchanged.
//
// A few well-known constructors are folded into plain kinds while reading (see
// unpickler.h for the list): collections.OrderedDict() -> kDict with ordered,
// torch.Size(t) -> kTuple with torch_size, _codecs.encode(s, 'latin1') and
// builtins.bytes/bytearray -> kBytes, builtins.set/frozenset -> kSet, builtins.complex -> kObject.
// Everything else the allowlist knows stays a kObject whose callable is an
// allowlisted kGlobal; what it does not know is an "opaque" kObject (inspect
// mode only).
//
// Extensions to the original contract (documented here so readers of this
// header see them): Value::kwargs (NEWOBJ_EX), Value::depth (nesting seen at
// insertion), and `state` on a folded kDict(ordered).
//
// Thread-safety: an Arena and its Values are not synchronized; share read-only.
#ifndef CKPT_FORMAT_PICKLE_VALUE_H_
#define CKPT_FORMAT_PICKLE_VALUE_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ckpt::pickle {

enum class Kind : uint8_t {
  kNone,
  kBool,
  kInt,      // fits int64
  kBigInt,   // does not fit int64: little-endian two's complement bytes in `str`
  kFloat,
  kString,   // UTF-8 text (str)
  kBytes,    // bytes / bytearray (raw in `str`)
  kTuple,
  kList,
  kDict,     // items in insertion order; keys may be any value
  kSet,      // set or frozenset (frozen flag)
  kGlobal,   // a class or function reference: module + name
  kObject,   // the result of REDUCE / NEWOBJ on a callable, plus BUILD state and appended items
  kPersistentId,  // BINPERSID/PERSID: `items[0]` is the persistent id value
};

// "none", "bool", "int", "bigint", "float", "str", "bytes", "tuple", "list",
// "dict", "set", "global", "object", "persistent_id".
std::string_view KindName(Kind k);

struct Value;

// The Python type name of a value as a user would know it: "int", "str",
// "bytes", "bytearray", "tuple", "torch.Size", "list", "dict",
// "collections.OrderedDict", "set", "frozenset", "global", "persistent_id", or
// for a kObject the callable's "module.name" ("argparse.Namespace"; for
// copyreg._reconstructor and numpy's _reconstruct the class in args[0], e.g.
// "numpy.ndarray"; "object" when the callable is not a global). Never fails.
std::string TypeName(const Value* v);

// A short, safe, single-line Python-like repr (strings quoted and escaped,
// containers elided past a few items, nesting cut at a small depth, cycles
// safe), at most about max_len bytes. Never fails.
std::string Repr(const Value* v, size_t max_len = 120);

struct Value {
  Kind kind = Kind::kNone;

  // kBool, kInt
  int64_t i = 0;
  // kFloat
  double f = 0;
  // kString, kBytes, kBigInt (raw bytes); kGlobal: the module
  std::string str;
  // kGlobal: the name
  std::string name;

  // kTuple, kList, kSet: elements. kPersistentId: {pid}.
  // kObject: the appended list items (APPEND(S) on an object).
  std::vector<Value*> items;
  // kDict: key/value pairs. kObject: SETITEM(S) on an object.
  std::vector<std::pair<Value*, Value*>> dict;

  // kObject:
  Value* callable = nullptr;   // a kGlobal (or anything, for hostile streams)
  Value* args = nullptr;       // usually a kTuple
  Value* state = nullptr;      // BUILD argument, or nullptr. Also set on a folded
                               // kDict(ordered) that received BUILD (a state_dict's
                               // {'_metadata': ...}).
  Value* kwargs = nullptr;     // NEWOBJ_EX keyword arguments (a kDict), or nullptr
  bool newobj = false;         // created via NEWOBJ (cls.__new__(cls, *args)) rather than REDUCE
  bool opaque = false;         // callable not on the allowlist (inspect mode)

  // Flags recording how a folded value was spelled, so the pickler can write it back.
  bool ordered = false;     // kDict: was collections.OrderedDict
  bool torch_size = false;  // kTuple: was torch.Size
  bool frozen = false;      // kSet: frozenset
  bool bytearray = false;   // kBytes: bytearray

  // Nesting below this value as known when children were inserted (0 for a
  // leaf). The unpickler uses it to reject nesting bombs early; it is NOT a
  // bound on the graph's depth (a container can gain children after it was
  // itself inserted, and memo references can form cycles), so code that
  // recurses over Values must bound its own depth and tolerate cycles.
  uint32_t depth = 0;

  // Byte offset in the stream of the opcode that created this value (for errors).
  uint64_t offset = 0;

  bool is_global(std::string_view module, std::string_view n) const {
    return kind == Kind::kGlobal && str == module && name == n;
  }
  // kObject whose callable is the global module.name.
  bool is_object_of(std::string_view module, std::string_view n) const {
    return kind == Kind::kObject && callable != nullptr && callable->is_global(module, n);
  }
  // Looks up a string key in a kDict (linear); nullptr if absent.
  const Value* Get(std::string_view key) const;
};

// Owns Values. Addresses are stable for the arena's lifetime.
class Arena {
 public:
  Arena() = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  Value* New(Kind kind) {
    values_.emplace_back();
    Value* v = &values_.back();
    v->kind = kind;
    return v;
  }
  Value* None() { return New(Kind::kNone); }
  Value* Bool(bool b) { Value* v = New(Kind::kBool); v->i = b; return v; }
  Value* Int(int64_t i) { Value* v = New(Kind::kInt); v->i = i; return v; }
  Value* Float(double f) { Value* v = New(Kind::kFloat); v->f = f; return v; }
  Value* String(std::string s) { Value* v = New(Kind::kString); v->str = std::move(s); return v; }
  Value* Bytes(std::string s) { Value* v = New(Kind::kBytes); v->str = std::move(s); return v; }
  Value* Tuple(std::vector<Value*> items) {
    Value* v = New(Kind::kTuple); v->items = std::move(items); return v;
  }
  Value* List(std::vector<Value*> items) {
    Value* v = New(Kind::kList); v->items = std::move(items); return v;
  }
  Value* Dict() { return New(Kind::kDict); }
  Value* Global(std::string module, std::string name) {
    Value* v = New(Kind::kGlobal); v->str = std::move(module); v->name = std::move(name); return v;
  }
  size_t size() const { return values_.size(); }
  // Calls f(const Value&) for every value, in creation order.
  template <typename F>
  void ForEach(F&& f) const {
    for (const Value& v : values_) f(v);
  }

 private:
  std::deque<Value> values_;
};

}  // namespace ckpt::pickle

#endif  // CKPT_FORMAT_PICKLE_VALUE_H_
