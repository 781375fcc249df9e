#include "format/torch/torch_file.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "testing/testutil.h"

namespace ckpt::torch {
namespace {

using ::ckpt::testing::CrcSink;
using ::ckpt::testing::ReadSourceFile;

std::shared_ptr<const ByteSource> Golden(const std::string& name) {
  return std::make_shared<StringSource>(ReadSourceFile("tests/golden/torch/" + name + ".pt"),
                                        name + ".pt");
}

// Every golden file: each manifest tensor matches what the reader reports and
// what ReadTensor streams (crc32 of the contiguous bytes).
class GoldenManifest : public ::testing::TestWithParam<const char*> {};

TEST_P(GoldenManifest, EveryTensorMatchesTorch) {
  const std::string name = GetParam();
  nlohmann::json m = nlohmann::json::parse(ReadSourceFile("tests/golden/torch/" + name + ".json"));
  const bool needs_inspect = name == "hostile";
  auto f = TorchFile::Open(Golden(name), needs_inspect ? pickle::Mode::kInspect : pickle::Mode::kStrict);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  const TorchFile& tf = **f;
  std::set<std::string> ours, theirs;
  for (const TensorRecord& t : tf.tensors()) ours.insert(t.key);
  for (auto& [k, v] : m["tensors"].items()) theirs.insert(k);
  EXPECT_EQ(ours, theirs);
  for (auto& [k, want] : m["tensors"].items()) {
    SCOPED_TRACE("tensor " + k);
    const TensorRecord* t = tf.FindTensor(k);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(DTypeName(t->dtype), want["dtype"].get<std::string>());
    EXPECT_EQ(t->shape, want["shape"].get<std::vector<int64_t>>());
    EXPECT_EQ(t->stride, want["stride"].get<std::vector<int64_t>>());
    EXPECT_EQ(t->storage_offset, want["storage_offset"].get<int64_t>());
    EXPECT_EQ(t->nbytes, want["nbytes"].get<uint64_t>());
    EXPECT_EQ(t->requires_grad, want["requires_grad"].get<bool>());
    EXPECT_EQ(t->is_parameter, want["is_parameter"].get<bool>());
    CrcSink sink;
    Status st = tf.ReadTensor(*t, &sink, 7);  // odd chunk size: pieces never split elements
    ASSERT_TRUE(st.ok()) << st.ToString();
    EXPECT_EQ(sink.Position(), t->nbytes);
    EXPECT_EQ(sink.crc(), want["crc32"].get<uint32_t>());
  }
  std::set<std::string> leaves_ours, leaves_theirs;
  for (const ObjectRecord& o : tf.objects()) leaves_ours.insert(o.key);
  for (auto& [k, v] : m["leaves"].items()) leaves_theirs.insert(k);
  EXPECT_EQ(leaves_ours, leaves_theirs);
}

INSTANTIATE_TEST_SUITE_P(Torch213, GoldenManifest,
                         ::testing::Values("dtypes", "views", "small", "nested", "params",
                                           "state_dict", "writer_target", "bigendian", "hostile"));

TEST(TorchFile, ReadsArchiveRecords) {
  auto f = TorchFile::Open(Golden("views"));
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->archive_name(), "views");
  EXPECT_EQ((*f)->version(), 3u);
  EXPECT_EQ((*f)->format_version(), 1u);
  EXPECT_EQ((*f)->storage_alignment(), 64u);
  EXPECT_FALSE((*f)->big_endian());
  // base, transposed, step, offset, row, scalar_view share storage "0".
  const StorageRecord* s0 = (*f)->FindStorage("0");
  ASSERT_NE(s0, nullptr);
  EXPECT_EQ(s0->storage_class, "FloatStorage");
  EXPECT_EQ(s0->nbytes, 96u);
  EXPECT_EQ(s0->location, "cpu");
  EXPECT_EQ(s0->entry_name, "views/data/0");
  EXPECT_EQ(s0->tensors.size(), 6u);
  EXPECT_FALSE((*f)->FindTensor("transposed")->contiguous);
  EXPECT_TRUE((*f)->FindTensor("row")->contiguous);
  EXPECT_EQ((*f)->FindTensor("expanded")->stride, (std::vector<int64_t>{0, 1}));
}

TEST(TorchFile, BigEndianFilesAreByteSwappedOnRead) {
  auto f = TorchFile::Open(Golden("bigendian"));
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_TRUE((*f)->big_endian());
  StringSink sink;
  ASSERT_TRUE((*f)->ReadTensor(*(*f)->FindTensor("f32"), &sink).ok());
  float v[3];
  ASSERT_EQ(sink.str().size(), sizeof(v));
  std::memcpy(v, sink.str().data(), sizeof(v));
  EXPECT_EQ(v[0], 1.5f);
  EXPECT_EQ(v[1], -2.0f);
}

TEST(TorchFile, StateDictKeepsOrderAndMetadata) {
  auto f = TorchFile::Open(Golden("state_dict"));
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  const pickle::Value* root = (*f)->root();
  ASSERT_EQ(root->kind, pickle::Kind::kDict);
  EXPECT_TRUE(root->ordered);
  ASSERT_NE(root->state(), nullptr);
  EXPECT_NE(root->state()->Get("_metadata"), nullptr);
  ASSERT_GE((*f)->tensors().size(), 3u);
  EXPECT_EQ((*f)->tensors()[0].key, "0.weight");
  EXPECT_EQ((*f)->tensors()[1].key, "0.bias");
}

TEST(TorchFile, MegatronLegacyNeedsInspectForNothingButReadsInStrict) {
  // argparse.Namespace, numpy RNG state and python random state are all on the allowlist.
  auto f = TorchFile::Open(Golden("megatron_legacy"));
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  bool saw_args = false;
  for (const ObjectRecord& o : (*f)->objects()) {
    if (o.key == "args") {
      saw_args = true;
      EXPECT_EQ(o.type, "argparse.Namespace");
      EXPECT_FALSE(o.opaque);
    }
  }
  EXPECT_TRUE(saw_args);
  bool saw_np = false;
  for (const ObjectRecord& o : (*f)->objects()) {
    if (o.key == "rng_state.0.np_rng_state.1") {
      saw_np = true;
      EXPECT_EQ(o.type, "numpy.ndarray");
    }
  }
  EXPECT_TRUE(saw_np);
  EXPECT_NE((*f)->FindTensor("model.language_model.embedding.word_embeddings.weight"), nullptr);
  nlohmann::json m = nlohmann::json::parse(ReadSourceFile("tests/golden/torch/megatron_legacy.json"));
  for (auto& [k, want] : m["tensors"].items()) {
    const TensorRecord* t = (*f)->FindTensor(k);
    ASSERT_NE(t, nullptr) << k;
    CrcSink sink;
    ASSERT_TRUE((*f)->ReadTensor(*t, &sink).ok());
    EXPECT_EQ(sink.crc(), want["crc32"].get<uint32_t>()) << k;
  }
}

TEST(TorchFile, HostileGlobalIsRejectedInStrictAndOpaqueInInspect) {
  auto strict = TorchFile::Open(Golden("hostile"));
  ASSERT_FALSE(strict.ok());
  EXPECT_EQ(strict.status().code(), Code::kUnimplemented);
  EXPECT_NE(strict.status().message().find("hostile.pt/data.pkl: offset "), std::string::npos)
      << strict.status().message();
  EXPECT_NE(strict.status().message().find("global 'posix.system' is not allowed"), std::string::npos)
      << strict.status().message();
  auto inspect = TorchFile::Open(Golden("hostile"), pickle::Mode::kInspect);
  ASSERT_TRUE(inspect.ok()) << inspect.status().ToString();
  bool found = false;
  for (const ObjectRecord& o : (*inspect)->objects()) {
    if (o.key == "payload") {
      found = true;
      EXPECT_TRUE(o.opaque);
      EXPECT_EQ(o.type, "posix.system");
    }
  }
  EXPECT_TRUE(found);
}

TEST(TorchFile, LegacyFormatIsDetectedAndRefused) {
  auto f = TorchFile::Open(Golden("legacy"));
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), Code::kUnimplemented);
  EXPECT_NE(f.status().message().find("legacy (pre-1.6"), std::string::npos) << f.status().message();
}

