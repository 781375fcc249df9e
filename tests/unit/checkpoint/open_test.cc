// OpenCheckpoint: which reader a path gets, and how each kind of wrong path fails.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "ckpt/checkpoint.h"
#include "ckpt/writer.h"
#include "unit/checkpoint/checkpoint_testutil.h"

namespace ckpt {
namespace {

using ::ckpt::testing::SourcePath;
using ::ckpt::testing::WriteWhole;
using ::ckpt::testing_ckpt::CopyIntoEnv;
using ::ckpt::testing_ckpt::CopyShardedGoldenSet;
using ::testing::HasSubstr;

constexpr const char* kShardDir = "tests/golden/safetensors/sharded/";

TEST(OpenCheckpointSniff, TorchZipFileOpensAsTorch) {
  auto r = OpenCheckpoint(SourcePath("tests/golden/torch/state_dict.pt"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->format(), "torch");
  EXPECT_EQ((*r)->tensors().size(), 9u);
  ASSERT_TRUE((*r)->Find("2.running_var").ok());
}

TEST(OpenCheckpointSniff, SafetensorsFileOpensAsSafetensors) {
  auto r = OpenCheckpoint(SourcePath("tests/golden/safetensors/no_metadata.safetensors"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->format(), "safetensors");
  EXPECT_EQ((*r)->tensors().size(), 2u);
}

TEST(OpenCheckpointSniff, ContentDecidesNotExtension) {
  auto env = NewMemEnv();
  CopyIntoEnv(env.get(), "tests/golden/safetensors/no_metadata.safetensors", "/x/weights.bin");
  CopyIntoEnv(env.get(), "tests/golden/torch/small.pt", "/x/small.safetensors");
  OpenOptions o{env.get()};
  auto st = OpenCheckpoint("/x/weights.bin", o);
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  EXPECT_EQ((*st)->format(), "safetensors");
  auto pt = OpenCheckpoint("/x/small.safetensors", o);
  ASSERT_TRUE(pt.ok()) << pt.status().ToString();
  EXPECT_EQ((*pt)->format(), "torch");
}

TEST(OpenCheckpointSniff, FolderWithModelSafetensors) {
  auto env = NewMemEnv();
  CopyIntoEnv(env.get(), "tests/golden/safetensors/multi_meta.safetensors", "/m/model.safetensors");
  auto r = OpenCheckpoint("/m", {env.get()});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->format(), "safetensors");
  EXPECT_EQ((*r)->tensors().size(), 1u);
}

TEST(OpenCheckpointSniff, FolderWithOneCheckpointFileOpensIt) {
  auto env = NewMemEnv();
  CopyIntoEnv(env.get(), "tests/golden/torch/small.pt", "/m/weights.pt");
  ASSERT_TRUE(WriteWhole(env.get(), "/m/config.json", "{}").ok());
  auto r = OpenCheckpoint("/m", {env.get()});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->format(), "torch");
}

TEST(OpenCheckpointSniff, FolderWithSeveralCheckpointFilesIsInvalidArgumentNamingThem) {
  auto env = NewMemEnv();
  CopyIntoEnv(env.get(), "tests/golden/torch/small.pt", "/m/a.pt");
  CopyIntoEnv(env.get(), "tests/golden/safetensors/multi_meta.safetensors", "/m/b.safetensors");
  auto r = OpenCheckpoint("/m", {env.get()});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("a.pt, b.safetensors"));
}

TEST(OpenCheckpointSniff, FolderWithPytorchModelBin) {
  auto env = NewMemEnv();
  CopyIntoEnv(env.get(), "tests/golden/torch/params.pt", "/m/pytorch_model.bin");
  auto r = OpenCheckpoint("/m/", {env.get()});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->format(), "torch");
  EXPECT_EQ((*r)->tensors().size(), 3u);
}

TEST(OpenCheckpointSniff, FolderPrefersSafetensorsOverBin) {
  auto env = NewMemEnv();
  CopyIntoEnv(env.get(), "tests/golden/torch/params.pt", "/m/pytorch_model.bin");
  CopyIntoEnv(env.get(), "tests/golden/safetensors/multi_meta.safetensors", "/m/model.safetensors");
  auto r = OpenCheckpoint("/m", {env.get()});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->format(), "safetensors");
}

TEST(OpenCheckpointSniff, FolderWithIndexOpensSharded) {
  auto env = NewMemEnv();
  CopyShardedGoldenSet(env.get(), "/hf");
  auto r = OpenCheckpoint("/hf", {env.get()});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->format(), "safetensors-sharded");
  EXPECT_EQ((*r)->tensors().size(), 21u);
}

