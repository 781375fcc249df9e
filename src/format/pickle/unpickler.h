// A safe pickle reader: runs the pickle VM without importing or calling
// anything, producing a Value graph (value.h).
//
// Reads every opcode of protocols 0-5 as CPython 3.11 defines them
// (Lib/pickle.py, Modules/_pickle.c), text and binary forms, including FRAME,
// MEMOIZE, STACK_GLOBAL, INST/OBJ, NEWOBJ_EX, PERSID/BINPERSID. Not supported
// (error Unimplemented): EXT1/EXT2/EXT4 (the copyreg extension registry) and
// NEXT_BUFFER/READONLY_BUFFER (out-of-band buffers).
//
// Globals. GLOBAL, STACK_GLOBAL and INST become kGlobal values (Python 2
// names normalized: __builtin__ -> builtins, copy_reg -> copyreg). In kStrict
// mode a global not on the allowlist (allowlist.h) is an error:
//   "<source>: offset 2: GLOBAL: global 'os.system' is not allowed (strict
//    mode; inspect mode shows it as an opaque object)"   code Unimplemented.
// In kInspect mode it is kept, and REDUCE/NEWOBJ/BUILD on it make a kObject
// with opaque = true. In both modes nothing executes.
//
// Folding (done at REDUCE, see value.h for the flags that record the spelling):
//   collections.OrderedDict()            -> kDict, ordered
//   torch.Size(tuple)                    -> kTuple, torch_size
//   _codecs.encode(str, 'latin1'|'latin-1') -> kBytes (each code point < 256)
//   builtins.bytes() / bytes(b)          -> kBytes
//   builtins.bytearray() / (b) / (str, 'latin-1') -> kBytes, bytearray
//   builtins.set(list) / frozenset(list) / set() -> kSet (frozen for frozenset)
// Any other call becomes a kObject (callable, args, newobj flag; BUILD sets
// `state`, NEWOBJ_EX sets `kwargs`). SETITEM(S) onto a kObject (a defaultdict,
// an opaque dict subclass) go to its `dict`; APPEND(S)/ADDITEMS go to its
// `items`. BUILD on a folded OrderedDict (a state_dict's _metadata) sets its
// `state`. A REDUCE whose callable is not a kGlobal is an error in strict mode
// and an opaque kObject in inspect mode.
//
// Limits (UnpickleOptions; defaults below). Every count or length read from
// the stream is checked before anything is allocated for it:
//   - string/bytes lengths against the bytes left in the source (DataLoss),
//   - stack entries <= max_stack, MARK nesting <= max_depth, container nesting
//     seen at insertion <= max_depth, memo entries <= max_memo, values created
//     <= max_values, decimal digits in text INT/LONG <= kMaxDecimalDigits,
//     text lines <= kMaxLineBytes                   (ResourceExhausted),
// so a 10 MB stream of '(' or of ']' + 'a' fails fast without deep recursion
// (the VM is iterative) or unbounded memory.
//
// Memo. Before running, the stream's opcodes are scanned once (up to its STOP)
// for the keys GET / BINGET / LONG_BINGET read; PUT, BINPUT and MEMOIZE then
// keep a value only under such a key (Python's pickler memoizes nearly
// everything and reads back little: ~16 entries per chunk of a DCP
// `.metadata`, of which none is read again). The keys are still counted as
// Python counts len(memo), so MEMOIZE numbers them as CPython does. When the
// scan cannot tell (an opcode it cannot step over), every value is kept: the
// memo is then dense for the usual sequential indices and sparse for others,
// so LONG_BINPUT 4294967295 costs one entry. The Value graph may share nodes and contain cycles (memo); consumers
// that recurse must bound their own depth.
//
// Errors name ByteSource::Name(), the byte offset of the opcode and the
// opcode's name, e.g.
//   "model.pt/data.pkl: offset 1234: BINUNICODE: length 4000000000 exceeds the 17 bytes left"
// Codes: DataLoss for corrupt/truncated streams ("unexpected end of pickle at
// offset N (no STOP)"), stack underflow, missing MARK, bad memo key, unknown
// opcode; Unimplemented for disallowed globals (strict), EXT*, out-of-band
// buffers, protocol > 5; ResourceExhausted for limits; errors of
// ByteSource::ReadAt are passed through with context.
//
// Thread-safety: Unpickle is reentrant; the returned Arena is not shared.
#ifndef CKPT_FORMAT_PICKLE_UNPICKLER_H_
#define CKPT_FORMAT_PICKLE_UNPICKLER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string_view>

#include "ckpt/byte_source.h"
#include "ckpt/status.h"
#include "format/pickle/allowlist.h"
#include "format/pickle/value.h"

