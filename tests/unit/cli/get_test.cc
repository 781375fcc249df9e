// `ckptkit get`: slice parsing, .npy headers against numpy's, key
// suggestions, and RunGet end to end over a MemEnv.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "ckpt/checkpoint.h"
#include "ckpt/env.h"
#include "ckpt/writer.h"
#include "lib/exit_code.h"
#include "lib/get.h"
#include "testing/testutil.h"

namespace ckpt::cli {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Shape = std::vector<int64_t>;

// ------------------------------------------------------------- ParseSlice

Slice SliceOk(std::string_view spec, const Shape& shape) {
  Result<Slice> r = ParseSlice(spec, shape);
  EXPECT_TRUE(r.ok()) << spec << ": " << r.status().ToString();
  return r.ok() ? *r : Slice{};
}

Status SliceError(std::string_view spec, const Shape& shape) {
  Result<Slice> r = ParseSlice(spec, shape);
  EXPECT_FALSE(r.ok()) << spec << " parsed as " << (r.ok() ? r->text : "");
  return r.status();
}

TEST(ParseSlice, RangesAndIntegerIndexDropTheAxis) {
  Slice s = SliceOk("0:2,:,5", {4, 3, 8});
  EXPECT_THAT(s.box.start, ElementsAre(0, 0, 5));
  EXPECT_THAT(s.box.count, ElementsAre(2, 3, 1));
  EXPECT_THAT(s.out_shape, ElementsAre(2, 3));  // numpy: x[0:2, :, 5].shape == (2, 3)
  EXPECT_EQ(s.text, "0:2, 0:3, 5");
}

TEST(ParseSlice, MissingTrailingItemsMeanWholeAxes) {
  Slice s = SliceOk(" 1 ", {4, 3, 8});
  EXPECT_THAT(s.box.start, ElementsAre(1, 0, 0));
  EXPECT_THAT(s.box.count, ElementsAre(1, 3, 8));
  EXPECT_THAT(s.out_shape, ElementsAre(3, 8));
}

TEST(ParseSlice, NegativeBoundsCountFromTheEnd) {
  Slice s = SliceOk(":, -3:", {2, 10});
  EXPECT_THAT(s.box.start, ElementsAre(0, 7));
  EXPECT_THAT(s.box.count, ElementsAre(2, 3));
  s = SliceOk("-1, :-2", {5, 10});
  EXPECT_THAT(s.box.start, ElementsAre(4, 0));
  EXPECT_THAT(s.box.count, ElementsAre(1, 8));
  EXPECT_THAT(s.out_shape, ElementsAre(8));
}

// Python clamps slice bounds instead of failing: x[-100:100] is all of x,
// x[20:30] and x[5:2] are empty.
TEST(ParseSlice, SliceBoundsClampLikePython) {
  Slice s = SliceOk("-100:100", {10});
  EXPECT_THAT(s.box.start, ElementsAre(0));
  EXPECT_THAT(s.box.count, ElementsAre(10));
  s = SliceOk("20:30", {10});
  EXPECT_THAT(s.box.start, ElementsAre(10));
  EXPECT_THAT(s.box.count, ElementsAre(0));
  EXPECT_THAT(s.out_shape, ElementsAre(0));
  s = SliceOk("5:2", {10});
  EXPECT_THAT(s.box.start, ElementsAre(5));
  EXPECT_THAT(s.box.count, ElementsAre(0));
  s = SliceOk("-9223372036854775808:9223372036854775807", {3});
  EXPECT_THAT(s.box.count, ElementsAre(3));
}

TEST(ParseSlice, EllipsisExpandsToWholeAxes) {
  Slice s = SliceOk("...,-1", {2, 3, 4});
  EXPECT_THAT(s.box.start, ElementsAre(0, 0, 3));
  EXPECT_THAT(s.out_shape, ElementsAre(2, 3));
  s = SliceOk("1, ..., 2", {2, 3, 4});
  EXPECT_THAT(s.box.start, ElementsAre(1, 0, 2));
  EXPECT_THAT(s.out_shape, ElementsAre(3));
  s = SliceOk("0,1,2,...", {2, 3, 4});  // "..." may stand for no axis
  EXPECT_THAT(s.out_shape, ElementsAre());
}

TEST(ParseSlice, EmptySpecAndScalarTensors) {
  Slice s = SliceOk("", {2, 3});
  EXPECT_THAT(s.box.count, ElementsAre(2, 3));
  EXPECT_THAT(s.out_shape, ElementsAre(2, 3));
  s = SliceOk("", {});
  EXPECT_TRUE(s.box.start.empty());
  EXPECT_TRUE(s.out_shape.empty());
  SliceOk("...", {});
  EXPECT_EQ(SliceError(":", {}).code(), Code::kInvalidArgument);
}

TEST(ParseSlice, StepOneAndTrailingCommaAreAccepted) {
  EXPECT_THAT(SliceOk("1:3:", {5}).box.count, ElementsAre(2));
  EXPECT_THAT(SliceOk("1:3:1", {5}).box.count, ElementsAre(2));
  EXPECT_THAT(SliceOk("::", {5}).box.count, ElementsAre(5));
  EXPECT_THAT(SliceOk("1,", {5, 2}).out_shape, ElementsAre(2));  // numpy x[1,]
  EXPECT_THAT(SliceOk("+1", {5}).box.start, ElementsAre(1));
}

TEST(ParseSlice, BadSpecsAreInvalidArgumentNamingTheItem) {
  struct Case {
    const char* spec;
    Shape shape;
    const char* why;
  };
  for (const Case& c : std::vector<Case>{
           {"0:4:2", {8}, "steps other than 1"},
           {"::-1", {8}, "steps other than 1"},
           {"1:2:3:4", {8}, "too many ':'"},
           {"1,2,3", {4, 4}, "3 indices for a tensor of rank 2"},
           {"...,1,...", {4, 4}, "only one '...'"},
           {"a", {4}, "not an integer"},
           {"1.5", {4}, "not an integer"},
           {"0x1", {4}, "not an integer"},
           {"1:b", {4}, "stop is not an integer"},
           {"z:", {4}, "start is not an integer"},
           {"4", {4}, "index 4 is out of bounds"},
           {"-5", {4}, "index -5 is out of bounds"},
           {"1,,2", {4, 4, 4}, "empty index"},
           {"99999999999999999999", {4}, "not an integer"},
           {"- 1", {4}, "not an integer"},
           {"0", {0}, "out of bounds"},
       }) {
    SCOPED_TRACE(c.spec);
    Status s = SliceError(c.spec, c.shape);
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
    EXPECT_THAT(s.message(), HasSubstr(c.why));
    EXPECT_THAT(s.message(), HasSubstr(std::string("'") + c.spec + "'"));
  }
}

// ---------------------------------------------------------------- .npy

// Expected headers come from numpy 2.4.6 (.venv):
//   b = io.BytesIO(); np.save(b, np.zeros(SHAPE, DTYPE)); b.getvalue()[:len - nbytes]
// or, for shapes np.zeros cannot allocate,
//   numpy.lib._format_impl._write_array_header(b, {'descr': D,
//       'fortran_order': False, 'shape': SHAPE}, None)
// The dict is followed only by spaces up to a final '\n'; total is given.
void ExpectNumpyHeader(std::string_view descr, const Shape& shape, std::string_view prefix,
                       std::string_view dict, size_t total) {
  std::string h = NpyHeader(descr, shape);
  ASSERT_EQ(h.size(), total);
  EXPECT_EQ(h.substr(0, prefix.size()), prefix);
  EXPECT_EQ(h.substr(prefix.size(), dict.size()), dict);
  std::string tail = h.substr(prefix.size() + dict.size());
  EXPECT_EQ(tail, std::string(tail.size() - 1, ' ') + "\n");
  EXPECT_EQ(h.size() % 64, 0u);
}

TEST(NpyHeader, MatchesNumpySave) {
  using namespace std::string_view_literals;
  // np.save(b, np.zeros((2, 3), np.float32)): 128 bytes, header length 0x76.
  ExpectNumpyHeader("<f4", {2, 3}, "\x93NUMPY\x01\x00\x76\x00"sv,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 128);
  // np.zeros((), np.bool_)
  ExpectNumpyHeader("|b1", {}, "\x93NUMPY\x01\x00\x76\x00"sv,
                    "{'descr': '|b1', 'fortran_order': False, 'shape': (), }", 128);
  // np.zeros((5,), np.int64): one-element tuples keep their comma.
  ExpectNumpyHeader("<i8", {5}, "\x93NUMPY\x01\x00\x76\x00"sv,
                    "{'descr': '<i8', 'fortran_order': False, 'shape': (5,), }", 128);
  // np.zeros((0, 3), np.complex64)
  ExpectNumpyHeader("<c8", {0, 3}, "\x93NUMPY\x01\x00\x76\x00"sv,
                    "{'descr': '<c8', 'fortran_order': False, 'shape': (0, 3), }", 128);
  // shape (123456789012,): the growth padding shrinks with the first axis' digits.
  ExpectNumpyHeader("<f4", {123456789012}, "\x93NUMPY\x01\x00\x76\x00"sv,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (123456789012,), }", 128);
  // _write_array_header, shape (1, 100, 1000000, 1000000, 1000000, 1000000):
  // ends in 64 spaces + '\n' (ARRAY_ALIGN padding when already aligned).
  ExpectNumpyHeader(
      "<f4", {1, 100, 1000000, 1000000, 1000000, 1000000}, "\x93NUMPY\x01\x00\xb6\x00"sv,
      "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 100, 1000000, 1000000, 1000000, "
      "1000000), }",
      192);
}

// _write_array_header with shape (1,) * 22000 needs version 2.0 (4-byte
// length): numpy gives 66112 bytes starting b'\x93NUMPY\x02\x00\x34\x02\x01\x00'.
TEST(NpyHeader, LongHeaderUsesVersion2) {
  using namespace std::string_view_literals;
  Shape shape(22000, 1);
  std::string h = NpyHeader("<f4", shape);
  EXPECT_EQ(h.size(), 66112u);
  EXPECT_EQ(h.substr(0, 12), "\x93NUMPY\x02\x00\x34\x02\x01\x00"sv);
  EXPECT_EQ(h.back(), '\n');
}

TEST(NpyDescr, NumpyTypesAndRefusals) {
  EXPECT_EQ(NpyDescr(DType::kFloat32), "<f4");
  EXPECT_EQ(NpyDescr(DType::kFloat16), "<f2");
  EXPECT_EQ(NpyDescr(DType::kBool), "|b1");
  EXPECT_EQ(NpyDescr(DType::kUInt8), "|u1");
  EXPECT_EQ(NpyDescr(DType::kInt8), "|i1");
  EXPECT_EQ(NpyDescr(DType::kUInt64), "<u8");
  EXPECT_EQ(NpyDescr(DType::kComplex64), "<c8");
  EXPECT_EQ(NpyDescr(DType::kComplex128), "<c16");
  for (DType d : {DType::kBFloat16, DType::kFloat8_e4m3fn, DType::kFloat8_e5m2,
                  DType::kComplex32, DType::kQInt8, DType::kBits16, DType::kFloat4_e2m1fn_x2}) {
    EXPECT_FALSE(NpyDescr(d).has_value()) << DTypeName(d);
  }
}

// ---------------------------------------------------------- ClosestKeys

TEST(ClosestKeys, SubstringsFirstThenEditDistance) {
  std::vector<std::string> keys = {"encoder.weight", "decoder.weight", "decoder.bias",
                                   "lm_head.weight", "embed.weight"};
  EXPECT_THAT(ClosestKeys("decoder.weigth", keys), ElementsAre("decoder.weight", "encoder.weight"));
  EXPECT_THAT(ClosestKeys("decoder", keys), ElementsAre("decoder.bias", "decoder.weight"));
  EXPECT_THAT(ClosestKeys("zzzzzzzzzzzzzzzzzzzz", keys), ElementsAre());
  EXPECT_THAT(ClosestKeys("decoder.weight", keys, 1), ElementsAre("encoder.weight"));
}

TEST(ClosestKeys, AtMostFive) {
  std::vector<std::string> keys;
  for (int i = 0; i < 20; ++i) keys.push_back("layer." + std::to_string(i) + ".w");
  EXPECT_EQ(ClosestKeys("layer", keys).size(), 5u);
}

// --------------------------------------------------------------- RunGet

class RunGetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    env_ = NewMemEnv();
    ASSERT_TRUE(env_->CreateDirs("/d").ok());
    // w: float32 [3, 4] = 0..11; h: bfloat16 [2]; i: int64 [5] = 10..14.
    for (int i = 0; i < 12; ++i) {
      float f = static_cast<float>(i);
      w_.append(reinterpret_cast<const char*>(&f), 4);
    }
    for (int64_t i = 10; i < 15; ++i) ints_.append(reinterpret_cast<const char*>(&i), 8);
    std::vector<TensorToWrite> ts(3);
    ts[0] = {"w", DType::kFloat32, {3, 4}, [this](ByteSink* s) { return s->Append(w_); }};
    ts[1] = {"h", DType::kBFloat16, {2}, [](ByteSink* s) { return s->Append(std::string("\x80\x3f\x00\x40", 4)); }};
    ts[2] = {"i", DType::kInt64, {5}, [this](ByteSink* s) { return s->Append(ints_); }};
    Status s = WriteSafetensorsFile("/d/m.safetensors", ts, std::nullopt, env_.get());
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  GetOptions Opts(std::string key, std::string output) {
    GetOptions o;
    o.path = "/d/m.safetensors";
    o.key = std::move(key);
    o.output = std::move(output);
    o.env = env_.get();
    return o;
  }

