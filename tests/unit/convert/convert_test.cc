// Convert: round trips through two formats checked against torch's own
// manifests, sharding, tree-preserving torch rewrite, refusals.
#include "ckpt/convert.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "ckpt/checkpoint.h"
#include "ckpt/writer.h"
#include "unit/checkpoint/checkpoint_testutil.h"

namespace ckpt {
namespace {

using ::ckpt::testing::Crc32;
using ::ckpt::testing::CrcSink;
using ::ckpt::testing::ReadSourceFile;
using ::ckpt::testing::ReadWhole;
using ::ckpt::testing::WriteWhole;
using ::ckpt::testing_ckpt::CopyIntoEnv;
using ::ckpt::testing_ckpt::CopyShardedGoldenSet;
using ::ckpt::testing_ckpt::ListDir;
using ::ckpt::testing_ckpt::ReadAllTensors;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

nlohmann::json TorchManifest(const std::string& name) {
  return nlohmann::json::parse(ReadSourceFile("tests/golden/torch/" + name + ".json"), nullptr,
                               false);
}

// Every tensor of reader matches the torch-written manifest: same key set,
// dtype, shape, nbytes and crc32 of the contiguous bytes.
void ExpectMatchesTorchManifest(const CheckpointReader& reader, const nlohmann::json& m) {
  ASSERT_TRUE(m.is_object());
  std::set<std::string> ours, theirs;
  for (const TensorInfo& t : reader.tensors()) ours.insert(t.key);
  for (auto& [k, v] : m["tensors"].items()) theirs.insert(k);
  EXPECT_EQ(ours, theirs);
  for (auto& [key, want] : m["tensors"].items()) {
    SCOPED_TRACE("tensor " + key);
    auto idx = reader.Find(key);
    ASSERT_TRUE(idx.ok()) << idx.status().ToString();
    const TensorInfo& t = reader.tensors()[*idx];
    EXPECT_EQ(DTypeName(t.dtype), want["dtype"].get<std::string>());
    EXPECT_EQ(t.shape, want["shape"].get<std::vector<int64_t>>());
    EXPECT_EQ(t.nbytes, want["nbytes"].get<uint64_t>());
    CrcSink sink;
    Status s = reader.ReadTensor(*idx, &sink);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(sink.Position(), want["nbytes"].get<uint64_t>());
    EXPECT_EQ(sink.crc(), want["crc32"].get<uint32_t>());
  }
}

ConvertOptions To(TargetFormat to, Env* env, uint64_t max_shard_size = 0) {
  ConvertOptions o;
  o.to = to;
  o.env = env;
  o.max_shard_size = max_shard_size;
  return o;
}

// ---------------------------------------------------------------- round trips

class ConvertGoldenTorch : public ::testing::TestWithParam<std::string> {};

// torch (written by torch) -> safetensors -> torch, checked after each hop
// against the manifest torch wrote.
TEST_P(ConvertGoldenTorch, SafetensorsAndBackKeepEveryTensorsBytes) {
  const std::string name = GetParam();
  nlohmann::json m = TorchManifest(name);
  auto env = NewMemEnv();
  CopyIntoEnv(env.get(), "tests/golden/torch/" + name + ".pt", "/src/" + name + ".pt");
  ASSERT_TRUE(env->CreateDirs("/out").ok());

  const std::string st_path = "/out/" + name + ".safetensors";
  auto rep = Convert("/src/" + name + ".pt", st_path, To(TargetFormat::kSafetensors, env.get()));
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_THAT(rep->files, ElementsAre(st_path));
  EXPECT_EQ(rep->tensors, m["tensors"].size());
  uint64_t total = 0;
  for (auto& [k, v] : m["tensors"].items()) total += v["nbytes"].get<uint64_t>();
  EXPECT_EQ(rep->bytes, total);
  // Every non-tensor object is dropped with a warning naming it.
  EXPECT_EQ(rep->warnings.size(), m["leaves"].size());
  for (const std::string& w : rep->warnings) EXPECT_THAT(w, HasSubstr("dropped"));

  auto st = OpenCheckpoint(st_path, {env.get()});
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  EXPECT_EQ((*st)->format(), "safetensors");
  EXPECT_EQ((*st)->Details()["metadata"], nlohmann::json({{"format", "pt"}}));
  EXPECT_TRUE((*st)->objects().empty());
  {
    SCOPED_TRACE("after torch -> safetensors");
    ExpectMatchesTorchManifest(**st, m);
  }

  ASSERT_TRUE(env->CreateDirs("/back").ok());
  const std::string pt_path = "/back/" + name + ".pt";
  auto rep2 = Convert(st_path, pt_path, To(TargetFormat::kTorch, env.get()));
  ASSERT_TRUE(rep2.ok()) << rep2.status().ToString();
  EXPECT_THAT(rep2->files, ElementsAre(pt_path));
  EXPECT_TRUE(rep2->warnings.empty());
  auto pt = OpenCheckpoint(pt_path, {env.get()});
  ASSERT_TRUE(pt.ok()) << pt.status().ToString();
  EXPECT_EQ((*pt)->format(), "torch");
  {
    SCOPED_TRACE("after safetensors -> torch");
    ExpectMatchesTorchManifest(**pt, m);
  }
  // A flat state dict: every tensor has its own contiguous storage.
  for (const TensorInfo& t : (*pt)->tensors()) EXPECT_EQ(t.storage_offset, 0) << t.key;
}

// dtypes (complex) and hostile (an unknown global) are refused; tested below.
INSTANTIATE_TEST_SUITE_P(GoldenTorchFiles, ConvertGoldenTorch,
                         ::testing::Values("bigendian", "megatron_legacy", "nested", "params",
                                           "small", "state_dict", "views", "writer_target"),
                         [](const auto& info) { return info.param; });

TEST(ConvertSafetensors, EveryDtypeToTorchAndBack) {
  auto env = NewMemEnv();
  CopyIntoEnv(env.get(), "tests/golden/safetensors/all_dtypes.safetensors", "/src/a.safetensors");
  auto src = OpenCheckpoint("/src/a.safetensors", {env.get()});
  ASSERT_TRUE(src.ok()) << src.status().ToString();
  const auto want = ReadAllTensors(**src);
  ASSERT_EQ(want.size(), 21u);

  auto rep = Convert("/src/a.safetensors", "/out", To(TargetFormat::kTorch, env.get()));
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_THAT(rep->files, ElementsAre("/out/pytorch_model.bin"));
  auto pt = OpenCheckpoint("/out", {env.get()});
  ASSERT_TRUE(pt.ok()) << pt.status().ToString();
  EXPECT_EQ((*pt)->format(), "torch");
  EXPECT_EQ(ReadAllTensors(**pt), want);
  for (const TensorInfo& t : (*src)->tensors()) {
    auto i = (*pt)->Find(t.key);
    ASSERT_TRUE(i.ok()) << t.key;
    EXPECT_EQ((*pt)->tensors()[*i].dtype, t.dtype) << t.key;
    EXPECT_EQ((*pt)->tensors()[*i].shape, t.shape) << t.key;
  }

  // And back: the same bytes as the file safetensors wrote.
  auto rep2 = Convert("/out", "/again/model.safetensors", To(TargetFormat::kSafetensors, env.get()));
  EXPECT_EQ(rep2.status().code(), Code::kNotFound) << "folder /again does not exist";
  auto rep3 = Convert("/out", "/again", To(TargetFormat::kSafetensors, env.get()));
  ASSERT_TRUE(rep3.ok()) << rep3.status().ToString();
  EXPECT_THAT(rep3->files, ElementsAre("/again/model.safetensors"));
  auto again = ReadWhole(env.get(), "/again/model.safetensors");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(Crc32(*again), Crc32(ReadSourceFile("tests/golden/safetensors/all_dtypes.safetensors")))
      << "torch -> safetensors of safetensors' own file is not byte-identical";
}

TEST(ConvertSafetensors, SafetensorsToSafetensorsKeepsMetadataAndBytes) {
  auto env = NewMemEnv();
  CopyIntoEnv(env.get(), "tests/golden/safetensors/multi_meta.safetensors", "/src/m.safetensors");
  CopyIntoEnv(env.get(), "tests/golden/safetensors/scalar_empty.safetensors", "/src/s.safetensors");
  ASSERT_TRUE(env->CreateDirs("/out").ok());
  // Multi-key metadata is written sorted (safetensors' own order varies run
  // to run), so compare metadata and tensors rather than bytes.
  auto rep = Convert("/src/m.safetensors", "/out/m.safetensors",
                     To(TargetFormat::kSafetensors, env.get()));
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  auto src = OpenCheckpoint("/src/m.safetensors", {env.get()});
  auto out = OpenCheckpoint("/out/m.safetensors", {env.get()});
  ASSERT_TRUE(src.ok() && out.ok());
  EXPECT_EQ((*out)->Details()["metadata"],
            nlohmann::json({{"a", "\xc3\xa9\t"}, {"b", "2"}, {"format", "pt"}}));
  EXPECT_EQ(ReadAllTensors(**out), ReadAllTensors(**src));
  // One metadata key: byte-identical to what safetensors wrote.
  rep = Convert("/src/s.safetensors", "/out/s.safetensors", To(TargetFormat::kSafetensors, env.get()));
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  auto bytes = ReadWhole(env.get(), "/out/s.safetensors");
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(*bytes, ReadSourceFile("tests/golden/safetensors/scalar_empty.safetensors"));
}

// ---------------------------------------------------------------- sharding

// Checks a sharded conversion's output folder: names as transformers names
// them, the index last, no stray files, each shard within the limit unless it
// holds a single tensor, and equal bytes when read back.
void ExpectShardedOutput(Env* env, const ConvertReport& rep, const std::string& dir,
                         bool safetensors, uint64_t max_shard_size,
                         const std::map<std::string, std::string>& want) {
  const std::string prefix = safetensors ? "model" : "pytorch_model";
  const std::string ext = safetensors ? ".safetensors" : ".bin";
  const std::string index_name = safetensors ? "model.safetensors.index.json"
                                             : "pytorch_model.bin.index.json";
  ASSERT_GE(rep.files.size(), 3u);
  EXPECT_EQ(rep.files.back(), dir + "/" + index_name);
  const size_t n = rep.files.size() - 1;
  std::vector<std::string> names;
  for (size_t i = 0; i < n; ++i) {
    std::string want_name =
        fmt::format("{}-{:05d}-of-{:05d}{}", prefix, i + 1, n, ext);
    EXPECT_EQ(rep.files[i], dir + "/" + want_name);
    names.push_back(want_name);
  }
  names.push_back(index_name);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(ListDir(env, dir), names);

  auto index_text = ReadWhole(env, dir + "/" + index_name);
  ASSERT_TRUE(index_text.ok());
  nlohmann::json index = nlohmann::json::parse(*index_text, nullptr, false);
  ASSERT_TRUE(index.is_object()) << *index_text;
  uint64_t total = 0;
  for (const auto& [k, v] : want) total += v.size();
  EXPECT_EQ(index["metadata"]["total_size"], total);
  EXPECT_EQ(index["weight_map"].size(), want.size());

  // Per shard: sum of its tensors' bytes within the limit, or a lone tensor.
  std::map<std::string, std::pair<uint64_t, int>> per_shard;
  for (auto& [key, file] : index["weight_map"].items()) {
    ASSERT_TRUE(want.count(key)) << key;
    per_shard[file.get<std::string>()].first += want.at(key).size();
    per_shard[file.get<std::string>()].second += 1;
  }
  EXPECT_EQ(per_shard.size(), n);
  for (const auto& [file, sz] : per_shard) {
    EXPECT_TRUE(sz.first <= max_shard_size || sz.second == 1)
        << file << ": " << sz.first << " bytes in " << sz.second << " tensors";
  }

  auto back = OpenCheckpoint(dir, {env});
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ((*back)->format(), safetensors ? "safetensors-sharded" : "torch-sharded");
  EXPECT_EQ(ReadAllTensors(**back), want);
  EXPECT_FALSE((*back)->Details().contains("unindexed_tensors"));
}

TEST(ConvertSharding, ShardedSafetensorsToSmallerShards) {
  auto env = NewMemEnv();
  CopyShardedGoldenSet(env.get(), "/src");
  auto src = OpenCheckpoint("/src", {env.get()});
  ASSERT_TRUE(src.ok()) << src.status().ToString();
  const auto want = ReadAllTensors(**src);

  uint64_t last_done = 0, calls = 0;
  ConvertOptions o = To(TargetFormat::kSafetensors, env.get(), 5000);
  o.progress = [&](uint64_t done, uint64_t total) {
    EXPECT_GE(done, last_done);
    EXPECT_EQ(total, 26944u);
    last_done = done;
    ++calls;
  };
  auto rep = Convert("/src", "/out", o);
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_EQ(last_done, 26944u);
  EXPECT_EQ(calls, 21u);
  EXPECT_EQ(rep->tensors, 21u);
  EXPECT_EQ(rep->bytes, 26944u);
  // 26944 bytes in shards of at most 5000: at least 6 shards.
  EXPECT_GE(rep->files.size(), 7u);
  ExpectShardedOutput(env.get(), *rep, "/out", /*safetensors=*/true, 5000, want);
}

TEST(ConvertSharding, TorchToTorchShards) {
  auto env = NewMemEnv();
  CopyIntoEnv(env.get(), "examples/sample.pt", "/src/sample.pt");
  auto src = OpenCheckpoint("/src/sample.pt", {env.get()});
  ASSERT_TRUE(src.ok()) << src.status().ToString();
  const auto want = ReadAllTensors(**src);
  auto rep = Convert("/src/sample.pt", "/out", To(TargetFormat::kTorch, env.get(), 40000));
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  // Namespace, iteration, checkpoint_version: a flat state dict cannot hold them.
  EXPECT_EQ(rep->warnings.size(), (*src)->objects().size());
  ExpectShardedOutput(env.get(), *rep, "/out", /*safetensors=*/false, 40000, want);
}

TEST(ConvertSharding, LimitAboveTotalGivesOneUnsuffixedFile) {
  auto env = NewMemEnv();
  CopyIntoEnv(env.get(), "tests/golden/torch/state_dict.pt", "/src/sd.pt");
  auto rep = Convert("/src/sd.pt", "/out", To(TargetFormat::kSafetensors, env.get(), 1 << 30));
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_THAT(rep->files, ElementsAre("/out/model.safetensors"));
  EXPECT_THAT(ListDir(env.get(), "/out"), ElementsAre("model.safetensors"));
  auto back = OpenCheckpoint("/out", {env.get()});
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ExpectMatchesTorchManifest(**back, TorchManifest("state_dict"));
}

TEST(ConvertSharding, SingleFileDestinationWithShardSizeIsInvalidArgument) {
  auto env = NewMemEnv();
  CopyIntoEnv(env.get(), "tests/golden/torch/state_dict.pt", "/src/sd.pt");
  ASSERT_TRUE(env->CreateDirs("/out").ok());
  auto st = Convert("/src/sd.pt", "/out/x.safetensors",
                    To(TargetFormat::kSafetensors, env.get(), 1000));
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.status().code(), Code::kInvalidArgument) << st.status().ToString();
  EXPECT_THAT(st.status().message(), HasSubstr("/out/x.safetensors"));
  auto pt = Convert("/src/sd.pt", "/out/x.bin", To(TargetFormat::kTorch, env.get(), 1000));
  ASSERT_FALSE(pt.ok());
  EXPECT_EQ(pt.status().code(), Code::kInvalidArgument) << pt.status().ToString();
  EXPECT_TRUE(ListDir(env.get(), "/out").empty());
}

// ---------------------------------------------------------------- torch rewrite

TEST(ConvertTorchRewrite, KeepsNonTensorObjects) {
  auto env = NewMemEnv();
  CopyIntoEnv(env.get(), "tests/golden/torch/megatron_legacy.pt", "/src/m.pt");
  auto src = OpenCheckpoint("/src/m.pt", {env.get()});
  ASSERT_TRUE(src.ok()) << src.status().ToString();
  ASSERT_GT((*src)->objects().size(), 100u);
  ASSERT_TRUE(env->CreateDirs("/out").ok());
  auto rep = Convert("/src/m.pt", "/out/model_optim_rng.pt", To(TargetFormat::kTorch, env.get()));
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_TRUE(rep->warnings.empty());
  EXPECT_THAT(rep->files, ElementsAre("/out/model_optim_rng.pt"));
  EXPECT_THAT(ListDir(env.get(), "/out"), ElementsAre("model_optim_rng.pt"));

  auto out = OpenCheckpoint("/out/model_optim_rng.pt", {env.get()});
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  const auto& a = (*src)->objects();
  const auto& b = (*out)->objects();
  ASSERT_EQ(a.size(), b.size());
  bool saw_args = false;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].key, b[i].key);
    EXPECT_EQ(a[i].type, b[i].type) << a[i].key;
    EXPECT_EQ(a[i].repr, b[i].repr) << a[i].key;
    EXPECT_EQ(a[i].opaque, b[i].opaque) << a[i].key;
    if (b[i].key == "args") {
      saw_args = true;
      EXPECT_EQ(b[i].type, "argparse.Namespace");
    }
  }
  EXPECT_TRUE(saw_args);
  ExpectMatchesTorchManifest(**out, TorchManifest("megatron_legacy"));
  // The archive folder is named after the new file, as torch.save names it.
  EXPECT_EQ((*out)->Details()["archive"], "model_optim_rng");
}

