// FolderCommit: a folder's new content built beside it and switched over in
// one step; the old content intact until then, across failures and crashes
// (FaultEnv over MemEnv and the real disk).
#include "ckpt/engine.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <string>

#include "ckpt/fault_env.h"
#include "testing/testutil.h"
#include "util/strings.h"

namespace ckpt::engine {
namespace {

using ::ckpt::testing::ReadWhole;

Status Put(Env* env, const std::string& path, const std::string& text) {
  return WriteFileAtomically(env, path, [&](WritableFile* f) { return f->Append(text); });
}

// Every file under `dir` (relative path -> content).
std::map<std::string, std::string> Tree(Env* env, const std::string& dir) {
  std::map<std::string, std::string> out;
  Result<std::vector<std::string>> kids = env->GetChildren(dir);
  if (!kids.ok()) return out;
  for (const std::string& k : *kids) {
    const std::string p = JoinPath(dir, k);
    if (env->IsDirectory(p)) {
      for (auto& [sub, text] : Tree(env, p)) out[JoinPath(k, sub)] = text;
    } else {
      Result<std::string> t = ReadWhole(env, p);
      out[k] = t.ok() ? *t : "<unreadable>";
    }
  }
  return out;
}

const std::map<std::string, std::string> kOld = {{".metadata", "old md"}, {"__0_0.distcp", "old 0"},
                                                 {"__1_0.distcp", "old 1"}};
const std::map<std::string, std::string> kNew = {{".metadata", "new md"}, {"__0_0.distcp", "new 0"}};

Status WriteAll(Env* env, const std::string& dir, const std::map<std::string, std::string>& files) {
  CKPT_RETURN_IF_ERROR(env->CreateDirs(dir));
  for (const auto& [name, text] : files) CKPT_RETURN_IF_ERROR(Put(env, JoinPath(dir, name), text));
  return OkStatus();
}

// Begin, write kNew, Commit.
Status Replace(Env* env, const std::string& dst) {
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<FolderCommit> c, FolderCommit::Begin(env, dst));
  CKPT_RETURN_IF_ERROR(WriteAll(env, c->staging(), kNew));
  return c->Commit();
}

// The parent's entries other than the destination (leftovers).
std::vector<std::string> Others(Env* env, const std::string& parent, const std::string& name) {
  std::vector<std::string> out;
  const std::vector<std::string> kids = env->GetChildren(parent).value();
  for (const std::string& k : kids) {
    if (k != name) out.push_back(k);
  }
  return out;
}

TEST(FolderCommit, NewDestinationAndReplacementLeaveOnlyTheNewContent) {
  std::unique_ptr<Env> mem = NewMemEnv();
  ASSERT_TRUE(mem->CreateDirs("/r").ok());
  ASSERT_TRUE(Replace(mem.get(), "/r/iter").ok());
  EXPECT_EQ(Tree(mem.get(), "/r/iter"), kNew);
  // Over an existing folder with more files: none of the old ones survive.
  ASSERT_TRUE(RemoveTree(mem.get(), "/r/iter").ok());
  ASSERT_TRUE(WriteAll(mem.get(), "/r/iter", kOld).ok());
  std::unique_ptr<FolderCommit> c = FolderCommit::Begin(mem.get(), "/r/iter").value();
  ASSERT_TRUE(WriteAll(mem.get(), c->staging(), kNew).ok());
  EXPECT_EQ(Tree(mem.get(), "/r/iter"), kOld);  // intact until Commit
  EXPECT_EQ(c->staging().rfind("/r/.iter.ckptkit-new-", 0), 0u) << c->staging();
  ASSERT_TRUE(c->Commit().ok());
  EXPECT_EQ(Tree(mem.get(), "/r/iter"), kNew);
  EXPECT_THAT(Others(mem.get(), "/r", "iter"), ::testing::IsEmpty());
  EXPECT_EQ(c->Commit().code(), Code::kFailedPrecondition);
}

TEST(FolderCommit, AbortAndDestructorRemoveTheStagingFolder) {
  std::unique_ptr<Env> mem = NewMemEnv();
  ASSERT_TRUE(WriteAll(mem.get(), "/r/iter", kOld).ok());
  {
    std::unique_ptr<FolderCommit> c = FolderCommit::Begin(mem.get(), "/r/iter").value();
    ASSERT_TRUE(WriteAll(mem.get(), c->staging(), kNew).ok());
  }
  EXPECT_EQ(Tree(mem.get(), "/r/iter"), kOld);
  EXPECT_THAT(Others(mem.get(), "/r", "iter"), ::testing::IsEmpty());
  EXPECT_EQ(FolderCommit::Begin(mem.get(), "/").status().code(), Code::kInvalidArgument);
  ASSERT_TRUE(Put(mem.get(), "/r/file", "x").ok());
  EXPECT_EQ(FolderCommit::Begin(mem.get(), "/r/file").status().code(), Code::kInvalidArgument);
}

// Leftovers of a killed run (a process id that cannot exist): a staging
// folder is removed; an old folder set aside by a two-step switch is put
// back when the destination is missing. A live process's staging is kept.
TEST(FolderCommit, BeginCleansUpAfterKilledRuns) {
  std::unique_ptr<Env> mem = NewMemEnv();
  ASSERT_TRUE(WriteAll(mem.get(), "/r/.iter.ckptkit-new-2147483646-0", kNew).ok());
  ASSERT_TRUE(WriteAll(mem.get(), "/r/.iter.ckptkit-old-2147483646-1", kOld).ok());
  const std::string live = StrCat("/r/.iter.ckptkit-new-", ::getppid(), "-7");
  ASSERT_TRUE(WriteAll(mem.get(), live, kNew).ok());
  std::unique_ptr<FolderCommit> c = FolderCommit::Begin(mem.get(), "/r/iter").value();
  EXPECT_EQ(Tree(mem.get(), "/r/iter"), kOld);  // restored
  EXPECT_FALSE(mem->FileExists("/r/.iter.ckptkit-new-2147483646-0"));
  EXPECT_TRUE(mem->FileExists(live));
  c->Abort();
}

// Every fault on the way (rename, exchange, folder syncs, writes) leaves
// the old content whole at the destination, or (after the switch) the new.
TEST(FolderCommit, FaultsLeaveTheOldOrTheNewContent) {
  for (int fault = 0; fault < 4; ++fault) {
    std::unique_ptr<Env> mem = NewMemEnv();
    ASSERT_TRUE(WriteAll(mem.get(), "/r/iter", kOld).ok());
    FaultEnv env(mem.get());
    if (fault == 0) env.FailRename("/r/iter");            // the exchange
    if (fault == 1) env.FailSyncDir(".ckptkit-new-");     // the staging folder's sync
    if (fault == 2) env.FailNthAppend(2);                 // a data file
    if (fault == 3) {  // the parent after the switch ("not durable"): after 2 file and 1 staging syncs
      FaultRule r;
      r.op = FaultOp::kSyncDir;
      r.path_contains = "/r";
      r.skip = 3;
      env.AddRule(r);
    }
    Status s = Replace(&env, "/r/iter");
    ASSERT_FALSE(s.ok()) << fault;
    const auto now = Tree(mem.get(), "/r/iter");
    EXPECT_TRUE(now == (fault == 3 ? kNew : kOld)) << fault << ": " << s.ToString();
    if (fault != 3) {
      EXPECT_THAT(Others(mem.get(), "/r", "iter"), ::testing::IsEmpty()) << fault;
    }
    env.ClearFaults();
    ASSERT_TRUE(Replace(&env, "/r/iter").ok()) << fault;
    EXPECT_EQ(Tree(mem.get(), "/r/iter"), kNew);
    EXPECT_THAT(Others(mem.get(), "/r", "iter"), ::testing::IsEmpty()) << fault;
  }
}

// A crash after each operation count: after the simulated crash (unsynced
// data and namespace changes undone) the destination holds exactly the old
// or exactly the new content, and a fresh Replace then succeeds cleanly.
TEST(FolderCommit, CrashAtEveryStepLeavesTheOldOrTheNew) {
  size_t olds = 0, news = 0;
  for (uint64_t n = 0; n < 60; ++n) {
    std::unique_ptr<Env> mem = NewMemEnv();
    ASSERT_TRUE(WriteAll(mem.get(), "/r/iter", kOld).ok());
    FaultEnv env(mem.get());
    env.CrashAfterOps(n);
    Status s = Replace(&env, "/r/iter");
    ASSERT_TRUE(env.DropUnsyncedData().ok()) << n;
    const auto now = Tree(mem.get(), "/r/iter");
    ASSERT_TRUE(now == kOld || now == kNew) << n << ": " << s.ToString();
    (now == kOld ? olds : news)++;
    if (s.ok()) {
      EXPECT_EQ(now, kNew) << n;
      break;
    }
    FaultEnv again(mem.get());
    ASSERT_TRUE(Replace(&again, "/r/iter").ok()) << n;
    EXPECT_EQ(Tree(mem.get(), "/r/iter"), kNew) << n;
  }
  EXPECT_GT(olds, 3u);
  EXPECT_GT(news, 0u);
}

// On disk: the exchange is a real renameat2 (or the two-rename fallback on
// a file system without it); the result is the same.
TEST(FolderCommit, OnDisk) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / StrCat("ckpt_folder_commit_", ::getpid());
  std::filesystem::remove_all(dir);
  Env* env = Env::Default();
  const std::string dst = (dir / "iter_0000001").string();
  ASSERT_TRUE(WriteAll(env, dst, kOld).ok());
  ASSERT_TRUE(Replace(env, dst).ok());
  EXPECT_EQ(Tree(env, dst), kNew);
  EXPECT_THAT(Others(env, dir.string(), "iter_0000001"), ::testing::IsEmpty());
  std::filesystem::remove_all(dir);
}

