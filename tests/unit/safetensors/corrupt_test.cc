// Runs every hostile file in tests/corrupt/safetensors against ReadHeader and
// compares the error with expected.json.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "format/safetensors/safetensors.h"
#include "testing/testutil.h"

namespace ckpt::safetensors {
namespace {

using ::ckpt::testing::ExpectEveryCorruptFileListed;
using ::ckpt::testing::ForEachCorruptCase;
using ::ckpt::testing::ReadSourceFile;

TEST(SafetensorsCorrupt, EveryCaseFailsWithItsExpectedError) {
  ForEachCorruptCase("safetensors", 31, [](const std::string& file, nlohmann::json& want,
                                            const std::string& bytes) {
    Status s = ReadHeader(StringSource(bytes, file)).status();
    EXPECT_EQ(std::string(CodeName(s.code())), want["code"].get<std::string>()) << s.ToString();
    EXPECT_NE(s.message().find(want["message"].get<std::string>()), std::string::npos)
        << s.ToString();
    if (!s.ok()) {
      EXPECT_EQ(s.message().rfind(file, 0), 0u) << "error must start with the file name";
    }
  });
}

TEST(SafetensorsCorrupt, EveryFileInTheFolderIsListed) {
  ExpectEveryCorruptFileListed("safetensors", "make_corrupt.py");
}

// Every prefix of a valid file fails with DataLoss, never crashes.
TEST(SafetensorsCorrupt, EveryTruncationFailsCleanly) {
  const std::string full =
      ReadSourceFile("tests/golden/safetensors/scalar_empty.safetensors");
  ASSERT_GT(full.size(), 100u);
  for (size_t n = 0; n < full.size(); ++n) {
    Status s = ReadHeader(StringSource(full.substr(0, n), "cut")).status();
    EXPECT_EQ(s.code(), Code::kDataLoss) << "truncated at " << n << ": " << s.ToString();
  }
}

}  // namespace
}  // namespace ckpt::safetensors
