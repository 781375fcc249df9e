// `ckptkit diff`: narrow-float decoders (against torch 2.13), element
// semantics (NaN, infinities, tolerances, integers, complex), lockstep
// streaming with odd piece sizes and failures on either side, and whole
// checkpoint reports over in-memory readers.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "ckpt/checkpoint.h"
#include "ckpt/env.h"
#include "ckpt/writer.h"
#include "lib/diff.h"

namespace ckpt::cli {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ------------------------------------------------------------ decoders

// Values from torch 2.13: torch.tensor([b], dtype=torch.uint8).view(DT).float().
TEST(NarrowFloats, DecodeAsTorchDoes) {
  EXPECT_EQ(HalfToDouble(0x3c00), 1.0);
  EXPECT_EQ(HalfToDouble(0xc000), -2.0);
  EXPECT_EQ(HalfToDouble(0x0001), std::ldexp(1.0, -24));
  EXPECT_EQ(HalfToDouble(0x7bff), 65504.0);
  EXPECT_EQ(HalfToDouble(0x7c00), kInf);
  EXPECT_EQ(HalfToDouble(0xfc00), -kInf);
  EXPECT_TRUE(std::isnan(HalfToDouble(0x7e00)));
  EXPECT_TRUE(std::signbit(HalfToDouble(0x8000)));
  EXPECT_EQ(BFloat16ToDouble(0x3f80), 1.0);
  EXPECT_EQ(BFloat16ToDouble(0xc0a0), -5.0);
  EXPECT_TRUE(std::isnan(BFloat16ToDouble(0x7fc0)));

  EXPECT_EQ(Float8E4M3FnToDouble(0x7e), 448.0);
  EXPECT_TRUE(std::isnan(Float8E4M3FnToDouble(0x7f)));
  EXPECT_TRUE(std::isnan(Float8E4M3FnToDouble(0xff)));
  EXPECT_EQ(Float8E4M3FnToDouble(0x01), 0.001953125);
  EXPECT_EQ(Float8E4M3FnToDouble(0x08), 0.015625);
  EXPECT_EQ(Float8E4M3FnToDouble(0xc0), -2.0);

  EXPECT_EQ(Float8E5M2ToDouble(0x7b), 57344.0);
  EXPECT_EQ(Float8E5M2ToDouble(0x7c), kInf);
  EXPECT_EQ(Float8E5M2ToDouble(0x01), 1.52587890625e-05);
  EXPECT_TRUE(std::isnan(Float8E5M2ToDouble(0xfe)));

  EXPECT_TRUE(std::isnan(Float8E4M3FnuzToDouble(0x80)));
  EXPECT_EQ(Float8E4M3FnuzToDouble(0x7f), 240.0);
  EXPECT_EQ(Float8E4M3FnuzToDouble(0xff), -240.0);
  EXPECT_EQ(Float8E4M3FnuzToDouble(0x01), 0.0009765625);

  EXPECT_EQ(Float8E5M2FnuzToDouble(0x7f), 57344.0);
  EXPECT_TRUE(std::isnan(Float8E5M2FnuzToDouble(0x80)));
  EXPECT_EQ(Float8E5M2FnuzToDouble(0x01), 7.62939453125e-06);
  EXPECT_EQ(Float8E5M2FnuzToDouble(0xfc), -32768.0);

  EXPECT_EQ(Float8E8M0FnuToDouble(0x7f), 1.0);
  EXPECT_TRUE(std::isnan(Float8E8M0FnuToDouble(0xff)));
  EXPECT_EQ(Float8E8M0FnuToDouble(0x00), std::ldexp(1.0, -127));
  EXPECT_EQ(Float8E8M0FnuToDouble(0xfe), std::ldexp(1.0, 127));

  // OCP MX e2m1: 0.5 (0x1), 6 (0x7), -6 (0xf).
  EXPECT_EQ(Float4E2M1FnToDouble(0x1), 0.5);
  EXPECT_EQ(Float4E2M1FnToDouble(0x7), 6.0);
  EXPECT_EQ(Float4E2M1FnToDouble(0xf), -6.0);
  EXPECT_EQ(Float4E2M1FnToDouble(0x3), 1.5);
}

// ---------------------------------------------------------- comparator

template <typename T>
std::string Bytes(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

DiffStats CompareF64(const std::vector<double>& a, const std::vector<double>& b, double atol = 0,
                     double rtol = 0) {
  ElementComparator c(DType::kFloat64, atol, rtol);
  std::string x = Bytes(a), y = Bytes(b);
  c.Compare(x.data(), y.data(), a.size());
  return c.stats();
}

TEST(ElementComparator, NaNAtTheSamePositionIsEqual) {
  DiffStats s = CompareF64({kNaN, 1.0, -kNaN}, {kNaN, 1.0, kNaN});
  EXPECT_EQ(s.numel, 3u);
  EXPECT_EQ(s.mismatched, 0u);
  EXPECT_EQ(s.max_abs, 0.0);
}

TEST(ElementComparator, NaNAgainstANumberFailsEvenWithTolerance) {
  DiffStats s = CompareF64({kNaN, 1.0, 2.0}, {0.0, kNaN, 2.5}, 1e9, 1e9);
  EXPECT_EQ(s.mismatched, 2u);
  EXPECT_EQ(s.nan_mismatched, 2u);
  EXPECT_EQ(s.max_abs, 0.5);  // NaN pairs do not poison max_abs
}

TEST(ElementComparator, InfinitiesEqualOnlyThemselves) {
  EXPECT_EQ(CompareF64({kInf, -kInf}, {kInf, -kInf}).mismatched, 0u);
  DiffStats s = CompareF64({kInf}, {-kInf});
  EXPECT_EQ(s.mismatched, 1u);
  EXPECT_EQ(s.max_abs, kInf);
  // rtol*|inf| would be inf: numpy's isclose still says False, and so do we.
  s = CompareF64({1.0}, {kInf}, 0, 0.5);
  EXPECT_EQ(s.mismatched, 1u);
  EXPECT_EQ(s.max_abs, kInf);
  EXPECT_EQ(s.max_rel, kInf);
  s = CompareF64({kInf}, {1.0}, 1e300, 1e300);
  EXPECT_EQ(s.mismatched, 1u);
}

TEST(ElementComparator, NegativeZeroEqualsZero) {
  EXPECT_EQ(CompareF64({-0.0}, {0.0}).mismatched, 0u);
}

TEST(ElementComparator, ToleranceBoundaryIsInclusiveLikeAllclose) {
  // |1.5 - 1.0| = 0.5 <= atol + rtol*|b|, all exactly representable.
  EXPECT_EQ(CompareF64({1.5}, {1.0}, 0.5, 0).mismatched, 0u);
  EXPECT_EQ(CompareF64({1.5}, {1.0}, 0.25, 0).mismatched, 1u);
  EXPECT_EQ(CompareF64({1.5}, {1.0}, 0, 0.5).mismatched, 0u);
  EXPECT_EQ(CompareF64({1.5}, {1.0}, 0.25, 0.25).mismatched, 0u);
  EXPECT_EQ(CompareF64({1.5}, {1.0}, 0.25, 0.125).mismatched, 1u);
  // rtol is relative to b (the second checkpoint), as numpy.isclose(a, b).
  EXPECT_EQ(CompareF64({2.0}, {1.0}, 0, 0.5).mismatched, 1u);
  EXPECT_EQ(CompareF64({1.0}, {2.0}, 0, 0.5).mismatched, 0u);
  // Default (0, 0) is exact.
  EXPECT_EQ(CompareF64({1.0}, {std::nextafter(1.0, 2.0)}).mismatched, 1u);
}

TEST(ElementComparator, MaxAbsAndMaxRel) {
  DiffStats s = CompareF64({1.0, 10.0, 0.0, 5.0}, {1.5, 8.0, 0.0, 5.0});
  EXPECT_EQ(s.mismatched, 2u);
  EXPECT_EQ(s.max_abs, 2.0);          // |10 - 8|
  EXPECT_EQ(s.max_rel, 0.5 / 1.5);    // |1 - 1.5| / 1.5 beats 2 / 8
  // b == 0: divided by DBL_MIN, not by zero.
  s = CompareF64({1e-300}, {0.0});
  EXPECT_EQ(s.max_rel, 1e-300 / DBL_MIN);
  EXPECT_TRUE(std::isfinite(s.max_rel));
}

TEST(ElementComparator, Float32AndHalfTypesDecode) {
  std::vector<float> a = {1.0f, NAN, -0.0f}, b = {1.0f, NAN, 0.0f};
  ElementComparator c(DType::kFloat32, 0, 0);
  c.Compare(Bytes(a).data(), Bytes(b).data(), 3);
  EXPECT_EQ(c.stats().mismatched, 0u);
  // bfloat16 1.0 (0x3f80) vs 1.0078125 (0x3f81): one ulp, 2^-7.
  std::vector<uint16_t> x = {0x3f80, 0x7fc0}, y = {0x3f81, 0x7fc1};
  ElementComparator bf(DType::kBFloat16, 0, 0);
  bf.Compare(Bytes(x).data(), Bytes(y).data(), 2);
  EXPECT_EQ(bf.stats().mismatched, 1u);  // the NaN payloads differ but NaN == NaN
  EXPECT_EQ(bf.stats().max_abs, 0.0078125);
  ElementComparator bf_tol(DType::kBFloat16, 0.0078125, 0);
  bf_tol.Compare(Bytes(x).data(), Bytes(y).data(), 2);
  EXPECT_EQ(bf_tol.stats().mismatched, 0u);
  // float8_e4m3fn: 0x7f and 0xff are both NaN.
  std::string f8a = "\x7f\x7e", f8b = "\xff\x7d";
  ElementComparator f8(DType::kFloat8_e4m3fn, 0, 0);
  f8.Compare(f8a.data(), f8b.data(), 2);
  EXPECT_EQ(f8.stats().mismatched, 1u);
  EXPECT_EQ(f8.stats().max_abs, 448.0 - 416.0);
}

TEST(ElementComparator, IntegersCompareExactlyAndNeverOverflow) {
  std::vector<int64_t> a = {INT64_MIN, 5, 7}, b = {INT64_MAX, 5, 8};
  ElementComparator c(DType::kInt64, 100, 100);  // tolerances do not apply to integers
  c.Compare(Bytes(a).data(), Bytes(b).data(), 3);
  EXPECT_EQ(c.stats().mismatched, 2u);
  EXPECT_EQ(c.stats().max_abs, 18446744073709551615.0);
  std::vector<uint64_t> ua = {0}, ub = {UINT64_MAX};
  ElementComparator u(DType::kUInt64, 0, 0);
  u.Compare(Bytes(ua).data(), Bytes(ub).data(), 1);
  EXPECT_EQ(u.stats().max_abs, 18446744073709551615.0);
  std::string ba("\x00\x01\x01", 3), bb("\x00\x01\x00", 3);
  ElementComparator bo(DType::kBool, 0, 0);
  bo.Compare(ba.data(), bb.data(), 3);
  EXPECT_EQ(bo.stats().mismatched, 1u);
  EXPECT_EQ(bo.stats().max_abs, 1.0);
  std::vector<int8_t> ia = {-128}, ib = {127};
  ElementComparator i8(DType::kInt8, 0, 0);
  i8.Compare(Bytes(ia).data(), Bytes(ib).data(), 1);
  EXPECT_EQ(i8.stats().max_abs, 255.0);
}

TEST(ElementComparator, ComplexByMagnitudeOfDifference) {
  std::vector<float> a = {3.0f, 4.0f, 1.0f, NAN}, b = {0.0f, 0.0f, 2.0f, 5.0f};
  ElementComparator c(DType::kComplex64, 0, 0);
  c.Compare(Bytes(a).data(), Bytes(b).data(), 2);
  EXPECT_EQ(c.stats().mismatched, 2u);
  EXPECT_EQ(c.stats().nan_mismatched, 1u);
  EXPECT_EQ(c.stats().max_abs, 5.0);
  ElementComparator tol(DType::kComplex64, 5.0, 0);
  tol.Compare(Bytes(a).data(), Bytes(b).data(), 1);
  EXPECT_EQ(tol.stats().mismatched, 0u);
  std::vector<double> x = {NAN, 0.0}, y = {0.0, NAN};  // NaN on both sides, other components
  ElementComparator c128(DType::kComplex128, 0, 0);
  c128.Compare(Bytes(x).data(), Bytes(y).data(), 1);
  EXPECT_EQ(c128.stats().mismatched, 0u);
}

TEST(ElementComparator, Float4PairsCountOncePerElement) {
  std::string a = "\x71\x11", b = "\xf2\x11";  // element 0: both nibbles differ
  ElementComparator c(DType::kFloat4_e2m1fn_x2, 0, 0);
  c.Compare(a.data(), b.data(), 2);
  EXPECT_EQ(c.stats().numel, 2u);
  EXPECT_EQ(c.stats().mismatched, 1u);
  EXPECT_EQ(c.stats().max_abs, 12.0);  // 6 vs -6
}

// ------------------------------------------------------ CompareStreams

// Streams `data` in pieces of `piece` bytes (the last may be shorter).
std::function<Status(ByteSink*)> Pieces(const std::string& data, size_t piece) {
  return [&data, piece](ByteSink* s) -> Status {
    for (size_t i = 0; i < data.size(); i += piece) {
      CKPT_RETURN_IF_ERROR(s->Append(std::string_view(data).substr(i, piece)));
    }
    return OkStatus();
  };
}

TEST(CompareStreams, OddPieceSizesPairEveryElement) {
  std::vector<float> va(200), vb(200);
  for (int i = 0; i < 200; ++i) va[i] = vb[i] = static_cast<float>(i);
  vb[0] = -1;
  vb[66] = 200;
  vb[199] = 0;
  std::string a = Bytes(va), b = Bytes(vb);
  for (size_t pa : {1, 3, 7, 800}) {
    for (size_t pb : {1, 5, 1024}) {
      for (size_t pipe : {1, 13, 1 << 20}) {
        SCOPED_TRACE(testing::Message() << "pieces " << pa << "/" << pb << " pipe " << pipe);
        ElementComparator cmp(DType::kFloat32, 0, 0);
        uint64_t last = 0;
        size_t max_n = 0;
        Status s = CompareStreams(
            Pieces(a, pa), Pieces(b, pb), a.size(), 4,
            [&](const char* x, const char* y, size_t n) {
              max_n = std::max(max_n, n);
              cmp.Compare(x, y, n);
            },
            pipe, 10, [&](uint64_t d) { last = d; });
        ASSERT_TRUE(s.ok()) << s.ToString();
        EXPECT_EQ(cmp.stats().numel, 200u);
        EXPECT_EQ(cmp.stats().mismatched, 3u);
        EXPECT_EQ(cmp.stats().max_abs, 199.0);
        EXPECT_EQ(last, a.size());
        EXPECT_EQ(max_n, 2u);  // compare_bytes 10 rounds down to 2 float elements
      }
    }
  }
}

TEST(CompareStreams, ShortOrLongSidesAreDataLossNamingTheSide) {
  std::string full(64, 'x'), shorter(60, 'x'), longer(68, 'x');
  auto nop = [](const char*, const char*, size_t) {};
  Status s = CompareStreams(Pieces(shorter, 7), Pieces(full, 5), 64, 4, nop, 8, 8);
  EXPECT_EQ(s.code(), Code::kDataLoss) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr("A: delivered 60 bytes, expected 64"));
  s = CompareStreams(Pieces(full, 7), Pieces(shorter, 5), 64, 4, nop, 8, 8);
  EXPECT_EQ(s.code(), Code::kDataLoss) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr("B: delivered 60 bytes, expected 64"));
  s = CompareStreams(Pieces(longer, 7), Pieces(full, 5), 64, 4, nop, 8, 8);
  EXPECT_EQ(s.code(), Code::kDataLoss) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr("A: delivered more than the expected 64"));
  s = CompareStreams(Pieces(full, 7), Pieces(longer, 5), 64, 4, nop, 8, 8);
  EXPECT_EQ(s.code(), Code::kDataLoss) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr("B: delivered more than the expected 64"));
}

