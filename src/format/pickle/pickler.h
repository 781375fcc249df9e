// A pickle writer that emits protocol 2 exactly as CPython's C Pickler
// (Modules/_pickle.c, protocol=2, fix_imports=True) does for the same objects,
// so a state dict of tensors pickles to the bytes torch.save writes.
//
// What is emitted (all from torch.load(weights_only=True)'s allowed set, §1.5
// of the format notes, except POP/POP_MARK, which appear only for the
// self-referencing tuples CPython also writes them for, and LONG4 for ints of
// 256+ bytes):
//   PROTO 2; None N; bool NEWTRUE/NEWFALSE; int BININT1 (0..255), BININT2
//   (..65535), BININT (int32), else LONG1 (minimal two's complement; LONG4
//   beyond 255 bytes); float BINFLOAT; str BINUNICODE; tuple EMPTY_TUPLE /
//   TUPLE1..3 / MARK..TUPLE; list EMPTY_LIST + APPEND or MARK..APPENDS in
//   batches of 1000; dict EMPTY_DICT + SETITEM or MARK..SETITEMS in batches of
//   1000 (an exact dict whose size is a multiple of 1000 gets the trailing
//   empty MARK SETITEMS that _pickle.c's batch_dict_exact writes); GLOBAL
//   with Python 2 names (builtins -> __builtin__); memo: BINPUT / LONG_BINPUT
//   after every str, tuple (non-empty), list, dict, global and object, in
//   CPython's numbering; a repeated value (same Value*, or for globals the same
//   module.name) is written as BINGET / LONG_BINGET.
// Folded values are written back in their original spelling:
//   kDict(ordered) -> collections.OrderedDict() REDUCE, items (batched as for
//     an iterator: a final single item uses SETITEM), then BUILD of `state`;
//   kTuple(torch_size) -> torch.Size((...),) REDUCE;
//   kBytes -> _codecs.encode(latin1-as-str, 'latin1') REDUCE ('latin1' is one
//     memoized string, as CPython's interned constant); b'' -> __builtin__.bytes();
//   kBytes(bytearray) -> __builtin__.bytearray(bytes) / bytearray();
//   kSet -> __builtin__.set([...]) / frozenset([...]).
// kObject: newobj -> callable, args, NEWOBJ; else callable, args, REDUCE;
// kwargs (NEWOBJ_EX) -> copy_reg.__newobj_ex__(cls, args, kwargs) REDUCE (the
// protocol-2 equivalent); then appended items, set items, and BUILD of state.
// kPersistentId -> its id value, then BINPERSID (never memoized).
//
// Thread-safety: Pickle is reentrant; it only reads the Values.
#ifndef CKPT_FORMAT_PICKLE_PICKLER_H_
#define CKPT_FORMAT_PICKLE_PICKLER_H_

#include <cstddef>
#include <functional>
#include <string>

#include "ckpt/byte_source.h"
#include "ckpt/status.h"
#include "format/pickle/unpickler.h"
#include "format/pickle/value.h"

namespace ckpt::pickle {

struct PickleOptions {
  // Recursion bound (the Value graph may be deep; cycles are handled by the memo).
  size_t max_depth = kDefaultMaxDepth;
  // If set, called for each kPersistentId with its id value (items[0]); the
  // returned value is written in its place (e.g. storages renumbered by the
  // torch writer). An error aborts pickling and is returned.
  std::function<Result<const Value*>(const Value& pid)> persistent_id;
};

// Writes root as a protocol-2 pickle ending in STOP.
// Errors: InvalidArgument for a null root or a null Value inside the graph;
// ResourceExhausted if nesting exceeds max_depth; errors from the sink or the
// persistent_id callback.
Status Pickle(const Value* root, ByteSink* sink, const PickleOptions& options = {});

// Pickle into a string.
Result<std::string> PickleToString(const Value* root, const PickleOptions& options = {});

}  // namespace ckpt::pickle

#endif  // CKPT_FORMAT_PICKLE_PICKLER_H_
