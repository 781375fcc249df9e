// inspect and verify on Megatron-LM legacy folders (tests/golden/legacy_synthetic):
// the rank grid is printed, problems make inspect exit 1 and verify list them.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "lib/exit_code.h"
#include "lib/inspect.h"
#include "lib/verify.h"
#include "testing/testutil.h"

namespace ckpt::cli {
namespace {

using ::ckpt::testing::SourcePath;
using ::testing::HasSubstr;

std::string Golden(const std::string& name) { return SourcePath("tests/golden/legacy_synthetic/" + name); }

TEST(LegacyInspect, PrintsTheRankGrid) {
  InspectOptions o;
  o.path = Golden("tp2pp2_distopt");
  std::ostringstream out;
  Status s = Inspect(o, out);
  ASSERT_TRUE(s.ok()) << s.ToString();
  const std::string text = out.str();
  EXPECT_THAT(text, HasSubstr(": megatron-legacy"));
  EXPECT_THAT(text, HasSubstr("rank grid: TP=2 x PP=2 x EP=1 (sizes from args of mp_rank_00_000); 4 of 4"));
  EXPECT_THAT(text, HasSubstr("mp_rank_01_001  tp 1 pp 1 ep 0: model_optim_rng.pt"));
  EXPECT_THAT(text, HasSubstr("format C (buckets coalesced), buffer 0 (torch.bfloat16, torch.float32) 672 elements"));
  EXPECT_THAT(text, HasSubstr("mp_rank_00_000/model.decoder.layers.0.self_attention.linear_qkv.weight"));
}

TEST(LegacyInspect, ProblemsExitOne) {
  InspectOptions o;
  o.path = Golden("broken");
  std::ostringstream out;
  Status s = Inspect(o, out);
  EXPECT_EQ(ExitCodeFor(s), 1);
  EXPECT_THAT(out.str(), HasSubstr("mp_rank_03  tp 3 pp 0 ep 0: MISSING"));
  EXPECT_THAT(out.str(), HasSubstr("mp_rank_02/distrib_optim.pt: buffer 0 (torch.bfloat16, torch.float32): exp_avg "
                                   "has 560 elements, numel_unpadded says 576"));
  o.json = true;
  std::ostringstream js;
  EXPECT_EQ(ExitCodeFor(Inspect(o, js)), 1);
  nlohmann::json j = nlohmann::json::parse(js.str());
  EXPECT_EQ(j["details"]["legacy"]["missing"][0], "mp_rank_03");
  EXPECT_EQ(j["iteration"], 30);
}

TEST(LegacyVerify, DeepOkAndProblemsListed) {
  VerifyCommandOptions o;
  o.path = Golden("pp2_vpp2_fp16opt");
  o.deep = true;
  std::ostringstream out, err;
  int code = -1;
  ASSERT_TRUE(RunVerify(o, out, err, &code).ok());
  EXPECT_EQ(code, 0) << out.str();
  EXPECT_THAT(out.str(), HasSubstr("rank grid: TP=1 x PP=2 x EP=1"));
  EXPECT_THAT(out.str(), HasSubstr("OK "));

  o.path = Golden("broken");
  o.deep = false;
  std::ostringstream out2;
  ASSERT_TRUE(RunVerify(o, out2, err, &code).ok());
  EXPECT_EQ(code, 1);
  EXPECT_THAT(out2.str(), HasSubstr("PROBLEM mp_rank_03: rank folder (tp 3, pp 0, ep 0) is missing"));
  EXPECT_THAT(out2.str(), HasSubstr("FAILED "));
}

}  // namespace
}  // namespace ckpt::cli