namespace ckpt::pickle {

enum class Mode {
  kStrict,   // globals must be on the allowlist
  kInspect,  // any global is kept; calls on unknown ones become opaque objects
};

// limits
inline constexpr size_t kDefaultMaxDepth = 1000;          // MARK and container nesting
inline constexpr size_t kDefaultMaxStack = 1u << 20;      // stack entries
inline constexpr size_t kDefaultMaxMemo = 1u << 26;       // memo entries
inline constexpr uint64_t kDefaultMaxValues = 1ull << 26;  // Values created (~ 10 GB worst case)
inline constexpr size_t kMaxLineBytes = 1u << 20;         // text-protocol lines
inline constexpr size_t kMaxDecimalDigits = 4300;         // text INT/LONG (CPython's int limit)

// Consuming objects while reading, for graphs too large to keep whole (a DCP
// `.metadata` of a million chunks is ~30 million values). An object made by
// REDUCE / NEWOBJ of a global named one of `class_names` is given to
// `reduce` as its attributes (Fields) when the BUILD that completes it runs;
// `reduce` returns the caller's own index for what it took from it, and the
// object is replaced by a stand-in (a kInt with that number, flagged
// `reduced`), its values never kept.
//
// The object is kept as read (never reduced, nothing released) whenever
// releasing it could leave a dangling reference: a later GET reads one of its
// values (known from a scan of the stream before it runs, so this needs the
// scan to succeed), an earlier container is changed while it is built, a
// global or an opaque object is made inside it, it holds more than 2^16
// values, or it is popped or the stream stops before its BUILD. A reducer
// therefore only sees objects whose every value is its own, and only the
// caller's walk of the result meets the stand-ins.
//
// Reading flat. The usual pickle of such an object (protocol 2+, as Python
// writes a dataclass: GET of the class, EMPTY_TUPLE, NEWOBJ, an EMPTY_DICT
// filled by one SETITEMS of str keys and ints, str, None or torch.Size values,
// BUILD; MEMOIZEs anywhere between) is read straight into Fields, no value
// built (UnpickleOptions::read_flat). Anything else in it (another opcode, a
// memo key a later GET reads, bytes not yet buffered, a field name twice, a
// limit that the VM would hit) leaves the object to the VM from its first
// byte, so both ways reach the same stand-in, the same memo and the same
// errors; a differential fuzz target (dcp_metadata) checks it.
struct Field {
  enum class Type : uint8_t {
    kOther,    // anything else: a float, a bool, a dict, an object, a mixed sequence...
    kNone,     // None
    kInt,      // an int (not a bool) that fits int64
    kString,   // a str
    kInts,     // a tuple, list or torch.Size of ints (bools as 0 / 1); the empty sequence
    kStrings,  // a non-empty tuple or list of str
  };
  std::string_view name;
  Type type = Type::kOther;
  int64_t i = 0;                             // kInt
  std::string_view str;                      // kString
  std::span<const int64_t> ints;             // kInts
  std::span<const std::string_view> strs;    // kStrings
};

// The fields of an object: its BUILD state's str keys in order (a dict, or
// the two dicts of a (dict-or-None, slots-dict) pair, merged in that order;
// a name set twice appears once, at its first place, with its last value, as
// Python's setstate leaves it). Views into the stream and the reading
// buffers: valid only during the call.
struct Reducer {
  std::span<const std::string_view> class_names;
  // The caller's index for the object of class `class_name` (the global's
  // name), or nullopt to keep it as read. Called once per object either way
  // it was read; a nullopt from a flat read is asked again of the same object
  // read by the VM, so it must not depend on earlier nullopts.
  std::function<std::optional<int64_t>(std::string_view class_name, std::span<const Field> fields)> reduce;
};

struct UnpickleOptions {
  Mode mode = Mode::kStrict;
  size_t max_depth = kDefaultMaxDepth;
  size_t max_stack = kDefaultMaxStack;
  size_t max_memo = kDefaultMaxMemo;
  uint64_t max_values = kDefaultMaxValues;
  // Globals accepted in strict mode in addition to the built-in allowlist.
  std::span<const AllowedGlobal> extra_allowed = {};
  // Optional; see Reducer. Not owned; must outlive the call.
  const Reducer* reducer = nullptr;
  // Objects for the reducer in their usual form are read flat (see Reducer);
  // false runs every one through the VM (tests compare the two).
  bool read_flat = true;
};

struct Unpickled {
  std::unique_ptr<Arena> arena;  // owns every Value below
  Value* root = nullptr;         // the object STOP returned
  uint64_t end_offset = 0;       // offset just past the STOP opcode
};

// Reads one pickle starting at `offset` of src, up to and including its STOP.
// Reads through a buffer (or directly from src.Data() when non-null), so large
// streams (DCP .metadata with 100k entries) are fast.
// Errors: see the header comment.
Result<Unpickled> Unpickle(const ByteSource& src, uint64_t offset = 0,
                           const UnpickleOptions& options = {});

// The name of a pickle opcode byte ("BINUNICODE"), or "UNKNOWN".
std::string_view OpcodeName(uint8_t op);

}  // namespace ckpt::pickle

#endif  // CKPT_FORMAT_PICKLE_UNPICKLER_H_
