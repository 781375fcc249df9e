// The Megatron layer writer (format/megatron/writer.h): metadata.json and
// tracker bytes compared with what real megatron-core / Megatron-LM wrote
// (tests/golden/megatron/mc0*), and the common state compared byte for byte
// with real torch.save output (tests/golden/megatron/common_state, made by
// its make_golden.py with torch 2.13 and megatron-core 0.16.1's own
// extract_matching_values).
#include "format/megatron/writer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "ckpt/byte_source.h"
#include "format/torch/torch_file.h"
#include "testing/testutil.h"

namespace ckpt::megatron {
namespace {

using ::ckpt::testing::FirstDiff;
using ::ckpt::testing::ReadRequiredSourceFile;
using ::testing::HasSubstr;

constexpr char kGolden[] = "tests/golden/megatron/common_state/";

std::shared_ptr<const torch::TorchFile> OpenGolden(const std::string& rel) {
  auto src = std::make_shared<StringSource>(ReadRequiredSourceFile(kGolden + rel), rel);
  auto f = torch::TorchFile::Open(src, pickle::Mode::kStrict);
  EXPECT_TRUE(f.ok()) << f.status().ToString();
  return f.ok() ? std::shared_ptr<const torch::TorchFile>(std::move(*f)) : nullptr;
}

// Writes the common state of golden `rel` (nullptr file when rel is empty).
std::string Common(CoreVersion v, const std::string& rel, CommonSource source) {
  std::shared_ptr<const torch::TorchFile> f = rel.empty() ? nullptr : OpenGolden(rel);
  StringSink sink;
  auto reopen = [f]() -> Result<std::shared_ptr<const torch::TorchFile>> { return f; };
  Status s = WriteCommonState(v, f.get(), source, reopen, &sink);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return sink.Release();
}

void ExpectSameBytes(const std::string& got, const std::string& golden_rel) {
  const std::string want = ReadRequiredSourceFile(kGolden + golden_rel);
  EXPECT_EQ(got.size(), want.size()) << golden_rel;
  EXPECT_TRUE(got == want) << golden_rel << ": first difference at byte " << FirstDiff(got, want);
}

// ---------------------------------------------------------------------------
// metadata.json

TEST(MegatronConfigWriter, Core016IsTheFourKeyFormRealMegatronWrote) {
  auto text = SerializeConfig(CoreVersion::k0_16);
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  EXPECT_EQ(*text, ReadRequiredSourceFile("tests/golden/megatron/mc016_handbuilt/iter_0000010/metadata.json"));
  EXPECT_EQ(*text,
            R"({"sharded_backend": "torch_dist", "sharded_backend_version": 1, "common_backend": "torch", )"
            R"("common_backend_version": 1})");
}

TEST(MegatronConfigWriter, Core019IsTheTwoKeyFormRealMegatronWrote) {
  auto text = SerializeConfig(CoreVersion::k0_19);
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  EXPECT_EQ(*text, ReadRequiredSourceFile("tests/golden/megatron/mc019_handbuilt/iter_0000010/metadata.json"));
}

TEST(MegatronConfigWriter, OutputParsesBackWithTheVersionsFields) {
  for (CoreVersion v : {CoreVersion::k0_16, CoreVersion::k0_19}) {
    auto text = SerializeConfig(v);
    ASSERT_TRUE(text.ok());
    auto cfg = ParseConfig(*text, "metadata.json");
    ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
    EXPECT_EQ(cfg->sharded_backend, "torch_dist");
    EXPECT_EQ(cfg->common_backend.has_value(), v == CoreVersion::k0_16);
  }
}

TEST(MegatronConfigWriter, Core019CarriesUnknownKeysInOrderAfterItsOwn) {
  nlohmann::ordered_json carried = nlohmann::ordered_json::object();
  carried["zeta"] = "z\u00e9";
  carried["alpha"] = nlohmann::ordered_json::array({1, 2.5, nullptr, true});
  auto text = SerializeConfig(CoreVersion::k0_19, carried);
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  // json.dumps({"sharded_backend": "torch_dist", "sharded_backend_version": 1, "zeta": "zé",
  //             "alpha": [1, 2.5, None, True]})
  EXPECT_EQ(*text,
            R"({"sharded_backend": "torch_dist", "sharded_backend_version": 1, "zeta": "z\u00e9", )"
            R"("alpha": [1, 2.5, null, true]})");
}

TEST(MegatronConfigWriter, Core016RefusesCarriedKeysThatItsLoaderRejects) {
  nlohmann::ordered_json carried = {{"extra", 1}};
  auto text = SerializeConfig(CoreVersion::k0_16, carried);
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(text.status().message(), HasSubstr("extra"));
}

TEST(MegatronConfigWriter, RefusesACarriedConfigField) {
  nlohmann::ordered_json carried = {{"common_backend", "torch"}};
  auto text = SerializeConfig(CoreVersion::k0_19, carried);
  ASSERT_FALSE(text.ok());
  EXPECT_THAT(text.status().message(), HasSubstr("common_backend"));
}

TEST(PythonJsonDumps, MatchesPythonDefaults) {
  // Each expectation is Python 3.11's json.dumps of the same value.
  auto dumps = [](const nlohmann::ordered_json& j) {
    auto r = PythonJsonDumps(j);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : std::string("<error>");
  };
  EXPECT_EQ(dumps(1.0), "1.0");
  EXPECT_EQ(dumps(0.0001), "0.0001");
  EXPECT_EQ(dumps(0.00001), "1e-05");
  EXPECT_EQ(dumps(1e16), "1e+16");
  EXPECT_EQ(dumps(123456789012345.0), "123456789012345.0");
  EXPECT_EQ(dumps(-2.5e-300), "-2.5e-300");
  EXPECT_EQ(dumps(0.1), "0.1");
  EXPECT_EQ(dumps(std::numeric_limits<double>::infinity()), "Infinity");
  EXPECT_EQ(dumps(-7), "-7");
  EXPECT_EQ(dumps(nlohmann::ordered_json::object()), "{}");
  EXPECT_EQ(dumps(nlohmann::ordered_json::array()), "[]");
  EXPECT_EQ(dumps("tab\t\"q\"\\ \x01 \x7f"), R"("tab\t\"q\"\\ \u0001 )" "\x7f\"");
  EXPECT_EQ(dumps("\xF0\x9F\x98\x80"), R"("\ud83d\ude00")");  // U+1F600: a surrogate pair
}

TEST(PythonJsonDumps, RefusesInvalidUtf8) {
  auto r = PythonJsonDumps(nlohmann::ordered_json(std::string("\xff")));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
}

// ---------------------------------------------------------------------------
// Tracker and versions

TEST(MegatronTrackerWriter, IterationIsDecimalWithoutNewlineAsMegatronLmWrites) {
  auto t = SerializeTracker({false, 10});
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(*t, ReadRequiredSourceFile("tests/golden/megatron/mc016_handbuilt/latest_checkpointed_iteration.txt"));
  EXPECT_EQ(*t, "10");
  EXPECT_EQ(*SerializeTracker({true, 0}), "release");
  EXPECT_EQ(*SerializeTracker({false, 12345678}), "12345678");
  EXPECT_FALSE(SerializeTracker({false, -1}).ok());
}

TEST(MegatronTrackerWriter, RoundTripsThroughParseTracker) {
  for (Tracker t : {Tracker{false, 0}, Tracker{false, 7}, Tracker{true, 0}}) {
    auto text = SerializeTracker(t);
    ASSERT_TRUE(text.ok());
    auto back = ParseTracker(*text, "tracker");
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(back->release, t.release);
    EXPECT_EQ(back->iteration, t.iteration);
    EXPECT_EQ(IterationDirName(*back), IterationDirName(t));
  }
}

TEST(MegatronCoreVersion, ParsesMinorAndPatchAndRefusesOthers) {
  EXPECT_EQ(*ParseCoreVersion("0.16"), CoreVersion::k0_16);
  EXPECT_EQ(*ParseCoreVersion("0.16.1"), CoreVersion::k0_16);
  EXPECT_EQ(*ParseCoreVersion("0.19"), CoreVersion::k0_19);
  EXPECT_EQ(*ParseCoreVersion("0.19.2"), CoreVersion::k0_19);
  for (const char* bad : {"", "0.17", "0.1", "0.16.", "0.16.x", "0.190", "v0.19"}) {
    auto r = ParseCoreVersion(bad);
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    }
  }
  EXPECT_EQ(CoreVersionName(kNewestCoreVersion), "0.19");
  EXPECT_FALSE(CommonStateInDcp(CoreVersion::k0_16));
  EXPECT_TRUE(CommonStateInDcp(CoreVersion::k0_19));
}

// ---------------------------------------------------------------------------
// Common state

TEST(MegatronCommonStateWriter, CommonPtRoundTripsByteForByte) {
  ExpectSameBytes(Common(CoreVersion::k0_16, "direct/common.pt", CommonSource::kDict), "direct/common.pt");
}

TEST(MegatronCommonStateWriter, Core019ItemRoundTripsByteForByte) {
  ExpectSameBytes(Common(CoreVersion::k0_19, "direct/item.bin", CommonSource::kWrappedDict), "direct/item.bin");
}

TEST(MegatronCommonStateWriter, CommonPtToCore019ItemIsTorchSaveOfTheWrappedDict) {
  ExpectSameBytes(Common(CoreVersion::k0_19, "direct/common.pt", CommonSource::kDict), "from_common/item.bin");
}

TEST(MegatronCommonStateWriter, Core019ItemToCommonPtIsTorchSaveOfTheUnwrappedDict) {
  ExpectSameBytes(Common(CoreVersion::k0_16, "direct/item.bin", CommonSource::kWrappedDict), "from_item/common.pt");
}

TEST(MegatronCommonStateWriter, EmptyDictMatchesTorchSaveForBothVersions) {
  ExpectSameBytes(Common(CoreVersion::k0_16, "", CommonSource::kDict), "empty/common.pt");
  ExpectSameBytes(Common(CoreVersion::k0_19, "", CommonSource::kDict), "empty/item.bin");
}

TEST(MegatronCommonStateWriter, StateDictLosesItsTensorsAsMegatronExtractsThem) {
  ExpectSameBytes(Common(CoreVersion::k0_16, "state_dict/sd.pt", CommonSource::kStateDict), "state_dict/common.pt");
  ExpectSameBytes(Common(CoreVersion::k0_19, "state_dict/sd.pt", CommonSource::kStateDict), "state_dict/item.bin");
}

TEST(MegatronCommonStateWriter, ExtractedTensorsSkipTensorsInsideTuples) {
  auto f = OpenGolden("state_dict/sd.pt");
  ASSERT_NE(f, nullptr);
  auto idx = ExtractedTensors(*f);
  ASSERT_TRUE(idx.ok()) << idx.status().ToString();
  std::vector<std::string> keys;
  for (size_t i : *idx) keys.push_back(f->tensors()[i].key);
  EXPECT_THAT(keys, ::testing::UnorderedElementsAre("model.layer.weight", "model.layer.bias",
                                                    "optimizer.state.0.exp_avg", "only_tensors.a",
                                                    "only_tensors.b.0", "only_tensors.b.1", "mixed_list.0",
                                                    "mixed_list.2.w", "mixed_list.3.w"));
  EXPECT_EQ(f->tensors().size(), keys.size() + 1);  // + in_tuple.0, which stays in the common dict
}

TEST(MegatronCommonStateWriter, RefusesARootOfTheWrongShape) {
  auto f = OpenGolden("direct/item.bin");  // root is [dict]
  ASSERT_NE(f, nullptr);
  StringSink sink;
  Status s = WriteCommonState(CoreVersion::k0_16, f.get(), CommonSource::kDict,
                              [f]() -> Result<std::shared_ptr<const torch::TorchFile>> { return f; }, &sink);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Code::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("direct/item.bin"));
  EXPECT_THAT(s.message(), HasSubstr("should be a dict"));
  auto g = OpenGolden("direct/common.pt");  // root is a dict, not [dict]
  s = WriteCommonState(CoreVersion::k0_19, g.get(), CommonSource::kWrappedDict,
                       [g]() -> Result<std::shared_ptr<const torch::TorchFile>> { return g; }, &sink);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("one-element list"));
  auto r = ExtractedTensors(*f);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kFailedPrecondition);
}

}  // namespace
}  // namespace ckpt::megatron
