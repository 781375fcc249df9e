// libFuzzer target: Megatron-LM's `args` in a common state (a pickle, as in
// common.pt's data.pkl or the common_state entry) through the model layer —
// ExtractCommonState, then ConfigFromArgs (with stored shapes that agree with
// args or are off by one, chosen by input bytes), LayoutFromArgs and
// DistOptFromArgs — and, when those succeed, the distributed optimizer's
// buffer layout (BuildRankOptimizer: buckets, padding, rank ranges) for the
// first, last and one input-chosen rank, plus the legacy rank folders.
// Invariants: buckets tile their buffer, every parameter lies inside its
// bucket, each DP rank's range lies inside its bucket, and the global rank
// grid maps every rank inside the layout.
// Models larger than the planners need for a check (layers x experts or
// stages > 4096, world > 4096) are not planned: the fuzzer's time, not a
// product limit (as in hf_config_fuzz).
// Seeds: tests/fuzz/seeds/megatron_args (common-state pickles) and, as for
// every megatron_* target, tests/golden/megatron; see scripts/fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "ckpt/model.h"
#include "format/megatron/megatron.h"
#include "format/pickle/unpickler.h"
#include "model/args.h"

namespace {

namespace m = ckpt::model;

void CheckBuffers(const std::vector<m::ParamBuffer>& buffers) {
  for (const m::ParamBuffer& b : buffers) {
    if (b.dp < 1) __builtin_trap();
    int64_t next = 0;
    for (const m::BufferBucket& k : b.buckets) {
      if (k.offset != next || k.numel < k.numel_unpadded || k.numel_unpadded < 0) __builtin_trap();
      if (k.numel % b.dp != 0) __builtin_trap();
      next = k.offset + k.numel;
    }
    if (next != b.numel) __builtin_trap();
    for (const m::BufferParam& p : b.params) {
      if (p.bucket < 0 || p.bucket >= static_cast<int64_t>(b.buckets.size())) __builtin_trap();
      const m::BufferBucket& k = b.buckets[p.bucket];
      if (p.start < k.offset || p.end < p.start || p.end > k.offset + k.numel_unpadded) __builtin_trap();
      if (b.WorldOffset(p) < 0) __builtin_trap();
    }
    for (int64_t bucket = 0; bucket < static_cast<int64_t>(b.buckets.size()); ++bucket) {
      const m::BufferBucket& k = b.buckets[bucket];
      auto last = b.RankRange(bucket, b.dp - 1);
      if (b.RankRange(bucket, 0).first != k.offset || last.second != k.offset + k.numel) __builtin_trap();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ckpt;
  SpanSource src(data, size, "fuzz/common.pkl");
  pickle::UnpickleOptions o;
  o.mode = pickle::Mode::kInspect;
  o.max_values = 1u << 20;
  o.max_stack = 1u << 16;
  auto u = pickle::Unpickle(src, 0, o);
  if (!u.ok()) return 0;
  auto common = megatron::ExtractCommonState(u->root, "fuzz/common.pt");
  if (!common.ok()) {
    if (common.status().code() != Code::kDataLoss) __builtin_trap();
    return 0;
  }
  // Stored shapes: what args imply, sometimes absent or off by one, so the
  // cross-checks run both ways.
  size_t pick = 0;
  auto byte = [&]() -> uint8_t { return size ? data[pick++ % size] : 0; };
  const int64_t hidden = megatron::ArgInt(*common, "hidden_size").value_or(64);
  const int64_t vocab = megatron::ArgInt(*common, "padded_vocab_size").value_or(128);
  m::ShapeOf shape_of = [&](std::string_view key) -> std::optional<std::vector<int64_t>> {
    const uint8_t b = byte();
    if (b % 3 == 0) return std::nullopt;
    const int64_t skew = b % 5 == 0 ? 1 : 0;
    if (key == "embedding.word_embeddings.weight") return std::vector<int64_t>{vocab + skew, hidden};
    return std::vector<int64_t>{int64_t{b % 4}, hidden + skew, hidden};
  };
  auto config = m::ConfigFromArgs(&*common, shape_of);
  auto layout = m::LayoutFromArgs(*common);
  const m::DistOptSettings settings = m::DistOptFromArgs(*common, std::nullopt);
  if (!config.ok() || !layout.ok()) return 0;
  (void)m::GuessFamily(*config);
  (void)m::MegatronArgs(*config, *layout);
  const m::ParallelLayout& l = *layout;
  const int64_t experts = config->num_experts > 0 ? config->num_experts : 1;
  if (config->num_layers * experts > 4096 || l.pp * l.vpp > 4096 || l.world_size() > 4096) return 0;
  for (int64_t rank : {int64_t{0}, l.world_size() - 1, int64_t{byte()} % l.world_size()}) {
    auto at = m::GlobalRankCoordinates(l, rank);
    if (!at.ok()) __builtin_trap();  // every rank of a valid layout has a place
    if (at->tp_rank >= l.tp || at->pp_rank >= l.pp || at->ep_rank >= l.ep || at->etp_rank >= l.etp) __builtin_trap();
    m::ChunkCoords cc;
    cc.tp_rank = at->tp_rank;
    cc.pp_rank = at->pp_rank;
    cc.ep_rank = at->ep_rank;
    cc.etp_rank = at->etp_rank;
    auto opt = m::BuildRankOptimizer(*config, l, settings, cc);
    if (!opt.ok()) continue;
    if (opt->chunks.size() != static_cast<size_t>(l.vpp)) __builtin_trap();
    CheckBuffers(opt->dense);
    CheckBuffers(opt->expert);
    for (const auto& chunk : opt->chunks) (void)m::ChunkStateDict(chunk);
  }
  (void)m::LegacyRanks(l);
  return 0;
}
