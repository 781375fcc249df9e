// FaultEnv behaviour, and WriteFileAtomically under every fault it must
// survive: the old file stays intact, no temporary is left, errors name paths.
#include "ckpt/fault_env.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>

#include "io_testutil.h"

namespace ckpt {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::ckpt::testing::ScratchDir;
using ::ckpt::testing::WriteWhole;
using testing_io::ContentOf;

class FaultEnvTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(mem_->CreateDirs("/d").ok()); }
  std::vector<std::string> Children(const std::string& dir = "/d") {
    auto c = mem_->GetChildren(dir);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? *c : std::vector<std::string>{};
  }
  std::unique_ptr<Env> mem_ = NewMemEnv();
  FaultEnv env_{mem_.get()};
};

Status AppendAll(WritableFile* f) {
  CKPT_RETURN_IF_ERROR(f->Append("new "));
  CKPT_RETURN_IF_ERROR(f->Append("content"));
  return OkStatus();
}

// ---- WriteFileAtomically -------------------------------------------------

TEST_F(FaultEnvTest, AtomicWritePublishesAndSyncsDir) {
  ASSERT_TRUE(WriteWhole(mem_.get(), "/d/f", "old").ok());
  ASSERT_TRUE(WriteFileAtomically(&env_, "/d/f", AppendAll).ok());
  EXPECT_EQ(ContentOf(mem_.get(), "/d/f"), "new content");
  EXPECT_THAT(Children(), ElementsAre("f"));
  FaultEnvCounters c = env_.counters();
  EXPECT_EQ(c.syncs, 1u);
  EXPECT_EQ(c.renames, 1u);
  EXPECT_EQ(c.sync_dirs, 1u);
  EXPECT_EQ(c.bytes_appended, 11u);
  // And it survives a crash right after.
  ASSERT_TRUE(env_.DropUnsyncedData().ok());
  EXPECT_EQ(ContentOf(mem_.get(), "/d/f"), "new content");
  EXPECT_THAT(Children(), ElementsAre("f"));
}

TEST_F(FaultEnvTest, AtomicWriteFailingFillLeavesOldFile) {
  ASSERT_TRUE(WriteWhole(mem_.get(), "/d/f", "old").ok());
  Status s = WriteFileAtomically(&env_, "/d/f", [](WritableFile* f) -> Status {
    CKPT_RETURN_IF_ERROR(f->Append("partial"));
    return DataLossError("tensor x: bad");
  });
  EXPECT_EQ(s.code(), Code::kDataLoss);
  EXPECT_EQ(s.message(), "writing /d/f: tensor x: bad");
  EXPECT_EQ(ContentOf(mem_.get(), "/d/f"), "old");
  EXPECT_THAT(Children(), ElementsAre("f"));
}

TEST_F(FaultEnvTest, AtomicWriteFailingAppendLeavesOldFile) {
  ASSERT_TRUE(WriteWhole(mem_.get(), "/d/f", "old").ok());
  env_.FailNthAppend(2, "ckptkit-tmp");
  Status s = WriteFileAtomically(&env_, "/d/f", AppendAll);
  EXPECT_EQ(s.code(), Code::kUnavailable);
  EXPECT_EQ(s.message(),
            "writing /d/f: /d/.f.ckptkit-tmp: append of 7 bytes at offset 4: injected fault");
  EXPECT_EQ(ContentOf(mem_.get(), "/d/f"), "old");
  EXPECT_THAT(Children(), ElementsAre("f"));
}

TEST_F(FaultEnvTest, AtomicWriteFailingSyncLeavesOldFile) {
  ASSERT_TRUE(WriteWhole(mem_.get(), "/d/f", "old").ok());
  env_.FailSync();
  Status s = WriteFileAtomically(&env_, "/d/f", AppendAll);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.message(), "writing /d/f: /d/.f.ckptkit-tmp: fsync: injected fault");
  EXPECT_EQ(ContentOf(mem_.get(), "/d/f"), "old");
  EXPECT_THAT(Children(), ElementsAre("f"));
  EXPECT_EQ(env_.counters().renames, 0u);
}

