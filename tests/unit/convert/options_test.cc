// The one reading of a max_shard_size (ParseSize) and of a target name
// (ParseTargetFormat) that the CLI and Python share, and Convert's refusals
// of options a target does not read: every message names the option as
// ConvertOptions spells it, never a CLI flag.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "ckpt/convert.h"
#include "unit/checkpoint/checkpoint_testutil.h"
#include "util/strings.h"

namespace ckpt {
namespace {

using ::ckpt::testing_ckpt::CopyIntoEnv;
using ::testing::HasSubstr;
using ::testing::Not;

// ---------------------------------------------------------------- ParseSize

uint64_t SizeOk(const std::string& text) {
  auto r = ParseSize(text);
  EXPECT_TRUE(r.ok()) << text << ": " << r.status().ToString();
  return r.ok() ? *r : 0;
}

Status SizeError(const std::string& text) {
  auto r = ParseSize(text);
  EXPECT_FALSE(r.ok()) << text << " parsed as " << (r.ok() ? *r : 0);
  return r.status();
}

// Expected values are transformers' convert_file_size_to_int (utils/hub.py).
TEST(ParseSize, DecimalUnitsArePowersOf1000) {
  EXPECT_EQ(SizeOk("5GB"), 5'000'000'000u);
  EXPECT_EQ(SizeOk("500MB"), 500'000'000u);
  EXPECT_EQ(SizeOk("10KB"), 10'000u);
  // The unit is upper-cased before matching; only a final lowercase 'b' differs.
  EXPECT_EQ(SizeOk("5gB"), 5'000'000'000u);
  EXPECT_EQ(SizeOk("3mB"), 3'000'000u);
}

TEST(ParseSize, BinaryUnitsArePowersOf1024) {
  EXPECT_EQ(SizeOk("5GiB"), uint64_t{5} << 30);
  EXPECT_EQ(SizeOk("500MiB"), uint64_t{500} << 20);
  EXPECT_EQ(SizeOk("1KiB"), 1024u);
  // Any case, and no bits reading: transformers upper-cases the whole suffix.
  EXPECT_EQ(SizeOk("2gib"), uint64_t{2} << 30);
  EXPECT_EQ(SizeOk("2GIB"), uint64_t{2} << 30);
  EXPECT_EQ(SizeOk("2Gib"), uint64_t{2} << 30);
}

// transformers: `int_size // 8 if size.endswith("b") else int_size`.
TEST(ParseSize, LowercaseFinalBOnADecimalUnitCountsBits) {
  EXPECT_EQ(SizeOk("5Gb"), 625'000'000u);
  EXPECT_EQ(SizeOk("5gb"), 625'000'000u);
  EXPECT_EQ(SizeOk("100Mb"), 12'500'000u);
  EXPECT_EQ(SizeOk("10kb"), 1'250u);
  EXPECT_EQ(SizeOk("1Kb"), 125u);
  EXPECT_EQ(SizeOk("7Kb"), 875u);  // floor division
}

TEST(ParseSize, DigitsAloneAreBytes) {
  EXPECT_EQ(SizeOk("1000"), 1000u);
  EXPECT_EQ(SizeOk("1"), 1u);
  EXPECT_EQ(SizeOk("0012"), 12u);
  EXPECT_EQ(SizeOk("18446744073709551615"), UINT64_MAX);
}

// What transformers raises on ("TB", "B", "5G", no digits), and what its int()
// would take but a size should not (a sign, spaces, underscores, decimals).
TEST(ParseSize, AnythingElseIsInvalidArgumentNamingTheOption) {
  for (const char* bad : {"5XB", "5G", "5TB", "2TiB", "7B", "7b", "5 GB", "5GB ", " 5GB", "GB", "", "-5",
                          "+5", "5.5GB", "0x10", "5GBB", "1e9", "5_000", "lots", "5MiBb"}) {
    SCOPED_TRACE(bad);
    Status s = SizeError(bad);
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
    EXPECT_THAT(s.message(), HasSubstr("max_shard_size"));
    EXPECT_THAT(s.message(), HasSubstr(std::string("'") + bad + "'"));
    EXPECT_THAT(s.message(), Not(HasSubstr("--")));
  }
  EXPECT_THAT(SizeError("5XB").message(), HasSubstr("GiB"));
}

TEST(ParseSize, OverflowIsInvalidArgument) {
  for (const char* big : {"18446744073709551616", "99999999999999999999999", "20000000000GB",
                          "17179869184GiB"}) {
    SCOPED_TRACE(big);
    Status s = SizeError(big);
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
    EXPECT_THAT(s.message(), HasSubstr("too large"));
  }
  EXPECT_EQ(SizeOk("17179869183GiB"), uint64_t{17179869183} << 30);
}

TEST(ParseSize, ZeroIsInvalidArgument) {
  for (const char* zero : {"0", "0GB", "0MiB", "000", "0Gb"}) {
    SCOPED_TRACE(zero);
    Status s = SizeError(zero);
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
    EXPECT_THAT(s.message(), HasSubstr("positive"));
  }
}

// ---------------------------------------------------------- target names

TEST(ParseTargetFormat, EveryTargetRoundTripsThroughItsName) {
  std::set<std::string_view> names;
  for (TargetFormat t : kAllTargetFormats) {
    std::string_view name = TargetFormatName(t);
    EXPECT_TRUE(names.insert(name).second) << name;
    auto r = ParseTargetFormat(name);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(*r, t);
  }
  EXPECT_EQ(names, (std::set<std::string_view>{"safetensors", "torch", "dcp", "torch_dist", "hf", "legacy"}));
  EXPECT_EQ(TargetFormatName(TargetFormat::kTorchDist), "torch_dist");
  EXPECT_EQ(TargetFormatName(TargetFormat::kHf), "hf");
}

TEST(ParseTargetFormat, UnknownNameIsInvalidArgumentListingTheValidOnes) {
  for (const char* bad : {"gguf", "", "Torch", "torch-dist", "safetensors ", "pt"}) {
    SCOPED_TRACE(bad);
    auto r = ParseTargetFormat(bad);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_THAT(r.status().message(), HasSubstr(std::string("to '") + bad + "'"));
    EXPECT_THAT(r.status().message(), HasSubstr("safetensors, torch, dcp, torch_dist, hf"));
  }
}

// ------------------------------------------- options a target does not read

class ConvertOptionErrors : public ::testing::Test {
 protected:
  void SetUp() override { CopyIntoEnv(env_.get(), "examples/sample.pt", "/src/sample.pt"); }
  ConvertOptions To(TargetFormat to) {
    ConvertOptions o;
    o.to = to;
    o.env = env_.get();
    return o;
  }
  // Refused with InvalidArgument naming the option, before anything is written.
  void ExpectRefused(const ConvertOptions& o, const std::string& what) {
    auto r = Convert("/src/sample.pt", "/out", o);
    ASSERT_FALSE(r.ok()) << what;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << r.status().ToString();
    EXPECT_THAT(r.status().message(), HasSubstr(what));
    EXPECT_THAT(r.status().message(), Not(HasSubstr("--"))) << "a library error names a CLI flag";
    EXPECT_FALSE(env_->FileExists("/out"));
  }
  std::unique_ptr<Env> env_ = NewMemEnv();
};

TEST_F(ConvertOptionErrors, MegatronOptionsOutsideTorchDist) {
  for (TargetFormat t : {TargetFormat::kSafetensors, TargetFormat::kTorch, TargetFormat::kDcp, TargetFormat::kHf}) {
    ConvertOptions o = To(t);
    o.megatron_version = "0.16";
    ExpectRefused(o, "megatron_version applies only with to=\"torch_dist\"");
    o = To(t);
    o.iteration = 3;
    ExpectRefused(o, StrCat("(not to=\"", TargetFormatName(t), "\")"));
  }
}

TEST_F(ConvertOptionErrors, DcpMetadataLayoutOutsideDcp) {
  for (TargetFormat t :
       {TargetFormat::kSafetensors, TargetFormat::kTorch, TargetFormat::kTorchDist, TargetFormat::kHf}) {
    ConvertOptions o = To(t);
    o.dcp_metadata_layout = "torch2.3";
    ExpectRefused(o, "dcp_metadata_layout applies only with to=\"dcp\"");
  }
}

TEST_F(ConvertOptionErrors, MaxShardSizeWithDcpTargets) {
  ConvertOptions o = To(TargetFormat::kDcp);
  o.max_shard_size = 1000;
  ExpectRefused(o, "max_shard_size does not apply with to=\"dcp\" (use thread_count)");
  o.to = TargetFormat::kTorchDist;
  ExpectRefused(o, "max_shard_size does not apply with to=\"torch_dist\" (use thread_count)");
}

TEST_F(ConvertOptionErrors, BadValuesNameTheirOption) {
  ConvertOptions o = To(TargetFormat::kDcp);
  o.dcp_metadata_layout = "torch1.0";
  ExpectRefused(o, "dcp_metadata_layout");
  o = To(TargetFormat::kTorchDist);
  o.megatron_version = "0.17";
  ExpectRefused(o, "megatron_version");
  o = To(TargetFormat::kTorchDist);
  o.iteration = -1;
  ExpectRefused(o, "iteration -1 is negative");
  o = To(TargetFormat::kSafetensors);
  o.max_shard_size = 1000;
  auto r = Convert("/src/sample.pt", "/out/model.safetensors", o);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("with max_shard_size the destination is a folder"));
  o = To(TargetFormat::kSafetensors);
  r = Convert("/src/sample.pt", "/out.pt", o);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("the target is to=\"safetensors\""));
  EXPECT_THAT(r.status().message(), Not(HasSubstr("--")));
}

TEST_F(ConvertOptionErrors, HfNeedsATorchDistSourceAndWritesNothingOtherwise) {
  auto r = Convert("/src/sample.pt", "/out", To(TargetFormat::kHf));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("to=\"hf\" converts a Megatron-Core torch_dist checkpoint"));
  EXPECT_FALSE(env_->FileExists("/out"));
  ConvertOptions o = To(TargetFormat::kSafetensors);
  o.hf_config = "/cfg.json";
  auto r2 = Convert("/src/sample.pt", "/out", o);
  ASSERT_FALSE(r2.ok());
  EXPECT_THAT(r2.status().message(), HasSubstr("hf_config"));
  ConvertOptions o3 = To(TargetFormat::kTorchDist);
  o3.tp = 2;
  auto r3 = Convert("/src/sample.pt", "/out", o3);
  ASSERT_FALSE(r3.ok());
  EXPECT_THAT(r3.status().message(), HasSubstr("not an HF model folder"));
}

TEST_F(ConvertOptionErrors, OutOfRangeTargetIsInvalidArgument) {
  auto r = Convert("/src/sample.pt", "/out", To(static_cast<TargetFormat>(kTargetFormatCount)));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace ckpt
