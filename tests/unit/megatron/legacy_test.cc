// Megatron legacy (--ckpt-format torch) format rules: rank folder names
// (get_checkpoint_name, find_checkpoint_rank_0, the PP/EP ambiguity), the
// grid of folders, distrib_optim.pt formats A/B/C and chained lists with
// their consistency checks, model_optim_rng.pt. Inputs: real torch.save files
// from tests/golden/legacy_synthetic/make_synthetic.py.
#include "format/megatron/legacy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "testing/testutil.h"

namespace ckpt::megatron::legacy {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::unique_ptr<torch::TorchFile> OpenGolden(const std::string& rel) {
  std::string bytes = ::ckpt::testing::ReadSourceFile("tests/golden/legacy_synthetic/" + rel);
  EXPECT_FALSE(bytes.empty()) << rel;
  auto tf = torch::TorchFile::Open(std::make_shared<StringSource>(std::move(bytes), rel));
  EXPECT_TRUE(tf.ok()) << tf.status().ToString();
  return tf.ok() ? std::move(*tf) : nullptr;
}

// ---- rank folder names ----

TEST(LegacyRankFolder, ParsesWhatGetCheckpointNameWrites) {
  auto a = ParseRankFolderName("mp_rank_03");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->tp, 3);
  EXPECT_TRUE(a->suffixes.empty());
  auto b = ParseRankFolderName("mp_rank_01_002");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->tp, 1);
  EXPECT_THAT(b->suffixes, ElementsAre(2));
  auto c = ParseRankFolderName("mp_rank_00_003_001");
  ASSERT_TRUE(c);
  EXPECT_THAT(c->suffixes, ElementsAre(3, 1));
  auto wide = ParseRankFolderName("mp_rank_128_1000");  // wider than the minimum width
  ASSERT_TRUE(wide);
  EXPECT_EQ(wide->tp, 128);
  EXPECT_THAT(wide->suffixes, ElementsAre(1000));
}

TEST(LegacyRankFolder, RejectsNamesGetCheckpointNameNeverWrites) {
  for (const char* n : {"mp_rank_0", "mp_rank_003", "mp_rank_00_01", "mp_rank_00_0001", "mp_rank_00_000_000_000",
                        "mp_rank_", "mp_rank_00_", "mp_rank_0a", "mp_rank_00__000", "rank_00", "mp_rank_-1",
                        "mp_rank_0000000000000000000000"}) {
    EXPECT_FALSE(ParseRankFolderName(n)) << n;
  }
}

TEST(LegacyRankFolder, FormatsAsGetCheckpointName) {
  EXPECT_EQ(RankFolder({3, 0, 0}, false, false), "mp_rank_03");
  EXPECT_EQ(RankFolder({1, 2, 0}, true, false), "mp_rank_01_002");
  EXPECT_EQ(RankFolder({1, 0, 2}, false, true), "mp_rank_01_002");  // the same name: PP/EP ambiguity
  EXPECT_EQ(RankFolder({0, 3, 1}, true, true), "mp_rank_00_003_001");
  EXPECT_EQ(RankFolder({100, 1000, 0}, true, false), "mp_rank_100_1000");
}

TEST(LegacyRankFolder, FindsRank0InFindCheckpointRank0Order) {
  EXPECT_EQ(FindRank0Folder({"mp_rank_01", "mp_rank_00"}), "mp_rank_00");
  EXPECT_EQ(FindRank0Folder({"mp_rank_00_000_000", "mp_rank_00_000"}), "mp_rank_00_000");
  EXPECT_EQ(FindRank0Folder({"mp_rank_00_000_000"}), "mp_rank_00_000_000");
  EXPECT_FALSE(FindRank0Folder({"mp_rank_01", "mp_rank_00_001"}));
}

// ---- the grid ----