TEST_F(FaultEnvTest, AtomicWriteFailingCloseLeavesOldFile) {
  ASSERT_TRUE(WriteWhole(mem_.get(), "/d/f", "old").ok());
  env_.FailClose();
  Status s = WriteFileAtomically(&env_, "/d/f", AppendAll);
  EXPECT_THAT(s.message(), HasSubstr("writing /d/f: /d/.f.ckptkit-tmp: close"));
  EXPECT_EQ(ContentOf(mem_.get(), "/d/f"), "old");
  EXPECT_THAT(Children(), ElementsAre("f"));
}

TEST_F(FaultEnvTest, AtomicWriteFailingRenameLeavesOldFile) {
  ASSERT_TRUE(WriteWhole(mem_.get(), "/d/f", "old").ok());
  FaultRule r;
  r.op = FaultOp::kRename;
  r.error = PermissionDeniedError("EPERM");
  env_.AddRule(r);
  Status s = WriteFileAtomically(&env_, "/d/f", AppendAll);
  EXPECT_EQ(s.code(), Code::kPermissionDenied);
  EXPECT_EQ(s.message(), "writing /d/f: rename /d/.f.ckptkit-tmp -> /d/f: EPERM");
  EXPECT_EQ(ContentOf(mem_.get(), "/d/f"), "old");
  EXPECT_THAT(Children(), ElementsAre("f"));
}

TEST_F(FaultEnvTest, AtomicWriteFailingCreateNamesPath) {
  env_.FailNewWritableFile();
  Status s = WriteFileAtomically(&env_, "/d/f", AppendAll);
  EXPECT_THAT(s.message(), HasSubstr("writing /d/f: create /d/.f.ckptkit-tmp"));
  EXPECT_TRUE(Children().empty());
}

TEST_F(FaultEnvTest, AtomicWriteFailingSyncDirReportsPublishedButNotDurable) {
  env_.FailSyncDir();
  Status s = WriteFileAtomically(&env_, "/d/f", AppendAll);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.message(),
            "writing /d/f: published, but not durable: fsync dir /d: injected fault");
  EXPECT_EQ(ContentOf(mem_.get(), "/d/f"), "new content");
  // Without the directory sync, a crash forgets the rename and the create.
  ASSERT_TRUE(env_.DropUnsyncedData().ok());
  EXPECT_TRUE(Children().empty());
}

TEST_F(FaultEnvTest, AtomicWriteOnFullDiskIsResourceExhaustedWithPathAndOffset) {
  ASSERT_TRUE(WriteWhole(mem_.get(), "/d/f", "old").ok());
  env_.SetSpaceLimit(6);
  Status s = WriteFileAtomically(&env_, "/d/f", AppendAll);
  EXPECT_EQ(s.code(), Code::kResourceExhausted);
  EXPECT_EQ(s.message(),
            "writing /d/f: /d/.f.ckptkit-tmp: append of 7 bytes at offset 4: no space left on "
            "device (2 bytes written, failed at offset 6; injected space limit)");
  EXPECT_EQ(ContentOf(mem_.get(), "/d/f"), "old");
  EXPECT_THAT(Children(), ElementsAre("f"));
}

TEST_F(FaultEnvTest, AtomicWriteInRelativeDirectory) {
  // Dirname("f") is "."; the temporary is "./.f.ckptkit-tmp".
  Status s = WriteFileAtomically(&env_, "f", AppendAll);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(ContentOf(mem_.get(), "f"), "new content");
  EXPECT_THAT(Children("."), ElementsAre("f"));
  ASSERT_TRUE(env_.DropUnsyncedData().ok());
  EXPECT_EQ(ContentOf(mem_.get(), "f"), "new content");
}

// A crash at every step of an atomic replace leaves the old or the new
// content, never a mix, and no temporary.
void CrashAtEveryStep(Env* base, const std::string& dir) {
  const std::string path = JoinPath(dir, "model.json");
  auto fill = [](WritableFile* f) -> Status {
    for (int i = 0; i < 5; ++i) CKPT_RETURN_IF_ERROR(f->Append("0123456789"));
    return OkStatus();
  };
  const std::string new_content = "01234567890123456789012345678901234567890123456789";
  // Learn how many mutating steps a save takes.
  uint64_t steps;
  {
    ASSERT_TRUE(WriteWhole(base, path, "old").ok());
    FaultEnv env(base);
    ASSERT_TRUE(WriteFileAtomically(&env, path, fill).ok());
    steps = env.counters().mutating_ops;
    EXPECT_EQ(steps, 10u);  // create, 5 appends, sync, close, rename, sync dir
  }
  for (uint64_t k = 0; k <= steps; ++k) {
    SCOPED_TRACE(::testing::Message() << "crash after " << k << " of " << steps << " steps");
    ASSERT_TRUE(WriteWhole(base, path, "old").ok());
    FaultEnv env(base);
    env.CrashAfterOps(k);
    Status s = WriteFileAtomically(&env, path, fill);
    EXPECT_EQ(s.ok(), k == steps) << s.ToString();
    EXPECT_EQ(env.crashed(), k < steps);
    ASSERT_TRUE(env.DropUnsyncedData().ok());
    std::string got = ContentOf(base, path);
    if (k < steps) {
      EXPECT_EQ(got, "old");
    } else {
      EXPECT_EQ(got, new_content);
    }
    auto c = base->GetChildren(dir);
    ASSERT_TRUE(c.ok());
    EXPECT_THAT(*c, ElementsAre("model.json"));
  }
}

