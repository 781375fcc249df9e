// Convert with to=torch_dist (convert/torch_dist.h, checkpoint/torch_dist_writer.h): golden torch_dist
// checkpoints written by real megatron-core 0.16.1 / 0.19.2 re-written in
// either layout read back with the same tensors, objects and common dict
// (common.pt and the common_state item byte-identical to the source's where
// the layout allows); torch.save, safetensors and plain DCP sources; and,
// under FaultEnv, no tracker and no metadata.json claiming an incomplete
// checkpoint after a failure or a crash at any step.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <set>
#include <string>

#include "checkpoint/dcp_reader.h"
#include "ckpt/checkpoint.h"
#include "ckpt/convert.h"
#include "ckpt/fault_env.h"
#include "format/dcp/item.h"
#include "format/megatron/megatron.h"
#include "unit/checkpoint/checkpoint_testutil.h"

namespace ckpt {
namespace {

using ::ckpt::testing::ReadRequiredSourceFile;
using ::ckpt::testing::ReadWhole;
using ::ckpt::testing_ckpt::CopyDcpGolden;
using ::ckpt::testing_ckpt::CopyIntoEnv;
using ::ckpt::testing_ckpt::CopyShardedGoldenSet;
using ::ckpt::testing_ckpt::ListDir;
using ::ckpt::testing_ckpt::ReadAllTensors;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr char kIter[] = "iter_0000010";

// Copies tests/golden/megatron/<name> (a Megatron-LM root) into env at dir.
void CopyMegatronGolden(Env* env, const std::string& name, const std::string& dir) {
  const std::string rel = "tests/golden/megatron/" + name;
  const std::filesystem::path base = ::ckpt::testing::SourcePath(rel);
  for (const auto& f : std::filesystem::recursive_directory_iterator(base)) {
    if (!f.is_regular_file()) continue;
    const std::string sub = std::filesystem::relative(f.path(), base).string();
    CopyIntoEnv(env, rel + "/" + sub, dir + "/" + sub);
  }
}

ConvertOptions TorchDist(Env* env, const std::string& version, int64_t threads = 1) {
  ConvertOptions o;
  o.to = TargetFormat::kTorchDist;
  o.megatron_version = version;
  o.thread_count = threads;
  o.env = env;
  return o;
}

std::string Read(Env* env, const std::string& path) {
  auto r = ReadWhole(env, path);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : std::string();
}

// The stored bytes of the common_state item of a torch_dist folder ("" if none).
std::string CommonStateItem(Env* env, const std::string& folder) {
  auto r = internal_checkpoint::DcpReader::Open(folder, {env});
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  if (!r.ok()) return "";
  const dcp::Metadata& md = (*r)->metadata();
  int64_t ei = md.FindEntry(megatron::kCommonStateKey);
  if (ei < 0) return "";
  const dcp::StorageItem& it = md.items[md.entries[ei].item];
  auto file = (*r)->DataFile(std::string(it.relative_path));
  EXPECT_TRUE(file.ok());
  auto bytes = dcp::OpenItemBytes(*file, it);
  EXPECT_TRUE(bytes.ok());
  std::string out((*bytes)->Size(), '\0');
  EXPECT_TRUE((*bytes)->ReadAt(0, out.size(), out.data()).ok());
  return out;
}

struct Snapshot {
  std::string format;
  std::map<std::string, std::string> tensors;
  std::set<std::string> objects;  // keys of bytes entries and common-dict leaves
  nlohmann::json iteration;
};

Snapshot Take(Env* env, const std::string& path) {
  Snapshot s;
  auto r = OpenCheckpoint(path, {env, PickleMode::kInspect});
  EXPECT_TRUE(r.ok()) << path << ": " << r.status().ToString();
  if (!r.ok()) return s;
  s.format = std::string((*r)->format());
  s.tensors = ReadAllTensors(**r);
  for (const ObjectInfo& o : (*r)->objects()) {
    std::string key = o.key;
    // The common dict's leaves are named after where it is stored.
    for (const std::string& p : {std::string(megatron::kCommonFileName) + ":",
                                std::string(megatron::kCommonStateKey) + ":"}) {
      if (key.rfind(p, 0) == 0) key = "common:" + key.substr(p.size());
    }
    s.objects.insert(key);
  }
  nlohmann::json d = (*r)->Details();
  EXPECT_TRUE(d["problems"].empty()) << d["problems"].dump();
  s.iteration = d.value("iteration", nlohmann::json());
  return s;
}

class TorchDistWriteTest : public ::testing::Test {
 protected:
  std::unique_ptr<Env> mem_ = NewMemEnv();
};

TEST_F(TorchDistWriteTest, Core016RootRewrittenAs016MergesRanksAndKeepsEverything) {
  CopyMegatronGolden(mem_.get(), "mc016_handbuilt", "/src");
  Snapshot want = Take(mem_.get(), "/src");
  ASSERT_EQ(want.format, "megatron-torch_dist");
  ASSERT_GT(want.tensors.size(), 20u);

  auto rep = Convert("/src", "/out", TorchDist(mem_.get(), "0.16", 3));
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  const std::string it = std::string("/out/") + kIter;
  EXPECT_THAT(rep->files, ElementsAre(it + "/common.pt", it + "/__0_0.distcp", it + "/__0_1.distcp",
                                      it + "/__0_2.distcp", it + "/ckptkit-manifest__0_.json", it + "/.metadata",
                                      it + "/metadata.json",
                                      "/out/latest_checkpointed_iteration.txt"));
  EXPECT_EQ(rep->tensors, want.tensors.size());
  EXPECT_THAT(ListDir(mem_.get(), "/out"), ElementsAre(kIter, "latest_checkpointed_iteration.txt"));
  EXPECT_EQ(Read(mem_.get(), "/out/latest_checkpointed_iteration.txt"), "10");
  const std::string golden = "tests/golden/megatron/mc016_handbuilt/iter_0000010/";
  EXPECT_EQ(Read(mem_.get(), it + "/metadata.json"), ReadRequiredSourceFile(golden + "metadata.json"));
  EXPECT_TRUE(Read(mem_.get(), it + "/common.pt") == ReadRequiredSourceFile(golden + "common.pt"));

  Snapshot got = Take(mem_.get(), "/out");
  EXPECT_EQ(got.format, "megatron-torch_dist");
  EXPECT_EQ(got.tensors, want.tensors);
  EXPECT_EQ(got.objects, want.objects);
  EXPECT_EQ(got.iteration, 10);
}

TEST_F(TorchDistWriteTest, Core016To019AndBackWritesCommonStateAsTorchWouldAfterLoadingIt) {
  CopyMegatronGolden(mem_.get(), "mc016_handbuilt", "/src");
  Snapshot want = Take(mem_.get(), "/src");

  auto rep = Convert("/src", "/v19", TorchDist(mem_.get(), "0.19", 2));
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  const std::string it19 = std::string("/v19/") + kIter;
  EXPECT_THAT(ListDir(mem_.get(), it19), ElementsAre(".metadata", "__0_0.distcp", "__0_1.distcp",
                                                     "ckptkit-manifest__0_.json", "metadata.json"));
  EXPECT_EQ(Read(mem_.get(), it19 + "/metadata.json"),
            ReadRequiredSourceFile("tests/golden/megatron/mc019_handbuilt/iter_0000010/metadata.json"));
  // torch.save([torch.load(common.pt)], BytesIO), made with real torch.
  EXPECT_TRUE(CommonStateItem(mem_.get(), it19) ==
              ReadRequiredSourceFile("tests/golden/megatron/common_state/mc016/item.bin"));
  Snapshot mid = Take(mem_.get(), "/v19");
  EXPECT_EQ(mid.tensors, want.tensors);
  want.objects.insert(megatron::kCommonStateKey);  // the 0.19 reader also lists the entry itself
  mid.objects.insert(megatron::kCommonStateKey);
  EXPECT_EQ(mid.objects, want.objects);

  rep = Convert("/v19", "/v16", TorchDist(mem_.get(), "0.16"));
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  // torch.save(torch.load(item)[0], ".../common.pt"), made with real torch (torch.load +
  // torch.save of megatron's own file does not give that file back either).
  EXPECT_TRUE(Read(mem_.get(), std::string("/v16/") + kIter + "/common.pt") ==
              ReadRequiredSourceFile("tests/golden/megatron/common_state/mc016/common.pt"));
  EXPECT_EQ(CommonStateItem(mem_.get(), std::string("/v16/") + kIter), "");
  EXPECT_EQ(Take(mem_.get(), "/v16").tensors, want.tensors);
}

TEST_F(TorchDistWriteTest, Core019ItemIsCopiedForTheSameLayout) {
  CopyMegatronGolden(mem_.get(), "mc019_handbuilt", "/src");
  const std::string item = CommonStateItem(mem_.get(), std::string("/src/") + kIter);
  ASSERT_FALSE(item.empty());
  auto rep = Convert("/src", "/out", TorchDist(mem_.get(), ""));  // default: 0.19
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_TRUE(CommonStateItem(mem_.get(), std::string("/out/") + kIter) == item);
  EXPECT_FALSE(mem_->FileExists(std::string("/out/") + kIter + "/common.pt"));
  EXPECT_EQ(Take(mem_.get(), "/out").tensors, Take(mem_.get(), "/src").tensors);
}

TEST_F(TorchDistWriteTest, IterationFolderSourceGivesAPlainFolderUnlessIterationIsGiven) {
  CopyMegatronGolden(mem_.get(), "mc016_handbuilt", "/src");
  const std::string src = std::string("/src/") + kIter;
  auto rep = Convert(src, "/flat", TorchDist(mem_.get(), "0.16"));
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_THAT(ListDir(mem_.get(), "/flat"),
              ElementsAre(".metadata", "__0_0.distcp", "ckptkit-manifest__0_.json", "common.pt", "metadata.json"));

  ConvertOptions o = TorchDist(mem_.get(), "0.19");
  o.iteration = 1234;
  rep = Convert(src, "/root", o);
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_THAT(ListDir(mem_.get(), "/root"), ElementsAre("iter_0001234", "latest_checkpointed_iteration.txt"));
  EXPECT_EQ(Read(mem_.get(), "/root/latest_checkpointed_iteration.txt"), "1234");
  EXPECT_EQ(Take(mem_.get(), "/root").tensors, Take(mem_.get(), src).tensors);
}

TEST_F(TorchDistWriteTest, TorchStateDictGivesTensorEntriesAndTheRestAsCommonDict) {
  const std::string g = "tests/golden/megatron/common_state/state_dict/";
  CopyIntoEnv(mem_.get(), g + "sd.pt", "/sd.pt");
  auto rep = Convert("/sd.pt", "/out", TorchDist(mem_.get(), "0.16"));
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_EQ(rep->tensors, 9u);  // the tensor inside a tuple stays in the common dict
  EXPECT_TRUE(Read(mem_.get(), "/out/common.pt") == ReadRequiredSourceFile(g + "common.pt"));
  auto src = OpenCheckpoint("/sd.pt", {mem_.get()});
  ASSERT_TRUE(src.ok());
  std::map<std::string, std::string> want = ReadAllTensors(**src);
  want.erase("in_tuple.0");
  EXPECT_EQ(Take(mem_.get(), "/out").tensors, want);

  rep = Convert("/sd.pt", "/out19", TorchDist(mem_.get(), "0.19"));
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_TRUE(CommonStateItem(mem_.get(), "/out19") == ReadRequiredSourceFile(g + "item.bin"));
}

TEST_F(TorchDistWriteTest, SafetensorsAndPlainDcpSourcesGetAnEmptyCommonDict) {
  CopyShardedGoldenSet(mem_.get(), "/st");
  ConvertOptions o = TorchDist(mem_.get(), "0.19");
  o.iteration = 5;
  auto rep = Convert("/st", "/out", o);
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_EQ(Read(mem_.get(), "/out/latest_checkpointed_iteration.txt"), "5");
  EXPECT_TRUE(CommonStateItem(mem_.get(), "/out/iter_0000005") ==
              ReadRequiredSourceFile("tests/golden/megatron/common_state/empty/item.bin"));
  auto st = OpenCheckpoint("/st", {mem_.get()});
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(Take(mem_.get(), "/out").tensors, ReadAllTensors(**st));

  CopyDcpGolden(mem_.get(), "ws2_threads2", "/dcp");
  rep = Convert("/dcp", "/out16", TorchDist(mem_.get(), "0.16"));
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_TRUE(Read(mem_.get(), "/out16/common.pt") ==
              ReadRequiredSourceFile("tests/golden/megatron/common_state/empty/common.pt"));
  Snapshot got = Take(mem_.get(), "/out16");
  EXPECT_EQ(got.format, "megatron-torch_dist");
  EXPECT_EQ(got.tensors, Take(mem_.get(), "/dcp").tensors);
}

TEST_F(TorchDistWriteTest, Core019CarriesUnknownMetadataJsonKeysAnd016DropsThemWithAWarning) {
  CopyMegatronGolden(mem_.get(), "mc019_handbuilt", "/src");
  const std::string cfg = std::string("/src/") + kIter + "/metadata.json";
  ASSERT_TRUE(::ckpt::testing::WriteWhole(
                  mem_.get(), cfg, R"({"sharded_backend": "torch_dist", "sharded_backend_version": 1, "note": "x"})")
                  .ok());
  auto rep = Convert("/src", "/o19", TorchDist(mem_.get(), "0.19"));
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_EQ(Read(mem_.get(), std::string("/o19/") + kIter + "/metadata.json"),
            R"({"sharded_backend": "torch_dist", "sharded_backend_version": 1, "note": "x"})");
  EXPECT_THAT(rep->warnings, IsEmpty());
  rep = Convert("/src", "/o16", TorchDist(mem_.get(), "0.16"));
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_EQ(Read(mem_.get(), std::string("/o16/") + kIter + "/metadata.json"),
            ReadRequiredSourceFile("tests/golden/megatron/mc016_handbuilt/iter_0000010/metadata.json"));
  ASSERT_EQ(rep->warnings.size(), 1u);
  EXPECT_THAT(rep->warnings[0], HasSubstr("'note'"));
}

TEST_F(TorchDistWriteTest, RefusesBadOptionsBeforeWritingAnything) {
  CopyMegatronGolden(mem_.get(), "mc016_handbuilt", "/src");
  auto bad = [&](ConvertOptions o, const std::string& dst, const char* what) {
    auto rep = Convert("/src", dst, o);
    ASSERT_FALSE(rep.ok()) << what;
    EXPECT_EQ(rep.status().code(), Code::kInvalidArgument) << rep.status().ToString();
    EXPECT_THAT(rep.status().message(), HasSubstr(what));
    EXPECT_FALSE(mem_->FileExists(dst)) << what;
  };
  bad(TorchDist(mem_.get(), "0.17"), "/out", "0.17");
  ConvertOptions o = TorchDist(mem_.get(), "0.19");
  o.iteration = -1;
  bad(o, "/out", "negative");
  bad(TorchDist(mem_.get(), "0.19"), "/out.pt", "names a file");
  bad(TorchDist(mem_.get(), "0.19", 0), "/out", "thread_count");
  auto same = Convert("/src", "/src", TorchDist(mem_.get(), "0.19"));
  ASSERT_FALSE(same.ok());
  EXPECT_THAT(same.status().message(), HasSubstr("is the source checkpoint"));
  ConvertOptions dcp;
  dcp.to = TargetFormat::kDcp;
  dcp.env = mem_.get();
  dcp.megatron_version = "0.16";
  bad(dcp, "/out", "megatron_version applies only with to=\"torch_dist\"");
  o = TorchDist(mem_.get(), "0.19");
  o.max_shard_size = 1000;
  bad(o, "/out", "max_shard_size does not apply with to=\"torch_dist\" (use thread_count)");
  o = TorchDist(mem_.get(), "0.19");
  o.dcp_metadata_layout = "torch2.3";
  bad(o, "/out", "dcp_metadata_layout applies only with to=\"dcp\"");
}

// ---------------------------------------------------------------------------
// Faults

class TorchDistFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CopyMegatronGolden(mem_.get(), "mc016_handbuilt", "/src");
    want_ = Take(mem_.get(), "/src").tensors;
  }
  // No tracker and no metadata.json: nothing claims a complete checkpoint.
  void ExpectNothingLooksComplete(Env* env) {
    EXPECT_FALSE(env->FileExists("/out/latest_checkpointed_iteration.txt"));
    EXPECT_FALSE(env->FileExists(std::string("/out/") + kIter + "/metadata.json"));
    EXPECT_FALSE(env->FileExists(std::string("/out/") + kIter + "/.metadata"));
    EXPECT_FALSE(OpenCheckpoint("/out", {env}).ok());
  }
  std::unique_ptr<Env> mem_ = NewMemEnv();
  FaultEnv fault_{mem_.get()};
  std::map<std::string, std::string> want_;
};

