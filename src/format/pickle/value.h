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
// Memory. A Value is 32 bytes with a kind-specific payload: the number of an
// int or float inline; the bytes of a string, the elements of a sequence or
// the pairs of a dict as arena spans; the fields of a global or an object in a
// small record beside it. Everything a Value points to lives in its Arena (one
// monotonic allocator, released at once), so reading a `.metadata` of a
// million chunks costs no malloc per value. Values are read through accessors
// that are defined for every kind (the wrong kind reads as empty / nullptr),
// so code over hostile graphs cannot read one kind's payload as another's;
// they are changed only through the Arena that owns them.
//
// Extensions to the original contract (documented here so readers of this
// header see them): kwargs() (NEWOBJ_EX), `depth` (nesting seen at
// insertion), and state() on a folded kDict(ordered).
//
// Thread-safety: an Arena and its Values are not synchronized; share read-only.
#ifndef CKPT_FORMAT_PICKLE_VALUE_H_
#define CKPT_FORMAT_PICKLE_VALUE_H_

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <memory_resource>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ckpt::pickle {

enum class Kind : uint8_t {
  kNone,
  kBool,
  kInt,      // fits int64
  kBigInt,   // does not fit int64: little-endian two's complement bytes in str()
  kFloat,
  kString,   // UTF-8 text (str)
  kBytes,    // bytes / bytearray (raw in str())
  kTuple,
  kList,
  kDict,     // items in insertion order; keys may be any value
  kSet,      // set or frozenset (frozen flag)
  kGlobal,   // a class or function reference: module + name
  kObject,   // the result of REDUCE / NEWOBJ on a callable, plus BUILD state and appended items
  kPersistentId,  // BINPERSID/PERSID: items()[0] is the persistent id value
};

// "none", "bool", "int", "bigint", "float", "str", "bytes", "tuple", "list",
// "dict", "set", "global", "object", "persistent_id".
std::string_view KindName(Kind k);

struct Value;
using Pair = std::pair<Value*, Value*>;

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

namespace internal_value {
// A growable run of T in an arena (size and capacity in 32 bits).
template <typename T>
struct Run {
  T* data = nullptr;
  uint32_t size = 0;
  uint32_t cap = 0;
  std::span<T> span() const { return {data, size}; }
};
struct GlobalRec {
  std::string_view module, name;
};
struct DictRec {
  Run<Pair> pairs;
  Value* state = nullptr;
};
struct ObjectRec {
  Value* callable = nullptr;
  Value* args = nullptr;
  Value* state = nullptr;
  Value* kwargs = nullptr;
  Run<Value*> items;   // APPEND(S) onto the object
  Run<Pair> pairs;     // SETITEM(S) onto the object
};
}  // namespace internal_value

struct Value {
  Kind kind = Kind::kNone;
  // How the value was spelled or made (written back by the pickler).
  bool newobj : 1 = false;      // kObject: created via NEWOBJ (cls.__new__(cls, *args)), not REDUCE
  bool opaque : 1 = false;      // kObject: callable not on the allowlist (inspect mode)
  bool ordered : 1 = false;     // kDict: was collections.OrderedDict
  bool torch_size : 1 = false;  // kTuple: was torch.Size
  bool frozen : 1 = false;      // kSet: frozenset
  bool bytearray : 1 = false;   // kBytes: bytearray
  // kInt: the stand-in a reducer returned for an object it consumed while
  // reading (UnpickleOptions::reducer); `i` is the reducer's own index.
  bool reduced : 1 = false;

  // Nesting below this value as known when children were inserted (0 for a
  // leaf). The unpickler uses it to reject nesting bombs early; it is NOT a
  // bound on the graph's depth (a container can gain children after it was
  // itself inserted, and memo references can form cycles), so code that
  // recurses over Values must bound its own depth and tolerate cycles.
  uint32_t depth = 0;

  // Byte offset in the stream of the opcode that created this value (for errors).
  uint64_t offset = 0;

  // The payload. i: kBool, kInt. f: kFloat. Reading them on another kind
  // gives an unspecified number, never undefined behaviour in practice
  // (callers check `kind`).
  union {
    int64_t i = 0;
    double f;
    const char* chars_;                 // kString, kBytes, kBigInt
    Value** seq_;                       // kTuple, kList, kSet, kPersistentId
    internal_value::GlobalRec* global_;
    internal_value::DictRec* dict_;
    internal_value::ObjectRec* object_;
  };
  uint32_t n_ = 0;    // string length (low 32 bits) or sequence size
  uint32_t cap_ = 0;  // string length (high 32 bits) or sequence capacity

  // kString, kBytes, kBigInt: the bytes; kGlobal: the module; else "".
  std::string_view str() const;
  // kGlobal: the name; else "".
  std::string_view name() const;
  // kTuple, kList, kSet, kPersistentId: the elements; kObject: the items
  // appended to it; else empty.
  std::span<Value* const> items() const;
  // kDict: the pairs in insertion order; kObject: SETITEM(S) onto it; else empty.
  std::span<const Pair> dict() const;
  // kObject: the callable (a kGlobal, or anything for hostile streams), its
  // arguments (usually a kTuple), the BUILD state and the NEWOBJ_EX keyword
  // arguments; nullptr when absent. state() is also set on a folded
  // kDict(ordered) that received BUILD (a state_dict's {'_metadata': ...}).
  Value* callable() const { return kind == Kind::kObject ? object_->callable : nullptr; }
  Value* args() const { return kind == Kind::kObject ? object_->args : nullptr; }
  Value* state() const;
  Value* kwargs() const { return kind == Kind::kObject ? object_->kwargs : nullptr; }

  bool is_global(std::string_view module, std::string_view n) const {
    return kind == Kind::kGlobal && global_->module == module && global_->name == n;
  }
  // kObject whose callable is the global module.name.
  bool is_object_of(std::string_view module, std::string_view n) const {
    Value* c = callable();
    return c != nullptr && c->is_global(module, n);
  }
  // Looks up a string key in a kDict (linear); nullptr if absent.
  const Value* Get(std::string_view key) const;
};
static_assert(sizeof(Value) == 32, "a Value is 32 bytes");

// The accessors are inline: a large pickle's consumers call them per value.
inline std::string_view Value::str() const {
  switch (kind) {
    case Kind::kString: case Kind::kBytes: case Kind::kBigInt:
      return {chars_, static_cast<size_t>(n_ | (uint64_t{cap_} << 32))};
    case Kind::kGlobal: return global_->module;
    default: return {};
  }
}

inline std::string_view Value::name() const { return kind == Kind::kGlobal ? global_->name : std::string_view(); }

inline std::span<Value* const> Value::items() const {
  switch (kind) {
    case Kind::kTuple: case Kind::kList: case Kind::kSet: case Kind::kPersistentId: return {seq_, n_};
    case Kind::kObject: return object_->items.span();
    default: return {};
  }
}

inline std::span<const Pair> Value::dict() const {
  if (kind == Kind::kDict) return dict_ != nullptr ? dict_->pairs.span() : std::span<const Pair>();
  if (kind == Kind::kObject) return object_->pairs.span();
  return {};
}

inline Value* Value::state() const {
  if (kind == Kind::kObject) return object_->state;
  if (kind == Kind::kDict && dict_ != nullptr) return dict_->state;
  return nullptr;
}

// Copies how `from` was spelled and where it was read (the flags, depth and
// offset; not the kind or payload) onto `to`.
void CopySpelling(Value* to, const Value* from);

// Owns Values and everything they point to. Addresses are stable for the
// arena's lifetime; nothing is freed before the arena.
class Arena {
 public:
  // block_values: Values per block; first_payload_bytes: the payload buffer
  // reserved up front (reused after Reset).
  explicit Arena(size_t block_values = 4096, size_t first_payload_bytes = 64 << 10);
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena();

  // A value of kind k with its empty payload (a kGlobal names "".""; a
  // kObject has no callable yet).
  Value* New(Kind kind);
  Value* None() { return New(Kind::kNone); }
  Value* Bool(bool b) { Value* v = New(Kind::kBool); v->i = b; return v; }
  Value* Int(int64_t i) { Value* v = New(Kind::kInt); v->i = i; return v; }
  Value* Float(double f) { Value* v = New(Kind::kFloat); v->f = f; return v; }
  // The bytes are copied into the arena.
  Value* String(std::string_view s) { return Chars(Kind::kString, s); }
  Value* Bytes(std::string_view s) { return Chars(Kind::kBytes, s); }
  Value* Chars(Kind kind, std::string_view s);  // kString, kBytes or kBigInt
  Value* Tuple(std::span<Value* const> items) { return Seq(Kind::kTuple, items); }
  Value* Tuple(std::initializer_list<Value*> items) { return Seq(Kind::kTuple, {items.begin(), items.size()}); }
  Value* List(std::span<Value* const> items) { return Seq(Kind::kList, items); }
  Value* List(std::initializer_list<Value*> items) { return Seq(Kind::kList, {items.begin(), items.size()}); }
  Value* Seq(Kind kind, std::span<Value* const> items);  // kTuple, kList, kSet, kPersistentId
  Value* Dict() { return New(Kind::kDict); }
  Value* Global(std::string_view module, std::string_view name);
  // A kObject calling callable(*args) (REDUCE; newobj for NEWOBJ).
  Value* Object(Value* callable, Value* args, bool newobj = false);

  // Appends to a kTuple/kList/kSet/kPersistentId's elements or a kObject's
  // items. REQUIRES: v is one of those kinds.
  void Append(Value* v, Value* item);
  void Append(Value* v, std::span<Value* const> items);
  // Replaces the elements of a sequence (or a kObject's items).
  void SetItems(Value* v, std::span<Value* const> items);
  // Makes v (a sequence) show the elements of `from` without copying them;
  // a later Append to either copies first. For immutable tuples.
  void ShareItems(Value* v, const Value* from);
  // The elements of v, writable in place (same kinds as Append).
  std::span<Value*> MutableItems(Value* v);
  // Appends a pair to a kDict, or to a kObject's SETITEM(S). REQUIRES: one of those.
  void SetItem(Value* v, Value* key, Value* value);
  // The pairs of v, writable in place (kDict or kObject).
  std::span<Pair> MutablePairs(Value* v);
  // Replaces the pairs of a kDict (or a kObject's).
  void SetPairs(Value* v, std::span<const Pair> pairs);
  // kObject fields; SetState also on a kDict. REQUIRES: those kinds.
  void SetCallable(Value* v, Value* callable);
  void SetArgs(Value* v, Value* args);
  void SetState(Value* v, Value* state);
  void SetKwargs(Value* v, Value* kwargs);
  // Copies s into the arena; the view lives as long as the arena.
  std::string_view Intern(std::string_view s);

  // Forgets every value and payload, keeping the memory for reuse.
  // REQUIRES: nothing points into the arena any more.
  void Reset();
  // Whether v is one of this arena's own values (not an adopted arena's).
  // Cost: one comparison per block.
  bool Owns(const Value* v) const;
  // Takes ownership of another arena's values (which may point into this
  // one); they live as long as this arena and are visited by ForEach.
  void Adopt(std::unique_ptr<Arena> other);

  // Values created in this arena, without adopted ones.
  size_t size() const { return count_; }
  // Bytes the arena holds (values and their payloads).
  uint64_t bytes() const;
  // Calls f(const Value&) for every value, in creation order.
  template <typename F>
  void ForEach(F&& f) const {
    size_t left = count_;
    for (const auto& block : blocks_) {
      if (left == 0) break;
      size_t n = left < block_values_ ? left : block_values_;
      for (size_t k = 0; k < n; ++k) f(block[k]);
      left -= n;
    }
    for (const auto& a : adopted_) a->ForEach(f);
  }

 private:
  template <typename T>
  T* AllocArray(size_t n);
  template <typename T>
  void Grow(internal_value::Run<T>* run, size_t extra);
  internal_value::ObjectRec* ObjectOf(Value* v);
  internal_value::Run<Value*> SeqRun(Value* v) const;
  void StoreSeqRun(Value* v, const internal_value::Run<Value*>& run);

  void NextBlock();

  size_t block_values_;
  std::vector<std::unique_ptr<Value[]>> blocks_;
  size_t count_ = 0;
  Value* next_ = nullptr;  // the next free value of the current block
  Value* end_ = nullptr;   // the current block's end (next_ == end_: take the next block)
  std::unique_ptr<std::byte[]> first_payload_;
  std::pmr::monotonic_buffer_resource payloads_;
  std::vector<std::unique_ptr<Arena>> adopted_;
  uint64_t payload_bytes_ = 0;
  // Container arrays of kBigRun bytes or more live outside the monotonic
  // payloads, so that growing one frees its previous array (a dict of a
  // million items would otherwise keep every smaller copy, twice its size).
  static constexpr size_t kBigRun = size_t{64} << 10;
  std::unordered_map<const void*, std::unique_ptr<std::byte[]>> big_runs_;
};

}  // namespace ckpt::pickle

#endif  // CKPT_FORMAT_PICKLE_VALUE_H_