TEST(OpenCheckpointSniff, IndexJsonPathOpensSharded) {
  auto r = OpenCheckpoint(SourcePath(std::string(kShardDir) + "model.safetensors.index.json"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->format(), "safetensors-sharded");
  EXPECT_EQ((*r)->tensors().size(), 21u);
  EXPECT_EQ((*r)->Details()["shards"].size(), 2u);
}

TEST(OpenCheckpointSniff, FolderWithTorchIndexOpensTorchSharded) {
  auto env = NewMemEnv();
  CopyIntoEnv(env.get(), "tests/golden/torch/params.pt", "/m/pytorch_model-00001-of-00002.bin");
  CopyIntoEnv(env.get(), "tests/golden/torch/small.pt", "/m/pytorch_model-00002-of-00002.bin");
  ASSERT_TRUE(WriteWhole(env.get(), "/m/pytorch_model.bin.index.json",
                         R"({"metadata": {"total_size": 0}, "weight_map": {
                              "p": "pytorch_model-00001-of-00002.bin",
                              "one": "pytorch_model-00002-of-00002.bin"}})")
                  .ok());
  auto r = OpenCheckpoint("/m", {env.get()});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->format(), "torch-sharded");
  // Still kSharded, with no torch_file(): the object trees are per shard.
  EXPECT_EQ((*r)->kind(), SourceKind::kSharded);
  EXPECT_EQ((*r)->torch_file(), nullptr);
  // Only indexed tensors are exposed; the rest are listed as unindexed.
  ASSERT_EQ((*r)->tensors().size(), 2u);
  EXPECT_EQ((*r)->tensors()[0].key, "p");
  EXPECT_EQ((*r)->tensors()[0].file, "pytorch_model-00001-of-00002.bin");
  EXPECT_EQ((*r)->tensors()[1].key, "one");
  EXPECT_TRUE((*r)->Details().contains("unindexed_tensors"));
}

TEST(OpenCheckpointSniff, LegacyTorchFileIsUnimplementedWithAdvice) {
  const std::string path = SourcePath("tests/golden/torch/legacy.pt");
  auto r = OpenCheckpoint(path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kUnimplemented) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr(path));
  EXPECT_THAT(r.status().message(), HasSubstr("legacy"));
  EXPECT_THAT(r.status().message(), HasSubstr("re-save"));
}

TEST(OpenCheckpointSniff, UnknownFileIsInvalidArgument) {
  auto env = NewMemEnv();
  ASSERT_TRUE(env->CreateDirs("/d").ok());
  ASSERT_TRUE(WriteWhole(env.get(), "/d/notes.txt", "hello, this is not a checkpoint\n").ok());
  auto r = OpenCheckpoint("/d/notes.txt", {env.get()});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("/d/notes.txt"));
  EXPECT_THAT(r.status().message(), HasSubstr("unknown format"));
}

TEST(OpenCheckpointSniff, EmptyFileIsInvalidArgument) {
  auto env = NewMemEnv();
  ASSERT_TRUE(env->CreateDirs("/d").ok());
  ASSERT_TRUE(WriteWhole(env.get(), "/d/empty.pt", "").ok());
  auto r = OpenCheckpoint("/d/empty.pt", {env.get()});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("empty"));
}

TEST(OpenCheckpointSniff, TruncatedSafetensorsIsDataLoss) {
  auto r = OpenCheckpoint(SourcePath("tests/corrupt/safetensors/truncated_in_header.safetensors"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kDataLoss) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("truncated_in_header.safetensors"));
}

TEST(OpenCheckpointSniff, MissingPathIsNotFound) {
  auto env = NewMemEnv();
  auto r = OpenCheckpoint("/nowhere/model.safetensors", {env.get()});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("/nowhere/model.safetensors"));

  auto on_disk = OpenCheckpoint(SourcePath("tests/golden/torch/no_such_file.pt"));
  ASSERT_FALSE(on_disk.ok());
  EXPECT_EQ(on_disk.status().code(), Code::kNotFound) << on_disk.status().ToString();
}

TEST(OpenCheckpointSniff, MissingIndexJsonIsNotFound) {
  auto env = NewMemEnv();
  auto r = OpenCheckpoint("/m/model.safetensors.index.json", {env.get()});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound) << r.status().ToString();
}

TEST(OpenCheckpointSniff, EmptyFolderIsNotFoundListingWhatItLookedFor) {
  auto env = NewMemEnv();
  ASSERT_TRUE(env->CreateDirs("/empty").ok());
  // A shard without an index is not a checkpoint by itself either.
  CopyIntoEnv(env.get(), "tests/golden/safetensors/multi_meta.safetensors",
              "/empty/model-00001-of-00002.safetensors");
  auto r = OpenCheckpoint("/empty", {env.get()});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("/empty"));
  EXPECT_THAT(r.status().message(), HasSubstr("model.safetensors"));
  EXPECT_THAT(r.status().message(), HasSubstr("pytorch_model.bin"));
  EXPECT_THAT(r.status().message(), HasSubstr("index.json"));
}