TEST_F(TorchDistFaultTest, FailureAtEachPublishStepLeavesNothingThatLooksComplete) {
  for (const char* file : {"common.pt", "__0_1.distcp", ".metadata", "metadata.json"}) {
    SCOPED_TRACE(file);
    fault_.FailRename(file);
    auto rep = Convert("/src", "/out", TorchDist(&fault_, "0.16", 2));
    fault_.ClearFaults();
    ASSERT_FALSE(rep.ok());
    EXPECT_THAT(rep.status().message(), HasSubstr(file));
    ExpectNothingLooksComplete(mem_.get());
    EXPECT_THAT(ListDir(mem_.get(), "/out"), IsEmpty());  // no staged folder left either
  }
  // The tracker last: the iteration folder is complete and in place, and the error says so.
  fault_.FailRename("latest_checkpointed");
  auto rep = Convert("/src", "/out", TorchDist(&fault_, "0.16", 2));
  fault_.ClearFaults();
  ASSERT_FALSE(rep.ok());
  EXPECT_THAT(rep.status().message(), HasSubstr("is complete and in place"));
  EXPECT_FALSE(mem_->FileExists("/out/latest_checkpointed_iteration.txt"));
  EXPECT_EQ(Take(mem_.get(), std::string("/out/") + kIter).tensors, want_);
}

