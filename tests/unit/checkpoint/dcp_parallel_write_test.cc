// WriteDcpCheckpoint with concurrent writer threads: the bytes (data files and
// .metadata) equal a serial write's; the callbacks read real source
// checkpoints concurrently (safetensors shards, a torch.save file, a
// multi-rank DCP golden through DcpReader::ReadTensorRegion); a failure in one
// file of several (FaultEnv) leaves no .metadata and no data files, is
// reported for the file that failed, and joins every thread.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "checkpoint/dcp_writer.h"
#include "ckpt/checkpoint.h"
#include "ckpt/fault_env.h"
#include "format/dcp/metadata.h"
#include "unit/checkpoint/checkpoint_testutil.h"

namespace ckpt {
namespace {

using ::ckpt::internal_checkpoint::WriteDcpCheckpoint;
using ::ckpt::testing_ckpt::CopyDcpGolden;
using ::ckpt::testing_ckpt::CopyIntoEnv;
using ::ckpt::testing_ckpt::CopyShardedGoldenSet;
using ::ckpt::testing_ckpt::ListDir;
using ::ckpt::testing_ckpt::ReadAllTensors;
using ::testing::AnyOf;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

// One entry per tensor of `reader`, one chunk per stored chunk (DCP) or one
// chunk for the whole tensor; callbacks read the source (ReadTensorRegion /
// ReadTensor) and count their calls.
std::vector<dcp::EntryToWrite> EntriesOf(const CheckpointReader& reader, std::atomic<int>* calls) {
  std::vector<dcp::EntryToWrite> entries;
  for (size_t i = 0; i < reader.tensors().size(); ++i) {
    const TensorInfo& t = reader.tensors()[i];
    dcp::EntryToWrite e;
    e.key = t.key;
    e.dtype = t.dtype;
    e.size = t.shape;
    if (t.chunks.empty()) {
      e.chunks.push_back({std::vector<int64_t>(t.shape.size(), 0), t.shape, [&reader, i, calls](ByteSink* s) {
                            ++*calls;
                            return reader.ReadTensor(i, s);
                          }});
    } else {
      for (const ChunkInfo& c : t.chunks) {
        // Replicated chunks are stored once per rank; keep one box each.
        bool dup = false;
        for (const dcp::ChunkToWrite& have : e.chunks) dup = dup || (std::ranges::equal(have.offsets, c.offsets) && std::ranges::equal(have.sizes, c.sizes));
        if (dup) continue;
        e.chunks.push_back({{c.offsets.begin(), c.offsets.end()}, {c.sizes.begin(), c.sizes.end()}, [&reader, i, off = c.offsets, sz = c.sizes, calls](ByteSink* s) {
                              ++*calls;
                              return reader.ReadTensorRegion(i, off, sz, s);
                            }});
      }
    }
    entries.push_back(std::move(e));
  }
  return entries;
}

std::map<std::string, std::string> ReadFolder(Env* env, const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const std::string& f : ListDir(env, dir)) {
    auto data = ::ckpt::testing::ReadWhole(env, JoinPath(dir, f));
    EXPECT_TRUE(data.ok()) << f;
    if (data.ok()) out[f] = *data;
  }
  return out;
}

struct Source {
  const char* name;
  void (*copy)(Env*);
  const char* path;
};

void CopySharded(Env* env) { CopyShardedGoldenSet(env, "/src"); }
void CopyTorch(Env* env) { CopyIntoEnv(env, "tests/golden/torch/state_dict.pt", "/src/model.pt"); }
void CopyDcpWs2(Env* env) { CopyDcpGolden(env, "ws2_threads2", "/src"); }
void CopyDcpWs3(Env* env) { CopyDcpGolden(env, "ws3_uneven", "/src"); }

class DcpParallelWriteTest : public ::testing::TestWithParam<Source> {};

TEST_P(DcpParallelWriteTest, FourThreadsWriteTheSameBytesAsOne) {
  auto mem = NewMemEnv();
  GetParam().copy(mem.get());
  auto src = OpenCheckpoint(GetParam().path, {mem.get()});
  ASSERT_TRUE(src.ok()) << src.status().ToString();
  std::atomic<int> calls{0};
  std::vector<dcp::EntryToWrite> entries = EntriesOf(**src, &calls);
  ASSERT_FALSE(entries.empty());

  dcp::DcpWriteOptions o;
  o.thread_count = 4;
  o.parallel = false;
  auto serial = WriteDcpCheckpoint(mem.get(), "/serial", entries, o);
  ASSERT_TRUE(serial.ok()) << serial.status().ToString();
  const int serial_calls = calls.exchange(0);
  // Several rounds: a timing-dependent difference would show in one of them.
  for (int round = 0; round < 5; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    o.parallel = true;
    const std::string dir = "/parallel" + std::to_string(round);
    auto par = WriteDcpCheckpoint(mem.get(), dir, entries, o);
    ASSERT_TRUE(par.ok()) << par.status().ToString();
    EXPECT_EQ(calls.exchange(0), serial_calls);
    EXPECT_EQ(par->bytes, serial->bytes);
    EXPECT_EQ(par->items, serial->items);
    ASSERT_EQ(par->files.size(), 6u);  // 4 data files, the manifest, .metadata
    EXPECT_EQ(par->files.back(), dir + "/.metadata");
    EXPECT_EQ(ReadFolder(mem.get(), dir), ReadFolder(mem.get(), "/serial"));
  }
  // And the result holds the source's tensors.
  auto back = OpenCheckpoint("/parallel0", {mem.get()});
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(ReadAllTensors(**back), ReadAllTensors(**src));
}

INSTANTIATE_TEST_SUITE_P(Sources, DcpParallelWriteTest,
                         ::testing::Values(Source{"sharded_safetensors", CopySharded, "/src"},
                                           Source{"torch_save", CopyTorch, "/src/model.pt"},
                                           Source{"dcp_ws2_threads2", CopyDcpWs2, "/src"},
                                           Source{"dcp_ws3_uneven", CopyDcpWs3, "/src"}),
                         [](const auto& info) { return std::string(info.param.name); });

// Many small float32 tensors whose bytes depend on the key.
std::vector<dcp::EntryToWrite> SyntheticEntries(int n) {
  std::vector<dcp::EntryToWrite> entries;
  for (int i = 0; i < n; ++i) {
    dcp::EntryToWrite e;
    e.key = "t" + std::to_string(i);
    e.size = {16 + i};
    std::string data(static_cast<size_t>(4 * (16 + i)), static_cast<char>(i));
    e.chunks.push_back({{0}, e.size, [data](ByteSink* s) { return s->Append(data); }});
    entries.push_back(std::move(e));
  }
  return entries;
}

class DcpParallelFaultTest : public ::testing::Test {
 protected:
  void ExpectNothingLeft() {
    EXPECT_THAT(ListDir(mem_.get(), "/out"), IsEmpty());
  }
  std::unique_ptr<Env> mem_ = NewMemEnv();
  FaultEnv fault_{mem_.get()};
  std::vector<dcp::EntryToWrite> entries_ = SyntheticEntries(24);
};

TEST_F(DcpParallelFaultTest, FailedAppendInOneFileOfFourLeavesNothing) {
  for (const char* victim : {"__0_0.distcp", "__0_2.distcp", "__0_3.distcp"}) {
    SCOPED_TRACE(victim);
    fault_.FailNthAppend(2, victim);
    dcp::DcpWriteOptions o;
    o.thread_count = 4;
    auto r = WriteDcpCheckpoint(&fault_, "/out", entries_, o);
    fault_.ClearFaults();
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Code::kUnavailable) << r.status().ToString();
    EXPECT_THAT(r.status().message(), HasSubstr(victim));
    EXPECT_THAT(r.status().message(), HasSubstr("injected fault"));
    ExpectNothingLeft();
  }
}