TEST_F(FaultEnvTest, AtomicWriteSurvivesCrashAtEveryStepOnMemEnv) {
  CrashAtEveryStep(mem_.get(), "/d");
}

TEST(FaultEnvPosix, AtomicWriteSurvivesCrashAtEveryStepOnPosixEnv) {
  ScratchDir dir;
  CrashAtEveryStep(Env::Default(), dir.path());
}

// ---- Fault rules ---------------------------------------------------------

TEST_F(FaultEnvTest, NthAppendFailsOnlyOnMatchingPaths) {
  env_.FailNthAppend(3, "shard");
  auto a = env_.NewWritableFile("/d/shard.bin");
  auto b = env_.NewWritableFile("/d/index.json");
  ASSERT_TRUE(a.ok() && b.ok());
  for (int i = 0; i < 5; ++i) EXPECT_TRUE((*b)->Append("i").ok()) << i;
  EXPECT_TRUE((*a)->Append("1").ok());
  EXPECT_TRUE((*a)->Append("2").ok());
  Status s = (*a)->Append("3");
  EXPECT_EQ(s.code(), Code::kUnavailable);
  EXPECT_EQ(s.message(), "/d/shard.bin: append of 1 bytes at offset 2: injected fault");
  EXPECT_TRUE((*a)->Append("4").ok());  // times = 1
  EXPECT_EQ(ContentOf(mem_.get(), "/d/shard.bin"), "124");
  EXPECT_EQ(env_.counters().injected_faults, 1u);
  EXPECT_EQ(env_.counters().appends, 9u);
}

TEST_F(FaultEnvTest, AppendAtOffsetWritesPrefixThenFails) {
  FaultRule r;
  r.op = FaultOp::kAppend;
  r.at_offset = 10;
  r.partial = true;
  r.error = DataLossError("EIO");
  env_.AddRule(r);
  auto f = env_.NewWritableFile("/d/x");
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE((*f)->Append("01234567").ok());  // [0, 8) misses offset 10
  Status s = (*f)->Append("89abcd");            // [8, 14) covers it
  EXPECT_EQ(s.code(), Code::kDataLoss);
  EXPECT_EQ(s.message(), "/d/x: append of 6 bytes at offset 8: EIO (2 bytes written)");
  EXPECT_EQ(ContentOf(mem_.get(), "/d/x"), "0123456789");
}

TEST_F(FaultEnvTest, SpaceLimitIsSharedByAllFilesAndThreads) {
  env_.SetSpaceLimit(10000);
  std::vector<std::thread> threads;
  std::atomic<int> exhausted{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      auto f = env_.NewWritableFile("/d/f" + std::to_string(t));
      ASSERT_TRUE(f.ok());
      for (int i = 0; i < 1000; ++i) {
        Status s = (*f)->Append("0123456");
        if (s.code() == Code::kResourceExhausted) ++exhausted;
      }
    });
  }
  for (auto& th : threads) th.join();
  uint64_t total = 0;
  for (int t = 0; t < 4; ++t) total += *mem_->GetFileSize("/d/f" + std::to_string(t));
  EXPECT_EQ(total, 10000u);
  EXPECT_EQ(env_.counters().bytes_appended, 10000u);
  EXPECT_EQ(env_.counters().appends, 4000u);
  // 10000 / 7 = 1428 appends fit whole; every later one fails.
  EXPECT_EQ(exhausted.load(), 4000 - 1428);
}

