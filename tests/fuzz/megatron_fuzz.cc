// libFuzzer target: the Megatron text parsers over arbitrary bytes —
// metadata.json (ParseConfig), the tracker file (ParseTracker) and
// ShardedObject unique keys (ParseShardedObjectKey, which must round-trip).
// Seed with tests/golden/megatron (metadata.json, tracker files).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "format/megatron/megatron.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace mg = ckpt::megatron;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto cfg = mg::ParseConfig(text, "fuzz/metadata.json");
  if (cfg.ok() && cfg->sharded_backend.empty()) __builtin_trap();
  auto tr = mg::ParseTracker(text, "fuzz/latest_checkpointed_iteration.txt");
  if (tr.ok()) {
    if (!tr->release && tr->iteration < 0) __builtin_trap();
    (void)mg::IterationDirName(*tr);
  }
  auto key = mg::ParseShardedObjectKey(text);
  if (key) {
    auto again = mg::ParseShardedObjectKey(mg::ShardedObjectKeyString(*key));
    if (!again || again->key != key->key || again->offset != key->offset || again->shape != key->shape) {
      __builtin_trap();
    }
  }
  (void)mg::Classify(text, size % 2 == 0);
  return 0;
}
