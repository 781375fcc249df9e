// LegacyReader: Megatron-LM legacy (--ckpt-format torch) folders opened by
// OpenCheckpoint: the rank grid, raw tensor names, reads that match the rank
// files, problems (missing folders and files, size mismatches) listed for
// inspect and verify, and damaged files that give clear problems, never a
// crash. Inputs: tests/golden/legacy_synthetic (make_synthetic.py), copied
// into a MemEnv to damage them.
#include "checkpoint/legacy_reader.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "ckpt/checkpoint.h"
#include "ckpt/verify.h"
#include "unit/checkpoint/checkpoint_testutil.h"

namespace ckpt {
namespace {

using internal_checkpoint::LegacyReader;
using ::ckpt::testing::SourcePath;
using ::testing::HasSubstr;

constexpr char kGolden[] = "tests/golden/legacy_synthetic/";

// Copies tests/golden/legacy_synthetic/<name> (recursively) into env at dir.
void CopyLegacyGolden(Env* env, const std::string& name, const std::string& dir) {
  const std::string root = SourcePath(kGolden + name);
  for (const auto& e : std::filesystem::recursive_directory_iterator(root)) {
    if (!e.is_regular_file()) continue;
    const std::string rel = std::filesystem::relative(e.path(), root).string();
    testing_ckpt::CopyIntoEnv(env, kGolden + name + "/" + rel, dir + "/" + rel);
  }
}

std::unique_ptr<CheckpointReader> OpenOk(const std::string& path, Env* env = nullptr) {
  OpenOptions o;
  o.env = env;
  auto r = OpenCheckpoint(path, o);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(*r) : nullptr;
}

std::vector<std::string> ProblemTexts(const LegacyReader& r) {
  std::vector<std::string> out;
  for (const auto& p : r.problems()) out.push_back(p.file + ": " + p.message);
  return out;
}

TEST(LegacyReader, OpensRootThroughTrackerWithTypedView) {
  auto r = OpenOk(SourcePath(std::string(kGolden) + "tp2pp2_distopt"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->kind(), SourceKind::kLegacy);
  EXPECT_EQ(r->format(), "megatron-legacy");
  EXPECT_EQ(r->dcp_view(), nullptr);
  EXPECT_EQ(r->torch_file(), nullptr);
  const LegacyReader* lv = r->legacy_view();
  ASSERT_NE(lv, nullptr);
  EXPECT_TRUE(lv->problems().empty()) << ProblemTexts(*lv)[0];
  EXPECT_EQ(lv->iteration(), 10);
  EXPECT_EQ(lv->rank0_folder(), "mp_rank_00_000");
  EXPECT_EQ(lv->grid().sizes_source, "args");
  EXPECT_EQ(lv->grid().sizes.tp, 2);
  EXPECT_EQ(lv->grid().sizes.pp, 2);
  ASSERT_EQ(lv->ranks().size(), 4u);
  const LegacyReader::Rank* r11 = lv->FindRank({1, 1, 0});
  ASSERT_NE(r11, nullptr);
  EXPECT_EQ(r11->folder, "mp_rank_01_001");
  EXPECT_TRUE(r11->model.opened);
  EXPECT_TRUE(r11->distrib_optim.opened);
  ASSERT_TRUE(r11->distrib);
  EXPECT_EQ(r11->distrib->optimizers[0]->buffers[0].numel(), 672);
  EXPECT_EQ(r11->chunks[0].local_keys.back(), "output_layer.weight");
  ASSERT_NE(lv->common(), nullptr);
  EXPECT_EQ(megatron::ArgBool(*lv->common(), "use_distributed_optimizer"), true);
  ASSERT_NE(lv->rank0_file(), nullptr);

  // Raw names: <folder>/<key>, <folder>/distrib_optim.<key>.
  EXPECT_TRUE(r->Find("mp_rank_01_001/model.decoder.layers.0.self_attention.linear_qkv.weight").ok());
  auto opt = r->Find("mp_rank_01_001/distrib_optim.0.(torch.bfloat16, torch.float32).exp_avg");
  ASSERT_TRUE(opt.ok());
  EXPECT_EQ(r->tensors()[*opt].shape, (std::vector<int64_t>{672}));
  EXPECT_EQ(r->tensors()[*opt].file, "mp_rank_01_001/distrib_optim.pt");
  EXPECT_EQ(lv->location(*opt).file, LegacyReader::FileKind::kDistribOptim);

  nlohmann::json d = r->Details();
  EXPECT_EQ(d["iteration"], 10);
  EXPECT_EQ(d["problems"].size(), 0u);
  EXPECT_EQ(d["legacy"]["ranks"].size(), 4u);
  EXPECT_EQ(d["legacy"]["ranks"][3]["folder"], "mp_rank_01_001");
  EXPECT_EQ(d["legacy"]["ranks"][3]["distrib_optim"]["optimizers"][0]["buffers"][0]["numel_unpadded"], 672);
  std::string text = d["summary_text"].dump();
  EXPECT_THAT(text, HasSubstr("rank grid: TP=2 x PP=2 x EP=1 (sizes from args of mp_rank_00_000); 4 of 4"));
}

TEST(LegacyReader, ReadsEveryTensorAsItsRankFileHoldsIt) {
  const std::string root = SourcePath(std::string(kGolden) + "ep2_chained");
  auto r = OpenOk(root);
  ASSERT_TRUE(r);
  const LegacyReader* lv = r->legacy_view();
  ASSERT_NE(lv, nullptr);
  ASSERT_EQ(r->tensors().size(), 39u);
  for (size_t i = 0; i < r->tensors().size(); ++i) {
    const auto& loc = lv->location(i);
    const LegacyReader::Rank& rank = lv->ranks()[loc.rank];
    auto tf = lv->OpenRankFile(rank.coord, loc.file);
    ASSERT_TRUE(tf.ok()) << tf.status().ToString();
    StringSink want, got;
    ASSERT_TRUE((*tf)->ReadTensor((*tf)->tensors()[loc.index], &want).ok());
    ASSERT_TRUE(r->ReadTensor(i, &got).ok());
    EXPECT_EQ(got.str(), want.str()) << r->tensors()[i].key;
    EXPECT_EQ(got.str().size(), r->tensors()[i].nbytes);
  }
  // EP rank 1 is not dense DP rank 0: its chained list holds None first.
  const LegacyReader::Rank* ep1 = lv->FindRank({0, 0, 1});
  ASSERT_NE(ep1, nullptr);
  ASSERT_TRUE(ep1->distrib);
  EXPECT_TRUE(ep1->distrib->chained);
  EXPECT_FALSE(ep1->distrib->optimizers[0]);
  EXPECT_TRUE(ep1->chained_optimizer);
  EXPECT_EQ(lv->grid().sizes.ep, 2);
  EXPECT_TRUE(lv->grid().expert_parallel);
  EXPECT_FALSE(lv->grid().pipeline_parallel);
  EXPECT_TRUE(r->Find("mp_rank_00_001/distrib_optim.1.0.(torch.bfloat16, torch.float32).param").ok());
  EXPECT_EQ(lv->OpenRankFile({0, 1, 0}, LegacyReader::FileKind::kModel).status().code(), Code::kNotFound);
}

TEST(LegacyReader, ReleaseFolderVirtualPipelineNonDistributedOptimizer) {
  auto r = OpenOk(SourcePath(std::string(kGolden) + "pp2_vpp2_fp16opt"));
  ASSERT_TRUE(r);
  const LegacyReader* lv = r->legacy_view();
  ASSERT_NE(lv, nullptr);
  EXPECT_TRUE(lv->problems().empty());
  EXPECT_EQ(lv->iteration(), 5);  // release: from rank 0's file
  const LegacyReader::Rank& r0 = lv->ranks()[0];
  ASSERT_EQ(r0.chunks.size(), 2u);
  EXPECT_EQ(r0.chunks[1].name, "model1");
  EXPECT_FALSE(r0.distributed_optimizer);
  EXPECT_FALSE(r0.distrib_optim.present);
  EXPECT_TRUE(r->Find("mp_rank_00_001/model1.output_layer.weight").ok());
}

TEST(LegacyReader, OpensAnIterationFolderDirectly) {
  auto r = OpenOk(SourcePath(std::string(kGolden) + "tp2pp2_distopt/iter_0000010"));
  ASSERT_TRUE(r);
  ASSERT_NE(r->legacy_view(), nullptr);
  EXPECT_EQ(r->legacy_view()->iteration(), 10);  // rank 0's
}

TEST(LegacyReader, ListsMissingUnexpectedAndMismatchedAsProblems) {
  auto r = OpenOk(SourcePath(std::string(kGolden) + "broken"));
  ASSERT_TRUE(r);
  const LegacyReader* lv = r->legacy_view();
  ASSERT_NE(lv, nullptr);
  EXPECT_THAT(ProblemTexts(*lv),
              ::testing::ElementsAre(
                  "mp_rank_03: rank folder (tp 3, pp 0, ep 0) is missing",
                  "mp_rank_07: not a rank of the TP 4 x PP 1 x EP 1 grid (sizes from args); not read",
                  "mp_rank_01/distrib_optim.pt: missing: args.use_distributed_optimizer is set, so the optimizer's "
                  "tensor state is in this file",
                  "mp_rank_02/distrib_optim.pt: buffer 0 (torch.bfloat16, torch.float32): exp_avg has 560 elements, "
                  "numel_unpadded says 576"));
  EXPECT_EQ(r->Details()["problems"].size(), 4u);
  auto rep = Verify(SourcePath(std::string(kGolden) + "broken"));
  ASSERT_TRUE(rep.ok());
  EXPECT_EQ(rep->problems.size(), 4u);
  EXPECT_EQ(rep->format, "megatron-legacy");
  EXPECT_FALSE(rep->layout.empty());
  EXPECT_EQ(ToString(rep->problems[0]), "mp_rank_03: rank folder (tp 3, pp 0, ep 0) is missing");
}

TEST(LegacyReader, VerifyDeepReadsEveryByte) {
  const std::string root = SourcePath(std::string(kGolden) + "tp2pp2_distopt");
  VerifyOptions o;
  o.deep = true;
  auto rep = Verify(root, o);
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_TRUE(rep->ok()) << ToString(rep->problems[0]);
  EXPECT_EQ(rep->files, 8u);
  auto r = OpenOk(root);
  uint64_t total = 0;
  for (const TensorInfo& t : r->tensors()) total += t.nbytes;
  EXPECT_EQ(rep->bytes_read, total);
  EXPECT_EQ(rep->tensors, r->tensors().size());
}

// ---- damaged files ----

class LegacyDamaged : public ::testing::Test {
 protected:
  void SetUp() override {
    env_ = NewMemEnv();
    CopyLegacyGolden(env_.get(), "tp2pp2_distopt", "/ck");
  }
  std::string File(const std::string& rel) { return "/ck/iter_0000010/" + rel; }
  void Truncate(const std::string& rel, size_t keep) {
    auto bytes = ::ckpt::testing::ReadWhole(env_.get(), File(rel));
    ASSERT_TRUE(bytes.ok());
    ASSERT_TRUE(::ckpt::testing::WriteWhole(env_.get(), File(rel), bytes->substr(0, keep)).ok());
  }
  std::unique_ptr<Env> env_;
};

TEST_F(LegacyDamaged, TruncatedDistribOptimIsAProblemOfThatFile) {
  Truncate("mp_rank_01_000/distrib_optim.pt", 1000);
  auto r = OpenOk("/ck", env_.get());
  ASSERT_TRUE(r);
  const LegacyReader* lv = r->legacy_view();
  ASSERT_EQ(lv->problems().size(), 1u);
  EXPECT_EQ(lv->problems()[0].file, "mp_rank_01_000/distrib_optim.pt");
  EXPECT_FALSE(lv->FindRank({1, 0, 0})->distrib_optim.opened);
  EXPECT_FALSE(r->Find("mp_rank_01_000/distrib_optim.0.(torch.bfloat16, torch.float32).param").ok());
  EXPECT_TRUE(r->Find("mp_rank_01_000/model.embedding.word_embeddings.weight").ok());
}

TEST_F(LegacyDamaged, EmptyRankZeroFileFallsBackToFolderNames) {
  ASSERT_TRUE(::ckpt::testing::WriteWhole(env_.get(), File("mp_rank_00_000/model_optim_rng.pt"), "").ok());
  auto r = OpenOk("/ck", env_.get());
  ASSERT_TRUE(r);
  const LegacyReader* lv = r->legacy_view();
  EXPECT_EQ(lv->common(), nullptr);
  EXPECT_EQ(lv->grid().sizes_source, "folders");
  EXPECT_TRUE(lv->grid().suffix_ambiguous);
  EXPECT_EQ(lv->grid().sizes.pp, 2);
  std::vector<std::string> p = ProblemTexts(*lv);
  ASSERT_GE(p.size(), 2u);
  EXPECT_THAT(p[0], HasSubstr("mp_rank_00_000/model_optim_rng.pt: "));
  EXPECT_THAT(r->Details()["summary_text"].dump(), HasSubstr("sizes from folder names"));
}

TEST_F(LegacyDamaged, CorruptTensorBytesFoundByDeepVerify) {
  // Flip a byte inside the first storage record's data (after its local header).
  auto bytes = ::ckpt::testing::ReadWhole(env_.get(), File("mp_rank_00_001/distrib_optim.pt"));
  ASSERT_TRUE(bytes.ok());
  auto r0 = OpenOk("/ck", env_.get());
  ASSERT_TRUE(r0);
  auto idx = r0->Find("mp_rank_00_001/distrib_optim.0.(torch.bfloat16, torch.float32).param");
  ASSERT_TRUE(idx.ok());
  std::string b = *bytes;
  b[r0->tensors()[*idx].data_offset + 5] ^= 0x55;
  ASSERT_TRUE(::ckpt::testing::WriteWhole(env_.get(), File("mp_rank_00_001/distrib_optim.pt"), b).ok());
  VerifyOptions o;
  o.deep = true;
  o.env = env_.get();
  auto rep = Verify("/ck", o);
  ASSERT_TRUE(rep.ok());
  ASSERT_FALSE(rep->ok());
  EXPECT_EQ(rep->problems[0].file, "mp_rank_00_001/distrib_optim.pt");
  EXPECT_THAT(rep->problems[0].message, HasSubstr("CRC"));
}

TEST_F(LegacyDamaged, GarbageFilesNeverCrash) {
  // Every rank file replaced by a prefix of itself or by junk: Open lists problems.
  const std::vector<std::string> files = {"mp_rank_00_000/model_optim_rng.pt", "mp_rank_01_000/distrib_optim.pt",
                                          "mp_rank_00_001/model_optim_rng.pt", "mp_rank_01_001/distrib_optim.pt"};
  for (size_t keep : {0, 1, 30, 200, 2000, 7000}) {
    SCOPED_TRACE(keep);
    SetUp();
    for (const std::string& f : files) Truncate(f, keep);
    OpenOptions oo;
    oo.env = env_.get();
    auto r = OpenCheckpoint("/ck", oo);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_FALSE((*r)->legacy_view()->problems().empty());
    for (size_t i = 0; i < (*r)->tensors().size(); ++i) {
      CountingSink sink;
      (void)(*r)->ReadTensor(i, &sink);
    }
  }
}

TEST_F(LegacyDamaged, MissingRankFolderAndModelFile) {
  ASSERT_TRUE(env_->RemoveFile(File("mp_rank_01_001/model_optim_rng.pt")).ok());
  ASSERT_TRUE(env_->RemoveFile(File("mp_rank_01_001/distrib_optim.pt")).ok());
  ASSERT_TRUE(env_->RemoveFile(File("mp_rank_00_001/model_optim_rng.pt")).ok());
  (void)env_->RemoveDir(File("mp_rank_01_001"));
  auto r = OpenOk("/ck", env_.get());
  ASSERT_TRUE(r);
  std::vector<std::string> p = ProblemTexts(*r->legacy_view());
  EXPECT_THAT(p, ::testing::Contains("mp_rank_00_001/model_optim_rng.pt: missing (this rank folder's writer saves "
                                     "model_optim_rng.pt)"));
  if (!env_->IsDirectory(File("mp_rank_01_001"))) {
    EXPECT_THAT(p, ::testing::Contains("mp_rank_01_001: rank folder (tp 1, pp 1, ep 0) is missing"));
  }
}

}  // namespace
}  // namespace ckpt
