// Convert with to=dcp (WriteDcpCheckpoint) under disk faults and simulated
// crashes (FaultEnv over MemEnv): `.metadata`, the commit point, exists only
// when every data file it names is whole; a failed write leaves no
// `.metadata` and removes the data files it published.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "checkpoint/dcp_writer.h"
#include "ckpt/checkpoint.h"
#include "convert/dcp_entries.h"
#include "ckpt/convert.h"
#include "ckpt/fault_env.h"
#include "unit/checkpoint/checkpoint_testutil.h"

namespace ckpt {
namespace {

using ::ckpt::testing_ckpt::CopyShardedGoldenSet;
using ::ckpt::testing_ckpt::ListDir;
using ::ckpt::testing_ckpt::ReadAllTensors;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

ConvertOptions DcpOptions(Env* env, int64_t threads = 2) {
  ConvertOptions o;
  o.to = TargetFormat::kDcp;
  o.thread_count = threads;
  o.env = env;
  return o;
}

class DcpWriteFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CopyShardedGoldenSet(mem_.get(), "/src");
    auto src = OpenCheckpoint("/src", {mem_.get()});
    ASSERT_TRUE(src.ok()) << src.status().ToString();
    want_ = ReadAllTensors(**src);
    ASSERT_EQ(want_.size(), 21u);
  }

  // Sizes of the files of a clean run, by name, and its mutating op count.
  dcp::FileSizes CleanSizes(uint64_t* ops = nullptr) {
    auto scratch = NewMemEnv();
    CopyShardedGoldenSet(scratch.get(), "/src");
    FaultEnv counting(scratch.get());
    auto rep = Convert("/src", "/out", DcpOptions(&counting));
    EXPECT_TRUE(rep.ok()) << rep.status().ToString();
    dcp::FileSizes sizes;
    for (const std::string& f : ListDir(scratch.get(), "/out")) {
      sizes[f] = *scratch->GetFileSize(JoinPath("/out", f));
    }
    if (ops) *ops = counting.counters().mutating_ops;
    return sizes;
  }

  std::unique_ptr<Env> mem_ = NewMemEnv();
  FaultEnv fault_{mem_.get()};
  std::map<std::string, std::string> want_;
};

TEST_F(DcpWriteFaultTest, CleanRunPublishesDataFilesThenMetadata) {
  auto rep = Convert("/src", "/out", DcpOptions(&fault_));
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_THAT(rep->files, ElementsAre("/out/__0_0.distcp", "/out/__0_1.distcp", "/out/ckptkit-manifest__0_.json",
                                      "/out/.metadata"));
  EXPECT_THAT(ListDir(mem_.get(), "/out"),
              ElementsAre(".metadata", "__0_0.distcp", "__0_1.distcp", "ckptkit-manifest__0_.json"));
  auto back = OpenCheckpoint("/out", {mem_.get()});
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->get()->format(), "dcp");
  EXPECT_EQ(ReadAllTensors(**back), want_);
}

TEST_F(DcpWriteFaultTest, DiskFullInSecondDataFileLeavesNoMetadataAndNoDataFiles) {
  auto sizes = CleanSizes();
  ASSERT_EQ(sizes.size(), 4u);  // two data files, the manifest, .metadata
  fault_.SetSpaceLimit(sizes["__0_0.distcp"] + sizes["__0_1.distcp"] / 2);
  auto rep = Convert("/src", "/out", DcpOptions(&fault_));
  fault_.ClearFaults();
  ASSERT_FALSE(rep.ok());
  EXPECT_EQ(rep.status().code(), Code::kResourceExhausted) << rep.status().ToString();
  // The two files are written concurrently: either may cross the limit.
  EXPECT_THAT(rep.status().message(), ::testing::AnyOf(HasSubstr("__0_0.distcp"), HasSubstr("__0_1.distcp")));
  EXPECT_THAT(ListDir(mem_.get(), "/out"), IsEmpty());
}

