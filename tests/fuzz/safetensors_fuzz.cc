// libFuzzer target: safetensors ReadHeader over arbitrary bytes; a header that
// parses must re-plan to a file that parses back to the same tensors, and the
// index parser gets the same bytes as JSON text.
// Seed with tests/golden/safetensors/*.safetensors and tests/corrupt/safetensors/*.
#include <cstddef>
#include <cstdint>
#include <string>

#include "ckpt/byte_source.h"
#include "format/safetensors/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace st = ckpt::safetensors;
  ckpt::SpanSource src(data, size, "fuzz.safetensors");
  auto h = st::ReadHeader(src);
  if (h.ok()) {
    uint64_t prev = 0;
    for (const st::TensorEntry& t : h->tensors) {
      if (t.begin != prev || t.end < t.begin) __builtin_trap();
      if (h->data_start + t.end > size) __builtin_trap();
      prev = t.end;
      (void)st::TorchShape(t);
    }
    // Round trip the layout (only for modest sizes: no data is copied).
    std::vector<st::TensorSpec> specs;
    bool representable = true;
    for (const st::TensorEntry& t : h->tensors) {
      auto shape = st::TorchShape(t);
      if (!shape.ok()) {
        representable = false;
        break;
      }
      specs.push_back({t.name, t.dtype, *shape});
    }
    if (representable) {
      std::optional<std::map<std::string, std::string>> md;
      if (h->has_metadata) md = h->metadata;
      auto plan = st::PlanFile(specs, md);
      if (plan.ok()) {
        if (plan->file_size - plan->header.data_start != prev) __builtin_trap();
        std::string file = plan->header_bytes;
        if (prev <= (1u << 20)) {
          file.append(prev, '\0');
          auto back = st::ReadHeader(ckpt::StringSource(file, "replanned"));
          if (!back.ok() || back->tensors.size() != h->tensors.size()) __builtin_trap();
        }
      }
    }
  }
  auto idx = st::ParseIndex(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.json");
  if (idx.ok()) {
    auto text = st::SerializeIndex(*idx);
    if (text.ok()) {
      auto again = st::ParseIndex(*text, "again.json");
      if (!again.ok() || again->weight_map != idx->weight_map) __builtin_trap();
    }
  }
  return 0;
}