// A failure on either side ends the other (no deadlock with a full pipe or
// an empty one) and the failing side's own error is reported.
TEST(CompareStreams, AFailureOnEitherSideIsReportedAndStopsTheOther) {
  std::string data(1 << 16, 'x');
  auto nop = [](const char*, const char*, size_t) {};
  auto fail_after = [&](uint64_t n, const char* what) {
    return [&data, n, what](ByteSink* s) -> Status {
      CKPT_RETURN_IF_ERROR(s->Append(std::string_view(data).substr(0, n)));
      return DataLossError(what);
    };
  };
  // A fails early: B is blocked waiting for bytes.
  Status s = CompareStreams(fail_after(4, "disk A broke"), Pieces(data, 100), data.size(), 4,
                            nop, 16, 16);
  EXPECT_EQ(s.code(), Code::kDataLoss);
  EXPECT_EQ(s.message(), "A: disk A broke");
  // B fails early: A is blocked on a full 16-byte pipe.
  s = CompareStreams(Pieces(data, 100), fail_after(4, "disk B broke"), data.size(), 4, nop, 16,
                     16);
  EXPECT_EQ(s.code(), Code::kDataLoss);
  EXPECT_EQ(s.message(), "B: disk B broke");
}

TEST(CompareStreams, RejectsPartialElements) {
  auto nop = [](const char*, const char*, size_t) {};
  std::string d(6, 'x');
  EXPECT_EQ(CompareStreams(Pieces(d, 1), Pieces(d, 1), 6, 4, nop, 8, 8).code(),
            Code::kInvalidArgument);
}