TEST_F(FaultEnvTest, ShortReadAtOffsetDeliversPrefix) {
  ASSERT_TRUE(WriteWhole(mem_.get(), "/d/r", "0123456789").ok());
  env_.FailReadAt("/d/r", 6, /*short_read=*/true);
  auto f = env_.NewRandomAccessFile("/d/r");
  ASSERT_TRUE(f.ok());
  EXPECT_EQ((*f)->Data(), nullptr);
  char buf[10] = {};
  EXPECT_TRUE((*f)->ReadAt(0, 6, buf).ok());  // [0, 6) does not cover 6
  Status s = (*f)->ReadAt(4, 4, buf);
  EXPECT_EQ(s.code(), Code::kDataLoss);
  EXPECT_EQ(s.message(), "/d/r: short read at offset 4: wanted 4 bytes, got 2 (injected)");
  EXPECT_EQ(std::string(buf, 2), "45");
  EXPECT_EQ(env_.counters().reads, 2u);
  EXPECT_EQ(env_.counters().bytes_read, 10u);
}

TEST_F(FaultEnvTest, ReadErrorAtOffsetNamesPathAndOffset) {
  ASSERT_TRUE(WriteWhole(mem_.get(), "/d/r", "0123456789").ok());
  env_.FailReadAt("", 9, /*short_read=*/false, /*times=*/1);
  auto f = env_.NewRandomAccessFile("/d/r");
  ASSERT_TRUE(f.ok());
  char buf[10];
  Status s = (*f)->ReadAt(0, 10, buf);
  EXPECT_EQ(s.code(), Code::kUnavailable);
  EXPECT_EQ(s.message(), "/d/r: read of 10 bytes at offset 0: injected fault");
  EXPECT_TRUE((*f)->ReadAt(0, 10, buf).ok());  // fired once
}

TEST_F(FaultEnvTest, RulesSkipThenFailTimes) {
  FaultRule r;
  r.op = FaultOp::kSync;
  r.skip = 1;
  r.times = 2;
  env_.AddRule(r);
  auto f = env_.NewWritableFile("/d/s");
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE((*f)->Sync().ok());
  EXPECT_FALSE((*f)->Sync().ok());
  EXPECT_FALSE((*f)->Sync().ok());
  EXPECT_TRUE((*f)->Sync().ok());
  env_.FailSync();
  EXPECT_FALSE((*f)->Sync().ok());
  env_.ClearFaults();
  EXPECT_TRUE((*f)->Sync().ok());
}

TEST_F(FaultEnvTest, RenameRuleMatchesEitherPath) {
  ASSERT_TRUE(WriteWhole(mem_.get(), "/d/a", "a").ok());
  env_.FailRename("target");
  Status s = env_.RenameFile("/d/a", "/d/target");
  EXPECT_EQ(s.message(), "rename /d/a -> /d/target: injected fault");
  EXPECT_TRUE(env_.RenameFile("/d/a", "/d/b").ok());
}

TEST_F(FaultEnvTest, CrashedEnvRefusesMutationsButReads) {
  ASSERT_TRUE(WriteWhole(mem_.get(), "/d/r", "x").ok());
  env_.CrashAfterOps(1);
  auto f = env_.NewWritableFile("/d/w");  // step 1 passes
  ASSERT_TRUE(f.ok());
  Status s = (*f)->Append("lost");
  EXPECT_EQ(s.code(), Code::kUnavailable);
  EXPECT_EQ(s.message(), "/d/w: append of 4 bytes at offset 0: simulated crash");
  EXPECT_TRUE(env_.crashed());
  EXPECT_FALSE(env_.RemoveFile("/d/r").ok());
  EXPECT_FALSE(env_.SyncDir("/d").ok());
  EXPECT_EQ(ContentOf(&env_, "/d/r"), "x");
  EXPECT_EQ(*mem_->GetFileSize("/d/w"), 0u);
}

// ---- Crash simulation ----------------------------------------------------