  std::string Read(const std::string& path) {
    Result<std::string> r = ::ckpt::testing::ReadWhole(env_.get(), path);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : "";
  }

  std::unique_ptr<Env> env_;
  std::string w_, ints_;
};

TEST_F(RunGetTest, NpySliceIsHeaderThenRowMajorBytes) {
  GetOptions o = Opts("w", "/d/x.npy");
  o.slice = "1:3, -2:";
  o.has_slice = true;
  o.json = true;
  std::ostringstream out;
  Status s = RunGet(o, out);
  ASSERT_TRUE(s.ok()) << s.ToString();
  std::string expect = NpyHeader("<f4", Shape{2, 2});
  for (int v : {6, 7, 10, 11}) {
    float f = static_cast<float>(v);
    expect.append(reinterpret_cast<const char*>(&f), 4);
  }
  EXPECT_EQ(Read("/d/x.npy"), expect);
  nlohmann::json j = nlohmann::json::parse(out.str());
  EXPECT_EQ(j["key"], "w");
  EXPECT_EQ(j["dtype"], "float32");
  EXPECT_EQ(j["shape"], nlohmann::json({2, 2}));
  EXPECT_EQ(j["slice"], "1:3, 2:4");
  EXPECT_EQ(j["nbytes"], 16);
  EXPECT_EQ(j["output"], "/d/x.npy");
  EXPECT_EQ(j["format"], "npy");
}

