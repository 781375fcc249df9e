// Building and writing an arbitrary torch.save object tree whose tensors come
// from callbacks (fresh contiguous tensors) or from other torch.save archives
// (imported subtrees), byte-identical to torch.save of the same Python objects
// where the object identities CPython would see are reproduced.
//
// TorchTreeWriter owns a pickle::Arena. The caller builds a Value graph in it
// (dicts, lists, strings ...), adds tensors with NewTensor, grafts whole
// unpickled trees from other archives with Import, and calls Write once with
// the root. Storages are numbered "0".."N-1" in the order the pickler first
// meets them, exactly as torch.save's persistent_id does, and their bytes are
// streamed one storage at a time from the callbacks: memory stays bounded by
// the pickle plus one callback's buffer.
//
// Object identity (what the pickle memo shares) follows CPython 3.11:
//  - Str/Bytes below canonicalise the objects CPython keeps as singletons:
//    "" and one-character strings with a code point below 256, b"" and
//    one-byte bytes. Every unpickled value of that kind is the same object in
//    the loading process, so torch.save writes the second one as a memo GET.
//  - Import deep-copies the graph, keeping its sharing (one copy per source
//    Value) and cycles, applying the singleton rule above, and treating the
//    string keys of a NEWOBJ object's dict state as interned (CPython's
//    load_build interns them), i.e. shared by content across all imports.
//  - Tensor persistent ids are rebuilt as torch.save builds them: the
//    "storage" tag and the "cpu"-like location tags are one object each for
//    the whole stream; a storage seen again reuses its key string.
//
// Thread-safety: not synchronized; callbacks run on the calling thread during
// Write. Lifetime: Values returned belong to the writer; an Import's reopen
// callback (and whatever it captures) must stay valid until Write returns.
#ifndef CKPT_FORMAT_TORCH_TREE_WRITER_H_
#define CKPT_FORMAT_TORCH_TREE_WRITER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "ckpt/byte_source.h"
#include "ckpt/status.h"
#include "format/pickle/value.h"
#include "format/torch/torch_file.h"
#include "format/torch/torch_writer.h"

namespace ckpt::torch {

class TorchTreeWriter {
 public:
  // Re-opens the archive an Import came from, at Write time, to stream its
  // storages (so the archive need not stay open while the tree is built).
  using Reopener = std::function<Result<std::shared_ptr<const TorchFile>>()>;

  TorchTreeWriter();
  TorchTreeWriter(const TorchTreeWriter&) = delete;
  TorchTreeWriter& operator=(const TorchTreeWriter&) = delete;

  pickle::Arena& arena() { return *arena_; }

  // A str value; the CPython singletons ("" and one latin-1 character) are
  // one Value each for the whole tree.
  pickle::Value* Str(std::string_view s);
  // A bytes value (b"" a kBytes, others the _codecs.encode call CPython's
  // protocol-2 pickler writes); b"" and one-byte values are one Value each.
  pickle::Value* Bytes(std::string_view s);

  // The value torch.save pickles for a fresh contiguous tensor
  // (torch.empty(shape, dtype) filled with the bytes `write` streams): its own
  // storage, _rebuild_tensor_v2 with the legacy storage class, or
  // _rebuild_tensor_v3 with UntypedStorage for dtypes that have none.
  // Errors: InvalidArgument (negative dim, nbytes != numel * element size,
  // no callback); Unimplemented (quantized dtype).
  Result<pickle::Value*> NewTensor(const TensorToSave& t);

  // Deep-copies file.root() into this tree (see the identity rules above).
  // Tensors inside keep their rebuild calls; their persistent ids are
  // re-pointed at new storages of the output whose bytes are copied as stored
  // from the archive `reopen` returns (which must be the same archive). A
  // storage shared inside `file` stays shared.
  // Errors: FailedPrecondition for a persistent id that is not a storage
  // reference or names no storage of the file; Unimplemented for a
  // big-endian archive (torch.load would byte-swap it); ResourceExhausted if
  // nesting exceeds pickle::kDefaultMaxDepth.
  Result<pickle::Value*> Import(const TorchFile& file, Reopener reopen);

  // Number of storages created so far (fresh tensors plus imported ones).
  size_t storage_count() const { return slots_.size(); }

  // Pickles root and writes the archive (records in torch.save's order).
  // Storages never reached from root are not written.
  // Errors: InvalidArgument for bad options; those of the pickler, the
  // callbacks and the sink (a storage callback's error gains the storage key).
  Status Write(const pickle::Value* root, ByteSink* sink, const TorchWriteOptions& options = {});

 private:
  struct Slot {
    uint64_t nbytes = 0;
    pickle::Value* storage_class = nullptr;  // a kGlobal
    pickle::Value* numel = nullptr;
    std::string location;
    std::vector<pickle::Value*> extra;  // persistent-id items past the fifth
    std::function<Status(ByteSink*)> write;
    pickle::Value* key = nullptr;  // assigned on first sight during Write
  };
  pickle::Value* Global(std::string_view module, std::string_view name);
  pickle::Value* EncodedBytes(std::string_view s);
  pickle::Value* Location(const std::string& loc);
  pickle::Value* NewPid(size_t slot);
  Result<pickle::Value*> Copy(const pickle::Value* v, size_t depth);

  std::unique_ptr<pickle::Arena> arena_;
  std::map<std::string, pickle::Value*, std::less<>> single_str_;
  std::map<std::string, pickle::Value*, std::less<>> single_bytes_;
  std::map<std::string, pickle::Value*, std::less<>> interned_;
  std::map<std::string, pickle::Value*, std::less<>> locations_;
  pickle::Value* storage_tag_ = nullptr;
  pickle::Value* latin1_ = nullptr;
  std::vector<Slot> slots_;
  std::unordered_map<const pickle::Value*, size_t> pid_slot_;  // placeholder tuple -> slot

  // State of the Import in progress.
  struct ImportState {
    const TorchFile* file = nullptr;
    std::shared_ptr<Reopener> reopen;
    std::unordered_map<const pickle::Value*, pickle::Value*> memo;
    std::unordered_map<std::string, size_t> slot_of_key;
  };
  ImportState* cur_ = nullptr;
};

}  // namespace ckpt::torch

#endif  // CKPT_FORMAT_TORCH_TREE_WRITER_H_