TEST(LegacyGrid, OneSuffixIsPipelineOrExpertAsArgsSay) {
  const std::vector<std::string> names = {"mp_rank_00_000", "mp_rank_00_001", "mp_rank_01_000", "mp_rank_01_001"};
  auto pp = MapRankFolders(names, GridSizes{2, 2, 1}, "iter_0000010");
  ASSERT_TRUE(pp.ok()) << pp.status().ToString();
  EXPECT_TRUE(pp->pipeline_parallel);
  EXPECT_FALSE(pp->expert_parallel);
  EXPECT_EQ(pp->Find({1, 1, 0})->folder, "mp_rank_01_001");
  EXPECT_TRUE(pp->missing.empty());
  EXPECT_TRUE(pp->unexpected.empty());
  EXPECT_FALSE(pp->suffix_ambiguous);

  auto ep = MapRankFolders(names, GridSizes{2, 1, 2}, "iter_0000010");
  ASSERT_TRUE(ep.ok());
  EXPECT_FALSE(ep->pipeline_parallel);
  EXPECT_TRUE(ep->expert_parallel);
  EXPECT_EQ(ep->Find({1, 0, 1})->folder, "mp_rank_01_001");
  EXPECT_EQ(ep->Find({1, 1, 0}), nullptr);
  EXPECT_TRUE(ep->missing.empty());

  // Without args the suffix is ambiguous: taken as PP, flagged.
  auto guess = MapRankFolders(names, std::nullopt, "iter_0000010");
  ASSERT_TRUE(guess.ok());
  EXPECT_EQ(guess->sizes_source, "folders");
  EXPECT_TRUE(guess->suffix_ambiguous);
  EXPECT_EQ(guess->sizes.tp, 2);
  EXPECT_EQ(guess->sizes.pp, 2);
  EXPECT_EQ(guess->sizes.ep, 1);
}

TEST(LegacyGrid, OrdersRanksTpFastestThenEpThenPp) {
  auto g = MapRankFolders({}, GridSizes{2, 2, 2}, "it");
  ASSERT_TRUE(g.ok());
  ASSERT_EQ(g->ranks.size(), 8u);
  EXPECT_EQ(g->ranks[0].folder, "mp_rank_00_000_000");
  EXPECT_EQ(g->ranks[1].folder, "mp_rank_01_000_000");
  EXPECT_EQ(g->ranks[2].folder, "mp_rank_00_000_001");
  EXPECT_EQ(g->ranks[4].folder, "mp_rank_00_001_000");
  EXPECT_EQ(g->missing.size(), 8u);
}

TEST(LegacyGrid, ReportsMissingAndUnexpectedFolders) {
  auto g = MapRankFolders({"mp_rank_00", "mp_rank_01", "mp_rank_07", "mp_rank_x", "common.pt", "mp_rank_02_001"},
                          GridSizes{3, 1, 1}, "iter_0000030");
  ASSERT_TRUE(g.ok());
  EXPECT_THAT(g->missing, ElementsAre("mp_rank_02"));
  EXPECT_THAT(g->unexpected, ElementsAre("mp_rank_02_001", "mp_rank_07", "mp_rank_x"));
  std::vector<std::string> p = GridProblems(*g, "iter_0000030");
  ASSERT_EQ(p.size(), 4u);
  EXPECT_EQ(p[0], "iter_0000030: rank folder mp_rank_02 (tp 2, pp 0, ep 0) is missing");
  EXPECT_EQ(p[1], "iter_0000030: folder 'mp_rank_02_001' is not a rank of the TP 3 x PP 1 x EP 1 grid (sizes from args)");
}

TEST(LegacyGrid, InfersThreePartNamesFromFolders) {
  auto g = MapRankFolders({"mp_rank_00_000_000", "mp_rank_00_000_001", "mp_rank_00_001_000"}, std::nullopt, "it");
  ASSERT_TRUE(g.ok());
  EXPECT_FALSE(g->suffix_ambiguous);
  EXPECT_EQ(g->sizes.pp, 2);
  EXPECT_EQ(g->sizes.ep, 2);
  EXPECT_THAT(g->missing, ElementsAre("mp_rank_00_001_001"));
}