TEST_F(DcpWriteFaultTest, DiskFullInMetadataLeavesNothing) {
  auto sizes = CleanSizes();
  fault_.SetSpaceLimit(sizes["__0_0.distcp"] + sizes["__0_1.distcp"] + sizes["ckptkit-manifest__0_.json"] + 10);
  auto rep = Convert("/src", "/out", DcpOptions(&fault_));
  fault_.ClearFaults();
  ASSERT_FALSE(rep.ok());
  EXPECT_THAT(rep.status().message(), HasSubstr(".metadata"));
  EXPECT_THAT(ListDir(mem_.get(), "/out"), IsEmpty());
}

TEST_F(DcpWriteFaultTest, DiskFullInTheManifestLeavesNothing) {
  auto sizes = CleanSizes();
  fault_.SetSpaceLimit(sizes["__0_0.distcp"] + sizes["__0_1.distcp"] + 10);
  auto rep = Convert("/src", "/out", DcpOptions(&fault_));
  fault_.ClearFaults();
  ASSERT_FALSE(rep.ok());
  EXPECT_THAT(rep.status().message(), ::testing::StartsWith("writing /out/ckptkit-manifest__0_.json: "));
  EXPECT_THAT(ListDir(mem_.get(), "/out"), IsEmpty());
}

TEST_F(DcpWriteFaultTest, FailedRenameOfMetadataPublishesNothing) {
  fault_.FailRename(".metadata");
  auto rep = Convert("/src", "/out", DcpOptions(&fault_));
  fault_.ClearFaults();
  ASSERT_FALSE(rep.ok());
  EXPECT_THAT(rep.status().message(), HasSubstr(".metadata"));
  EXPECT_THAT(ListDir(mem_.get(), "/out"), IsEmpty());
}

TEST_F(DcpWriteFaultTest, FailedRenameOfADataFilePublishesNothing) {
  fault_.FailRename("__0_1.distcp");
  auto rep = Convert("/src", "/out", DcpOptions(&fault_));
  fault_.ClearFaults();
  ASSERT_FALSE(rep.ok());
  EXPECT_THAT(rep.status().message(), HasSubstr("__0_1.distcp"));
  EXPECT_THAT(ListDir(mem_.get(), "/out"), IsEmpty());
}

TEST_F(DcpWriteFaultTest, FailedRewriteLeavesTheOldCheckpointIntact) {
  // An older checkpoint in /out (one data file): a failed re-write (two data
  // files) leaves it exactly as it was, loadable, with no stale or staged
  // files beside it.
  ASSERT_TRUE(Convert("/src", "/out", DcpOptions(mem_.get(), 1)).ok());
  const std::vector<std::string> before = ListDir(mem_.get(), "/out");
  fault_.FailRename("__0_1.distcp");
  auto rep = Convert("/src", "/out", DcpOptions(&fault_, 2));
  fault_.ClearFaults();
  ASSERT_FALSE(rep.ok());
  EXPECT_THAT(rep.status().message(), HasSubstr("/out/__0_1.distcp"));
  EXPECT_EQ(ListDir(mem_.get(), "/out"), before);
  EXPECT_THAT(ListDir(mem_.get(), "/"), ::testing::ElementsAre("out", "src"));
  auto back = OpenCheckpoint("/out", {mem_.get()});
  EXPECT_TRUE(back.ok()) << back.status().ToString();
  // And a successful re-write replaces it whole: no stale file of the old one.
  ASSERT_TRUE(Convert("/src", "/out", DcpOptions(mem_.get(), 2)).ok());
  EXPECT_TRUE(mem_->FileExists("/out/__0_1.distcp"));
  ASSERT_TRUE(WriteFileAtomically(mem_.get(), "/out/README", [](WritableFile* f) { return f->Append("mine"); }).ok());
  ASSERT_TRUE(Convert("/src", "/out", DcpOptions(mem_.get(), 1)).ok());
  EXPECT_FALSE(mem_->FileExists("/out/__0_1.distcp"));
  EXPECT_TRUE(mem_->FileExists("/out/README"));  // not the checkpoint's: carried over
}

