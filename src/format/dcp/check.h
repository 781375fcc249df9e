// Structural checks of a DCP checkpoint against its `.metadata`, without
// reading tensor data: what `ckptkit verify` reports and what a reader must
// know before it assembles a tensor from chunks.
//
// Thread-safety: pure functions.
#ifndef CKPT_FORMAT_DCP_CHECK_H_
#define CKPT_FORMAT_DCP_CHECK_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "format/dcp/metadata.h"

namespace ckpt::dcp {

struct Problem {
  std::string key;   // the entry concerned, or "" for file-level problems
  std::string file;  // the data file concerned, or ""
  bool has_offset = false;
  uint64_t offset = 0;  // byte offset in `file` when has_offset
  std::string message;
};

// "file @ offset: key: message" (parts omitted when empty).
std::string ToString(const Problem& p);

// Checks that the chunks of tensor entry `e` lie inside the tensor and cover
// it exactly once (identical repeated chunks count as replicas of one chunk).
// Appends problems; returns the number appended.
size_t CheckCoverage(const Entry& e, std::vector<Problem>* out);

// Everything CheckCoverage checks for every tensor, plus: every chunk and
// bytes entry has a storage item; every item's file exists (`file_sizes`
// lists the data files present, name -> size) and holds its byte range;
// items of one file do not overlap; every item belongs to an entry.
// Transparent (std::less<>): looked up by an item's string_view file name.
using FileSizes = std::map<std::string, uint64_t, std::less<>>;
std::vector<Problem> CheckStructure(const Metadata& md, const FileSizes& file_sizes);

}  // namespace ckpt::dcp

#endif  // CKPT_FORMAT_DCP_CHECK_H_
