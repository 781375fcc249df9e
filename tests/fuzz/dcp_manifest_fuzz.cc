// libFuzzer target: dcp::ParseManifest (ckptkit's checksum manifest beside DCP
// data files) over arbitrary bytes; what parses must serialize and parse back
// to the same items. Seeds: tests/fuzz/seeds/dcp_manifest (and, as for every
// dcp_* target, the DCP goldens), see scripts/fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "format/dcp/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ckpt;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto items = dcp::ParseManifest(text, "fuzz.json");
  if (!items.ok()) {
    if (items.status().code() != Code::kDataLoss) __builtin_trap();
    return 0;
  }
  auto back = dcp::ParseManifest(dcp::SerializeManifest(*items), "again.json");
  if (!back.ok() || back->size() != items->size()) __builtin_trap();
  return 0;
}