TEST(OpenCheckpointSniff, DcpFolderWithCorruptMetadataIsDataLoss) {
  auto env = NewMemEnv();
  ASSERT_TRUE(env->CreateDirs("/dcp").ok());
  ASSERT_TRUE(WriteWhole(env.get(), "/dcp/.metadata", "\x80\x04garbage").ok());
  ASSERT_TRUE(WriteWhole(env.get(), "/dcp/__0_0.distcp", "x").ok());
  auto r = OpenCheckpoint("/dcp", {env.get()});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kDataLoss) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("/dcp/.metadata"));
}

TEST(OpenCheckpointSniff, HostilePickleRefusedInStrictModeShownInInspectMode) {
  const std::string path = SourcePath("tests/golden/torch/hostile.pt");
  auto strict = OpenCheckpoint(path);
  ASSERT_FALSE(strict.ok());
  EXPECT_EQ(strict.status().code(), Code::kUnimplemented) << strict.status().ToString();
  EXPECT_THAT(strict.status().message(), HasSubstr("posix.system"));
  EXPECT_THAT(strict.status().message(), HasSubstr("offset"));

  auto inspect = OpenCheckpoint(path, {nullptr, PickleMode::kInspect});
  ASSERT_TRUE(inspect.ok()) << inspect.status().ToString();
  ASSERT_EQ((*inspect)->objects().size(), 1u);
  EXPECT_EQ((*inspect)->objects()[0].key, "payload");
  EXPECT_TRUE((*inspect)->objects()[0].opaque);
  // Evil.__reduce__ pickles os.system, which CPython records as posix.system.
  EXPECT_THAT((*inspect)->objects()[0].type, HasSubstr("posix.system"));
}

TEST(CheckpointReaderFind, FindsKeysAndReportsMissingOnes) {
  auto r = OpenCheckpoint(SourcePath("tests/golden/torch/state_dict.pt"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const CheckpointReader& reader = **r;
  for (size_t i = 0; i < reader.tensors().size(); ++i) {
    auto f = reader.Find(reader.tensors()[i].key);
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(*f, i);
  }
  auto missing = reader.Find("no.such.key");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("no.such.key"));
}

TEST(CheckpointReaderReadTensor, IndexPastEndIsOutOfRange) {
  for (const char* rel : {"tests/golden/torch/small.pt",
                          "tests/golden/safetensors/no_metadata.safetensors",
                          "tests/golden/safetensors/sharded/model.safetensors.index.json"}) {
    SCOPED_TRACE(rel);
    auto r = OpenCheckpoint(SourcePath(rel));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    StringSink sink;
    Status s = (*r)->ReadTensor((*r)->tensors().size(), &sink);
    EXPECT_EQ(s.code(), Code::kOutOfRange) << s.ToString();
    EXPECT_EQ(sink.Position(), 0u);
  }
}

// ------------------------------------------------------------ SourceKind

// Each reader says what it reads, and offers exactly the views of its kind:
// callers dispatch on these, not on format() strings or casts.
TEST(OpenCheckpointKind, EveryReaderStatesItsKindAndOnlyItsViews) {
  struct Case {
    const char* path;
    SourceKind kind;
    const char* format;
  };
  for (const Case& c : {Case{"tests/golden/torch/state_dict.pt", SourceKind::kTorchFile, "torch"},
                        Case{"tests/golden/safetensors/no_metadata.safetensors", SourceKind::kSafetensors,
                             "safetensors"},
                        Case{"tests/golden/safetensors/sharded", SourceKind::kSharded, "safetensors-sharded"},
                        Case{"tests/golden/dcp/ws1_plain", SourceKind::kDcp, "dcp"},
                        Case{"tests/golden/megatron/mc016_handbuilt", SourceKind::kTorchDist,
                             "megatron-torch_dist"},
                        Case{"tests/golden/legacy_synthetic/tp2pp2_distopt", SourceKind::kLegacy,
                             "megatron-legacy"}}) {
    SCOPED_TRACE(c.path);
    auto r = OpenCheckpoint(SourcePath(c.path), {nullptr, PickleMode::kInspect});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    const CheckpointReader& reader = **r;
    EXPECT_EQ(reader.kind(), c.kind);
    EXPECT_EQ(reader.format(), c.format);
    const bool dcp = c.kind == SourceKind::kDcp || c.kind == SourceKind::kTorchDist;
    EXPECT_EQ(reader.dcp_view() != nullptr, dcp);
    EXPECT_EQ(reader.torch_file() != nullptr, c.kind == SourceKind::kTorchFile);
    EXPECT_EQ(reader.legacy_view() != nullptr, c.kind == SourceKind::kLegacy);
  }
}

}  // namespace
}  // namespace ckpt
