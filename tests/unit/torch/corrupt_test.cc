// Runs every case in tests/corrupt/torch/ (see make_cases.py there): the error
// code must match and the message must name the file and the expected detail.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "format/torch/torch_file.h"
#include "testing/testutil.h"

namespace ckpt::torch {
namespace {

using ::ckpt::testing::ForEachCorruptCase;
using ::ckpt::testing::ReadSourceFile;

Status OpenAndRead(const std::string& bytes, const std::string& name, pickle::Mode mode,
                   const std::string& stage) {
  auto f = TorchFile::Open(std::make_shared<StringSource>(bytes, name), mode);
  if (!f.ok()) return f.status();
  for (const TensorRecord& t : (*f)->tensors()) {
    CountingSink sink;
    CKPT_RETURN_IF_ERROR((*f)->ReadTensor(t, &sink));
  }
  if (stage == "storage") {
    for (const StorageRecord& s : (*f)->storages()) {
      CountingSink sink;
      CKPT_RETURN_IF_ERROR((*f)->ReadStorage(s, &sink));
    }
  }
  return OkStatus();
}

TEST(TorchCorruptCases, EachFailsWithItsExpectedCodeAndMessage) {
  ForEachCorruptCase("torch", 15, [](const std::string& file, nlohmann::json& want,
                                      const std::string& bytes) {
    ASSERT_FALSE(bytes.empty());
    Status st = OpenAndRead(bytes, file,
                            want["mode"] == "inspect" ? pickle::Mode::kInspect : pickle::Mode::kStrict,
                            want["stage"]);
    if (want["code"] == "ok") {
      EXPECT_TRUE(st.ok()) << st.ToString();
      return;
    }
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(CodeName(st.code()), want["code"].get<std::string>()) << st.ToString();
    EXPECT_NE(st.message().find(want["message"].get<std::string>()), std::string::npos)
        << st.message();
    EXPECT_NE(st.message().find(file), std::string::npos) << "names the file: " << st.message();
  });
}

// Every truncation of a valid archive fails with a status (never a crash),
// and every byte flip either opens or fails with a non-internal code.
TEST(TorchCorruptCases, TruncationsAndBitFlipsAreHandled) {
  std::string bytes = ReadSourceFile("tests/corrupt/torch/valid.pt");
  ASSERT_FALSE(bytes.empty());
  for (size_t n = 0; n < bytes.size(); n += 7) {
    Status st = OpenAndRead(bytes.substr(0, n), "cut.pt", pickle::Mode::kStrict, "storage");
    EXPECT_FALSE(st.ok()) << n;
    EXPECT_NE(st.code(), Code::kInternal) << st.ToString();
  }
  for (size_t i = 0; i < bytes.size(); i += 5) {
    std::string b = bytes;
    b[i] ^= static_cast<char>(0x10);
    Status st = OpenAndRead(b, "flip.pt", pickle::Mode::kInspect, "storage");
    if (!st.ok()) {
      EXPECT_NE(st.code(), Code::kInternal) << i << ": " << st.ToString();
    }
  }
}

}  // namespace
}  // namespace ckpt::torch
