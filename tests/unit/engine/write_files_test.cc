// WriteFiles (a checkpoint's data files written concurrently, each
// atomically, all stopped when one fails) and the shared staging folder of a
// multi-process save (SharedStagingPath, PruneFolder, FolderCommit::Adopt).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <vector>

#include "ckpt/engine.h"
#include "ckpt/fault_env.h"
#include "testing/testutil.h"
#include "util/strings.h"

namespace ckpt::engine {
namespace {

using ::ckpt::testing::ReadWhole;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

Status Put(Env* env, const std::string& path, const std::string& text) {
  return WriteFileAtomically(env, path, [&](WritableFile* f) { return f->Append(text); });
}

// `n` files "f<i>" of `size` bytes each, byte j of file i = (i + j) % 251,
// appended in pieces of 1000 bytes.
std::vector<FileToWrite> Files(int n, size_t size, std::atomic<int>* started = nullptr) {
  std::vector<FileToWrite> files;
  for (int i = 0; i < n; ++i) {
    files.push_back({StrCat("f", i), [=](ByteSink* out) -> Status {
                       if (started) started->fetch_add(1);
                       std::string piece;
                       for (size_t at = 0; at < size; at += piece.size()) {
                         piece.clear();
                         for (size_t j = at; j < std::min(size, at + 1000); ++j) {
                           piece.push_back(static_cast<char>((i + j) % 251));
                         }
                         CKPT_RETURN_IF_ERROR(out->Append(piece));
                       }
                       return OkStatus();
                     }});
  }
  return files;
}

std::vector<std::string> Children(Env* env, const std::string& dir) {
  Result<std::vector<std::string>> r = env->GetChildren(dir);
  return r.ok() ? *r : std::vector<std::string>{};
}

class WriteFilesTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(WriteFilesTest, WritesEveryFileWhole) {
  std::unique_ptr<Env> mem = NewMemEnv();
  ASSERT_TRUE(mem->CreateDirs("/d").ok());
  std::vector<FileToWrite> files = Files(5, 12345);
  WriteFilesOptions o;
  o.threads = GetParam();
  Result<WrittenFiles> r = WriteFiles(mem.get(), "/d", files, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_THAT(r->sizes, ElementsAre(12345, 12345, 12345, 12345, 12345));
  EXPECT_EQ(r->direct_io_files, 0u);
  EXPECT_THAT(Children(mem.get(), "/d"), UnorderedElementsAre("f0", "f1", "f2", "f3", "f4"));
  for (int i = 0; i < 5; ++i) {
    Result<std::string> got = ReadWhole(mem.get(), StrCat("/d/f", i));
    ASSERT_TRUE(got.ok());
    ASSERT_EQ(got->size(), 12345u);
    for (size_t j = 0; j < got->size(); j += 997) EXPECT_EQ(static_cast<uint8_t>((*got)[j]), (i + j) % 251);
  }
}

// One file fails (an I/O error at its 3rd append, or a full disk): the error
// names that file (under report_dir), the others stop or are skipped, and no
// file of the set is left in the folder.
TEST_P(WriteFilesTest, OneFailureStopsAllAndLeavesNothing) {
  for (bool full_disk : {false, true}) {
    SCOPED_TRACE(full_disk);
    std::unique_ptr<Env> mem = NewMemEnv();
    FaultEnv env(mem.get());
    ASSERT_TRUE(env.CreateDirs("/d").ok());
    ASSERT_TRUE(Put(&env, "/d/other", "kept").ok());
    if (full_disk) {
      env.SetSpaceLimit(3 * 200000 + 5000);
    } else {
      env.FailNthAppend(3, "f2");  // its temporary, .f2.ckptkit-tmp
    }
    std::vector<FileToWrite> files = Files(4, 200000);
    WriteFilesOptions o;
    o.threads = GetParam();
    Result<WrittenFiles> r = WriteFiles(&env, "/d", files, o, "ckpt/iter_1");
    ASSERT_FALSE(r.ok());
    if (full_disk) {
      EXPECT_EQ(r.status().code(), Code::kResourceExhausted) << r.status().ToString();
    } else {
      EXPECT_EQ(r.status().code(), Code::kUnavailable) << r.status().ToString();
      EXPECT_THAT(r.status().message(), ::testing::StartsWith("writing ckpt/iter_1/f2: "));
    }
    EXPECT_THAT(r.status().message(), ::testing::StartsWith("writing ckpt/iter_1/f")) << "names the reported folder";
    EXPECT_THAT(Children(mem.get(), "/d"), ElementsAre("other"));
  }
}

INSTANTIATE_TEST_SUITE_P(Threads, WriteFilesTest, ::testing::Values(1, 3, 8));

// On disk with direct_io: every file goes around the page cache (the file
// systems CI runs on take O_DIRECT) and holds exactly its bytes; without it,
// none does.
TEST(WriteFiles, DirectIoOnDiskWritesEveryFileWhole) {
  ::ckpt::testing::ScratchDir dir;
  for (bool direct : {true, false}) {
    SCOPED_TRACE(direct);
    const std::string d = dir.path() + (direct ? "/direct" : "/plain");
    ASSERT_TRUE(Env::Default()->CreateDirs(d).ok());
    std::vector<FileToWrite> files = Files(3, (5 << 20) + 4097);
    WriteFilesOptions o;
    o.threads = 3;
    o.direct_io = direct;
    Result<WrittenFiles> r = WriteFiles(Env::Default(), d, files, o);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->direct_io_files, direct ? 3u : 0u);
    EXPECT_THAT(r->sizes, ElementsAre((5 << 20) + 4097, (5 << 20) + 4097, (5 << 20) + 4097));
    for (int i = 0; i < 3; ++i) {
      Result<std::string> got = ReadWhole(Env::Default(), StrCat(d, "/f", i));
      ASSERT_TRUE(got.ok());
      ASSERT_EQ(got->size(), (5u << 20) + 4097);
      bool same = true;
      for (size_t j = 0; j < got->size() && same; ++j) same = static_cast<uint8_t>((*got)[j]) == (i + j) % 251;
      EXPECT_TRUE(same) << "f" << i;
    }
    EXPECT_THAT(Children(Env::Default(), d), ElementsAre("f0", "f1", "f2"));
  }
}

TEST(WriteFiles, RefusesBadOrRepeatedNames) {
  std::unique_ptr<Env> mem = NewMemEnv();
  ASSERT_TRUE(mem->CreateDirs("/d").ok());
  std::vector<FileToWrite> files = Files(2, 10);
  files[1].name = "f0";
  Result<WrittenFiles> r = WriteFiles(mem.get(), "/d", files, {});
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("/d/f0 is to be written twice"));
  files[1].name = "sub/f1";
  EXPECT_EQ(WriteFiles(mem.get(), "/d", files, {}).status().code(), Code::kInvalidArgument);
  EXPECT_TRUE(Children(mem.get(), "/d").empty());
}

TEST(SharedStaging, PathPruneAndAdopt) {
  Result<std::string> p = SharedStagingPath("/ckpt/iter_0000010/");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(*p, "/ckpt/.iter_0000010.ckptkit-shared");
  EXPECT_EQ(SharedStagingPath("/").status().code(), Code::kInvalidArgument);

  std::unique_ptr<Env> mem = NewMemEnv();
  Env* env = mem.get();
  // The destination holds an old checkpoint and a README; the shared staging
  // folder holds this save's files and a killed earlier save's leftovers.
  for (auto [path, text] : std::vector<std::pair<std::string, std::string>>{
           {"/ckpt/iter_0000010/.metadata", "old md"},
           {"/ckpt/iter_0000010/__0_0.distcp", "old 0"},
           {"/ckpt/iter_0000010/__2_0.distcp", "old 2"},
           {"/ckpt/iter_0000010/README", "readme"},
           {"/ckpt/.iter_0000010.ckptkit-shared/__0_0.distcp", "new 0"},
           {"/ckpt/.iter_0000010.ckptkit-shared/__1_0.distcp", "new 1"},
           {"/ckpt/.iter_0000010.ckptkit-shared/__5_0.distcp", "stale 5"},
           {"/ckpt/.iter_0000010.ckptkit-shared/.metadata", "stale md"}}) {
    ASSERT_TRUE(env->CreateDirs(Dirname(path)).ok());
    ASSERT_TRUE(Put(env, path, text).ok());
  }
  // Begin of another writer on the same destination leaves the shared folder alone.
  {
    Result<std::unique_ptr<FolderCommit>> other = FolderCommit::Begin(env, "/ckpt/iter_0000010");
    ASSERT_TRUE(other.ok());
  }
  ASSERT_TRUE(env->IsDirectory(*p));
  ASSERT_TRUE(PruneFolder(env, *p, [](std::string_view n) { return n == "__0_0.distcp" || n == "__1_0.distcp"; }).ok());
  EXPECT_THAT(Children(env, *p), UnorderedElementsAre("__0_0.distcp", "__1_0.distcp"));
  ASSERT_TRUE(Put(env, JoinPath(*p, ".metadata"), "new md").ok());

  EXPECT_EQ(FolderCommit::Adopt(env, "/ckpt/iter_0000010", "/ckpt/missing").status().code(), Code::kInvalidArgument);
  Result<std::unique_ptr<FolderCommit>> c = FolderCommit::Adopt(env, "/ckpt/iter_0000010", *p);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_TRUE((*c)->CarryOver([](std::string_view n) { return n.ends_with(".distcp") || n == ".metadata"; }).ok());
  ASSERT_TRUE((*c)->Commit().ok());
  EXPECT_THAT(Children(env, "/ckpt/iter_0000010"),
              UnorderedElementsAre(".metadata", "__0_0.distcp", "__1_0.distcp", "README"));
  EXPECT_EQ(*ReadWhole(env, "/ckpt/iter_0000010/.metadata"), "new md");
  EXPECT_EQ(*ReadWhole(env, "/ckpt/iter_0000010/__1_0.distcp"), "new 1");
  EXPECT_THAT(Children(env, "/ckpt"), ElementsAre("iter_0000010"));
}

}  // namespace
}  // namespace ckpt::engine
