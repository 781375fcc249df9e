// libFuzzer target: dcp::ParseMetadata over arbitrary bytes (a DCP
// `.metadata`), checked against the same parse with every object read by the
// unpickler's VM (none read flat: the same Metadata or the same error); on
// success dcp::CheckStructure with a file-size map derived
// from the input (some files missing, some short), every problem rendered,
// and the first items opened (zstd transform included) against the input
// itself as their data file. Seeds: tests/golden/dcp/*/.metadata (and the
// corrupt corpus), see scripts/fuzz.sh.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "format/dcp/check.h"
#include "format/dcp/item.h"
#include "format/dcp/metadata.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ckpt;
  auto src = std::make_shared<SpanSource>(data, size, "fuzz/.metadata");
  auto md = dcp::ParseMetadata(*src);
  auto vm = dcp::internal_dcp::ParseMetadataThroughTheVm(*src);
  if (md.ok() != vm.ok()) __builtin_trap();
  if (!md.ok() && md.status().ToString() != vm.status().ToString()) __builtin_trap();
  if (md.ok() && dcp::internal_dcp::DebugString(*md) != dcp::internal_dcp::DebugString(*vm)) __builtin_trap();
  if (!md.ok()) {
    if (md.status().code() == Code::kInternal) __builtin_trap();
    return 0;
  }
  // Every link the parser made must be in range.
  for (const dcp::Entry& e : md->entries) {
    if (e.item < -1 || e.item >= static_cast<int64_t>(md->items.size())) __builtin_trap();
    for (const dcp::Chunk& c : e.chunks) {
      if (c.item < -1 || c.item >= static_cast<int64_t>(md->items.size())) __builtin_trap();
      if (c.offsets.size() != e.size.size() || c.sizes.size() != e.size.size()) __builtin_trap();
    }
  }
  // File sizes: each file referenced gets the end of its last item, shortened
  // or dropped according to input bytes, so every CheckStructure branch runs.
  ckpt::dcp::FileSizes files;
  size_t i = 0;
  for (const dcp::StorageItem& it : md->items) {
    if (it.entry < -1 || it.entry >= static_cast<int64_t>(md->entries.size())) __builtin_trap();
    uint8_t b = size ? data[i++ % size] : 0;
    uint64_t end = it.offset_in_file + (it.length & 0xffffffffu);  // no wrap: both < 2^63 + 2^32
    if (b % 7 == 0) continue;  // missing file
    uint64_t& s = files[std::string(it.relative_path)];
    s = std::max(s, b % 5 == 0 && end > 0 ? end - 1 : end);
  }
  std::vector<dcp::Problem> problems = dcp::CheckStructure(*md, files);
  for (const dcp::Problem& p : problems) {
    if (dcp::ToString(p).empty()) __builtin_trap();
  }
  // Open a few items with the input as their file (bounded decode size).
  size_t opened = 0;
  for (const dcp::StorageItem& it : md->items) {
    if (opened++ == 8) break;
    auto bytes = dcp::OpenItemBytes(src, it, uint64_t{1} << 20);
    if (!bytes.ok()) {
      if (bytes.status().code() == Code::kInternal) __builtin_trap();
      continue;
    }
    if (!it.transforms.empty() && (*bytes)->Size() > (uint64_t{1} << 20)) __builtin_trap();
  }
  return 0;
}
