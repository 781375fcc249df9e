// Convert under disk faults and simulated crashes (FaultEnv over MemEnv): the
// error is returned naming the file, and no output that looks complete is
// left behind; after a crash the index exists only if its shards are whole.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "ckpt/checkpoint.h"
#include "ckpt/convert.h"
#include "ckpt/fault_env.h"
#include "unit/checkpoint/checkpoint_testutil.h"

namespace ckpt {
namespace {

using ::ckpt::testing::ReadWhole;
using ::ckpt::testing::WriteWhole;
using ::ckpt::testing_ckpt::CopyShardedGoldenSet;
using ::ckpt::testing_ckpt::ListDir;
using ::ckpt::testing_ckpt::ReadAllTensors;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr uint64_t kShardSize = 8000;  // the 26944-byte golden set -> several shards

ConvertOptions Options(TargetFormat to, uint64_t max_shard_size, Env* env) {
  ConvertOptions o;
  o.to = to;
  o.max_shard_size = max_shard_size;
  o.env = env;
  return o;
}

// A MemEnv holding the golden transformers sharded set under /src, and a
// FaultEnv over it. The conversion writes /out.
class ConvertFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CopyShardedGoldenSet(mem_.get(), "/src");
    auto src = OpenCheckpoint("/src", {mem_.get()});
    ASSERT_TRUE(src.ok()) << src.status().ToString();
    want_ = ReadAllTensors(**src);
    ASSERT_EQ(want_.size(), 21u);
  }

  Result<ConvertReport> Run(TargetFormat to = TargetFormat::kSafetensors,
                            uint64_t max_shard_size = kShardSize, const std::string& dst = "/out") {
    return Convert("/src", dst, Options(to, max_shard_size, &fault_));
  }

  // A clean run in a scratch MemEnv: the files it writes and their sizes (to
  // aim faults), and the FaultEnv counters of that run.
  struct CleanRun {
    std::vector<std::string> files;
    std::vector<uint64_t> sizes;
    FaultEnvCounters counters;
  };
  CleanRun Clean(TargetFormat to = TargetFormat::kSafetensors, uint64_t max_shard_size = kShardSize,
                 const std::string& dst = "/out") {
    auto scratch = NewMemEnv();
    CopyShardedGoldenSet(scratch.get(), "/src");
    FaultEnv counting(scratch.get());
    CleanRun run;
    auto rep = Convert("/src", dst, Options(to, max_shard_size, &counting));
    EXPECT_TRUE(rep.ok()) << rep.status().ToString();
    if (!rep.ok()) return run;
    run.files = rep->files;
    for (const std::string& f : run.files) {
      auto size = scratch->GetFileSize(f);
      EXPECT_TRUE(size.ok());
      run.sizes.push_back(size.ok() ? *size : 0);
    }
    run.counters = counting.counters();
    return run;
  }

  // After a failed conversion into a fresh /out: nothing there at all (no
  // shard, no index, no temporary).
  void ExpectOutEmpty() {
    if (!mem_->FileExists("/out")) return;
    EXPECT_THAT(ListDir(mem_.get(), "/out"), IsEmpty());
  }

  std::unique_ptr<Env> mem_ = NewMemEnv();
  FaultEnv fault_{mem_.get()};
  std::map<std::string, std::string> want_;
};

TEST_F(ConvertFaultTest, CleanRunWritesSeveralShardsAndIndex) {
  auto rep = Run();
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_GE(rep->files.size(), 4u);
  EXPECT_EQ(rep->files.back(), "/out/model.safetensors.index.json");
  EXPECT_EQ(ListDir(mem_.get(), "/out").size(), rep->files.size());
  auto back = OpenCheckpoint("/out", {mem_.get()});
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(ReadAllTensors(**back), want_);
}

TEST_F(ConvertFaultTest, DiskFullInTheMiddleOfAShardLeavesNothing) {
  for (TargetFormat to : {TargetFormat::kSafetensors, TargetFormat::kTorch}) {
    SCOPED_TRACE(to == TargetFormat::kSafetensors ? "safetensors" : "torch");
    CleanRun clean = Clean(to);
    ASSERT_GE(clean.files.size(), 4u);
    // Shard 1 fits; the space runs out half way through shard 2.
    fault_.SetSpaceLimit(clean.sizes[0] + clean.sizes[1] / 2);
    auto rep = Run(to);
    fault_.ClearFaults();
    ASSERT_FALSE(rep.ok());
    EXPECT_EQ(rep.status().code(), Code::kResourceExhausted) << rep.status().ToString();
    EXPECT_THAT(rep.status().message(), HasSubstr(Basename(clean.files[1])));
    ExpectOutEmpty();
  }
}

