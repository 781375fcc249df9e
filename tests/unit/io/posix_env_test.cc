// PosixEnv specifics that the shared conformance suite cannot reach: real
// errno paths (ENOSPC via /dev/full) and the sticky-error rule.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <random>
#include <string>

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

// Pages of `path` in the page cache (mincore over a mapping of it).
size_t CachedPages(const std::string& path, size_t* total) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return SIZE_MAX;
  struct stat st;
  ::fstat(fd, &st);
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t size = static_cast<size_t>(st.st_size);
  *total = (size + page - 1) / page;
  void* m = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) return SIZE_MAX;
  std::vector<unsigned char> vec(*total);
  size_t cached = SIZE_MAX;
  if (::mincore(m, size, vec.data()) == 0) {
    cached = 0;
    for (unsigned char v : vec) cached += v & 1;
  }
  ::munmap(m, size);
  return cached;
}

// Whether the scratch folder's file system is one known to take O_DIRECT
// (ext4, xfs, btrfs, tmpfs on Linux >= 6.6: what CI and developers run on).
bool KnownDirectIo(const std::string& dir) {
  struct statfs sf;
  if (::statfs(dir.c_str(), &sf) != 0) return false;
  return sf.f_type == 0xEF53 /*ext4*/ || sf.f_type == 0x58465342 /*xfs*/ || sf.f_type == 0x9123683E /*btrfs*/;
}

// One file written as a checkpoint's data file is: large appends from
// page-aligned memory (staging-pool regions: they skip the write buffer),
// unaligned appends of every size around the block and buffer sizes, Syncs
// in the middle (each leaves the file ending at exactly Position()), a
// WriteAt of whole aligned blocks and an unaligned one. The bytes read back
// equal what was written, the size is exact, and almost none of it went
// through the page cache (an ordinary file written the same way stays cached:
// the probe can tell them apart).
TEST(PosixEnv, DirectFileWritesExactBytesAroundThePageCache) {
  ckpt::testing::ScratchDir dir;
  if (!KnownDirectIo(dir.path())) GTEST_SKIP() << dir.path() << ": not ext4/xfs/btrfs";
  const uint32_t seed = 20261203;
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const size_t kAlign = 4096;
  const size_t total = (40 << 20) + 777;
  std::unique_ptr<char, decltype(&std::free)> src(static_cast<char*>(std::aligned_alloc(kAlign, (total / kAlign + 2) * kAlign)),
                                                  &std::free);
  ASSERT_NE(src, nullptr);
  for (size_t i = 0; i < total; ++i) src.get()[i] = static_cast<char>(rng());
  std::string expect(src.get(), total);

  for (bool direct : {true, false}) {
    SCOPED_TRACE(direct ? "direct" : "ordinary");
    const std::string path = dir.path() + (direct ? "/direct.bin" : "/ordinary.bin");
    auto f = direct ? Env::Default()->NewDirectWritableFile(path) : Env::Default()->NewWritableFile(path);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    EXPECT_EQ((*f)->direct_io(), direct);
    size_t off = 0;
    auto append = [&](size_t n) {
      n = std::min(n, total - off);
      Status s = (*f)->Append(std::string_view(src.get() + off, n));
      off += n;
      return s;
    };
    ASSERT_TRUE(append(16 << 20).ok());  // aligned memory at an aligned position: no copy
    ASSERT_TRUE(append(1).ok());
    ASSERT_TRUE((*f)->Sync().ok());
    ASSERT_EQ(*Env::Default()->GetFileSize(path), off) << "a Sync leaves the file at exactly Position()";
    for (size_t n : {kAlign - 1, kAlign, kAlign + 1, size_t{3}, size_t{8 << 20}, (size_t{8} << 20) + 5}) {
      ASSERT_TRUE(append(n).ok());
    }
    ASSERT_TRUE((*f)->Sync().ok());
    EXPECT_EQ(*Env::Default()->GetFileSize(path), off);
    while (off < total) ASSERT_TRUE(append(rng() % 3 == 0 ? rng() % 100 : (rng() % (2 << 20))).ok());
    EXPECT_EQ((*f)->Position(), total);
    // Overwrite aligned blocks and a few unaligned bytes in place.
    const size_t at = 5 * kAlign;
    std::string patch(2 * kAlign, '\0');
    std::unique_ptr<char, decltype(&std::free)> aligned_patch(static_cast<char*>(std::aligned_alloc(kAlign, 2 * kAlign)),
                                                              &std::free);
    for (size_t i = 0; i < 2 * kAlign; ++i) aligned_patch.get()[i] = patch[i] = static_cast<char>(i * 7);
    ASSERT_TRUE((*f)->WriteAt(at, std::string_view(aligned_patch.get(), 2 * kAlign)).ok());
    ASSERT_TRUE((*f)->WriteAt(at + 10 * kAlign + 3, "unaligned").ok());
    expect.replace(at, patch.size(), patch);
    expect.replace(at + 10 * kAlign + 3, 9, "unaligned");
    ASSERT_TRUE((*f)->Sync().ok());
    ASSERT_TRUE((*f)->Close().ok());

    size_t pages = 0;
    const size_t cached = CachedPages(path, &pages);
    ASSERT_NE(cached, SIZE_MAX);
    if (direct) {
      EXPECT_LE(cached, 8u) << "of " << pages << " pages: the direct file went through the page cache";
    } else {
      EXPECT_GE(cached, pages / 2) << "the probe sees no cached pages of an ordinary file";
    }
    Result<std::string> back = ::ckpt::testing::ReadWhole(Env::Default(), path);
    ASSERT_TRUE(back.ok());
    ASSERT_EQ(back->size(), total);
    EXPECT_TRUE(*back == expect) << "bytes differ";
  }
}

