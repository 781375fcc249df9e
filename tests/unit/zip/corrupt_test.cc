// Runs every hostile archive in tests/corrupt/zip against ZipReader: open it,
// then read every record (ReadEntry and CopyEntry), and compare the first
// error with expected.json.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "format/zip/zip.h"
#include "testing/testutil.h"

namespace ckpt::zip {
namespace {

using ::ckpt::testing::ExpectEveryCorruptFileListed;
using ::ckpt::testing::ForEachCorruptCase;
using ::ckpt::testing::ReadSourceFile;

Status OpenAndReadAll(const std::string& bytes, const std::string& file) {
  auto src = std::make_shared<StringSource>(bytes, file);
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
  ForEachCorruptCase("zip", 21, [](const std::string& file, nlohmann::json& want,
                                    const std::string& bytes) {
    Status s = OpenAndReadAll(bytes, file);
    EXPECT_EQ(std::string(CodeName(s.code())), want["code"].get<std::string>()) << s.ToString();
    EXPECT_NE(s.message().find(want["message"].get<std::string>()), std::string::npos)
        << s.ToString();
    if (!s.ok()) {
      EXPECT_NE(s.message().find(file), std::string::npos) << "error must name the source";
    }
  });
}

TEST(ZipCorrupt, EveryFileInTheFolderIsListed) {
  ExpectEveryCorruptFileListed("zip", "make_corrupt.py");
}

// Truncating a valid torch archive at every byte must never crash and never
// succeed silently with wrong data.
TEST(ZipCorrupt, EveryTruncationOfATorchFileFailsCleanly) {
  const std::string full = ReadSourceFile("tests/corrupt/zip/valid_torch.pt");
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