TEST(ConvertTorchRewrite, KeepsSharedStoragesAndViews) {
  auto env = NewMemEnv();
  CopyIntoEnv(env.get(), "tests/golden/torch/views.pt", "/src/views.pt");
  CopyIntoEnv(env.get(), "tests/golden/torch/nested.pt", "/src/nested.pt");
  for (const std::string name : {"views", "nested"}) {
    SCOPED_TRACE(name);
    auto src = OpenCheckpoint("/src/" + name + ".pt", {env.get()});
    ASSERT_TRUE(src.ok()) << src.status().ToString();
    auto rep = Convert("/src/" + name + ".pt", "/out/" + name, To(TargetFormat::kTorch, env.get()));
    ASSERT_TRUE(rep.ok()) << rep.status().ToString();
    auto out = OpenCheckpoint("/out/" + name, {env.get()});
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    ExpectMatchesTorchManifest(**out, TorchManifest(name));
    for (const TensorInfo& t : (*src)->tensors()) {
      auto i = (*out)->Find(t.key);
      ASSERT_TRUE(i.ok());
      const TensorInfo& u = (*out)->tensors()[*i];
      EXPECT_EQ(u.stride, t.stride) << t.key;
      EXPECT_EQ(u.storage_offset, t.storage_offset) << t.key;
      EXPECT_EQ(u.storage, t.storage) << t.key;
    }
    EXPECT_EQ((*out)->Details()["storages"], (*src)->Details()["storages"]);
  }
}