TEST_F(RunGetTest, IntegerIndexWritesLowerRankSafetensors) {
  GetOptions o = Opts("w", "/d/row.safetensors");
  o.slice = "-1";
  o.has_slice = true;
  std::ostringstream out;
  ASSERT_TRUE(RunGet(o, out).ok());
  EXPECT_THAT(out.str(), HasSubstr("wrote w[2, 0:4] (float32 [4]"));
  OpenOptions open;
  open.env = env_.get();
  auto r = OpenCheckpoint("/d/row.safetensors", open);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ((*r)->tensors().size(), 1u);
  EXPECT_EQ((*r)->tensors()[0].key, "w");
  EXPECT_THAT((*r)->tensors()[0].shape, ElementsAre(4));
  StringSink sink;
  ASSERT_TRUE((*r)->ReadTensor(0, &sink).ok());
  EXPECT_EQ(sink.str(), w_.substr(32, 16));
}

TEST_F(RunGetTest, WholeTensorToTorchRoundTrips) {
  GetOptions o = Opts("i", "/d/i.bin");
  std::ostringstream out;
  ASSERT_TRUE(RunGet(o, out).ok());
  OpenOptions open;
  open.env = env_.get();
  auto r = OpenCheckpoint("/d/i.bin", open);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->format(), "torch");
  StringSink sink;
  ASSERT_TRUE((*r)->ReadTensor(0, &sink).ok());
  EXPECT_EQ(sink.str(), ints_);
}