TEST_F(TorchDistFaultTest, FailedDirectorySyncAfterTheTrackerRenameIsReported) {
  // The last directory sync of a clean run is the tracker's (after its rename).
  uint64_t syncs = 0;
  {
    auto scratch = NewMemEnv();
    CopyMegatronGolden(scratch.get(), "mc016_handbuilt", "/src");
    FaultEnv counting(scratch.get());
    ASSERT_TRUE(Convert("/src", "/out", TorchDist(&counting, "0.19")).ok());
    syncs = counting.counters().sync_dirs;
  }
  ASSERT_GT(syncs, 2u);
  FaultRule rule;
  rule.op = FaultOp::kSyncDir;
  rule.skip = syncs - 1;
  fault_.AddRule(rule);
  auto rep = Convert("/src", "/out", TorchDist(&fault_, "0.19"));
  fault_.ClearFaults();
  ASSERT_FALSE(rep.ok());
  EXPECT_THAT(rep.status().message(), HasSubstr("is complete and in place"));
  // What the tracker names is complete: it loads whole.
  EXPECT_EQ(Take(mem_.get(), "/out").tensors, want_);
}

TEST_F(TorchDistFaultTest, FailedRewriteLeavesTheOldCheckpointIntact) {
  ASSERT_TRUE(Convert("/src", "/out", TorchDist(mem_.get(), "0.16")).ok());
  const std::vector<std::string> before = ListDir(mem_.get(), std::string("/out/") + kIter);
  fault_.FailRename("__0_0.distcp");
  auto rep = Convert("/src", "/out", TorchDist(&fault_, "0.19"));
  fault_.ClearFaults();
  ASSERT_FALSE(rep.ok());
  // The 0.16 checkpoint, its common.pt and the tracker naming it, as they were.
  EXPECT_EQ(ListDir(mem_.get(), std::string("/out/") + kIter), before);
  EXPECT_EQ(Read(mem_.get(), "/out/latest_checkpointed_iteration.txt"), "10");
  EXPECT_EQ(Take(mem_.get(), "/out").tensors, want_);
  // A successful 0.19 re-write leaves no stale common.pt (a 0.19 reader would prefer it).
  ASSERT_TRUE(Convert("/src", "/out", TorchDist(mem_.get(), "0.19")).ok());
  EXPECT_FALSE(mem_->FileExists(std::string("/out/") + kIter + "/common.pt"));
  EXPECT_EQ(Take(mem_.get(), "/out").tensors, want_);
}