// ---------------------------------------------------------------- refusals

TEST(ConvertRefusals, Complex128ToSafetensorsIsUnimplementedNamingTheTensor) {
  auto env = NewMemEnv();
  ASSERT_TRUE(env->CreateDirs("/src").ok());
  std::string zbytes(3 * 16, '\x01');
  std::vector<TensorToWrite> ts = {
      {"a.weight", DType::kFloat32, {2}, [](ByteSink* s) { return s->Append(std::string(8, 'a')); }},
      {"freqs_cis", DType::kComplex128, {3}, [&](ByteSink* s) { return s->Append(zbytes); }},
  };
  ASSERT_TRUE(WriteTorchFile("/src/c.pt", ts, env.get()).ok());
  ASSERT_TRUE(env->CreateDirs("/out").ok());
  auto rep = Convert("/src/c.pt", "/out/c.safetensors", To(TargetFormat::kSafetensors, env.get()));
  ASSERT_FALSE(rep.ok());
  EXPECT_EQ(rep.status().code(), Code::kUnimplemented) << rep.status().ToString();
  EXPECT_THAT(rep.status().message(), HasSubstr("freqs_cis"));
  EXPECT_THAT(rep.status().message(), HasSubstr("complex128"));
  EXPECT_TRUE(ListDir(env.get(), "/out").empty());
  // Torch holds it.
  auto ok = Convert("/src/c.pt", "/out/c.pt", To(TargetFormat::kTorch, env.get()));
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
}