TEST_F(FaultEnvTest, DropUnsyncedDataKeepsOnlySyncedPrefix) {
  ASSERT_TRUE(env_.SyncDir("/d").ok());
  auto f = env_.NewWritableFile("/d/log");
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(env_.SyncDir("/d").ok());  // the create is durable
  ASSERT_TRUE((*f)->Append("synced|").ok());
  ASSERT_TRUE((*f)->Sync().ok());
  ASSERT_TRUE((*f)->Append("lost").ok());
  EXPECT_EQ(ContentOf(mem_.get(), "/d/log"), "synced|lost");
  ASSERT_TRUE(env_.DropUnsyncedData().ok());
  EXPECT_EQ(ContentOf(mem_.get(), "/d/log"), "synced|");
  // The handle died with the process.
  EXPECT_EQ((*f)->Append("x").code(), Code::kFailedPrecondition);
  EXPECT_EQ((*f)->Close().code(), Code::kFailedPrecondition);
}

TEST_F(FaultEnvTest, DropUnsyncedDataRemovesCreatesWithoutDirSync) {
  ASSERT_TRUE(WriteWhole(&env_, "/d/new", "synced but never dir-synced").ok());
  ASSERT_TRUE(WriteWhole(mem_.get(), "/d/preexisting", "p").ok());
  ASSERT_TRUE(env_.DropUnsyncedData().ok());
  EXPECT_THAT(Children(), ElementsAre("preexisting"));
}

TEST_F(FaultEnvTest, DropUnsyncedDataUndoesRenameAndRestoresReplacedFile) {
  ASSERT_TRUE(WriteWhole(mem_.get(), "/d/cur", "old").ok());
  ASSERT_TRUE(WriteWhole(&env_, "/d/tmp", "new").ok());
  ASSERT_TRUE(env_.SyncDir("/d").ok());
  ASSERT_TRUE(env_.RenameFile("/d/tmp", "/d/cur").ok());
  EXPECT_EQ(ContentOf(mem_.get(), "/d/cur"), "new");
  ASSERT_TRUE(env_.DropUnsyncedData().ok());
  EXPECT_EQ(ContentOf(mem_.get(), "/d/cur"), "old");
  EXPECT_EQ(ContentOf(mem_.get(), "/d/tmp"), "new");
}

TEST_F(FaultEnvTest, RenameAcrossDirectoriesNeedsBothSynced) {
  ASSERT_TRUE(mem_->CreateDirs("/e").ok());
  ASSERT_TRUE(WriteWhole(&env_, "/d/a", "a").ok());
  ASSERT_TRUE(env_.SyncDir("/d").ok());
  ASSERT_TRUE(env_.RenameFile("/d/a", "/e/a").ok());
  ASSERT_TRUE(env_.SyncDir("/e").ok());
  ASSERT_TRUE(env_.DropUnsyncedData().ok());
  EXPECT_THAT(Children("/d"), ElementsAre("a"));
  EXPECT_TRUE(Children("/e").empty());

  ASSERT_TRUE(env_.RenameFile("/d/a", "/e/a").ok());
  ASSERT_TRUE(env_.SyncDir("/e").ok());
  ASSERT_TRUE(env_.SyncDir("/d").ok());
  ASSERT_TRUE(env_.DropUnsyncedData().ok());
  EXPECT_TRUE(Children("/d").empty());
  EXPECT_EQ(ContentOf(mem_.get(), "/e/a"), "a");
}

// The classic bug: rename without fsyncing the data first. A crash leaves an
// empty file under the final name, and FaultEnv shows it.
TEST_F(FaultEnvTest, RenameWithoutFileSyncLosesDataAfterCrash) {
  {
    auto f = env_.NewWritableFile("/d/tmp");
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE((*f)->Append("payload").ok());
    ASSERT_TRUE((*f)->Close().ok());  // no Sync
  }
  ASSERT_TRUE(env_.RenameFile("/d/tmp", "/d/final").ok());
  ASSERT_TRUE(env_.SyncDir("/d").ok());
  ASSERT_TRUE(env_.DropUnsyncedData().ok());
  EXPECT_THAT(Children(), ElementsAre("final"));
  EXPECT_EQ(ContentOf(mem_.get(), "/d/final"), "");
}

TEST_F(FaultEnvTest, ReopenForWriteTruncatesUnlessSynced) {
  ASSERT_TRUE(WriteWhole(mem_.get(), "/d/f", "durable").ok());
  {
    auto f = env_.NewWritableFile("/d/f");
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE((*f)->Append("unsynced").ok());
  }
  ASSERT_TRUE(env_.DropUnsyncedData().ok());
  EXPECT_EQ(ContentOf(mem_.get(), "/d/f"), "");
}

// ---- WriteAt -------------------------------------------------------------