TEST_F(DcpParallelFaultTest, FailedRenameOfOneFileRemovesThePublishedOnes) {
  fault_.FailRename("__0_1.distcp");
  dcp::DcpWriteOptions o;
  o.thread_count = 4;
  auto r = WriteDcpCheckpoint(&fault_, "/out", entries_, o);
  fault_.ClearFaults();
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("__0_1.distcp"));
  ExpectNothingLeft();
}

TEST_F(DcpParallelFaultTest, DiskFullWhileFourFilesAreWrittenLeavesNothing) {
  dcp::DcpWriteOptions o;
  o.thread_count = 4;
  auto clean = WriteDcpCheckpoint(mem_.get(), "/clean", entries_, o);
  ASSERT_TRUE(clean.ok());
  fault_.SetSpaceLimit(clean->bytes / 2);
  auto r = WriteDcpCheckpoint(&fault_, "/out", entries_, o);
  fault_.ClearFaults();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kResourceExhausted) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr(".distcp"));
  EXPECT_THAT(r.status().message(), Not(HasSubstr("stopped")));  // the cause, not a cancellation
  ExpectNothingLeft();
}

TEST_F(DcpParallelFaultTest, CrashAtEveryStepLeavesMetadataOnlyOverWholeData) {
  dcp::DcpWriteOptions o;
  o.thread_count = 4;
  FaultEnv counting(mem_.get());
  ASSERT_TRUE(WriteDcpCheckpoint(&counting, "/clean", entries_, o).ok());
  const uint64_t steps = counting.counters().mutating_ops;
  auto want = ReadFolder(mem_.get(), "/clean");
  int with_md = 0;
  for (uint64_t n = 0; n <= steps; ++n) {
    SCOPED_TRACE("crash after " + std::to_string(n) + " of " + std::to_string(steps));
    auto mem = NewMemEnv();
    FaultEnv fault(mem.get());
    fault.CrashAfterOps(n);
    auto r = WriteDcpCheckpoint(&fault, "/clean", entries_, o);
    EXPECT_EQ(r.ok(), n >= steps);
    ASSERT_TRUE(fault.DropUnsyncedData().ok());
    if (!mem->FileExists("/clean/.metadata")) continue;
    ++with_md;
    EXPECT_EQ(ReadFolder(mem.get(), "/clean"), want);
  }
  EXPECT_GT(with_md, 0);
}