TEST(ConvertRefusals, GoldenDtypesFileToSafetensorsIsUnimplemented) {
  auto env = NewMemEnv();
  CopyIntoEnv(env.get(), "tests/golden/torch/dtypes.pt", "/src/dtypes.pt");
  auto rep = Convert("/src/dtypes.pt", "/out", To(TargetFormat::kSafetensors, env.get()));
  ASSERT_FALSE(rep.ok());
  EXPECT_EQ(rep.status().code(), Code::kUnimplemented) << rep.status().ToString();
  EXPECT_THAT(rep.status().message(), HasSubstr("complex"));
  EXPECT_THAT(ListDir(env.get(), "/out"), ::testing::IsEmpty());
  // torch -> torch keeps every dtype.
  auto pt = Convert("/src/dtypes.pt", "/out2/dtypes.pt", To(TargetFormat::kTorch, env.get()));
  EXPECT_EQ(pt.status().code(), Code::kNotFound);
  ASSERT_TRUE(env->CreateDirs("/out2").ok());
  pt = Convert("/src/dtypes.pt", "/out2/dtypes.pt", To(TargetFormat::kTorch, env.get()));
  ASSERT_TRUE(pt.ok()) << pt.status().ToString();
  auto back = OpenCheckpoint("/out2/dtypes.pt", {env.get()});
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ExpectMatchesTorchManifest(**back, TorchManifest("dtypes"));
}