TEST_F(ConvertFaultTest, DiskFullInTheIndexLeavesNothing) {
  CleanRun clean = Clean();
  ASSERT_GE(clean.files.size(), 4u);
  uint64_t shards = 0;
  for (size_t i = 0; i + 1 < clean.sizes.size(); ++i) shards += clean.sizes[i];
  fault_.SetSpaceLimit(shards + 10);
  auto rep = Run();
  ASSERT_FALSE(rep.ok());
  EXPECT_EQ(rep.status().code(), Code::kResourceExhausted) << rep.status().ToString();
  EXPECT_THAT(rep.status().message(), HasSubstr("model.safetensors.index.json"));
  ExpectOutEmpty();
}

TEST_F(ConvertFaultTest, FailingRenameOfAShardLeavesNothing) {
  CleanRun clean = Clean();
  ASSERT_GE(clean.files.size(), 4u);
  const std::string third = Basename(clean.files[2]);
  fault_.FailRename(third);
  auto rep = Run();
  ASSERT_FALSE(rep.ok());
  EXPECT_EQ(rep.status().code(), Code::kUnavailable) << rep.status().ToString();
  EXPECT_THAT(rep.status().message(), HasSubstr(third));
  ExpectOutEmpty();
}

TEST_F(ConvertFaultTest, FailingRenameOfTheIndexLeavesNothing) {
  fault_.FailRename("index.json");
  auto rep = Run();
  ASSERT_FALSE(rep.ok());
  EXPECT_THAT(rep.status().message(), HasSubstr("model.safetensors.index.json"));
  ExpectOutEmpty();
}

TEST_F(ConvertFaultTest, FailingSyncLeavesNothing) {
  CleanRun clean = Clean();
  ASSERT_GE(clean.files.size(), 4u);
  const std::string second = Basename(clean.files[1]);
  fault_.FailSync(second);
  auto rep = Run();
  ASSERT_FALSE(rep.ok());
  EXPECT_THAT(rep.status().message(), HasSubstr(second));
  ExpectOutEmpty();
}

TEST_F(ConvertFaultTest, FailingCloseLeavesNothing) {
  CleanRun clean = Clean();
  ASSERT_GE(clean.files.size(), 4u);
  fault_.FailClose(Basename(clean.files[0]));
  auto rep = Run();
  ASSERT_FALSE(rep.ok());
  EXPECT_THAT(rep.status().message(), HasSubstr(Basename(clean.files[0])));
  ExpectOutEmpty();
}

// The directory sync after a publish fails: the file is in place, but the
// conversion reports failure, so it must not stay behind looking complete.
TEST_F(ConvertFaultTest, FailingDirectorySyncAfterTheIndexLeavesNoIndex) {
  CleanRun clean = Clean();
  ASSERT_GE(clean.files.size(), 4u);
  FaultRule rule;
  rule.op = FaultOp::kSyncDir;
  rule.path_contains = ".out.ckptkit-new-";  // the staging folder the files are written in
  rule.skip = clean.files.size() - 1;  // the shards' syncs pass, the index's fails
  fault_.AddRule(rule);
  auto rep = Run();
  ASSERT_FALSE(rep.ok());
  EXPECT_THAT(rep.status().message(), HasSubstr("model.safetensors.index.json"));
  EXPECT_FALSE(mem_->FileExists("/out/model.safetensors.index.json"));
  ExpectOutEmpty();
}

TEST_F(ConvertFaultTest, FailingDirectorySyncAfterAShardLeavesNoShard) {
  FaultRule rule;
  rule.op = FaultOp::kSyncDir;
  rule.path_contains = ".out.ckptkit-new-";  // the staging folder the files are written in
  rule.skip = 1;
  fault_.AddRule(rule);
  auto rep = Run();
  ASSERT_FALSE(rep.ok());
  ExpectOutEmpty();
}

// Re-writing a sharded folder (the case users reported: a killed convert left
// old and new shards mixed under an index that verify accepted): a failure
// leaves the older save exactly as it was; a successful re-write with another
// shard count leaves no shard of it, and other files in the folder survive.
TEST_F(ConvertFaultTest, RewritingAShardedFolderIsAllOrNothing) {
  ASSERT_TRUE(Convert("/src", "/out", Options(TargetFormat::kSafetensors, kShardSize, mem_.get())).ok());
  ASSERT_TRUE(WriteWhole(mem_.get(), "/out/tokenizer.json", "{}").ok());
  const std::vector<std::string> before = ListDir(mem_.get(), "/out");
  ASSERT_GE(before.size(), 4u);
  fault_.FailNthAppend(3, "model-");
  auto rep = Run(TargetFormat::kSafetensors, kShardSize / 2);
  fault_.ClearFaults();
  ASSERT_FALSE(rep.ok());
  EXPECT_EQ(ListDir(mem_.get(), "/out"), before);
  EXPECT_THAT(ListDir(mem_.get(), "/"), ::testing::ElementsAre("out", "src"));  // no staging left
  auto old = OpenCheckpoint("/out", {mem_.get()});
  ASSERT_TRUE(old.ok()) << old.status().ToString();
  EXPECT_EQ(ReadAllTensors(**old), want_);
  // One file now: every shard and the index of the sharded save are gone.
  ASSERT_TRUE(Run(TargetFormat::kSafetensors, 0).ok());
  EXPECT_THAT(ListDir(mem_.get(), "/out"), ::testing::ElementsAre("model.safetensors", "tokenizer.json"));
  auto now = OpenCheckpoint("/out", {mem_.get()});
  ASSERT_TRUE(now.ok()) << now.status().ToString();
  EXPECT_EQ(ReadAllTensors(**now), want_);
}