// Signals when a path is removed (the writer sets its cancel flag before it
// removes a failed file's path).
class RemoveSignalEnv final : public EnvWrapper {
 public:
  RemoveSignalEnv(Env* target, std::string path) : EnvWrapper(target), path_(std::move(path)) {}
  Status RemoveFile(const std::string& p) override {
    // The file is written in the staging folder beside /out: match its name.
    if (p.size() >= path_.size() && p.compare(p.size() - path_.size(), path_.size(), path_) == 0) {
      std::lock_guard<std::mutex> l(mu_);
      removed_ = true;
      cv_.notify_all();
    }
    return EnvWrapper::RemoveFile(p);
  }
  bool WaitRemoved(std::chrono::seconds timeout) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, timeout, [&] { return removed_; });
  }

 private:
  std::string path_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool removed_ = false;
};

TEST(DcpParallelWrite, FailureStopsTheOtherFilesAndIsReportedForItsOwnFile) {
  // Two files: "big" goes to __0_0, "small" to __0_1. __0_1's callback fails;
  // __0_0's callback (when it starts at all) waits until __0_1 has failed,
  // then its append is refused. The error is __0_1's although __0_0 comes
  // first in plan order.
  auto mem = NewMemEnv();
  RemoveSignalEnv env(mem.get(), "/__0_1.distcp");
  std::atomic<bool> waited_ok{false};
  std::atomic<int> big_status{-1};
  dcp::EntryToWrite big;
  big.key = "big";
  big.size = {64};
  big.chunks.push_back({{0}, {64}, [&](ByteSink* s) {
                          waited_ok = env.WaitRemoved(std::chrono::seconds(20));
                          Status st = s->Append(std::string(256, 'b'));
                          big_status = static_cast<int>(st.code());
                          return st;
                        }});
  dcp::EntryToWrite small;
  small.key = "small";
  small.size = {2};
  small.chunks.push_back({{0}, {2}, [](ByteSink*) { return DataLossError("source chunk is corrupt"); }});
  std::vector<dcp::EntryToWrite> entries = {big, small};
  dcp::DcpWriteOptions o;
  o.thread_count = 2;
  auto r = WriteDcpCheckpoint(&env, "/out", entries, o);
  ASSERT_FALSE(r.ok());
  // If __0_1 failed before __0_0's task was picked up, __0_0 is skipped (its
  // callback never runs: files not yet started are not started); otherwise
  // its append after the failure is refused.
  if (big_status != -1) {
    EXPECT_TRUE(waited_ok);
    EXPECT_EQ(big_status, static_cast<int>(Code::kCancelled));
  }
  EXPECT_EQ(r.status().code(), Code::kDataLoss) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("__0_1.distcp"));
  EXPECT_THAT(r.status().message(), HasSubstr("source chunk is corrupt"));
  EXPECT_THAT(ListDir(mem.get(), "/out"), IsEmpty());
}

TEST(DcpParallelWrite, SerialWriteStopsAtTheFirstFailedFile) {
  auto mem = NewMemEnv();
  std::atomic<int> calls{0};
  std::vector<dcp::EntryToWrite> entries = SyntheticEntries(6);
  for (dcp::EntryToWrite& e : entries) {
    auto inner = e.chunks[0].write;
    e.chunks[0].write = [inner, &calls](ByteSink* s) {
      ++calls;
      return inner(s);
    };
  }
  // t5 is the largest: first in the first file.
  entries[5].chunks[0].write = [](ByteSink*) { return InternalError("boom"); };
  dcp::DcpWriteOptions o;
  o.thread_count = 3;
  o.parallel = false;
  auto r = WriteDcpCheckpoint(mem.get(), "/out", entries, o);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("__0_0.distcp"));
  EXPECT_EQ(calls, 0);  // the files after it were never started
  EXPECT_THAT(ListDir(mem.get(), "/out"), IsEmpty());
}

TEST(DcpParallelWrite, MoreThreadsThanFilesAndEmptyFiles) {
  auto mem = NewMemEnv();
  std::vector<dcp::EntryToWrite> entries = SyntheticEntries(2);
  dcp::DcpWriteOptions o;
  o.thread_count = 7;  // 5 empty files
  auto r = WriteDcpCheckpoint(mem.get(), "/out", entries, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->files.size(), 9u);  // 7 data files, the manifest, .metadata
  o.parallel = false;
  ASSERT_TRUE(WriteDcpCheckpoint(mem.get(), "/serial", entries, o).ok());
  EXPECT_EQ(ReadFolder(mem.get(), "/out"), ReadFolder(mem.get(), "/serial"));
  EXPECT_EQ(*mem->GetFileSize("/out/__0_6.distcp"), 0u);
}

}  // namespace
}  // namespace ckpt