TEST_F(TorchDistFaultTest, TrackerOfAnotherIterationSurvivesAFailedSave) {
  ASSERT_TRUE(Convert("/src", "/out", TorchDist(mem_.get(), "0.16")).ok());
  ConvertOptions o = TorchDist(&fault_, "0.16");
  o.iteration = 20;
  fault_.FailRename("metadata.json");
  auto rep = Convert("/src", "/out", o);
  fault_.ClearFaults();
  ASSERT_FALSE(rep.ok());
  EXPECT_EQ(Read(mem_.get(), "/out/latest_checkpointed_iteration.txt"), "10");
  EXPECT_FALSE(mem_->FileExists("/out/iter_0000020/metadata.json"));
  EXPECT_EQ(Take(mem_.get(), "/out").tensors, want_);
}

// Every crash point of the opening and the commit, a stride of the data writes
// between (testing::CrashPoints; CKPT_FAULT_EXHAUSTIVE=1 tries every op:
// thousands of runs, ~40 s here and six minutes in CI).
TEST_F(TorchDistFaultTest, CrashAtEveryStepTrackerAndMetadataJsonOnlyOverACompleteCheckpoint) {
  uint64_t steps = 0;
  {
    auto scratch = NewMemEnv();
    CopyMegatronGolden(scratch.get(), "mc016_handbuilt", "/src");
    FaultEnv counting(scratch.get());
    ASSERT_TRUE(Convert("/src", "/out", TorchDist(&counting, "0.16", 2)).ok());
    steps = counting.counters().mutating_ops;
  }
  ASSERT_GT(steps, 10u);
  int complete = 0, incomplete = 0;
  for (uint64_t n : testing::CrashPoints(steps)) {
    SCOPED_TRACE("crash after " + std::to_string(n) + " of " + std::to_string(steps) + " ops");
    auto mem = NewMemEnv();
    CopyMegatronGolden(mem.get(), "mc016_handbuilt", "/src");
    FaultEnv fault(mem.get());
    fault.CrashAfterOps(n);
    auto rep = Convert("/src", "/out", TorchDist(&fault, "0.16", 2));
    EXPECT_EQ(rep.ok(), n >= steps) << (rep.ok() ? "" : rep.status().ToString());
    ASSERT_TRUE(fault.DropUnsyncedData().ok());
    const std::string it = std::string("/out/") + kIter;
    const bool tracker = mem->FileExists("/out/latest_checkpointed_iteration.txt");
    const bool config = mem->FileExists(it + "/metadata.json");
    if (tracker) {
      EXPECT_TRUE(config);
    }
    if (!config) {
      ++incomplete;
      continue;
    }
    ++complete;
    EXPECT_TRUE(mem->FileExists(it + "/common.pt"));
    Snapshot got = Take(mem.get(), it);
    EXPECT_EQ(got.tensors, want_);
  }
  EXPECT_GT(complete, 0);
  EXPECT_GT(incomplete, 0);
}

}  // namespace
}  // namespace ckpt
