// libFuzzer target: the model layer's readers of untrusted configs — an HF
// config.json (ParseHfConfig) and what is derived from it: config.json
// written back (MakeHfConfig, which must parse again to the same family) and
// the import / export plans (PlanImport / PlanExport with every tensor
// "present", so hostile sizes reach the planners' arithmetic). Sizes are
// bounded by kMaxModelSize; a plan larger than a few thousand tensors is not
// built (the fuzzer's time, not a product limit: planning is linear, ~0.5 ms a
// layer under ASan, and a 4096-layer plan took 2 s, a timeout whenever the
// fuzzer was starved of CPU).
// Seed with tests/golden/hf (config.json files).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <nlohmann/json.hpp>

#include "ckpt/model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace m = ckpt::model;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  auto hf = m::ParseHfConfig(j);
  if (!hf.ok()) return 0;
  m::ModelConfig c = hf->config;
  if (!c.Validate().ok()) return 0;
  const int64_t experts = c.num_experts > 0 ? c.num_experts : 1;
  if (c.num_layers * experts > 1024) return 0;
  auto out = m::MakeHfConfig(c, hf->family, ckpt::DType::kBFloat16);
  if (out.ok()) {
    auto again = m::ParseHfConfig(nlohmann::json::parse(out->dump()));
    if (!again.ok() || again->family != hf->family) __builtin_trap();
  }
  auto all = [](std::string_view) { return true; };
  (void)m::PlanImport(c, hf->family, size % 2 ? "te" : "local", c.PaddedVocab(*c.vocab_size, 2), all);
  (void)m::PlanExport(c, hf->family, all);
  (void)m::GuessFamily(c);
  return 0;
}