// Files beside an old checkpoint (a README, a tokenizer folder) are carried
// into the new folder; the old checkpoint's own files are not; more than the
// budget is refused before anything changes.
TEST(FolderCommit, CarryOverKeepsWhatIsNotTheCheckpoints) {
  std::unique_ptr<Env> mem = NewMemEnv();
  ASSERT_TRUE(WriteAll(mem.get(), "/r/iter", kOld).ok());
  ASSERT_TRUE(Put(mem.get(), "/r/iter/README", "mine").ok());
  ASSERT_TRUE(WriteAll(mem.get(), "/r/iter/tok", {{"vocab.json", "{}"}}).ok());
  auto is_checkpoint = [](std::string_view n) { return n == ".metadata" || n.find(".distcp") != n.npos; };
  {
    std::unique_ptr<FolderCommit> c = FolderCommit::Begin(mem.get(), "/r/iter").value();
    ASSERT_TRUE(WriteAll(mem.get(), c->staging(), kNew).ok());
    Status s = c->CarryOver(is_checkpoint, 4);  // README alone is 4 bytes, the folder 2 more
    EXPECT_EQ(s.code(), Code::kFailedPrecondition) << s.ToString();
  }
  EXPECT_EQ(Tree(mem.get(), "/r/iter").size(), kOld.size() + 2);  // untouched
  std::unique_ptr<FolderCommit> c = FolderCommit::Begin(mem.get(), "/r/iter").value();
  ASSERT_TRUE(WriteAll(mem.get(), c->staging(), kNew).ok());
  ASSERT_TRUE(c->CarryOver(is_checkpoint).ok());
  ASSERT_TRUE(c->Commit().ok());
  std::map<std::string, std::string> want = kNew;
  want["README"] = "mine";
  want["tok/vocab.json"] = "{}";
  EXPECT_EQ(Tree(mem.get(), "/r/iter"), want);
}

}  // namespace
}  // namespace ckpt::engine
