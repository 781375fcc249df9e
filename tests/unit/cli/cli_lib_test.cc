// The CLI library: exit codes, inspect and convert reports (sizes and target
// names: tests/unit/convert/options_test.cc).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "ckpt/checkpoint.h"
#include "ckpt/writer.h"
#include "lib/convert.h"
#include "lib/exit_code.h"
#include "lib/inspect.h"
#include "unit/checkpoint/checkpoint_testutil.h"

namespace ckpt::cli {
namespace {

using ::ckpt::testing::SourcePath;
using ::ckpt::testing_ckpt::CopyIntoEnv;
using ::testing::HasSubstr;
using ::testing::Not;

// ---------------------------------------------------------------- ExitCodeFor

TEST(ExitCodeFor, DataProblemsAreOneRequestProblemsAreTwo) {
  EXPECT_EQ(ExitCodeFor(OkStatus()), 0);
  EXPECT_EQ(ExitCodeFor(DataLossError("x")), 1);
  EXPECT_EQ(ExitCodeFor(OutOfRangeError("x")), 1);
  EXPECT_EQ(ExitCodeFor(UnimplementedError("x")), 1);
  EXPECT_EQ(ExitCodeFor(FailedPreconditionError("x")), 1);
  EXPECT_EQ(ExitCodeFor(InvalidArgumentError("x")), 2);
  EXPECT_EQ(ExitCodeFor(NotFoundError("x")), 2);
  EXPECT_EQ(ExitCodeFor(PermissionDeniedError("x")), 2);
  EXPECT_EQ(ExitCodeFor(ResourceExhaustedError("x")), 2);
  EXPECT_EQ(ExitCodeFor(UnavailableError("x")), 2);
  EXPECT_EQ(ExitCodeFor(AlreadyExistsError("x")), 2);
  EXPECT_EQ(ExitCodeFor(CancelledError("x")), 2);
  EXPECT_EQ(ExitCodeFor(InternalError("x")), 2);
}

TEST(ExitCodeFor, RealErrorsMapAsDocumented) {
  // A truncated file is a problem in the data; a missing one is not.
  auto corrupt =
      OpenCheckpoint(SourcePath("tests/corrupt/safetensors/truncated_in_data.safetensors"));
  ASSERT_FALSE(corrupt.ok());
  EXPECT_EQ(ExitCodeFor(corrupt.status()), kExitDataProblem) << corrupt.status().ToString();
  auto missing = OpenCheckpoint(SourcePath("tests/golden/torch/nope.pt"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(ExitCodeFor(missing.status()), kExitUsage);
  auto hostile = OpenCheckpoint(SourcePath("tests/golden/torch/hostile.pt"));
  ASSERT_FALSE(hostile.ok());
  EXPECT_EQ(ExitCodeFor(hostile.status()), kExitDataProblem);
}

// ---------------------------------------------------------------- helpers

TEST(HumanBytes, UsesBinaryUnits) {
  EXPECT_EQ(HumanBytes(0), "0 B");
  EXPECT_EQ(HumanBytes(1023), "1023 B");
  EXPECT_EQ(HumanBytes(1024), "1.00 KiB");
  EXPECT_EQ(HumanBytes(1536), "1.50 KiB");
  EXPECT_EQ(HumanBytes(uint64_t{5} << 30), "5.00 GiB");
  EXPECT_EQ(HumanBytes(UINT64_MAX), "16384.00 PiB");  // the largest unit
}

TEST(ShapeString, PrintsLikeAList) {
  EXPECT_EQ(ShapeString({}), "[]");
  EXPECT_EQ(ShapeString({256, 64}), "[256, 64]");
  EXPECT_EQ(ShapeString({0}), "[0]");
}

// ---------------------------------------------------------------- Inspect

std::string InspectText(const std::string& path, size_t max_rows = 0, Env* env = nullptr) {
  InspectOptions o;
  o.path = path;
  o.max_rows = max_rows;
  o.env = env;
  std::ostringstream out;
  Status s = Inspect(o, out);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return out.str();
}

TEST(Inspect, SampleTextShowsKeysDtypesShapesAndNamespace) {
  const std::string path = SourcePath("examples/sample.pt");
  std::string text = InspectText(path);
  EXPECT_THAT(text, HasSubstr(path + ": torch"));
  EXPECT_THAT(text, HasSubstr("model.model.embed_tokens.weight"));
  EXPECT_THAT(text, HasSubstr("model.lm_head.weight"));
  EXPECT_THAT(text, HasSubstr("model.model.layers.1.mlp.down_proj.weight"));
  EXPECT_THAT(text, HasSubstr("bfloat16"));
  EXPECT_THAT(text, HasSubstr("[256, 64]"));
  EXPECT_THAT(text, HasSubstr("[176, 64]"));
  EXPECT_THAT(text, HasSubstr("argparse.Namespace"));
  EXPECT_THAT(text, HasSubstr("args"));
  EXPECT_THAT(text, HasSubstr("iteration"));
  EXPECT_THAT(text, HasSubstr("Other objects"));
  // One row per tensor.
  auto r = OpenCheckpoint(path);
  ASSERT_TRUE(r.ok());
  size_t rows = 0;
  for (size_t pos = 0; (pos = text.find("\nmodel.", pos)) != std::string::npos; ++pos) ++rows;
  EXPECT_EQ(rows, (*r)->tensors().size());
}

TEST(Inspect, SharedStoragesAreListedWithTheirViews) {
  // views.pt (tests/golden/torch) holds six views of one 4x6 float32 storage.
  std::string text = InspectText(SourcePath("tests/golden/torch/views.pt"));
  EXPECT_THAT(text, HasSubstr("Shared storages"));
  EXPECT_THAT(text, HasSubstr("storage 0 (96 B): base, transposed, step, offset, row, scalar_view"));
  EXPECT_THAT(InspectText(SourcePath("examples/sample.pt")), Not(HasSubstr("Shared storages")));
}

TEST(Inspect, MaxRowsTruncatesTheTable) {
  const std::string path = SourcePath("examples/sample.pt");
  auto r = OpenCheckpoint(path);
  ASSERT_TRUE(r.ok());
  const size_t n = (*r)->tensors().size();
  std::string text = InspectText(path, 3);
  EXPECT_THAT(text, HasSubstr("... " + std::to_string(n - 3) + " more"));
  EXPECT_THAT(text, HasSubstr((*r)->tensors()[2].key));
  EXPECT_THAT(text, Not(HasSubstr((*r)->tensors()[3].key + " ")));
}

TEST(Inspect, HostileFileIsShownNotRefused) {
  std::string text = InspectText(SourcePath("tests/golden/torch/hostile.pt"));
  EXPECT_THAT(text, HasSubstr("payload"));
  EXPECT_THAT(text, HasSubstr("posix.system"));
  EXPECT_THAT(text, HasSubstr("not on the allowlist"));
  EXPECT_THAT(text, HasSubstr("weight"));
}

TEST(Inspect, ShardedFolderShowsShardFiles) {
  std::string text = InspectText(SourcePath("tests/golden/safetensors/sharded"));
  EXPECT_THAT(text, HasSubstr("safetensors-sharded"));
  EXPECT_THAT(text, HasSubstr("21 tensors"));
  EXPECT_THAT(text, HasSubstr("model-00002-of-00002.safetensors"));
}

TEST(Inspect, MissingPathIsNotFound) {
  auto env = NewMemEnv();
  InspectOptions o;
  o.path = "/nope.pt";
  o.env = env.get();
  std::ostringstream out;
  Status s = Inspect(o, out);
  EXPECT_EQ(s.code(), Code::kNotFound) << s.ToString();
  EXPECT_TRUE(out.str().empty());
}

TEST(InspectJson, MatchesTheReader) {
  for (const std::string rel :
       {"examples/sample.pt", "tests/golden/safetensors/all_dtypes.safetensors",
        "tests/golden/safetensors/sharded"}) {
    SCOPED_TRACE(rel);
    const std::string path = SourcePath(rel);
    InspectOptions o;
    o.path = path;
    o.json = true;
    std::ostringstream out;
    Status s = Inspect(o, out);
    ASSERT_TRUE(s.ok()) << s.ToString();
    nlohmann::json j = nlohmann::json::parse(out.str(), nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << out.str();

    auto r = OpenCheckpoint(path, {nullptr, PickleMode::kInspect});
    ASSERT_TRUE(r.ok());
    const CheckpointReader& reader = **r;
    EXPECT_EQ(j["path"], path);
    EXPECT_EQ(j["format"], std::string(reader.format()));
    ASSERT_EQ(j["tensors"].size(), reader.tensors().size());
    uint64_t total = 0;
    for (size_t i = 0; i < reader.tensors().size(); ++i) {
      const TensorInfo& t = reader.tensors()[i];
      const nlohmann::json& jt = j["tensors"][i];
      EXPECT_EQ(jt["key"], t.key);
      EXPECT_EQ(jt["dtype"], std::string(DTypeName(t.dtype)));
      EXPECT_EQ(jt["shape"].get<std::vector<int64_t>>(), t.shape);
      EXPECT_EQ(jt["nbytes"], t.nbytes);
      EXPECT_EQ(jt["data_offset"], t.data_offset);
      total += t.nbytes;
    }
    EXPECT_EQ(j["total_bytes"], total);
    EXPECT_EQ(j["objects"].size(), reader.objects().size());
    EXPECT_EQ(j["details"], reader.Details());
  }
}

TEST(InspectJson, SampleHasNamespaceObject) {
  auto r = OpenCheckpoint(SourcePath("examples/sample.pt"));
  ASSERT_TRUE(r.ok());
  nlohmann::json j = InspectJson("sample.pt", **r);
  bool found = false;
  for (const auto& o : j["objects"]) {
    if (o["key"] == "args") {
      found = true;
      EXPECT_EQ(o["type"], "argparse.Namespace");
      EXPECT_EQ(o["opaque"], false);
      EXPECT_THAT(o["repr"].get<std::string>(), HasSubstr("num_layers=2"));
    }
  }
  EXPECT_TRUE(found) << j["objects"].dump();
}


TEST(Inspect, ControlBytesInNamesAreEscaped) {
  // A hostile file names its tensor with a terminal escape sequence.
  std::unique_ptr<Env> env = NewMemEnv();
  const std::string key = std::string("w\x1b[2J") + "\rx";
  std::vector<TensorToWrite> items = {
      {key, DType::kFloat32, {1}, [](ByteSink* s) { return s->Append(std::string(4, '\0')); }}};
  ASSERT_TRUE(WriteSafetensorsFile("/evil.safetensors", items, std::nullopt, env.get()).ok());
  InspectOptions o;
  o.path = "/evil.safetensors";
  o.env = env.get();
  std::ostringstream out;
  ASSERT_TRUE(Inspect(o, out).ok());
  EXPECT_THAT(out.str(), Not(HasSubstr("\x1b"))) << out.str();
  EXPECT_THAT(out.str(), Not(HasSubstr("\r"))) << out.str();
  EXPECT_THAT(out.str(), HasSubstr("'w\\x1b[2J\\x0dx'"));
}

// ---------------------------------------------------------------- RunConvert

class RunConvertTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CopyIntoEnv(env_.get(), "examples/sample.pt", "/src/sample.pt");
    opts_.src = "/src/sample.pt";
    opts_.dst = "/out";
    opts_.to = "safetensors";
    opts_.env = env_.get();
  }
  std::unique_ptr<Env> env_ = NewMemEnv();
  ConvertCommandOptions opts_;
  std::ostringstream out_, err_;
};

TEST_F(RunConvertTest, JsonReportIsParseableAndTrue) {
  opts_.json = true;
  opts_.max_shard_size = "40KB";
  Status s = RunConvert(opts_, out_, err_);
  ASSERT_TRUE(s.ok()) << s.ToString();
  nlohmann::json j = nlohmann::json::parse(out_.str(), nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << out_.str();
  EXPECT_EQ(j["src"], "/src/sample.pt");
  EXPECT_EQ(j["dst"], "/out");
  EXPECT_EQ(j["to"], "safetensors");
  auto src = OpenCheckpoint("/src/sample.pt", {env_.get()});
  ASSERT_TRUE(src.ok());
  uint64_t total = 0;
  for (const TensorInfo& t : (*src)->tensors()) total += t.nbytes;
  EXPECT_EQ(j["tensors"], (*src)->tensors().size());
  EXPECT_EQ(j["bytes"], total);
  ASSERT_GE(j["files"].size(), 3u);
  EXPECT_EQ(j["files"].back(), "/out/model.safetensors.index.json");
  for (const auto& f : j["files"]) EXPECT_TRUE(env_->FileExists(f.get<std::string>())) << f;
  EXPECT_EQ(j["warnings"].size(), (*src)->objects().size());
  // Warnings also go to err, one line each.
  EXPECT_THAT(err_.str(), HasSubstr("warning: dropped non-tensor object 'args'"));
}

TEST_F(RunConvertTest, TextSummaryListsFiles) {
  Status s = RunConvert(opts_, out_, err_);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_THAT(out_.str(), HasSubstr("to 1 file:"));
  EXPECT_THAT(out_.str(), HasSubstr("/out/model.safetensors"));
}

TEST_F(RunConvertTest, QuietPrintsNothing) {
  opts_.quiet = true;
  Status s = RunConvert(opts_, out_, err_);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(out_.str(), "");
  EXPECT_EQ(err_.str(), "");
}

TEST_F(RunConvertTest, BadTargetIsInvalidArgument) {
  opts_.to = "gguf";
  Status s = RunConvert(opts_, out_, err_);
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr("gguf"));
  EXPECT_FALSE(env_->FileExists("/out"));
}

TEST_F(RunConvertTest, BadShardSizeIsInvalidArgumentNamingTheOption) {
  opts_.max_shard_size = "5XB";
  Status s = RunConvert(opts_, out_, err_);
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr("max_shard_size"));
  EXPECT_THAT(s.message(), HasSubstr("5XB"));
  EXPECT_FALSE(env_->FileExists("/out"));
}

// The flag goes through ckpt::ParseSize, as Python's max_shard_size does:
// "320Kb" is 320000 bits, the same 40000-byte limit as "40KB".
TEST_F(RunConvertTest, ShardSizeInBitsIsReadAsTransformersReadsIt) {
  opts_.json = true;
  opts_.max_shard_size = "40KB";
  ASSERT_TRUE(RunConvert(opts_, out_, err_).ok());
  nlohmann::json bytes = nlohmann::json::parse(out_.str());
  std::ostringstream out2, err2;
  opts_.dst = "/out2";
  opts_.max_shard_size = "320Kb";
  Status s = RunConvert(opts_, out2, err2);
  ASSERT_TRUE(s.ok()) << s.ToString();
  nlohmann::json bits = nlohmann::json::parse(out2.str());
  ASSERT_EQ(bits["files"].size(), bytes["files"].size());
  for (size_t i = 0; i < bits["files"].size(); ++i) {
    std::string a = bytes["files"][i], b = bits["files"][i];
    EXPECT_EQ(Basename(a), Basename(b));
  }
}

TEST_F(RunConvertTest, TargetNamesComeFromTheLibrary) {
  opts_.to = "hf";  // a known target: the source (a torch.save file) is what it refuses
  Status s = RunConvert(opts_, out_, err_);
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr("torch_dist"));
  opts_.to = "torch-dist";
  s = RunConvert(opts_, out_, err_);
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr("safetensors, torch, dcp, torch_dist, hf"));
}

TEST_F(RunConvertTest, ProgressReachesOneHundredPercent) {
  opts_.show_progress = true;
  Status s = RunConvert(opts_, out_, err_);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_THAT(err_.str(), HasSubstr("100%"));
}

TEST_F(RunConvertTest, ConvertErrorsPassThrough) {
  CopyIntoEnv(env_.get(), "tests/golden/torch/hostile.pt", "/src/hostile.pt");
  opts_.src = "/src/hostile.pt";
  Status s = RunConvert(opts_, out_, err_);
  EXPECT_EQ(s.code(), Code::kUnimplemented) << s.ToString();
  EXPECT_EQ(ExitCodeFor(s), kExitDataProblem);
  EXPECT_EQ(out_.str(), "");
  opts_.allow_opaque = true;
  s = RunConvert(opts_, out_, err_);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_THAT(err_.str(), HasSubstr("payload"));
}

}  // namespace
}  // namespace ckpt::cli