TEST_F(DcpWriteFaultTest, CrashAtEveryStepMetadataOnlyOverWholeData) {
  uint64_t steps = 0;
  CleanSizes(&steps);
  ASSERT_GT(steps, 8u);
  int with_md = 0, without_md = 0;
  for (uint64_t n = 0; n <= steps; ++n) {
    SCOPED_TRACE("crash after " + std::to_string(n) + " of " + std::to_string(steps) + " ops");
    auto mem = NewMemEnv();
    CopyShardedGoldenSet(mem.get(), "/src");
    FaultEnv fault(mem.get());
    fault.CrashAfterOps(n);
    auto rep = Convert("/src", "/out", DcpOptions(&fault));
    EXPECT_EQ(rep.ok(), n >= steps) << (rep.ok() ? "" : rep.status().ToString());
    ASSERT_TRUE(fault.DropUnsyncedData().ok());
    if (!mem->FileExists("/out/.metadata")) {
      ++without_md;
      continue;
    }
    ++with_md;
    auto back = OpenCheckpoint("/out", {mem.get()});
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(ReadAllTensors(**back), want_);
  }
  EXPECT_GT(with_md, 0);
  EXPECT_GT(without_md, 0);
}

TEST_F(DcpWriteFaultTest, SerialDiskFullInSecondDataFileNamesIt) {
  // parallel = false: files one after another, so the second one fails.
  auto src = OpenCheckpoint("/src", {mem_.get()});
  ASSERT_TRUE(src.ok());
  auto built = internal_convert::FlatTensorEntries(**src, "/src", nullptr);
  ASSERT_TRUE(built.ok()) << built.status().ToString();
  const std::vector<dcp::EntryToWrite>& entries = *built;
  dcp::DcpWriteOptions o;
  o.thread_count = 2;
  o.parallel = false;
  auto clean = internal_checkpoint::WriteDcpCheckpoint(mem_.get(), "/clean", entries, o);
  ASSERT_TRUE(clean.ok());
  fault_.SetSpaceLimit(*mem_->GetFileSize("/clean/__0_0.distcp") + *mem_->GetFileSize("/clean/__0_1.distcp") / 2);
  auto rep = internal_checkpoint::WriteDcpCheckpoint(&fault_, "/out", entries, o);
  fault_.ClearFaults();
  ASSERT_FALSE(rep.ok());
  EXPECT_EQ(rep.status().code(), Code::kResourceExhausted) << rep.status().ToString();
  EXPECT_THAT(rep.status().message(), HasSubstr("__0_1.distcp"));
  EXPECT_THAT(ListDir(mem_.get(), "/out"), IsEmpty());
}

TEST(DcpWriteCheckpoint, InvalidPlanWritesNothing) {
  auto mem = NewMemEnv();
  dcp::EntryToWrite a;
  a.key = "a";
  a.size = {2};
  a.chunks.push_back({{0}, {1}, [](ByteSink* s) { return s->Append(std::string(4, '\0')); }});
  std::vector<dcp::EntryToWrite> entries = {a};
  auto r = internal_checkpoint::WriteDcpCheckpoint(mem.get(), "/out", entries, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_FALSE(mem->FileExists("/out"));
}

TEST(DcpWriteCheckpoint, DestinationThatIsAFileIsRefused) {
  auto mem = NewMemEnv();
  ASSERT_TRUE(WriteFileAtomically(mem.get(), "/out", [](WritableFile* f) { return f->Append("x"); }).ok());
  ConvertOptions o = DcpOptions(mem.get());
  CopyShardedGoldenSet(mem.get(), "/src");
  auto rep = Convert("/src", "/out", o);
  ASSERT_FALSE(rep.ok());
  EXPECT_EQ(rep.status().code(), Code::kInvalidArgument);
  auto named = Convert("/src", "/model.pt", o);
  ASSERT_FALSE(named.ok());
  EXPECT_THAT(named.status().message(), HasSubstr("folder"));
}

}  // namespace
}  // namespace ckpt