// Tens of MB generated on the fly: the comparison never sees a piece larger
// than compare_bytes, so nothing proportional to the tensor is allocated.
TEST(CompareStreams, LargeStreamsComparePieceByPiece) {
  constexpr uint64_t kBytes = uint64_t{48} << 20;
  auto gen = [](uint8_t flip_at_mib) {
    return [flip_at_mib](ByteSink* s) -> Status {
      std::string piece(1 << 20, '\0');
      for (uint64_t mib = 0; mib < kBytes >> 20; ++mib) {
        for (size_t i = 0; i < piece.size(); i += 4) {
          float f = static_cast<float>((mib << 18) + i / 4);
          if (mib == flip_at_mib && i == 0) f += 0.5f;
          std::memcpy(&piece[i], &f, 4);
        }
        CKPT_RETURN_IF_ERROR(s->Append(piece));
      }
      return OkStatus();
    };
  };
  ElementComparator cmp(DType::kFloat32, 0, 0);
  size_t calls = 0, max_bytes = 0;
  Status s = CompareStreams(
      gen(255), gen(17), kBytes, 4,
      [&](const char* x, const char* y, size_t n) {
        ++calls;
        max_bytes = std::max(max_bytes, n * 4);
        cmp.Compare(x, y, n);
      },
      size_t{4} << 20, size_t{2} << 20);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(cmp.stats().numel, kBytes / 4);
  EXPECT_EQ(cmp.stats().mismatched, 1u);  // B's flip at MiB 17 (A's flip value is out of range)
  EXPECT_EQ(max_bytes, size_t{2} << 20);
  EXPECT_EQ(calls, 24u);
}

