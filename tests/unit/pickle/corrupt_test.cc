// Runs every case in tests/corrupt/pickle/ (see make_cases.py there) and
// checks the error code and that the message names the file, the offset and
// the expected detail.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "format/pickle/unpickler.h"

namespace ckpt::pickle {
namespace {

std::string ReadTestFile(const std::string& rel) {
  std::ifstream f(std::string(CKPT_SOURCE_DIR) + "/" + rel, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(PickleCorruptCases, EachFailsWithItsExpectedCodeAndMessage) {
  const std::string dir = "tests/corrupt/pickle/";
  nlohmann::json expected = nlohmann::json::parse(ReadTestFile(dir + "expected.json"));
  ASSERT_GE(expected.size(), 25u);
  for (auto& [file, want] : expected.items()) {
    SCOPED_TRACE(file);
    std::string bytes = ReadTestFile(dir + file);
    ASSERT_FALSE(bytes.empty());
    SpanSource src(bytes.data(), bytes.size(), file);
    UnpickleOptions o;
    o.mode = want["mode"] == "inspect" ? Mode::kInspect : Mode::kStrict;
    auto r = Unpickle(src, 0, o);
    const std::string code = want["code"];
    if (code == "ok") {
      EXPECT_TRUE(r.ok()) << r.status().ToString();
      continue;
    }
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(CodeName(r.status().code()), code) << r.status().ToString();
    const std::string& msg = r.status().message();
    EXPECT_NE(msg.find(want["message"].get<std::string>()), std::string::npos) << msg;
    EXPECT_EQ(msg.rfind(file + ": ", 0), 0u) << "message must start with the source name: " << msg;
    EXPECT_NE(msg.find("offset "), std::string::npos) << msg;
  }
}

// Every prefix of a valid stream fails cleanly with DataLoss.
TEST(PickleCorruptCases, EveryTruncationIsDataLoss) {
  std::string bytes = ReadTestFile("tests/unit/pickle/testdata/rich_p2.pkl");
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
  std::string bytes = ReadTestFile("tests/unit/pickle/testdata/canonical_p2.pkl").substr(0, 4000);
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