// A file system without O_DIRECT (here /dev/full, which refuses the flag at
// open) gets an ordinary file: direct_io() false, errors as ever.
TEST(PosixEnv, DirectFileFallsBackWhereTheFileSystemRefusesODirect) {
  if (access("/dev/full", W_OK) != 0) GTEST_SKIP() << "/dev/full not writable";
  auto f = Env::Default()->NewDirectWritableFile("/dev/full");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_FALSE((*f)->direct_io());
  ASSERT_TRUE((*f)->Append("buffered").ok());
  Status s = (*f)->Sync();
  EXPECT_EQ(s.code(), Code::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("/dev/full: write of 8 bytes at offset 0"));
}

// A write that fails on the flusher thread (here: past RLIMIT_FSIZE, EFBIG,
// as a full disk fails) surfaces at the caller's next call, naming the file
// and offset, and sticks; nothing hangs.
TEST(PosixEnv, DirectFileErrorOnTheFlusherThreadReachesTheCaller) {
  ckpt::testing::ScratchDir dir;
  if (!KnownDirectIo(dir.path())) GTEST_SKIP() << dir.path() << ": not ext4/xfs/btrfs";
  struct rlimit old;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  struct sigaction ign = {}, prev = {};
  ign.sa_handler = SIG_IGN;
  ASSERT_EQ(::sigaction(SIGXFSZ, &ign, &prev), 0);
  struct rlimit lim = old;
  lim.rlim_cur = 6 << 20;  // the second 4 MiB buffer crosses it
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &lim), 0);
  const std::string path = dir.path() + "/big.bin";
  Status first_error;
  {
    auto f = Env::Default()->NewDirectWritableFile(path);
    ASSERT_TRUE(f.ok());
    EXPECT_TRUE((*f)->direct_io());
    const std::string piece(1000001, 'x');  // unaligned: through the buffers and the flusher
    for (int i = 0; i < 40 && first_error.ok(); ++i) first_error = (*f)->Append(piece);
    if (first_error.ok()) first_error = (*f)->Sync();
    EXPECT_EQ((*f)->Close().message(), first_error.message()) << "sticky";
  }
  ::setrlimit(RLIMIT_FSIZE, &old);
  ::sigaction(SIGXFSZ, &prev, nullptr);
  EXPECT_EQ(first_error.code(), Code::kResourceExhausted) << first_error.ToString();
  // Which write crosses the limit depends on where the appends' memory lies
  // (an aligned remainder skips the buffers); where it fails does not.
  EXPECT_THAT(first_error.message(), HasSubstr(path + ": write of "));
  EXPECT_THAT(first_error.message(), HasSubstr("failed at offset 6291456"));
  EXPECT_THAT(first_error.message(), HasSubstr("File too large"));
}

}  // namespace
}  // namespace ckpt