TEST(ConvertRefusals, StrictModeRefusesUnknownGlobal) {
  auto env = NewMemEnv();
  CopyIntoEnv(env.get(), "tests/golden/torch/hostile.pt", "/src/hostile.pt");
  for (TargetFormat to : {TargetFormat::kSafetensors, TargetFormat::kTorch}) {
    auto rep = Convert("/src/hostile.pt", "/out", To(to, env.get()));
    ASSERT_FALSE(rep.ok());
    EXPECT_EQ(rep.status().code(), Code::kUnimplemented) << rep.status().ToString();
    EXPECT_THAT(rep.status().message(), HasSubstr("posix.system"));
    EXPECT_THAT(rep.status().message(), HasSubstr("/src/hostile.pt"));
    EXPECT_FALSE(env->FileExists("/out/model.safetensors"));
    EXPECT_FALSE(env->FileExists("/out/pytorch_model.bin"));
  }
}

TEST(ConvertRefusals, AllowOpaqueKeepsObjectInTorch) {
  auto env = NewMemEnv();
  CopyIntoEnv(env.get(), "tests/golden/torch/hostile.pt", "/src/hostile.pt");
  ConvertOptions o = To(TargetFormat::kTorch, env.get());
  o.allow_opaque = true;
  ASSERT_TRUE(env->CreateDirs("/out").ok());
  auto rep = Convert("/src/hostile.pt", "/out/h.pt", o);
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_TRUE(rep->warnings.empty());

  auto strict = OpenCheckpoint("/out/h.pt", {env.get()});
  ASSERT_FALSE(strict.ok()) << "the opaque global must travel, and still be refused";
  EXPECT_EQ(strict.status().code(), Code::kUnimplemented);
  EXPECT_THAT(strict.status().message(), HasSubstr("posix.system"));
  auto out = OpenCheckpoint("/out/h.pt", {env.get(), PickleMode::kInspect});
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ASSERT_EQ((*out)->objects().size(), 1u);
  EXPECT_EQ((*out)->objects()[0].key, "payload");
  EXPECT_TRUE((*out)->objects()[0].opaque);
  ExpectMatchesTorchManifest(**out, TorchManifest("hostile"));
}

