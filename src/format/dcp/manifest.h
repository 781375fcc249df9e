// ckptkit's checksum manifest of a DCP folder: an XXH3-64 digest of every
// stored item, so that `verify --deep` can tell a checkpoint whose files are
// each well-formed but not the bytes that were saved (bit rot, a data file
// copied from another save of the same structure, a torn copy) from the one
// that was written.
//
// One manifest per set of data files written together (a rank's files, or
// the CLI's): "ckptkit-manifest<prefix>.json" beside "<prefix><n>.distcp"
// (prefix "__0_" -> "ckptkit-manifest__0_.json"). Stock torch and
// megatron-core read only `.metadata` and the files it names, so they ignore
// it. Content (JSON):
//   {"format": "ckptkit-manifest", "version": 1, "hash": "xxh3-64",
//    "files": {"__0_0.distcp": [[offset, length, "<16 hex digits>"], ...]}}
// An item is a byte range [offset, offset + length) of a data file, exactly
// a `.metadata` storage item (the embedded torch.save archive of a chunk, or
// a bytes entry's payload); the digest is XXH3_64bits (seed 0) of its bytes.
//
// Pure format code. Thread-safety: stateless functions.
#ifndef CKPT_FORMAT_DCP_MANIFEST_H_
#define CKPT_FORMAT_DCP_MANIFEST_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/status.h"

namespace ckpt::dcp {

struct ManifestItem {
  std::string file;  // data file name, relative to the folder
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t xxh3 = 0;
};

// "ckptkit-manifest<prefix>.json"; prefix as the data files' ("__0_").
std::string ManifestFileName(std::string_view prefix);
// Whether `name` is a manifest's file name.
bool IsManifestFileName(std::string_view name);
// The data file prefix a manifest's file name stands for ("__0_" of
// "ckptkit-manifest__0_.json"). REQUIRES: IsManifestFileName(name).
std::string_view ManifestPrefix(std::string_view name);
// The prefix of a data file name "<prefix><n>.distcp" ("__3_" of "__3_12.distcp");
// "" when the name is not of that form.
std::string DataFilePrefix(std::string_view data_file);

// The manifest's JSON text for `items` (in the given order per file; files sorted).
std::string SerializeManifest(std::span<const ManifestItem> items);

// Errors: DataLoss naming `name` for text that is not a manifest of this
// version (not JSON, another format or hash, a malformed item).
Result<std::vector<ManifestItem>> ParseManifest(std::string_view text, std::string_view name);

// XXH3_64bits of `data`, and a streaming form for bytes that arrive in pieces.
uint64_t Xxh3(std::string_view data);
class Xxh3Stream {
 public:
  Xxh3Stream();
  ~Xxh3Stream();
  Xxh3Stream(const Xxh3Stream&) = delete;
  Xxh3Stream& operator=(const Xxh3Stream&) = delete;
  void Update(std::string_view data);
  uint64_t Digest() const;

 private:
  void* state_;  // XXH3_state_t
};

}  // namespace ckpt::dcp

#endif  // CKPT_FORMAT_DCP_MANIFEST_H_
