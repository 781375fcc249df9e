// Verify on real DCP checkpoints (tests/golden/dcp) and damaged copies of them.
#include "ckpt/verify.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>


#include "unit/checkpoint/checkpoint_testutil.h"

namespace ckpt {
namespace {

using ::ckpt::testing::ReadSourceFile;
using ::ckpt::testing::SourcePath;
using ::ckpt::testing::WriteWhole;
using ::ckpt::testing_ckpt::CopyDcpGolden;
using ::testing::HasSubstr;

TEST(Verify, GoldenCheckpointsHaveNoProblemsEvenDeep) {
  for (const char* name : {"ws1_plain", "ws2_threads2", "ws3_uneven", "ws4_per_item", "ws2_zstd", "all_dtypes",
                           "ws1_threads3_empty"}) {
    SCOPED_TRACE(name);
    VerifyOptions o;
    o.deep = true;
    auto r = Verify(SourcePath(std::string("tests/golden/dcp/") + name), o);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_TRUE(r->ok()) << (r->problems.empty() ? "" : ToString(r->problems[0]));
    EXPECT_EQ(r->format, "dcp");
    EXPECT_GT(r->tensors, 0u);
    EXPECT_GT(r->bytes_read, 0u);
  }
}

TEST(Verify, TruncatedFileNamesFileOffsetAndKey) {
  auto env = NewMemEnv();
  CopyDcpGolden(env.get(), "ws2_threads2", "/ck");
  std::string bytes = ReadSourceFile("tests/golden/dcp/ws2_threads2/__1_1.distcp");
  ASSERT_TRUE(WriteWhole(env.get(), "/ck/__1_1.distcp", bytes.substr(0, 3000)).ok());
  VerifyOptions o;
  o.env = env.get();
  auto r = Verify("/ck", o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_FALSE(r->ok());
  const VerifyProblem& p = r->problems[0];
  EXPECT_EQ(p.file, "__1_1.distcp");
  EXPECT_TRUE(p.has_offset);
  EXPECT_FALSE(p.key.empty());
  EXPECT_THAT(p.message, HasSubstr("3000 bytes"));
}

TEST(Verify, MissingRankFileIsReportedWithItsKeys) {
  auto env = NewMemEnv();
  CopyDcpGolden(env.get(), "ws2_threads2", "/ck");
  ASSERT_TRUE(env->RemoveFile("/ck/__0_0.distcp").ok());
  VerifyOptions o;
  o.env = env.get();
  auto r = Verify("/ck", o);
  ASSERT_TRUE(r.ok());
  bool found = false;
  for (const VerifyProblem& p : r->problems) {
    if (p.file == "__0_0.distcp") {
      found = true;
      EXPECT_THAT(p.message, HasSubstr("missing"));
    }
  }
  EXPECT_TRUE(found);
}

TEST(Verify, DeepFindsAFlippedDataByteTheStructureCheckCannotSee) {
  auto env = NewMemEnv();
  CopyDcpGolden(env.get(), "ws1_plain", "/ck");
  // Flip one byte inside the first tensor record's payload of the first chunk:
  // the archive still parses, only the CRC-32 tells.
  auto shallow = Verify("/ck", VerifyOptions{false, env.get(), {}});
  ASSERT_TRUE(shallow.ok() && shallow->ok());
  auto reader = OpenCheckpoint("/ck", {env.get()});
  ASSERT_TRUE(reader.ok());
  // A contiguous single-chunk tensor whose bytes can be found in its file.
  const TensorInfo* big = nullptr;
  std::string file, bytes;
  size_t at = std::string::npos;
  for (const TensorInfo& t : (*reader)->tensors()) {
    if (t.chunks.size() != 1 || t.nbytes < 16) continue;
    file = "/ck/" + std::string(t.chunks[0].file);
    auto f = env->NewRandomAccessFile(file);
    ASSERT_TRUE(f.ok());
    bytes.assign((*f)->Size(), '\0');
    ASSERT_TRUE((*f)->ReadAt(0, bytes.size(), bytes.data()).ok());
    StringSink want;
    ASSERT_TRUE((*reader)->ReadTensor(*(*reader)->Find(t.key), &want).ok());
    at = bytes.find(want.str(), t.chunks[0].offset);
    if (at != std::string::npos) {
      big = &t;
      break;
    }
  }
  ASSERT_NE(big, nullptr);
  const std::string key = big->key;
  bytes[at + 3] ^= 0x40;
  reader = Result<std::unique_ptr<CheckpointReader>>(InternalError("closed"));
  ASSERT_TRUE(WriteWhole(env.get(), file, bytes).ok());
  auto still = Verify("/ck", VerifyOptions{false, env.get(), {}});
  ASSERT_TRUE(still.ok());
  EXPECT_TRUE(still->ok());
  auto deep = Verify("/ck", VerifyOptions{true, env.get(), {}});
  ASSERT_TRUE(deep.ok());
  ASSERT_FALSE(deep->ok());
  EXPECT_EQ(deep->problems[0].key, key);
  EXPECT_THAT(deep->problems[0].message, HasSubstr("CRC"));
}

TEST(Verify, MissingPathIsAnErrorNotAProblem) {
  auto r = Verify("/definitely/not/here");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound);
}

}  // namespace
}  // namespace ckpt