TEST(TorchFile, ReadTensorPiecesAreBounded) {
  auto f = TorchFile::Open(Golden("views"));
  ASSERT_TRUE(f.ok());
  CrcSink sink;
  ASSERT_TRUE((*f)->ReadTensor(*(*f)->FindTensor("base"), &sink, 16).ok());
  EXPECT_LE(sink.max_piece(), 16u);
  CrcSink sink2;
  ASSERT_TRUE((*f)->ReadTensor(*(*f)->FindTensor("transposed"), &sink2, 16).ok());
  EXPECT_LE(sink2.max_piece(), 16u + 4u);
}

}  // namespace
}  // namespace ckpt::torch

namespace ckpt::torch {
namespace {

// ReadTensorElements gives exactly the bytes of the element range that
// ReadTensor streams, for contiguous tensors (ranged reads), strided views
// and byte-swapped files (filtered streams) alike; ranges outside fail.
TEST(TorchFile, ReadTensorElementsIsTheRangeOfReadTensor) {
  for (const char* name : {"dtypes", "bigendian", "megatron_legacy"}) {
    SCOPED_TRACE(name);
    auto f = TorchFile::Open(Golden(name), pickle::Mode::kInspect);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    int checked = 0;
    for (const TensorRecord& t : (*f)->tensors()) {
      if (t.numel == 0) continue;
      StringSink whole;
      ASSERT_TRUE((*f)->ReadTensor(t, &whole).ok());
      const uint64_t es = DTypeSize(t.dtype);
      const uint64_t n = static_cast<uint64_t>(t.numel);
      for (auto [first, count] : std::vector<std::pair<uint64_t, uint64_t>>{{0, n}, {n / 3, n - n / 3}, {n - 1, 1}}) {
        StringSink part;
        ASSERT_TRUE((*f)->ReadTensorElements(t, first, count, &part).ok()) << t.key;
        EXPECT_EQ(part.str(), whole.str().substr(first * es, count * es)) << t.key << " " << first;
      }
      EXPECT_FALSE((*f)->ReadTensorElements(t, n, 1, nullptr).ok());
      ++checked;
    }
    EXPECT_GT(checked, 0);
  }
}

}  // namespace
}  // namespace ckpt::torch
