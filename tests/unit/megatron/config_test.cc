#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "format/megatron/megatron.h"
#include "util/strings.h"

namespace ckpt::megatron {
namespace {

using ::testing::HasSubstr;

TEST(MegatronConfig, ParsesFourFieldFormOfCore018) {
  auto c = ParseConfig(
      R"({"sharded_backend": "torch_dist", "sharded_backend_version": 1, "common_backend": "torch", "common_backend_version": 1})",
      "iter_0000100/metadata.json");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->sharded_backend, "torch_dist");
  EXPECT_EQ(c->sharded_backend_version, 1);
  EXPECT_EQ(c->common_backend, "torch");
  EXPECT_EQ(c->common_backend_version, 1);
  EXPECT_EQ(c->raw.size(), 4u);
}

TEST(MegatronConfig, ParsesTwoFieldFormOfCore019) {
  auto c = ParseConfig(R"({"sharded_backend": "torch_dist", "sharded_backend_version": 1})", "m.json");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_FALSE(c->common_backend.has_value());
  EXPECT_FALSE(c->common_backend_version.has_value());
}

TEST(MegatronConfig, VersionDefaultsToOneAsTheDataclass) {
  auto c = ParseConfig(R"({"sharded_backend": "torch_dist"})", "m.json");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->sharded_backend_version, 1);
}

TEST(MegatronConfig, KeepsUnknownKeysInRaw) {
  auto c = ParseConfig(R"({"sharded_backend": "torch_dist", "sharded_backend_version": 1, "future": [1, 2]})",
                       "m.json");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_TRUE(c->raw.contains("future"));
  EXPECT_EQ(c->raw["future"][1], 2);
}

TEST(MegatronConfig, RejectsNonJsonNamingTheFile) {
  auto c = ParseConfig("{\"sharded_backend\": ", "ckpt/iter_0000007/metadata.json");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kDataLoss);
  EXPECT_THAT(c.status().message(), HasSubstr("ckpt/iter_0000007/metadata.json"));
}

TEST(MegatronConfig, RejectsNonObject) {
  auto c = ParseConfig("[\"torch_dist\"]", "m.json");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kDataLoss);
}

TEST(MegatronConfig, RejectsMissingShardedBackend) {
  auto c = ParseConfig(R"({"common_backend": "torch"})", "x/metadata.json");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kDataLoss);
  EXPECT_THAT(c.status().message(), HasSubstr("sharded_backend"));
  EXPECT_THAT(c.status().message(), HasSubstr("x/metadata.json"));
}

TEST(MegatronConfig, RejectsWronglyTypedFields) {
  for (const char* text : {R"({"sharded_backend": 1})",
                           R"({"sharded_backend": "torch_dist", "sharded_backend_version": "1"})",
                           R"({"sharded_backend": "torch_dist", "sharded_backend_version": true})",
                           R"({"sharded_backend": "torch_dist", "sharded_backend_version": 1.5})",
                           R"({"sharded_backend": "torch_dist", "common_backend": null})"}) {
    auto c = ParseConfig(text, "m.json");
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_EQ(c.status().code(), Code::kDataLoss) << text;
  }
}

TEST(MegatronConfig, ZarrIsRecognisedButUnimplemented) {
  auto c = ParseConfig(R"({"sharded_backend": "zarr", "sharded_backend_version": 1, "common_backend": "torch", "common_backend_version": 1})",
                       "m.json");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kUnimplemented);
  EXPECT_THAT(c.status().message(), HasSubstr("zarr"));
  EXPECT_THAT(c.status().message(), HasSubstr("0.16"));
}

TEST(MegatronConfig, UnknownBackendOrVersionIsUnimplemented) {
  for (const char* text : {R"({"sharded_backend": "torch_dcp"})",
                           R"({"sharded_backend": "torch_dist", "sharded_backend_version": 2})",
                           R"({"sharded_backend": "torch_dist", "common_backend": "pickle"})",
                           R"({"sharded_backend": "torch_dist", "common_backend": "torch", "common_backend_version": 3})"}) {
    auto c = ParseConfig(text, "m.json");
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_EQ(c.status().code(), Code::kUnimplemented) << text;
  }
}

TEST(MegatronConfig, RejectsOversizedText) {
  std::string big(kMaxConfigBytes + 1, ' ');
  auto c = ParseConfig(big, "m.json");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kResourceExhausted);
}

TEST(MegatronTracker, ParsesIterationWithSurroundingWhitespace) {
  auto t = ParseTracker("  100\n", "latest_checkpointed_iteration.txt");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_FALSE(t->release);
  EXPECT_EQ(t->iteration, 100);
}

TEST(MegatronTracker, ParsesRelease) {
  auto t = ParseTracker("release\n", "t.txt");
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(t->release);
  EXPECT_EQ(t->iteration, 0);
}

TEST(MegatronTracker, AcceptsPythonIntSyntax) {
  auto a = ParseTracker("+7", "t");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->iteration, 7);
  auto b = ParseTracker("1_000\r\n", "t");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->iteration, 1000);
  auto c = ParseTracker("0", "t");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->iteration, 0);
}

TEST(MegatronTracker, RejectsWhatPythonIntRejectsOrMegatronAsserts) {
  for (const char* text : {"", "  \n", "abc", "Release", "1__0", "_1", "1_", "1 0", "-5", "0x10",
                           "99999999999999999999", "12.0", "release release"}) {
    auto t = ParseTracker(text, "ckpt/latest_checkpointed_iteration.txt");
    ASSERT_FALSE(t.ok()) << Quote(text);
    EXPECT_EQ(t.status().code(), Code::kDataLoss);
    EXPECT_THAT(t.status().message(), HasSubstr("ckpt/latest_checkpointed_iteration.txt"));
  }
}

TEST(MegatronTracker, IterationDirNamePadsToSevenDigits) {
  EXPECT_EQ(IterationDirName({false, 100}), "iter_0000100");
  EXPECT_EQ(IterationDirName({false, 0}), "iter_0000000");
  EXPECT_EQ(IterationDirName({false, 12345678}), "iter_12345678");
  EXPECT_EQ(IterationDirName({true, 0}), "release");
}

}  // namespace
}  // namespace ckpt::megatron