// ------------------------------------------------------- DiffCheckpoints

// An in-memory CheckpointReader: tensors from byte strings, streamed in
// 3-byte pieces; objects as given; ReadTensor of `fail_key` fails.
class FakeReader final : public CheckpointReader {
 public:
  void Add(std::string key, DType dtype, std::vector<int64_t> shape, std::string bytes) {
    TensorInfo t;
    t.key = std::move(key);
    t.dtype = dtype;
    t.shape = std::move(shape);
    t.nbytes = bytes.size();
    tensors_.push_back(std::move(t));
    data_.push_back(std::move(bytes));
  }
  void AddObject(std::string key, std::string type, std::string repr) {
    objects_.push_back({std::move(key), std::move(type), std::move(repr), false});
  }
  std::string fail_key;

  SourceKind kind() const override { return SourceKind::kSafetensors; }  // flat tensors, no views
  std::string_view format() const override { return "fake"; }
  const std::vector<TensorInfo>& tensors() const override { return tensors_; }
  const std::vector<ObjectInfo>& objects() const override { return objects_; }
  nlohmann::json Details() const override { return nlohmann::json::object(); }
  Status ReadTensor(size_t i, ByteSink* out) const override {
    if (tensors_[i].key == fail_key) return DataLossError("fake: tensor " + fail_key + " is bad");
    return Pieces(data_[i], 3)(out);
  }