TEST_F(FaultEnvTest, WriteAtIsCountedAsAMutatingOp) {
  auto f = env_.NewWritableFile("/d/w");
  ASSERT_TRUE(f.ok());
  const FaultEnvCounters before = env_.counters();
  ASSERT_TRUE((*f)->WriteAt(4, "4567").ok());
  ASSERT_TRUE((*f)->WriteAt(0, "0123").ok());
  const FaultEnvCounters after = env_.counters();
  EXPECT_EQ(after.write_ats - before.write_ats, 2u);
  EXPECT_EQ(after.bytes_written_at - before.bytes_written_at, 8u);
  EXPECT_EQ(after.mutating_ops - before.mutating_ops, 2u);
  EXPECT_EQ(after.appends, before.appends);
  EXPECT_EQ(after.bytes_appended, before.bytes_appended);
  EXPECT_EQ(ContentOf(mem_.get(), "/d/w"), "01234567");
  EXPECT_EQ(FaultOpName(FaultOp::kWriteAt), "write at");
}

TEST_F(FaultEnvTest, NthWriteAtFailsNamingPathAndOffset) {
  env_.FailNthWriteAt(2, "shard", ResourceExhaustedError("No space left on device"));
  auto f = env_.NewWritableFile("/d/shard.bin");
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE((*f)->Append("aa").ok());  // Append rules are separate: not counted
  ASSERT_TRUE((*f)->WriteAt(10, "k").ok());
  Status s = (*f)->WriteAt(20, "xyz");
  EXPECT_EQ(s.code(), Code::kResourceExhausted);
  EXPECT_EQ(s.message(),
            "/d/shard.bin: write of 3 bytes at offset 20: No space left on device");
  ASSERT_TRUE((*f)->WriteAt(2, "b").ok());  // times = 1
  EXPECT_EQ(ContentOf(mem_.get(), "/d/shard.bin"), std::string("aab\0\0\0\0\0\0\0k", 11));
  EXPECT_EQ(env_.counters().injected_faults, 1u);
  EXPECT_EQ(env_.counters().write_ats, 3u);
}

TEST_F(FaultEnvTest, WriteAtAtOffsetWritesPrefixThenFails) {
  FaultRule r;
  r.op = FaultOp::kWriteAt;
  r.at_offset = 102;
  r.partial = true;
  env_.AddRule(r);
  auto f = env_.NewWritableFile("/d/x");
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE((*f)->WriteAt(0, "0123").ok());  // [0, 4) misses offset 102
  Status s = (*f)->WriteAt(100, "abcdef");     // [100, 106) covers it
  EXPECT_EQ(s.code(), Code::kUnavailable);
  EXPECT_EQ(s.message(), "/d/x: write of 6 bytes at offset 100: injected fault (2 bytes written)");
  EXPECT_EQ(*mem_->GetFileSize("/d/x"), 102u);
}

TEST_F(FaultEnvTest, WriteAtObeysTheSpaceLimit) {
  env_.SetSpaceLimit(10);
  auto f = env_.NewWritableFile("/d/full");
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE((*f)->Append("0123").ok());
  Status s = (*f)->WriteAt(100, "abcdefgh");
  EXPECT_EQ(s.code(), Code::kResourceExhausted);
  EXPECT_EQ(s.message(),
            "/d/full: write of 8 bytes at offset 100: no space left on device (6 bytes "
            "written, failed at offset 106; injected space limit)");
  EXPECT_EQ(*mem_->GetFileSize("/d/full"), 106u);
  EXPECT_EQ(env_.counters().bytes_written_at, 6u);
  EXPECT_EQ((*f)->WriteAt(0, "z").code(), Code::kResourceExhausted);
}

TEST_F(FaultEnvTest, CrashAfterOpsStopsWriteAt) {
  auto f = env_.NewWritableFile("/d/c");
  ASSERT_TRUE(f.ok());
  env_.CrashAfterOps(2);
  ASSERT_TRUE((*f)->WriteAt(5, "b").ok());
  ASSERT_TRUE((*f)->WriteAt(0, "a").ok());
  Status s = (*f)->WriteAt(1, "lost");
  EXPECT_EQ(s.code(), Code::kUnavailable);
  EXPECT_EQ(s.message(), "/d/c: write of 4 bytes at offset 1: simulated crash");
  EXPECT_TRUE(env_.crashed());
  EXPECT_EQ(ContentOf(mem_.get(), "/d/c"), std::string("a\0\0\0\0b", 6));
}

