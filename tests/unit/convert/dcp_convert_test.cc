// Convert DCP -> torch: the golden DCP folders (tests/golden/dcp, written by
// real torch 2.13) convert to exactly the bytes
// torch.distributed.checkpoint.format_utils.dcp_to_torch_save(folder,
// "out.pt") writes, and the result read back with TorchFile holds the nested
// state dict with every tensor's sidecar sha256 and every object's type.
// TorchTreeWriter's identity rules (CPython singletons, storages) are tested
// on their own below.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "ckpt/convert.h"
#include "ckpt/fault_env.h"
#include "format/pickle/pickler.h"
#include "format/torch/torch_file.h"
#include "format/torch/tree_writer.h"
#include "unit/checkpoint/checkpoint_testutil.h"
#include "util/sha256.h"

namespace ckpt {
namespace {

using ::ckpt::testing::ReadSourceFile;
using ::ckpt::testing::ScratchDir;
using ::ckpt::testing::SourcePath;
using pickle::Kind;
using pickle::Value;

struct Golden {
  const char* name;
  bool needs_opaque;       // holds an io.BytesIO (off the strict allowlist)
  const char* torch_sha;   // sha256 of dcp_to_torch_save(folder, ".../out.pt")
};

// Computed with torch 2.13.0+cpu: dcp_to_torch_save(tests/golden/dcp/<name>, tmp/out.pt).
const Golden kGoldens[] = {
    {"ws1_plain", true, "95c9ecffe90625c633e86430a6769b32a1d5d20e1b1c4acf48caee615b10cb24"},
    {"ws2_threads2", false, "f0d3f720726a4ade878b7cef3522e7f2bbba15721e77bfde77860218f7290576"},
    {"ws3_uneven", false, "390f48dc40b28a535b205f50dff769062e5363e89cf93ef2157327b382c03eca"},
    {"ws4_per_item", false, "69d514841495cef01da56a5dea0173799978c835e1fb62012ebd9875da35d217"},
    {"ws2_zstd", false, "4f24c547fdedb1d5d761cc397ba9e4bba7248673d380c60d93f895c6648557db"},
    {"all_dtypes", false, "55778ec75947aad19ec3e38c5c058fc2de9a98abd853977bfcc8e7595a621924"},
    {"ws1_threads3_empty", false, "fa23c591dd30586138d9e74eadd66ea64e9736fa04c135fd1bed5c8668360171"},
};

std::string ReadFile(const std::string& path) {
  auto r = ::ckpt::testing::ReadWhole(Env::Default(), path);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : std::string();
}

// Follows a planner_data path (str: dict key, int: list index) from root.
const Value* Follow(const Value* v, const nlohmann::json& path) {
  for (const auto& p : path) {
    if (v == nullptr) return nullptr;
    if (p.is_string()) {
      if (v->kind != Kind::kDict) return nullptr;
      v = v->Get(p.get<std::string>());
    } else {
      if (v->kind != Kind::kList || p.get<size_t>() >= v->items().size()) return nullptr;
      v = v->items()[p.get<size_t>()];
    }
  }
  return v;
}

class DcpToTorchGolden : public ::testing::TestWithParam<Golden> {};

TEST_P(DcpToTorchGolden, OutputIsByteIdenticalToDcpToTorchSave) {
  const Golden& g = GetParam();
  ScratchDir dir;
  const std::string out = dir.path() + "/out.pt";
  ConvertOptions o;
  o.to = TargetFormat::kTorch;
  o.allow_opaque = g.needs_opaque;
  auto r = Convert(SourcePath(std::string("tests/golden/dcp/") + g.name), out, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->files, std::vector<std::string>{out});
  EXPECT_TRUE(r->warnings.empty());
  EXPECT_EQ(Sha256Hex(ReadFile(out)), g.torch_sha);
}

TEST_P(DcpToTorchGolden, NestedTreeHoldsEveryTensorAndObjectOfTheSidecar) {
  const Golden& g = GetParam();
  nlohmann::json m = nlohmann::json::parse(ReadSourceFile(std::string("tests/golden/dcp/") + g.name + ".json"),
                                           nullptr, false);
  ASSERT_TRUE(m.is_object());
  ScratchDir dir;
  const std::string out = dir.path() + "/model.pt";
  ConvertOptions o;
  o.to = TargetFormat::kTorch;
  o.allow_opaque = true;
  auto r = Convert(SourcePath(std::string("tests/golden/dcp/") + g.name), out, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->tensors, m["tensors"].size());

  auto src = Env::Default()->NewRandomAccessFile(out);
  ASSERT_TRUE(src.ok());
  auto f = torch::TorchFile::Open(std::shared_ptr<const ByteSource>(std::move(*src)), pickle::Mode::kInspect);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  const torch::TorchFile& tf = **f;
  EXPECT_EQ(tf.archive_name(), "model");  // torch.save names it after the file's stem
  ASSERT_EQ(tf.root()->kind, Kind::kDict);
  EXPECT_FALSE(tf.root()->ordered);

  // Top-level keys in first-appearance order of .metadata's keys.
  std::vector<std::string> want_top, got_top;
  for (const auto& fqn : m["key_order"]) {
    const nlohmann::json& path = m["planner_data"][fqn.get<std::string>()];
    std::string k = path[0].get<std::string>();
    if (std::find(want_top.begin(), want_top.end(), k) == want_top.end()) want_top.push_back(k);
  }
  for (const auto& [k, v] : tf.root()->dict()) got_top.push_back(std::string(k->str()));
  EXPECT_EQ(got_top, want_top);

  for (auto& [fqn, want] : m["tensors"].items()) {
    SCOPED_TRACE(fqn);
    const Value* v = Follow(tf.root(), m["planner_data"][fqn]);
    ASSERT_NE(v, nullptr);
    const torch::TensorRecord* t = nullptr;
    for (const auto& rec : tf.tensors()) {
      if (rec.value == v) t = &rec;
    }
    ASSERT_NE(t, nullptr) << "no tensor at the planner path";
    EXPECT_EQ(DTypeName(t->dtype), want["dtype"].get<std::string>());
    EXPECT_EQ(t->shape, want["shape"].get<std::vector<int64_t>>());
    EXPECT_TRUE(t->contiguous);
    EXPECT_FALSE(t->requires_grad);
    Sha256Sink sha;
    ASSERT_TRUE(tf.ReadTensor(*t, &sha).ok());
    EXPECT_EQ(sha.HexDigest(), want["sha256"].get<std::string>());
  }
  for (auto& [fqn, want] : m["bytes"].items()) {
    SCOPED_TRACE(fqn);
    const Value* v = Follow(tf.root(), m["planner_data"][fqn]);
    ASSERT_NE(v, nullptr);
    std::string type = pickle::TypeName(v);
    if (type.rfind("_io.", 0) == 0) type = type.substr(4);
    EXPECT_EQ(type, want["type"].get<std::string>());
  }
}

INSTANTIATE_TEST_SUITE_P(Goldens, DcpToTorchGolden, ::testing::ValuesIn(kGoldens),
                         [](const auto& info) { return std::string(info.param.name); });

// Megatron-Core torch_dist iteration folders (tests/golden/megatron): a DCP
// folder plus metadata.json / common.pt; dcp_to_torch_save reads only the DCP
// part, and so does Convert. sha256 of dcp_to_torch_save(<iter folder>, "out.pt").
struct MegatronGolden {
  const char* folder;
  const char* torch_sha;
};
const MegatronGolden kMegatronGoldens[] = {
    {"mc016_gpt_tp2pp2dp2/iter_0000010", "e270203cf14e336b0169cf9089050cba6306c820b386b65eb097b2ffb664965a"},
    {"mc019_handbuilt/iter_0000010", "633e0928c1090704834cb4f1de1da6086761f1a4f4559ca03143e6b888cc7808"},
    {"mc016_handbuilt/iter_0000010", "7eeb3bf00303920433c83106d2de5a95f17c80fe2fc64c69305eb1710c574237"},
    {"mc016_handbuilt_dpresh/iter_0000010", "855514bd97edb30c1f28f62438dffc3ce35c13236bf682470ea9d7f7421c6b67"},
};

TEST(DcpToTorch, MegatronTorchDistIsByteIdenticalToDcpToTorchSave) {
  for (const MegatronGolden& g : kMegatronGoldens) {
    SCOPED_TRACE(g.folder);
    ScratchDir dir;
    const std::string out = dir.path() + "/out.pt";
    ConvertOptions o;
    o.to = TargetFormat::kTorch;
    o.allow_opaque = true;
    auto r = Convert(SourcePath(std::string("tests/golden/megatron/") + g.folder), out, o);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(Sha256Hex(ReadFile(out)), g.torch_sha);
  }
}

TEST(DcpToTorch, BytesIoIsOnTheAllowlistAndConvertsInStrictMode) {
  // ws1_plain holds an io.BytesIO bytes entry ('blob'): _io.BytesIO is data
  // (value, position, dict), allowlisted as Megatron's SAFE_GLOBALS does.
  ScratchDir dir;
  const std::string out = dir.path() + "/out.pt";
  ConvertOptions o;
  o.to = TargetFormat::kTorch;
  auto r = Convert(SourcePath("tests/golden/dcp/ws1_plain"), out, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto opened = OpenCheckpoint(out);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  bool found = false;
  for (const ObjectInfo& obj : (*opened)->objects()) {
    if (obj.key == "blob") {
      found = true;
      EXPECT_EQ(obj.type, "_io.BytesIO");
      EXPECT_FALSE(obj.opaque);
    }
  }
  EXPECT_TRUE(found);
}

TEST(DcpToTorch, ShardedTargetStillFlattensTensors) {
  // --max-shard-size keeps the flat path: tensors under their DCP keys.
  ScratchDir dir;
  ConvertOptions o;
  o.to = TargetFormat::kTorch;
  o.max_shard_size = 1 << 20;
  auto r = Convert(SourcePath("tests/golden/dcp/ws2_threads2"), dir.path() + "/shards", o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->files.size(), 1u);
  auto opened = OpenCheckpoint(r->files[0]);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  std::vector<std::string> keys;
  for (const TensorInfo& t : (*opened)->tensors()) keys.push_back(t.key);
  EXPECT_THAT(keys, ::testing::Contains("nested.b.0"));
}

TEST(DcpToTorch, SafetensorsTargetDropsObjectsWithAWarning) {
  ScratchDir dir;
  ConvertOptions o;
  o.to = TargetFormat::kSafetensors;
  o.allow_opaque = true;
  auto r = Convert(SourcePath("tests/golden/dcp/ws1_plain"), dir.path() + "/out.safetensors", o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  bool named_blob = false;
  for (const std::string& w : r->warnings) named_blob = named_blob || w.find("blob") != std::string::npos;
  EXPECT_TRUE(named_blob) << ::testing::PrintToString(r->warnings);
}

// ---------------------------------------------------------------------------
// TorchTreeWriter identity rules.

std::string PickleOf(torch::TorchTreeWriter& w, const Value* root) {
  StringSink sink;
  Status s = w.Write(root, &sink);
  EXPECT_TRUE(s.ok()) << s.ToString();
  auto f = torch::TorchFile::Open(std::make_shared<StringSource>(sink.Release(), "tree"), pickle::Mode::kInspect);
  EXPECT_TRUE(f.ok()) << f.status().ToString();
  if (!f.ok()) return "";
  const zip::Entry* e = (*f)->zip().Find("archive/data.pkl");
  EXPECT_NE(e, nullptr);
  if (e == nullptr) return "";
  auto pkl = (*f)->zip().ReadEntry(*e);
  EXPECT_TRUE(pkl.ok());
  return pkl.ok() ? *pkl : std::string();
}

TEST(TorchTreeWriter, OneCharacterStringsAreOneObjectLongerOnesAreNot) {
  torch::TorchTreeWriter w;
  EXPECT_EQ(w.Str("a"), w.Str("a"));
  EXPECT_EQ(w.Str(""), w.Str(""));
  EXPECT_EQ(w.Str("\xc3\xa9"), w.Str("\xc3\xa9"));  // U+00E9: a latin-1 singleton
  EXPECT_NE(w.Str("\xc4\x80"), w.Str("\xc4\x80"));  // U+0100: not one
  EXPECT_NE(w.Str("ab"), w.Str("ab"));
  EXPECT_EQ(w.Bytes("x"), w.Bytes("x"));
  EXPECT_NE(w.Bytes("xy"), w.Bytes("xy"));
  // ["a", "a"] pickles the second as a memo GET, as CPython does.
  Value* list = w.arena().List({w.Str("a"), w.Str("a")});
  std::string pkl = PickleOf(w, list);
  EXPECT_EQ(pkl, std::string("\x80\x02]q\x00(X\x01\x00\x00\x00" "aq\x01h\x01" "e.", 18));
}

TEST(TorchTreeWriter, StoragesAreNumberedInPickleOrderNotCreationOrder) {
  torch::TorchTreeWriter w;
  auto make = [&](char fill) {
    torch::TensorToSave t;
    t.dtype = DType::kUInt8;
    t.shape = {2};
    t.nbytes = 2;
    t.write = [fill](ByteSink* s) { return s->Append(std::string(2, fill)); };
    auto v = w.NewTensor(t);
    EXPECT_TRUE(v.ok());
    return *v;
  };
  Value* first = make('1');
  Value* second = make('2');
  Value* root = w.arena().List({second, first});
  StringSink sink;
  ASSERT_TRUE(w.Write(root, &sink).ok());
  auto f = torch::TorchFile::Open(std::make_shared<StringSource>(sink.Release(), "tree"));
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_EQ((*f)->tensors().size(), 2u);
  StringSink a;
  ASSERT_TRUE((*f)->ReadTensor((*f)->tensors()[0], &a).ok());
  EXPECT_EQ(a.Release(), "22");
  EXPECT_EQ((*f)->storages()[0].key, "0");
  EXPECT_EQ((*f)->tensors()[0].key, "0");
}

TEST(TorchTreeWriter, NewTensorRejectsBytesThatDoNotMatchTheShape) {
  torch::TorchTreeWriter w;
  torch::TensorToSave t;
  t.dtype = DType::kFloat32;
  t.shape = {3};
  t.nbytes = 8;
  t.write = [](ByteSink*) { return OkStatus(); };
  auto v = w.NewTensor(t);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), Code::kInvalidArgument);
  t.shape = {-1};
  t.nbytes = 0;
  EXPECT_EQ(w.NewTensor(t).status().code(), Code::kInvalidArgument);
}

TEST(TorchTreeWriter, ImportKeepsSharedStoragesSharedAndCopiesTheirBytes) {
  // tests/golden/torch views.pt: several views of one storage.
  auto src = Env::Default()->NewRandomAccessFile(SourcePath("tests/golden/torch/views.pt"));
  ASSERT_TRUE(src.ok()) << src.status().ToString();
  std::shared_ptr<const ByteSource> bytes(std::move(*src));
  auto f = torch::TorchFile::Open(bytes, pickle::Mode::kInspect);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  std::shared_ptr<const torch::TorchFile> in(std::move(*f));
  int reopened = 0;
  torch::TorchTreeWriter w;
  auto v = w.Import(*in, [&]() -> Result<std::shared_ptr<const torch::TorchFile>> {
    ++reopened;
    return in;
  });
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(w.storage_count(), in->storages().size());
  StringSink sink;
  ASSERT_TRUE(w.Write(*v, &sink).ok());
  auto g = torch::TorchFile::Open(std::make_shared<StringSource>(sink.Release(), "tree"), pickle::Mode::kInspect);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  ASSERT_EQ((*g)->tensors().size(), in->tensors().size());
  EXPECT_EQ((*g)->storages().size(), in->storages().size());
  EXPECT_EQ(reopened, static_cast<int>(in->storages().size()));
  for (size_t i = 0; i < in->tensors().size(); ++i) {
    SCOPED_TRACE(in->tensors()[i].key);
    EXPECT_EQ((*g)->tensors()[i].key, in->tensors()[i].key);
    EXPECT_EQ((*g)->tensors()[i].stride, in->tensors()[i].stride);
    EXPECT_EQ((*g)->tensors()[i].storage_offset, in->tensors()[i].storage_offset);
    StringSink a, b;
    ASSERT_TRUE(in->ReadTensor(in->tensors()[i], &a).ok());
    ASSERT_TRUE((*g)->ReadTensor((*g)->tensors()[i], &b).ok());
    EXPECT_EQ(a.Release(), b.Release());
  }
}

}  // namespace
}  // namespace ckpt

