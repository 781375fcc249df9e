// Runs every hostile archive in tests/corrupt/zip against ZipReader: open it,
// then read every record (ReadEntry and CopyEntry), and compare the first
// error with expected.json.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "format/zip/zip.h"

namespace ckpt::zip {
namespace {

std::string Dir() { return std::string(CKPT_SOURCE_DIR) + "/tests/corrupt/zip/"; }

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

Status OpenAndReadAll(const std::string& file) {
  auto src = std::make_shared<StringSource>(ReadFile(Dir() + file), file);
  CKPT_ASSIGN_OR_RETURN(ZipReader reader, ZipReader::Open(src));
  for (const Entry& e : reader.entries()) {
    CKPT_ASSIGN_OR_RETURN(std::string data, reader.ReadEntry(e, 1u << 26));
    CountingSink sink;
    CKPT_RETURN_IF_ERROR(reader.CopyEntry(e, &sink));
    if (sink.Position() != data.size()) return InternalError("CopyEntry size differs");
  }
  return OkStatus();
}

TEST(ZipCorrupt, EveryCaseFailsWithItsExpectedError) {
  auto expected = nlohmann::json::parse(ReadFile(Dir() + "expected.json"));
  ASSERT_GT(expected.size(), 20u);
  for (const auto& [file, want] : expected.items()) {
    SCOPED_TRACE(file);
    Status s = OpenAndReadAll(file);
    EXPECT_EQ(std::string(CodeName(s.code())), want["code"].get<std::string>()) << s.ToString();
    EXPECT_NE(s.message().find(want["message"].get<std::string>()), std::string::npos)
        << s.ToString();
    if (!s.ok()) {
      EXPECT_NE(s.message().find(file), std::string::npos) << "error must name the source";
    }
  }
}

TEST(ZipCorrupt, EveryFileInTheFolderIsListed) {
  auto expected = nlohmann::json::parse(ReadFile(Dir() + "expected.json"));
  for (const auto& f : std::filesystem::directory_iterator(Dir())) {
    std::string name = f.path().filename().string();
    if (name == "expected.json" || name == "make_corrupt.py") continue;
    EXPECT_TRUE(expected.contains(name)) << name;
  }
}

// Truncating a valid torch archive at every byte must never crash and never
// succeed silently with wrong data.
TEST(ZipCorrupt, EveryTruncationOfATorchFileFailsCleanly) {
  const std::string full = ReadFile(Dir() + "valid_torch.pt");
  ASSERT_GT(full.size(), 100u);
  for (size_t n = 0; n < full.size(); ++n) {
    auto src = std::make_shared<StringSource>(full.substr(0, n), "cut.pt");
    auto r = ZipReader::Open(src);
    EXPECT_FALSE(r.ok()) << "truncated at " << n;
    if (!r.ok()) {
      EXPECT_TRUE(r.status().code() == Code::kDataLoss) << r.status().ToString();
    }
  }
}

}  // namespace
}  // namespace ckpt::zip