TEST_F(RunGetTest, UnknownKeyIsNotFoundWithSuggestions) {
  std::ostringstream out;
  Status s = RunGet(Opts("ww", "/d/x.npy"), out);
  EXPECT_EQ(s.code(), Code::kNotFound);
  EXPECT_EQ(ExitCodeFor(s), kExitUsage);
  EXPECT_THAT(s.message(), HasSubstr("no tensor named 'ww'; did you mean 'w'"));
  EXPECT_FALSE(env_->FileExists("/d/x.npy"));
}

TEST_F(RunGetTest, NpyRefusesBFloat16AndLeavesNothing) {
  std::ostringstream out;
  Status s = RunGet(Opts("h", "/d/h.npy"), out);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_EQ(ExitCodeFor(s), kExitUsage);
  EXPECT_THAT(s.message(), HasSubstr("bfloat16"));
  EXPECT_THAT(s.message(), HasSubstr(".safetensors"));
  EXPECT_FALSE(env_->FileExists("/d/h.npy"));
  // The same tensor goes to .safetensors with --format.
  GetOptions o = Opts("h", "/d/h.out");
  o.format = "safetensors";
  ASSERT_TRUE(RunGet(o, out).ok());
}

TEST_F(RunGetTest, FormatFromExtensionOrFlag) {
  EXPECT_EQ(*ResolveGetFormat(Opts("w", "a/b.SAFETENSORS")), "safetensors");
  EXPECT_EQ(*ResolveGetFormat(Opts("w", "b.pth")), "pt");
  EXPECT_EQ(*ResolveGetFormat(Opts("w", "b.npy")), "npy");
  GetOptions o = Opts("w", "b.data");
  EXPECT_EQ(ResolveGetFormat(o).status().code(), Code::kInvalidArgument);
  o.format = "torch";
  EXPECT_EQ(*ResolveGetFormat(o), "pt");
  o.format = "gguf";
  EXPECT_EQ(ResolveGetFormat(o).status().code(), Code::kInvalidArgument);
}

TEST_F(RunGetTest, BadSliceNamesTheTensor) {
  GetOptions o = Opts("w", "/d/x.npy");
  o.slice = "0:1:2";
  o.has_slice = true;
  std::ostringstream out;
  Status s = RunGet(o, out);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'w' of shape [3, 4]"));
  EXPECT_FALSE(env_->FileExists("/d/x.npy"));
}

}  // namespace
}  // namespace ckpt::cli