 private:
  std::vector<TensorInfo> tensors_;
  std::vector<ObjectInfo> objects_;
  std::vector<std::string> data_;
};

std::string F32(std::vector<float> v) { return Bytes(v); }

class DiffCheckpointsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    a_.Add("same", DType::kFloat32, {2}, F32({1, 2}));
    b_.Add("same", DType::kFloat32, {2}, F32({1, 2}));
    a_.Add("close", DType::kFloat32, {3}, F32({1, 2, NAN}));
    b_.Add("close", DType::kFloat32, {3}, F32({1, 2.5, NAN}));
    a_.Add("gone", DType::kInt8, {1}, "\x01");
    b_.Add("new", DType::kInt8, {1}, "\x01");
    a_.Add("cast", DType::kFloat32, {1}, F32({1}));
    b_.Add("cast", DType::kBFloat16, {1}, "\x80\x3f");
    a_.Add("reshaped", DType::kFloat32, {2, 1}, F32({1, 2}));
    b_.Add("reshaped", DType::kFloat32, {1, 2}, F32({1, 2}));
    a_.AddObject("iteration", "int", "1000");
    b_.AddObject("iteration", "int", "2000");
    a_.AddObject("lr", "float", "0.1");
    b_.AddObject("lr", "str", "'0.1'");
    a_.AddObject("args", "argparse.Namespace", "Namespace(x=1)");
    b_.AddObject("extra", "int", "3");
  }
  FakeReader a_, b_;
};

