// PosixEnv specifics that the shared conformance suite cannot reach: real
// errno paths (ENOSPC via /dev/full) and the sticky-error rule.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "ckpt/env.h"
#include "io_testutil.h"

namespace ckpt {
namespace {

using ::testing::HasSubstr;

TEST(PosixEnv, DiskFullIsResourceExhaustedWithPathAndOffsetAndSticks) {
  if (access("/dev/full", W_OK) != 0) GTEST_SKIP() << "/dev/full not writable";
  auto f = Env::Default()->NewWritableFile("/dev/full");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_TRUE((*f)->Append("buffered").ok());  // only buffered so far
  Status s = (*f)->Sync();
  EXPECT_EQ(s.code(), Code::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("/dev/full: write of 8 bytes at offset 0"));
  EXPECT_THAT(s.message(), HasSubstr("No space left on device"));
  // The file's content is unknown now: every later call reports the same error.
  EXPECT_EQ((*f)->Append("more").message(), s.message());
  EXPECT_EQ((*f)->Sync().message(), s.message());
  EXPECT_EQ((*f)->Close().message(), s.message());
}

TEST(PosixEnv, BigAppendOnFullDiskFailsAtOnce) {
  if (access("/dev/full", W_OK) != 0) GTEST_SKIP() << "/dev/full not writable";
  auto f = Env::Default()->NewWritableFile("/dev/full");
  ASSERT_TRUE(f.ok());
  std::string big(2 << 20, 'x');  // larger than the buffer: written through
  Status s = (*f)->Append(big);
  EXPECT_EQ(s.code(), Code::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("write of 2097152 bytes at offset 0"));
  EXPECT_EQ((*f)->Position(), 0u);
}

TEST(PosixEnv, WriteAtOnFullDiskIsResourceExhaustedWithPathAndOffsetAndSticks) {
  if (access("/dev/full", W_OK) != 0) GTEST_SKIP() << "/dev/full not writable";
  auto f = Env::Default()->NewWritableFile("/dev/full");
  ASSERT_TRUE(f.ok());
  Status s = (*f)->WriteAt(4096, "abc");
  EXPECT_EQ(s.code(), Code::kResourceExhausted);
  EXPECT_EQ(s.message(),
            "/dev/full: write of 3 bytes at offset 4096 failed at offset 4096 (0 bytes "
            "written): No space left on device");
  // Sticky for every kind of write, as after a failed Append.
  EXPECT_EQ((*f)->WriteAt(0, "x").message(), s.message());
  EXPECT_EQ((*f)->Append("more").message(), s.message());
  EXPECT_EQ((*f)->Close().message(), s.message());
}

}  // namespace
}  // namespace ckpt