TEST_F(FaultEnvTest, CrashDropsWriteAtDataNotSynced) {
  ASSERT_TRUE(env_.SyncDir("/d").ok());
  auto f = env_.NewWritableFile("/d/ckpt");
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(env_.SyncDir("/d").ok());  // the create is durable
  ASSERT_TRUE((*f)->WriteAt(4, "AAAA").ok());
  ASSERT_TRUE((*f)->WriteAt(0, "hdr0").ok());
  ASSERT_TRUE((*f)->Sync().ok());  // [0, 8) durable, past Position() == 0
  ASSERT_TRUE((*f)->WriteAt(8, "BBBB").ok());   // unsynced extension
  ASSERT_TRUE((*f)->WriteAt(0, "hdr1").ok());   // unsynced overwrite of synced bytes
  ASSERT_TRUE((*f)->WriteAt(2, "XX").ok());     // overwritten twice: oldest wins
  EXPECT_EQ(ContentOf(mem_.get(), "/d/ckpt"), "hdXXAAAABBBB");
  // Crash at the next mutating op, then lose power.
  env_.CrashAfterOps(0);
  EXPECT_EQ((*f)->WriteAt(12, "C").code(), Code::kUnavailable);
  ASSERT_TRUE(env_.DropUnsyncedData().ok());
  EXPECT_EQ(ContentOf(mem_.get(), "/d/ckpt"), "hdr0AAAA");
  EXPECT_EQ((*f)->WriteAt(0, "x").code(), Code::kFailedPrecondition);
}

TEST_F(FaultEnvTest, CrashKeepsWriteAtDataSyncedBeforeIt) {
  ASSERT_TRUE(env_.SyncDir("/d").ok());
  auto f = env_.NewWritableFile("/d/k");
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(env_.SyncDir("/d").ok());
  ASSERT_TRUE((*f)->WriteAt(3, "def").ok());
  ASSERT_TRUE((*f)->WriteAt(0, "abc").ok());
  ASSERT_TRUE((*f)->Sync().ok());
  ASSERT_TRUE((*f)->WriteAt(0, "ABC").ok());
  ASSERT_TRUE((*f)->Sync().ok());  // the overwrite is durable now
  ASSERT_TRUE(env_.DropUnsyncedData().ok());
  EXPECT_EQ(ContentOf(mem_.get(), "/d/k"), "ABCdef");
}

TEST_F(FaultEnvTest, CrashRestoresSyncedBytesOfARenamedFileOverwrittenByWriteAt) {
  ASSERT_TRUE(env_.SyncDir("/d").ok());
  auto f = env_.NewWritableFile("/d/tmp");
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE((*f)->Append("v1v1").ok());
  ASSERT_TRUE((*f)->Sync().ok());
  ASSERT_TRUE(env_.RenameFile("/d/tmp", "/d/final").ok());
  ASSERT_TRUE(env_.SyncDir("/d").ok());  // create and rename durable
  ASSERT_TRUE((*f)->WriteAt(0, "v2").ok());
  EXPECT_EQ(ContentOf(mem_.get(), "/d/final"), "v2v1");
  ASSERT_TRUE(env_.DropUnsyncedData().ok());
  EXPECT_THAT(Children(), ElementsAre("final"));
  EXPECT_EQ(ContentOf(mem_.get(), "/d/final"), "v1v1");
}

TEST(FaultEnvPosix, CrashDropsUnsyncedWriteAtOnPosixEnv) {
  ScratchDir dir;
  FaultEnv env(Env::Default());
  const std::string p = JoinPath(dir.path(), "ckpt");
  auto f = env.NewWritableFile(p);
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(env.SyncDir(dir.path()).ok());
  ASSERT_TRUE((*f)->Append("????body").ok());
  ASSERT_TRUE((*f)->Sync().ok());
  ASSERT_TRUE((*f)->WriteAt(0, "HDR:").ok());  // unsynced header patch
  ASSERT_TRUE((*f)->WriteAt(8, "more").ok());  // unsynced extension
  EXPECT_EQ(ContentOf(Env::Default(), p), "HDR:bodymore");
  ASSERT_TRUE(env.DropUnsyncedData().ok());
  EXPECT_EQ(ContentOf(Env::Default(), p), "????body");
}

}  // namespace
}  // namespace ckpt
