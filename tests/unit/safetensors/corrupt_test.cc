// Runs every hostile file in tests/corrupt/safetensors against ReadHeader and
// compares the error with expected.json.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "format/safetensors/safetensors.h"

namespace ckpt::safetensors {
namespace {

std::string Dir() { return std::string(CKPT_SOURCE_DIR) + "/tests/corrupt/safetensors/"; }

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(SafetensorsCorrupt, EveryCaseFailsWithItsExpectedError) {
  auto expected = nlohmann::json::parse(ReadFile(Dir() + "expected.json"));
  ASSERT_GT(expected.size(), 30u);
  for (const auto& [file, want] : expected.items()) {
    SCOPED_TRACE(file);
    Status s = ReadHeader(StringSource(ReadFile(Dir() + file), file)).status();
    EXPECT_EQ(std::string(CodeName(s.code())), want["code"].get<std::string>()) << s.ToString();
    EXPECT_NE(s.message().find(want["message"].get<std::string>()), std::string::npos)
        << s.ToString();
    if (!s.ok()) {
      EXPECT_EQ(s.message().rfind(file, 0), 0u) << "error must start with the file name";
    }
  }
}

TEST(SafetensorsCorrupt, EveryFileInTheFolderIsListed) {
  auto expected = nlohmann::json::parse(ReadFile(Dir() + "expected.json"));
  for (const auto& f : std::filesystem::directory_iterator(Dir())) {
    std::string name = f.path().filename().string();
    if (name == "expected.json" || name == "make_corrupt.py") continue;
    EXPECT_TRUE(expected.contains(name)) << name;
  }
}

// Every prefix of a valid file fails with DataLoss, never crashes.
TEST(SafetensorsCorrupt, EveryTruncationFailsCleanly) {
  const std::string full =
      ReadFile(std::string(CKPT_SOURCE_DIR) + "/tests/golden/safetensors/scalar_empty.safetensors");
  ASSERT_GT(full.size(), 100u);
  for (size_t n = 0; n < full.size(); ++n) {
    Status s = ReadHeader(StringSource(full.substr(0, n), "cut")).status();
    EXPECT_EQ(s.code(), Code::kDataLoss) << "truncated at " << n << ": " << s.ToString();
  }
}

}  // namespace
}  // namespace ckpt::safetensors