TEST(ConvertRefusals, AllowOpaqueDropsObjectFromSafetensorsWithWarning) {
  auto env = NewMemEnv();
  CopyIntoEnv(env.get(), "tests/golden/torch/hostile.pt", "/src/hostile.pt");
  ConvertOptions o = To(TargetFormat::kSafetensors, env.get());
  o.allow_opaque = true;
  auto rep = Convert("/src/hostile.pt", "/out", o);
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  ASSERT_EQ(rep->warnings.size(), 1u);
  EXPECT_THAT(rep->warnings[0], HasSubstr("payload"));
  EXPECT_THAT(rep->warnings[0], HasSubstr("dropped"));
  auto out = OpenCheckpoint("/out", {env.get()});
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE((*out)->objects().empty());
  ExpectMatchesTorchManifest(**out, TorchManifest("hostile"));
}

TEST(ConvertRefusals, MissingSourceIsNotFoundWithContext) {
  auto env = NewMemEnv();
  auto rep = Convert("/src/none.pt", "/out", To(TargetFormat::kSafetensors, env.get()));
  ASSERT_FALSE(rep.ok());
  EXPECT_EQ(rep.status().code(), Code::kNotFound) << rep.status().ToString();
  EXPECT_THAT(rep.status().message(), HasSubstr("/src/none.pt"));
}

