// Reshard over the real megatron-core goldens (tests/golden/legacy), read
// back in model space: every tensor and optimizer state equals the source's
// (megatron's own loads of the outputs are tests/interop/test_reshard.py).
#include "ckpt/reshard.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "ckpt/checkpoint.h"
#include "ckpt/convert.h"
#include "ckpt/fault_env.h"
#include "unit/checkpoint/checkpoint_testutil.h"
#include "unit/convert/model_space_testutil.h"

namespace ckpt {
namespace {

using ::ckpt::testing_model_space::Bytes;
using ::ckpt::testing_model_space::Golden;
using ::ckpt::testing_model_space::Open;

class ReshardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("ckpt_reshard_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    std::filesystem::remove_all(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

// Every tensor of `a` in `b` with the same shape and bytes.
void ExpectSameModelSpace(const std::string& a_path, const std::string& b_path) {
  std::unique_ptr<CheckpointReader> a = Open(a_path), b = Open(b_path);
  ASSERT_TRUE(a && b);
  size_t states = 0;
  for (size_t i = 0; i < a->tensors().size(); ++i) {
    const TensorInfo& t = a->tensors()[i];
    Result<size_t> j = b->Find(t.key);
    ASSERT_TRUE(j.ok()) << t.key;
    EXPECT_EQ(b->tensors()[*j].shape, t.shape) << t.key;
    EXPECT_EQ(Bytes(*b, *j), Bytes(*a, i)) << t.key;
    if (t.key.rfind("optimizer.state.", 0) == 0) ++states;
  }
  EXPECT_GE(states, 27u);
}

TEST_F(ReshardTest, LegacyTp2Pp2ToTp1Pp1KeepsEveryTensor) {
  ReshardOptions o;
  o.tp = 1;
  o.pp = 1;
  Result<ReshardReport> r = Reshard(Golden("mc016_llama_tp2pp2dp2", "legacy"), dir_.string(), o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->optimizer, "legacy distrib_optim.pt");
  EXPECT_EQ(r->target_padded_vocab, 32);
  ExpectSameModelSpace(Golden("mc016_llama_tp2pp2dp2", "legacy"), dir_.string());
}

TEST_F(ReshardTest, DpReshardableBucketsAtANewLayoutReadBackAsTheSource) {
  ReshardOptions o;
  o.dp = 1;
  o.optimizer_sharding = OptimizerSharding::kDpReshardable;
  Result<ReshardReport> r = Reshard(Golden("mc016_llama_dp2", "dp_reshardable"), dir_.string(), o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ExpectSameModelSpace(Golden("mc016_llama_dp2", "legacy"), dir_.string());
}

TEST_F(ReshardTest, MoeDpReshardableKeepsBothOptimizers) {
  ReshardOptions o;
  o.optimizer_sharding = OptimizerSharding::kDpReshardable;
  Result<ReshardReport> r = Reshard(Golden("mc016_mixtral_ep2", "legacy"), dir_.string(), o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ExpectSameModelSpace(Golden("mc016_mixtral_ep2", "legacy"), dir_.string());
}

TEST_F(ReshardTest, PreflightRefusesWhatDoesNotFitAndWritesNothing) {
  const std::string src = Golden("mc016_llama_dp2", "dp_reshardable");
  for (auto [tp, pp, why] : {std::tuple{3, 0, "num_attention_heads 4 is not divisible by tp=3"},
                             std::tuple{4, 0, "num_query_groups 2 is not divisible by tp=4"},
                             std::tuple{0, 3, "layers"}}) {
    ReshardOptions o;
    o.tp = tp;
    o.pp = pp;
    Result<ReshardReport> r = Reshard(src, dir_.string(), o);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_NE(r.status().message().find(why), std::string::npos) << r.status().ToString();
    EXPECT_FALSE(std::filesystem::exists(dir_));
  }
  ReshardOptions o;
  o.check_only = true;
  o.tp = 2;
  Result<ReshardReport> r = Reshard(src, dir_.string(), o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->source_layout.rfind("TP=1", 0), 0u);
  EXPECT_EQ(r->target_layout.rfind("TP=2", 0), 0u);
  EXPECT_GT(r->bytes, 0u);
  EXPECT_TRUE(r->files.empty());
  EXPECT_FALSE(std::filesystem::exists(dir_));
}

// A full disk or a failing rename mid-write: the error is returned and no
// output that looks complete is published (no tracker, no metadata.json); a
// checkpoint already in the destination root stays loadable.
TEST_F(ReshardTest, FaultsMidWritePublishNothing) {
  const std::string src = Golden("mc016_llama_dp2", "dp_reshardable");
  // An earlier iteration already in the destination.
  {
    ReshardOptions o;
    o.iteration = 1;
    ASSERT_TRUE(Reshard(src, dir_.string(), o).ok());
  }
  auto published = [&] {
    return std::filesystem::exists(dir_ / "iter_0000002" / "metadata.json") ||
           std::filesystem::exists(dir_ / "iter_0000002" / ".metadata");
  };
  for (int fault = 0; fault < 3; ++fault) {
    FaultEnv env(Env::Default());
    if (fault == 0) env.SetSpaceLimit(20000);
    if (fault == 1) env.FailRename(".distcp");
    if (fault == 2) env.FailRename("latest_checkpointed_iteration");
    ReshardOptions o;
    o.env = &env;
    o.tp = 1;
    o.optimizer_sharding = OptimizerSharding::kDpReshardable;
    Result<ReshardReport> r = Reshard(src, dir_.string(), o);
    ASSERT_FALSE(r.ok()) << fault;
    EXPECT_FALSE(published() && fault < 2) << fault << ": " << r.status().ToString();
    // The tracker still names the complete earlier iteration.
    Result<std::string> tracker =
        ::ckpt::testing::ReadWhole(Env::Default(), (dir_ / "latest_checkpointed_iteration.txt").string());
    ASSERT_TRUE(tracker.ok()) << fault;
    EXPECT_EQ(*tracker, "1") << fault;
    std::unique_ptr<CheckpointReader> earlier = Open((dir_ / "iter_0000001").string());
    EXPECT_TRUE(earlier != nullptr) << fault;
  }
}

TEST_F(ReshardTest, ToLegacyAtANewLayoutReadsBackAsTheSource) {
  ReshardOptions o;
  o.tp = 2;
  o.pp = 2;
  o.to = ReshardFormat::kLegacy;
  Result<ReshardReport> r = Reshard(Golden("mc016_llama_dp2", "dp_reshardable"), dir_.string(), o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  for (const char* f : {"mp_rank_00_000", "mp_rank_01_000", "mp_rank_00_001", "mp_rank_01_001"}) {
    EXPECT_TRUE(std::filesystem::exists(dir_ / "iter_0000002" / f / "model_optim_rng.pt")) << f;
    EXPECT_TRUE(std::filesystem::exists(dir_ / "iter_0000002" / f / "distrib_optim.pt")) << f;
  }
  ExpectSameModelSpace(Golden("mc016_llama_dp2", "legacy"), dir_.string());
  std::unique_ptr<CheckpointReader> out = Open(dir_.string());
  ASSERT_TRUE(out != nullptr);
  EXPECT_NE(out->format().find("legacy"), std::string::npos) << out->format();
}

// A full disk or a failing rename while writing legacy: the error names the
// file, and no tracker or rank file is left behind; a failing tracker (the
// last step) leaves the complete iteration folder in place and says so.
TEST_F(ReshardTest, ToLegacyFaultsLeaveNothing) {
  const std::string src = Golden("mc016_llama_dp2", "dp_reshardable");
  for (int fault = 0; fault < 3; ++fault) {
    FaultEnv env(Env::Default());
    if (fault == 0) env.SetSpaceLimit(20000);
    if (fault == 1) env.FailRename("distrib_optim.pt");
    if (fault == 2) env.FailRename("latest_checkpointed_iteration");
    ReshardOptions o;
    o.env = &env;
    o.tp = 2;
    o.to = ReshardFormat::kLegacy;
    Result<ReshardReport> r = Reshard(src, dir_.string(), o);
    ASSERT_FALSE(r.ok()) << fault;
    EXPECT_NE(r.status().ToString().find(fault == 2 ? "latest_checkpointed_iteration" : ".pt"), std::string::npos)
        << r.status().ToString();
    EXPECT_FALSE(std::filesystem::exists(dir_ / "latest_checkpointed_iteration.txt")) << fault;
    size_t files = 0;
    if (std::filesystem::exists(dir_)) {
      for (const auto& e : std::filesystem::recursive_directory_iterator(dir_)) files += e.is_regular_file();
    }
    EXPECT_EQ(files, fault == 2 ? 4u : 0u) << fault;
    if (fault == 2) {
      EXPECT_NE(r.status().message().find("is complete and in place"), std::string::npos) << r.status().ToString();
      std::filesystem::remove_all(dir_);
    }
  }
}

TEST_F(ReshardTest, PreflightSaysWhetherMegatronLoadsTheSourceAsItIs) {
  const std::string src = Golden("mc016_llama_dp2", "dp_reshardable");
  ReshardOptions o;
  o.check_only = true;
  o.dp = 1;
  Result<ReshardReport> r = Reshard(src, "", o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->loads_as_is);
  EXPECT_TRUE(r->load_blockers.empty());
  o.tp = 2;
  r = Reshard(src, "", o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->loads_as_is);
  ASSERT_EQ(r->load_blockers.size(), 1u);
  EXPECT_NE(r->load_blockers[0].find("dp_reshardable"), std::string::npos) << r->load_blockers[0];
  // Core 0.6's packed buffers move at any DP under megatron-core >= 0.7's alignment.
  ReshardOptions p;
  p.check_only = true;
  r = Reshard(Golden("mc006_llama_dp2", "legacy"), "", p);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->loads_as_is);
  EXPECT_NE(r->load_blockers[0].find("0.6"), std::string::npos) << r->load_blockers[0];
  Result<ReshardChoices> c = DescribeReshard(src, ReshardOptions{});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  size_t as_is = 0;
  for (const ReshardChoices::Size& z : c->sizes) {
    if (z.load_blockers.empty()) ++as_is;
    if (z.name == "tp" && z.size == 2) {
      EXPECT_FALSE(z.load_blockers.empty());
    }
    if (z.name == "dp") {
      EXPECT_TRUE(z.load_blockers.empty()) << z.size;
    }
  }
  EXPECT_GE(as_is, 4u);
}

}  // namespace
}  // namespace ckpt