TEST(LegacyGrid, RejectsBadSizes) {
  auto zero = MapRankFolders({"mp_rank_00"}, GridSizes{0, 1, 1}, "it");
  EXPECT_EQ(zero.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(zero.status().message(), HasSubstr("it: parallel sizes must be >= 1"));
  auto huge = MapRankFolders({"mp_rank_00"}, GridSizes{1 << 12, 1 << 12, 1 << 12}, "it");
  EXPECT_EQ(huge.status().code(), Code::kInvalidArgument);
  auto none = MapRankFolders({"foo", "mp_rank_bad"}, std::nullopt, "it");
  EXPECT_EQ(none.status().code(), Code::kNotFound);
}

// ---- distrib_optim.pt ----

TEST(LegacyDistribOptim, FormatCBuffersAndStateKeys) {
  auto tf = OpenGolden("distrib_optim/format_c.pt");
  ASSERT_TRUE(tf);
  auto d = ParseDistribOptim(*tf, "distrib_optim.pt");
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_FALSE(d->chained);
  EXPECT_TRUE(d->problems.empty()) << d->problems[0];
  ASSERT_EQ(d->optimizers.size(), 1u);
  const DistribOptimState& s = *d->optimizers[0];
  EXPECT_EQ(s.format, DistribOptimFormat::kCoalesced);
  ASSERT_EQ(s.buffers.size(), 2u);
  const Buffer& b0 = s.buffers[0];
  EXPECT_EQ(b0.dtype_key, "(torch.bfloat16, torch.float32)");
  EXPECT_EQ(b0.param_dtype, "torch.bfloat16");
  EXPECT_EQ(b0.grad_dtype, "torch.float32");
  EXPECT_EQ(b0.numel_unpadded, 1216);
  EXPECT_EQ(b0.numel(), 1216);
  ASSERT_EQ(b0.states.size(), 3u);
  EXPECT_EQ(b0.states[1].name, "exp_avg");
  ASSERT_EQ(b0.states[1].tensors.size(), 1u);
  const TensorRef& t = b0.states[1].tensors[0];
  EXPECT_EQ(t.key, "0.(torch.bfloat16, torch.float32).exp_avg");
  EXPECT_EQ(tf->tensors()[t.index].key, t.key);
  EXPECT_EQ(t.dtype, DType::kFloat32);
  EXPECT_EQ(t.numel, 1216);
  // Buffer 1: fp32 params, an optimizer with exp_avg only (Lion).
  const Buffer& b1 = s.buffers[1];
  EXPECT_EQ(b1.dtype_key, "(torch.float32, torch.float32)");
  ASSERT_EQ(b1.states.size(), 2u);
  EXPECT_EQ(b1.states[0].name, "param");
  EXPECT_EQ(b1.states[1].name, "exp_avg");
  EXPECT_TRUE(CheckDistribOptim(*d).ok());
}

TEST(LegacyDistribOptim, FormatBPerBucketSizes) {
  auto tf = OpenGolden("distrib_optim/format_b.pt");
  ASSERT_TRUE(tf);
  auto d = ParseDistribOptim(*tf, "distrib_optim.pt");
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_TRUE(d->problems.empty()) << d->problems[0];
  const DistribOptimState& s = *d->optimizers[0];
  EXPECT_EQ(s.format, DistribOptimFormat::kPerBucket);
  ASSERT_EQ(s.buffers.size(), 1u);
  const Buffer& b = s.buffers[0];
  EXPECT_THAT(b.bucket_numel, ElementsAre(256, 128));
  EXPECT_THAT(b.bucket_numel_unpadded, ElementsAre(250, 100));
  EXPECT_FALSE(b.numel_unpadded);
  ASSERT_EQ(b.states.size(), 3u);
  ASSERT_EQ(b.states[2].tensors.size(), 2u);
  EXPECT_EQ(b.states[2].tensors[1].key, "0.(torch.bfloat16, torch.float32).exp_avg_sq.1");
  EXPECT_EQ(b.numel(), 384);
}

TEST(LegacyDistribOptim, FormatASingleDtypeKey) {
  auto tf = OpenGolden("distrib_optim/format_a.pt");
  ASSERT_TRUE(tf);
  auto d = ParseDistribOptim(*tf, "distrib_optim.pt");
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_TRUE(d->problems.empty());
  const DistribOptimState& s = *d->optimizers[0];
  EXPECT_EQ(s.format, DistribOptimFormat::kPerBucketLegacy);
  EXPECT_EQ(s.buffers[0].dtype_key, "torch.float32");
  EXPECT_EQ(s.buffers[0].param_dtype, "torch.float32");
  EXPECT_TRUE(s.buffers[0].bucket_numel.empty());
  EXPECT_EQ(s.buffers[0].numel(), 160);
  EXPECT_EQ(s.buffers[0].states[0].tensors.size(), 2u);
}

TEST(LegacyDistribOptim, ChainedListWithNone) {
  auto tf = OpenGolden("distrib_optim/chained.pt");
  ASSERT_TRUE(tf);
  auto d = ParseDistribOptim(*tf, "distrib_optim.pt");
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_TRUE(d->chained);
  ASSERT_EQ(d->optimizers.size(), 3u);
  ASSERT_TRUE(d->optimizers[0]);
  EXPECT_FALSE(d->optimizers[1]);
  ASSERT_TRUE(d->optimizers[2]);
  EXPECT_EQ(d->optimizers[2]->buffers[0].numel(), 64);
  EXPECT_EQ(d->optimizers[2]->buffers[0].states[0].tensors[0].key, "2.0.(torch.bfloat16, torch.float32).param");
}

TEST(LegacyDistribOptim, NumelUnpaddedMismatchNamesFileBufferAndKey) {
  auto tf = OpenGolden("distrib_optim/mismatch_c.pt");
  ASSERT_TRUE(tf);
  auto d = ParseDistribOptim(*tf, "mp_rank_00/distrib_optim.pt");
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  ASSERT_EQ(d->problems.size(), 1u);
  EXPECT_EQ(d->problems[0], "mp_rank_00/distrib_optim.pt: buffer 0 (torch.bfloat16, torch.float32): exp_avg has 1200 "
                            "elements, numel_unpadded says 1216");
  Status s = CheckDistribOptim(*d);
  EXPECT_EQ(s.code(), Code::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("exp_avg has 1200 elements"));
}

TEST(LegacyDistribOptim, PerBucketLengthMismatch) {
  auto tf = OpenGolden("distrib_optim/mismatch_b.pt");
  ASSERT_TRUE(tf);
  auto d = ParseDistribOptim(*tf, "distrib_optim.pt");
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  ASSERT_EQ(d->problems.size(), 3u);  // param, exp_avg, exp_avg_sq
  EXPECT_EQ(d->problems[0], "distrib_optim.pt: buffer 0 (torch.bfloat16, torch.float32): param bucket 1 has 120 "
                            "elements, per_bucket_numel says 128");
}

TEST(LegacyDistribOptim, RejectsOtherRootsWithTheirKey) {
  // A model_optim_rng.pt is no distrib_optim.pt: the first string key is unknown.
  auto tf = OpenGolden("tp2pp2_distopt/iter_0000010/mp_rank_00_000/model_optim_rng.pt");
  ASSERT_TRUE(tf);
  auto d = ParseDistribOptim(*tf, "x/distrib_optim.pt");
  EXPECT_EQ(d.status().code(), Code::kDataLoss);
  EXPECT_THAT(d.status().message(), HasSubstr("x/distrib_optim.pt: unknown key 'args'"));
}

// ---- model_optim_rng.pt ----

TEST(LegacyModelOptimRng, PlainChunkAndDistributedOptimizer) {
  auto tf = OpenGolden("tp2pp2_distopt/iter_0000010/mp_rank_01_001/model_optim_rng.pt");
  ASSERT_TRUE(tf);
  auto m = ParseModelOptimRng(*tf, "mp_rank_01_001/model_optim_rng.pt");
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_TRUE(m->problems.empty());
  EXPECT_EQ(m->common.iteration, 10);
  EXPECT_EQ(ArgInt(m->common, "tensor_model_parallel_size"), 2);
  ASSERT_EQ(m->chunks.size(), 1u);
  const ModelChunk& c = m->chunks[0];
  EXPECT_EQ(c.name, "model");
  EXPECT_FALSE(c.vpp_rank);
  ASSERT_EQ(c.tensors.size(), 9u);  // 6 layer params, extra_state, final norm, output layer
  EXPECT_EQ(c.local_keys[0], "decoder.layers.0.self_attention.linear_proj.weight");
  EXPECT_EQ(c.tensors[0].key, "model.decoder.layers.0.self_attention.linear_proj.weight");
  EXPECT_EQ(c.local_keys.back(), "output_layer.weight");
  EXPECT_EQ(c.tensors.back().shape, (std::vector<int64_t>{16, 8}));  // TP-local vocab rows
  EXPECT_TRUE(m->has_optimizer);
  EXPECT_FALSE(m->chained_optimizer);
  ASSERT_EQ(m->optimizers.size(), 1u);
  EXPECT_TRUE(m->optimizers[0].distributed);
  EXPECT_EQ(m->optimizers[0].param_group_count, 2);
  EXPECT_EQ(m->optimizers[0].grad_scaler, nullptr);
  EXPECT_GT(m->other_tensors, 0);  // rng states
}

TEST(LegacyModelOptimRng, VirtualPipelineChunksAndFloat16Optimizer) {
  auto tf = OpenGolden("pp2_vpp2_fp16opt/release/mp_rank_00_000/model_optim_rng.pt");
  ASSERT_TRUE(tf);
  auto m = ParseModelOptimRng(*tf, "model_optim_rng.pt");
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_TRUE(m->problems.empty());
  ASSERT_EQ(m->chunks.size(), 2u);
  EXPECT_EQ(m->chunks[0].name, "model0");
  EXPECT_EQ(m->chunks[1].vpp_rank, 1);
  EXPECT_EQ(m->chunks[0].local_keys[0], "embedding.word_embeddings.weight");
  ASSERT_EQ(m->optimizers.size(), 1u);
  const OptimizerEntry& o = m->optimizers[0];
  EXPECT_FALSE(o.distributed);
  EXPECT_EQ(o.state_entries, 13);  // one per param of both chunks
  EXPECT_NE(o.fp32_from_fp16_params, nullptr);
  EXPECT_EQ(o.key_prefix, "optimizer.");
  EXPECT_FALSE(o.tensors.empty());
}

TEST(LegacyModelOptimRng, ChainedOptimizerList) {
  auto tf = OpenGolden("ep2_chained/iter_0000020/mp_rank_00_001/model_optim_rng.pt");
  ASSERT_TRUE(tf);
  auto m = ParseModelOptimRng(*tf, "model_optim_rng.pt");
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_TRUE(m->chained_optimizer);
  ASSERT_EQ(m->optimizers.size(), 2u);
  EXPECT_EQ(m->optimizers[1].key_prefix, "optimizer.1.");
  EXPECT_TRUE(m->optimizers[0].distributed);
  EXPECT_TRUE(m->optimizers[1].distributed);
  // Local experts keep their local index.
  const auto& keys = m->chunks[0].local_keys;
  EXPECT_NE(std::find(keys.begin(), keys.end(), "decoder.layers.0.mlp.experts.local_experts.1.linear_fc2.weight"),
            keys.end());
}

TEST(LegacyModelOptimRng, RejectsAListRoot) {
  auto tf = OpenGolden("distrib_optim/chained.pt");
  ASSERT_TRUE(tf);
  auto m = ParseModelOptimRng(*tf, "mp_rank_00/model_optim_rng.pt");
  EXPECT_EQ(m.status().code(), Code::kDataLoss);
  EXPECT_THAT(m.status().message(), HasSubstr("mp_rank_00/model_optim_rng.pt: root is list"));
}

}  // namespace
}  // namespace ckpt::megatron::legacy