TEST_F(DiffCheckpointsTest, ReportsEveryKindOfChange) {
  DiffOptions o;
  auto r = DiffCheckpoints(a_, b_, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_THAT(r->only_in_a, ElementsAre("gone"));
  EXPECT_THAT(r->only_in_b, ElementsAre("new"));
  ASSERT_EQ(r->dtype_changed.size(), 1u);
  EXPECT_EQ(r->dtype_changed[0].key, "cast");
  EXPECT_EQ(r->dtype_changed[0].a, "float32");
  EXPECT_EQ(r->dtype_changed[0].b, "bfloat16");
  ASSERT_EQ(r->shape_changed.size(), 1u);
  EXPECT_EQ(r->shape_changed[0].a, "[2, 1]");
  EXPECT_EQ(r->shape_changed[0].b, "[1, 2]");
  ASSERT_EQ(r->tensors.size(), 2u);
  EXPECT_EQ(r->tensors[0].key, "close");
  EXPECT_EQ(r->tensors[0].stats.mismatched, 1u);
  EXPECT_EQ(r->tensors[0].stats.max_abs, 0.5);
  EXPECT_EQ(r->tensors[0].stats.max_rel, 0.2);
  EXPECT_EQ(r->tensors[1].key, "same");
  EXPECT_TRUE(r->tensors[1].equal());
  ASSERT_EQ(r->objects_changed.size(), 4u);
  EXPECT_EQ(r->objects_changed[0].key, "args");
  EXPECT_EQ(r->objects_changed[0].what, "only_in_a");
  EXPECT_EQ(r->objects_changed[1].key, "extra");
  EXPECT_EQ(r->objects_changed[1].what, "only_in_b");
  EXPECT_EQ(r->objects_changed[2].key, "iteration");
  EXPECT_EQ(r->objects_changed[2].what, "repr");
  EXPECT_EQ(r->objects_changed[2].a, "1000");
  EXPECT_EQ(r->objects_changed[2].b, "2000");
  EXPECT_EQ(r->objects_changed[3].what, "type");
  EXPECT_FALSE(r->identical());
}

TEST_F(DiffCheckpointsTest, ToleranceMakesValuesEqual) {
  DiffOptions o;
  o.atol = 0.5;
  auto r = DiffCheckpoints(a_, b_, o);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->tensors[0].equal());
}

TEST_F(DiffCheckpointsTest, KeysOnlyReadsNoData) {
  a_.fail_key = "close";  // would fail if read
  DiffOptions o;
  o.keys_only = true;
  auto r = DiffCheckpoints(a_, b_, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->tensors.empty());
  EXPECT_THAT(r->only_in_a, ElementsAre("gone"));
}

TEST_F(DiffCheckpointsTest, ReadErrorNamesTheSideAndTensor) {
  b_.fail_key = "close";
  auto r = DiffCheckpoints(a_, b_, DiffOptions{});
  EXPECT_EQ(r.status().code(), Code::kDataLoss);
  EXPECT_EQ(r.status().message(), "comparing tensor 'close': B: fake: tensor close is bad");
}

TEST_F(DiffCheckpointsTest, BadTolerancesAreInvalidArgument) {
  DiffOptions o;
  o.atol = -1;
  EXPECT_EQ(DiffCheckpoints(a_, b_, o).status().code(), Code::kInvalidArgument);
  o.atol = 0;
  o.rtol = kNaN;
  EXPECT_EQ(DiffCheckpoints(a_, b_, o).status().code(), Code::kInvalidArgument);
}