namespace ckpt {
namespace {

// A full disk, a failing rename or fsync at any point of DCP -> torch.save:
// a clear error, and nothing that looks like an output left behind.
TEST(DcpToTorchFaults, EveryFailureLeavesNoOutput) {
  auto mem = NewMemEnv();
  ::ckpt::testing_ckpt::CopyDcpGolden(mem.get(), "ws2_threads2", "/ck");
  ASSERT_TRUE(mem->CreateDirs("/out").ok());
  FaultEnv fault(mem.get());
  ConvertOptions o;
  o.to = TargetFormat::kTorch;
  o.env = &fault;
  // Learn the clean output size, then run out of space at several points.
  auto clean = Convert("/ck", "/out/model.pt", o);
  ASSERT_TRUE(clean.ok()) << clean.status().ToString();
  auto size = mem->GetFileSize("/out/model.pt");
  ASSERT_TRUE(size.ok());
  ASSERT_TRUE(mem->RemoveFile("/out/model.pt").ok());
  for (uint64_t limit : {uint64_t{0}, uint64_t{100}, *size / 2, *size - 1}) {
    SCOPED_TRACE(limit);
    fault.SetSpaceLimit(limit);
    auto r = Convert("/ck", "/out/model.pt", o);
    fault.ClearSpaceLimit();
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Code::kResourceExhausted) << r.status().ToString();
    EXPECT_THAT(r.status().message(), ::testing::HasSubstr("no space left"));
    EXPECT_THAT(::ckpt::testing_ckpt::ListDir(mem.get(), "/out"), ::testing::IsEmpty());
  }
  fault.FailRename();
  auto r = Convert("/ck", "/out/model.pt", o);
  fault.ClearFaults();
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(::ckpt::testing_ckpt::ListDir(mem.get(), "/out"), ::testing::IsEmpty());
  fault.FailSync();
  r = Convert("/ck", "/out/model.pt", o);
  fault.ClearFaults();
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(::ckpt::testing_ckpt::ListDir(mem.get(), "/out"), ::testing::IsEmpty());
  // And a clean run still produces the same bytes as before.
  auto again = Convert("/ck", "/out/model.pt", o);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(*mem->GetFileSize("/out/model.pt"), *size);
}

}  // namespace
}  // namespace ckpt
