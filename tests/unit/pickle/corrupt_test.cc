// Runs every case in tests/corrupt/pickle/ (see make_cases.py there) and
// checks the error code and that the message names the file, the offset and
// the expected detail.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "format/pickle/unpickler.h"
#include "testing/testutil.h"

namespace ckpt::pickle {
namespace {

using ::ckpt::testing::ForEachCorruptCase;
using ::ckpt::testing::ReadSourceFile;

TEST(PickleCorruptCases, EachFailsWithItsExpectedCodeAndMessage) {
  ForEachCorruptCase("pickle", 25, [](const std::string& file, nlohmann::json& want,
                                       const std::string& bytes) {
    ASSERT_FALSE(bytes.empty());
    SpanSource src(bytes.data(), bytes.size(), file);
    UnpickleOptions o;
    o.mode = want["mode"] == "inspect" ? Mode::kInspect : Mode::kStrict;
    auto r = Unpickle(src, 0, o);
    const std::string code = want["code"];
    if (code == "ok") {
      EXPECT_TRUE(r.ok()) << r.status().ToString();
      return;
    }
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(CodeName(r.status().code()), code) << r.status().ToString();
    const std::string& msg = r.status().message();
    EXPECT_NE(msg.find(want["message"].get<std::string>()), std::string::npos) << msg;
    EXPECT_EQ(msg.rfind(file + ": ", 0), 0u) << "message must start with the source name: " << msg;
    EXPECT_NE(msg.find("offset "), std::string::npos) << msg;
  });
}

// Every prefix of a valid stream fails cleanly with DataLoss.
TEST(PickleCorruptCases, EveryTruncationIsDataLoss) {
  std::string bytes = ReadSourceFile("tests/unit/pickle/testdata/rich_p2.pkl");
  ASSERT_FALSE(bytes.empty());
  for (size_t n = 0; n < bytes.size(); ++n) {
    SpanSource src(bytes.data(), n, "cut.pkl");
    auto r = Unpickle(src, 0, {});
    ASSERT_FALSE(r.ok()) << n;
    EXPECT_EQ(r.status().code(), Code::kDataLoss) << n << ": " << r.status().ToString();
  }
}

// Single-byte corruptions never crash; they either parse or fail with a status.
TEST(PickleCorruptCases, EveryBitFlipIsHandled) {
  std::string bytes = ReadSourceFile("tests/unit/pickle/testdata/canonical_p2.pkl").substr(0, 4000);
  for (size_t i = 0; i < bytes.size(); i += 3) {
    std::string b = bytes;
    b[i] ^= static_cast<char>(1 << (i % 8));
    SpanSource src(b.data(), b.size(), "flip.pkl");
    for (Mode m : {Mode::kStrict, Mode::kInspect}) {
      UnpickleOptions o;
      o.mode = m;
      auto r = Unpickle(src, 0, o);
      if (!r.ok()) {
        EXPECT_NE(r.status().code(), Code::kInternal) << r.status().ToString();
      }
    }
  }
}

}  // namespace
}  // namespace ckpt::pickle
