#include "format/torch/torch_writer.h"

#include <gtest/gtest.h>

#include <string>

#include "format/torch/torch_file.h"
#include "testing/testutil.h"

namespace ckpt::torch {
namespace {

using ::ckpt::testing::FirstDiff;
using ::ckpt::testing::ReadSourceFile;

std::unique_ptr<TorchFile> OpenGolden(const std::string& name, pickle::Mode mode = pickle::Mode::kStrict) {
  auto src = std::make_shared<StringSource>(ReadSourceFile("tests/golden/torch/" + name + ".pt"), name + ".pt");
  auto f = TorchFile::Open(src, mode);
  EXPECT_TRUE(f.ok()) << f.status().ToString();
  return f.ok() ? std::move(*f) : nullptr;
}

// torch.save({...}) of a plain dict of tensors, reproduced from the tensors alone.
TEST(TorchWriter, StateDictIsByteIdenticalToTorchSave) {
  auto golden = OpenGolden("writer_target");
  ASSERT_NE(golden, nullptr);
  StateDict sd(/*ordered=*/false);
  for (const TensorRecord& t : golden->tensors()) {
    const TorchFile* g = golden.get();
    const TensorRecord* tp = &t;
    TensorToSave ts;
    ts.dtype = t.dtype;
    ts.shape = t.shape;
    ts.nbytes = t.nbytes;
    ts.write = [g, tp](ByteSink* s) { return g->ReadTensor(*tp, s); };
    ASSERT_TRUE(sd.AddTensor(t.key, std::move(ts)).ok());
  }
  StringSink out;
  TorchWriteOptions o;
  o.archive_name = "writer_target";
  Status st = WriteStateDict(sd, &out, o);
  ASSERT_TRUE(st.ok()) << st.ToString();
  const std::string want = ReadSourceFile("tests/golden/torch/writer_target.pt");
  EXPECT_TRUE(out.str() == want) << "first difference at byte " << FirstDiff(out.str(), want)
                                 << " of " << want.size() << " (ours " << out.str().size() << ")";
}

// Every file torch.save wrote comes back byte for byte through read + rewrite.
class RewriteGolden : public ::testing::TestWithParam<const char*> {};

TEST_P(RewriteGolden, IsByteIdentical) {
  const std::string name = GetParam();
  auto f = OpenGolden(name, name == "hostile" ? pickle::Mode::kInspect : pickle::Mode::kStrict);
  ASSERT_NE(f, nullptr);
  StringSink out;
  TorchWriteOptions o;
  o.archive_name = f->archive_name();
  Status st = RewriteTorchFile(*f, &out, o);
  ASSERT_TRUE(st.ok()) << st.ToString();
  const std::string want = ReadSourceFile("tests/golden/torch/" + name + ".pt");
  EXPECT_TRUE(out.str() == want) << "first difference at byte " << FirstDiff(out.str(), want)
                                 << " of " << want.size() << " (ours " << out.str().size() << ")";
}

INSTANTIATE_TEST_SUITE_P(Torch213, RewriteGolden,
                         ::testing::Values("dtypes", "views", "small", "nested", "params",
                                           "state_dict", "writer_target", "megatron_legacy",
                                           "hostile"));

TEST(TorchWriter, RewriteOfBigEndianFileKeepsValues) {
  auto f = OpenGolden("bigendian");
  ASSERT_NE(f, nullptr);
  StringSink out;
  ASSERT_TRUE(RewriteTorchFile(*f, &out).ok());
  auto back = TorchFile::Open(std::make_shared<StringSource>(out.Release(), "rewritten.pt"));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE((*back)->big_endian());
  EXPECT_EQ((*back)->archive_name(), "archive");
  for (const TensorRecord& t : f->tensors()) {
    StringSink a, b;
    ASSERT_TRUE(f->ReadTensor(t, &a).ok());
    const TensorRecord* bt = (*back)->FindTensor(t.key);
    ASSERT_NE(bt, nullptr);
    ASSERT_TRUE((*back)->ReadTensor(*bt, &b).ok());
    EXPECT_EQ(a.str(), b.str()) << t.key;
  }
}

TEST(TorchWriter, CallbackWritingTheWrongCountIsInvalidArgument) {
  StateDict sd;
  TensorToSave t;
  t.dtype = DType::kFloat32;
  t.shape = {2};
  t.nbytes = 8;
  t.write = [](ByteSink* s) { return s->Append("abc"); };
  ASSERT_TRUE(sd.AddTensor("w", std::move(t)).ok());
  StringSink out;
  Status st = WriteStateDict(sd, &out);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  EXPECT_NE(st.message().find("'archive/data/0'"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("wrote 3 bytes, expected 8"), std::string::npos) << st.message();
}

TEST(TorchWriter, StateDictRejectsBadShapesAndDuplicates) {
  StateDict sd;
  TensorToSave t;
  t.dtype = DType::kBFloat16;
  t.shape = {3};
  t.nbytes = 5;
  EXPECT_EQ(sd.AddTensor("x", t).code(), Code::kInvalidArgument);
  t.nbytes = 6;
  EXPECT_TRUE(sd.AddTensor("x", t).ok());
  EXPECT_EQ(sd.AddTensor("x", t).code(), Code::kInvalidArgument);
  EXPECT_FALSE(sd.AddDict("x").ok());
  t.shape = {-1};
  EXPECT_EQ(sd.AddTensor("y", t).code(), Code::kInvalidArgument);
}

TEST(TorchWriter, NestedStateDictReadsBackWithDottedKeys) {
  StateDict sd(/*ordered=*/true);
  auto inner = sd.AddDict("model");
  ASSERT_TRUE(inner.ok());
  const std::string bytes = std::string("\x01\x02\x03\x04\x05\x06", 6);
  TensorToSave t;
  t.dtype = DType::kFloat8_e5m2;
  t.shape = {2, 3};
  t.nbytes = 6;
  t.write = [&](ByteSink* s) { return s->Append(bytes); };
  ASSERT_TRUE((*inner)->AddTensor("w", t).ok());
  StringSink out;
  ASSERT_TRUE(WriteStateDict(sd, &out).ok());
  auto back = TorchFile::Open(std::make_shared<StringSource>(out.Release(), "nested.pt"));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  const TensorRecord* w = (*back)->FindTensor("model.w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->dtype, DType::kFloat8_e5m2);
  EXPECT_EQ(w->stride, (std::vector<int64_t>{3, 1}));
  StringSink data;
  ASSERT_TRUE((*back)->ReadTensor(*w, &data).ok());
  EXPECT_EQ(data.str(), bytes);
  EXPECT_TRUE((*back)->root()->ordered);
}

}  // namespace
}  // namespace ckpt::torch