TEST(ConvertRefusals, DestinationThatIsAFileIsInvalidArgument) {
  auto env = NewMemEnv();
  CopyIntoEnv(env.get(), "tests/golden/torch/small.pt", "/src/small.pt");
  ASSERT_TRUE(WriteWhole(env.get(), "/src/notadir", "x").ok());
  auto rep = Convert("/src/small.pt", "/src/notadir", To(TargetFormat::kSafetensors, env.get()));
  ASSERT_FALSE(rep.ok());
  EXPECT_EQ(rep.status().code(), Code::kInvalidArgument) << rep.status().ToString();
  auto still = ReadWhole(env.get(), "/src/notadir");
  ASSERT_TRUE(still.ok());
  EXPECT_EQ(*still, "x");
}

TEST(ConvertRefusals, DestinationNamedForTheOtherFormatIsInvalidArgument) {
  // `convert a.pt b.pt --to safetensors` must not quietly make a folder b.pt/.
  auto env = NewMemEnv();
  CopyIntoEnv(env.get(), "tests/golden/torch/small.pt", "/src/small.pt");
  ASSERT_TRUE(env->CreateDirs("/out").ok());
  auto st = Convert("/src/small.pt", "/out/b.pt", To(TargetFormat::kSafetensors, env.get()));
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.status().code(), Code::kInvalidArgument) << st.status().ToString();
  EXPECT_THAT(st.status().message(), HasSubstr("/out/b.pt names a torch.save file"));
  auto pt = Convert("/src/small.pt", "/out/b.safetensors", To(TargetFormat::kTorch, env.get()));
  ASSERT_FALSE(pt.ok());
  EXPECT_THAT(pt.status().message(), HasSubstr("names a safetensors file"));
  EXPECT_TRUE(ListDir(env.get(), "/out").empty());
}

}  // namespace
}  // namespace ckpt