TEST_F(ConvertFaultTest, FailingSingleFileWriteKeepsThePreviousFile) {
  ASSERT_TRUE(mem_->CreateDirs("/out").ok());
  ASSERT_TRUE(WriteWhole(mem_.get(), "/out/model.safetensors", "old").ok());
  fault_.FailNthAppend(2, "model.safetensors");
  auto rep = Run(TargetFormat::kSafetensors, 0, "/out/model.safetensors");
  ASSERT_FALSE(rep.ok());
  EXPECT_THAT(rep.status().message(), HasSubstr("/out/model.safetensors"));
  EXPECT_THAT(ListDir(mem_.get(), "/out"), ::testing::ElementsAre("model.safetensors"));
  auto old = ReadWhole(mem_.get(), "/out/model.safetensors");
  ASSERT_TRUE(old.ok());
  EXPECT_EQ(*old, "old");
}

TEST_F(ConvertFaultTest, FailingReadOfTheSourceLeavesNothing) {
  fault_.FailReadAt("model-00002-of-00002.safetensors", 5000, /*short_read=*/true);
  auto rep = Run();
  ASSERT_FALSE(rep.ok());
  EXPECT_EQ(rep.status().code(), Code::kDataLoss) << rep.status().ToString();
  EXPECT_THAT(rep.status().message(), HasSubstr("model-00002-of-00002.safetensors"));
  ExpectOutEmpty();
}

// Crash after every mutating step of a sharded conversion, then a power cut:
// the index exists only if every shard it names is complete and readable.
TEST_F(ConvertFaultTest, CrashAtEveryStepNeverLeavesAnIndexOverBrokenShards) {
  for (TargetFormat to : {TargetFormat::kSafetensors, TargetFormat::kTorch}) {
    const bool st = to == TargetFormat::kSafetensors;
    SCOPED_TRACE(st ? "safetensors" : "torch");
    const std::string index = st ? "/out/model.safetensors.index.json"
                                 : "/out/pytorch_model.bin.index.json";
    CleanRun clean = Clean(to);
    const uint64_t steps = clean.counters.mutating_ops;
    ASSERT_GT(steps, 10u);
    int with_index = 0, without_index = 0;
    for (uint64_t n = 0; n <= steps; ++n) {
      SCOPED_TRACE("crash after " + std::to_string(n) + " of " + std::to_string(steps) + " ops");
      auto mem = NewMemEnv();
      CopyShardedGoldenSet(mem.get(), "/src");
      FaultEnv fault(mem.get());
      fault.CrashAfterOps(n);
      auto rep = Convert("/src", "/out", Options(to, kShardSize, &fault));
      if (n >= steps) {
        EXPECT_TRUE(rep.ok()) << rep.status().ToString();
      } else {
        EXPECT_FALSE(rep.ok());
      }
      ASSERT_TRUE(fault.DropUnsyncedData().ok());
      if (!mem->FileExists(index)) {
        ++without_index;
        continue;
      }
      ++with_index;
      auto back = OpenCheckpoint("/out", {mem.get()});
      ASSERT_TRUE(back.ok()) << back.status().ToString();
      EXPECT_EQ(ReadAllTensors(**back), want_);
    }
    EXPECT_GT(with_index, 0);
    EXPECT_GT(without_index, 0);
  }
}

// The same for a single output file: after a crash it is absent or whole.
TEST_F(ConvertFaultTest, CrashAtEveryStepSingleFileIsAbsentOrWhole) {
  CleanRun clean = Clean(TargetFormat::kSafetensors, 0, "/out");
  const uint64_t steps = clean.counters.mutating_ops;
  ASSERT_GT(steps, 3u);
  int whole = 0;
  for (uint64_t n = 0; n <= steps; ++n) {
    SCOPED_TRACE("crash after " + std::to_string(n) + " ops");
    auto mem = NewMemEnv();
    CopyShardedGoldenSet(mem.get(), "/src");
    FaultEnv fault(mem.get());
    fault.CrashAfterOps(n);
    ConvertOptions o;
    o.env = &fault;
    auto rep = Convert("/src", "/out", o);
    ASSERT_TRUE(fault.DropUnsyncedData().ok());
    if (!mem->FileExists("/out/model.safetensors")) continue;
    ++whole;
    auto back = OpenCheckpoint("/out", {mem.get()});
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(ReadAllTensors(**back), want_);
  }
  EXPECT_GT(whole, 0);
}

}  // namespace
}  // namespace ckpt