TEST_F(DiffCheckpointsTest, JsonSchema) {
  b_.Add("inf", DType::kFloat64, {1}, Bytes(std::vector<double>{kInf}));
  a_.Add("inf", DType::kFloat64, {1}, Bytes(std::vector<double>{1.0}));
  DiffOptions o;
  o.a = "A.pt";
  o.b = "B.safetensors";
  auto r = DiffCheckpoints(a_, b_, o);
  ASSERT_TRUE(r.ok());
  nlohmann::json j = DiffJson(*r, o);
  EXPECT_EQ(j["only_in_a"], nlohmann::json({"gone"}));
  EXPECT_EQ(j["only_in_b"], nlohmann::json({"new"}));
  EXPECT_EQ(j["dtype_changed"][0], nlohmann::json({{"key", "cast"}, {"a", "float32"}, {"b", "bfloat16"}}));
  EXPECT_EQ(j["shape_changed"][0]["key"], "reshaped");
  EXPECT_EQ(j["tensors"][0]["key"], "close");
  EXPECT_EQ(j["tensors"][0]["dtype"], "float32");
  EXPECT_EQ(j["tensors"][0]["shape"], nlohmann::json({3}));
  EXPECT_EQ(j["tensors"][0]["max_abs"], 0.5);
  EXPECT_EQ(j["tensors"][0]["mismatched"], 1);
  EXPECT_EQ(j["tensors"][0]["numel"], 3);
  EXPECT_EQ(j["tensors"][0]["equal"], false);
  EXPECT_EQ(j["tensors"][1]["key"], "inf");
  EXPECT_EQ(j["tensors"][1]["max_abs"], "inf");
  EXPECT_EQ(j["tensors"][1]["max_rel"], "inf");
  EXPECT_EQ(j["objects_changed"][0]["change"], "only_in_a");
  EXPECT_EQ(j["identical"], false);
}

TEST(DiffCheckpoints, IdenticalReaders) {
  FakeReader a, b;
  a.Add("w", DType::kFloat16, {2}, "\x00\x3c\x00\x7e");
  b.Add("w", DType::kFloat16, {2}, "\x00\x3c\x01\x7e");  // a different NaN payload
  a.AddObject("n", "int", "1");
  b.AddObject("n", "int", "1");
  auto r = DiffCheckpoints(a, b, DiffOptions{});
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->identical());
}

// ------------------------------------------------------------- RunDiff

TEST(RunDiff, SafetensorsFilesInMemEnv) {
  std::unique_ptr<Env> env = NewMemEnv();
  ASSERT_TRUE(env->CreateDirs("/d").ok());
  auto write = [&](const std::string& path, float v) {
    std::string bytes = F32({1, v, 3});
    std::vector<TensorToWrite> ts(1);
    ts[0] = {"w", DType::kFloat32, {3}, [bytes](ByteSink* s) { return s->Append(bytes); }};
    ASSERT_TRUE(WriteSafetensorsFile(path, ts, std::nullopt, env.get()).ok());
  };
  write("/d/a.safetensors", 2);
  write("/d/b.safetensors", 2.25);
  DiffOptions o;
  o.a = "/d/a.safetensors";
  o.b = "/d/b.safetensors";
  o.env = env.get();
  std::ostringstream out, err;
  Result<bool> r = RunDiff(o, out, err);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(*r);
  EXPECT_THAT(out.str(), HasSubstr("values  w  float32 [3]: 1 of 3 differ, max_abs 0.25, max_rel 0.111111"));
  EXPECT_THAT(out.str(), HasSubstr("different: 1 tensors compared, 1 differ"));
  EXPECT_EQ(err.str(), "");  // no progress unless asked (a terminal)
  o.b = "/d/a.safetensors";
  out.str("");
  r = RunDiff(o, out, err);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(*r);
  EXPECT_THAT(out.str(), HasSubstr("identical: 1 tensors compared, 0 differ"));
  o.b = "/d/missing.safetensors";
  r = RunDiff(o, out, err);
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr("B '/d/missing.safetensors'"));
}

}  // namespace
}  // namespace ckpt::cli
