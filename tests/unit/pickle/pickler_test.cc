#include "format/pickle/pickler.h"

#include <gtest/gtest.h>

#include <string>

#include "format/pickle/unpickler.h"
#include "testing/testutil.h"

namespace ckpt::pickle {
namespace {

using ::ckpt::testing::FirstDiff;
using ::ckpt::testing::ReadSourceFile;

// Pickles written by CPython's C pickler at protocol 2 must come back byte for byte.
class CPythonRoundTrip : public ::testing::TestWithParam<const char*> {};

TEST_P(CPythonRoundTrip, RepicklesByteForByte) {
  std::string bytes = ReadSourceFile(std::string("tests/unit/pickle/testdata/") + GetParam());
  ASSERT_FALSE(bytes.empty());
  SpanSource src(bytes.data(), bytes.size(), GetParam());
  auto r = Unpickle(src, 0, {});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto out = PickleToString(r->root);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  size_t d = FirstDiff(*out, bytes);
  EXPECT_EQ(*out == bytes, true) << "first difference at byte " << d << " of " << bytes.size()
                                 << " (ours " << out->size() << ")";
}

INSTANTIATE_TEST_SUITE_P(Vectors, CPythonRoundTrip,
                         ::testing::Values("canonical_p2.pkl", "recursive_p2.pkl", "rich_p2.pkl"));

TEST(Pickler, WritesIntsAsCPythonDoes) {
  Arena a;
  Value* t = a.Tuple({a.Int(0), a.Int(255), a.Int(256), a.Int(65536), a.Int(-1),
                      a.Int(int64_t{1} << 31), a.Int(INT64_MIN)});
  auto out = PickleToString(t);
  ASSERT_TRUE(out.ok());
  std::string want = std::string("\x80\x02(K\x00K\xffM\x00\x01J\x00\x00\x01\x00J\xff\xff\xff\xff", 20);
  want += std::string("\x8a\x05\x00\x00\x00\x80\x00", 7);
  want += std::string("\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80", 10);
  want += std::string("tq\x00.", 4);
  EXPECT_EQ(*out, want);
}

TEST(Pickler, RoundTripsAHandBuiltStateDict) {
  Arena a;
  Value* od = a.Dict();
  od->ordered = true;
  Value* inner = a.List({a.Float(0.5), a.String("x"), a.None(), a.Bool(true)});
  a.SetItem(od, a.String("w"), inner);
  a.SetItem(od, a.String("again"), inner);  // shared -> BINGET
  Value* size = a.Tuple({a.Int(2), a.Int(3)});
  size->torch_size = true;
  a.SetItem(od, a.String("s"), size);
  Value* b = a.Bytes(std::string("\x00\xfe", 2));
  a.SetItem(od, a.String("b"), b);
  auto bytes = PickleToString(od);
  ASSERT_TRUE(bytes.ok());
  SpanSource src(bytes->data(), bytes->size());
  auto r = Unpickle(src, 0, {});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(Repr(r->root, 1000), Repr(od, 1000));
  ASSERT_EQ(r->root->dict().size(), 4u);
  EXPECT_EQ(r->root->dict()[0].second, r->root->dict()[1].second);
  EXPECT_TRUE(r->root->dict()[2].second->torch_size);
  EXPECT_EQ(r->root->dict()[3].second->str(), std::string("\x00\xfe", 2));
  // And re-pickling that gives the same bytes again.
  auto again = PickleToString(r->root);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *bytes);
}

TEST(Pickler, PersistentIdHookReplacesIds) {
  Arena a;
  Value* pid = a.New(Kind::kPersistentId);
  a.Append(pid, a.String("old"));
  Value* replacement = a.String("new");
  PickleOptions o;
  int calls = 0;
  o.persistent_id = [&](const Value& v) -> Result<const Value*> {
    ++calls;
    EXPECT_EQ(v.str(), "old");
    return replacement;
  };
  auto out = PickleToString(a.List({pid, pid}), o);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(calls, 2);
  EXPECT_NE(out->find("new"), std::string::npos);
  EXPECT_EQ(out->find("old"), std::string::npos);
}

TEST(Pickler, DeepGraphIsResourceExhaustedNotACrash) {
  Arena a;
  Value* v = a.None();
  for (int i = 0; i < 5000; ++i) v = a.List({v});
  auto out = PickleToString(v);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), Code::kResourceExhausted);
}

TEST(Pickler, NullValuesAreInvalidArgument) {
  Arena a;
  EXPECT_EQ(PickleToString(nullptr).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(PickleToString(a.List({nullptr})).status().code(), Code::kInvalidArgument);
}

// A dict grown one pair at a time past the big-run size holds one array: the
// arena's bytes are its final capacity, not the sum of every doubling (which a
// monotonic arena would keep), and every pair survives the moves.
TEST(Arena, GrowingBigContainerFreesItsSmallerArrays) {
  constexpr int kPairs = 100000;  // 1.6 MB of pairs, past the 64 KiB big-run size
  Arena a, same_values;
  Value* d = a.New(Kind::kDict);
  same_values.New(Kind::kDict);
  for (int i = 0; i < kPairs; ++i) {
    a.SetItem(d, a.Int(i), a.Int(2 * i));
    same_values.Int(i), same_values.Int(2 * i);
  }
  ASSERT_EQ(d->dict().size(), static_cast<size_t>(kPairs));
  for (int i = 0; i < kPairs; i += 997) {
    EXPECT_EQ(d->dict()[i].first->i, i);
    EXPECT_EQ(d->dict()[i].second->i, 2 * i);
  }
  // Beyond the values: one array of at most twice the pairs, and the small
  // arrays (under 64 KiB each, kept) that came before it. Keeping every
  // doubling would be about four times the pairs.
  const uint64_t arrays = a.bytes() - same_values.bytes();
  EXPECT_GE(arrays, uint64_t{kPairs} * sizeof(Pair));
  EXPECT_LE(arrays, uint64_t{2} * kPairs * sizeof(Pair) + (uint64_t{128} << 10));
}

}  // namespace
}  // namespace ckpt::pickle
