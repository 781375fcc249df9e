// Env conformance: every Env (PosixEnv in a scratch dir, MemEnv) must pass the
// same behaviours, so code tested on MemEnv works on disk.
#include "ckpt/env.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>
#include <filesystem>

#include <atomic>
#include <random>
#include <thread>

#include "io/path_util.h"
#include "io_testutil.h"

namespace ckpt {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::ckpt::testing::ReadWhole;
using ::ckpt::testing::ScratchDir;
using ::ckpt::testing::WriteWhole;
using testing_io::ContentOf;

struct PosixFixture {
  ScratchDir dir;
  Env* env() { return Env::Default(); }
  std::string root() { return dir.path(); }
};

// PosixEnv with every writable file opened by NewDirectWritableFile
// (O_DIRECT where the scratch folder's file system allows): the direct file
// keeps the whole WritableFile contract.
class DirectFilesEnv : public EnvWrapper {
 public:
  DirectFilesEnv() : EnvWrapper(Env::Default()) {}
  Result<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& p) override {
    return target()->NewDirectWritableFile(p);
  }
};

struct PosixDirectFixture {
  ScratchDir dir;
  DirectFilesEnv direct;
  Env* env() { return &direct; }
  std::string root() { return dir.path(); }
};

struct MemFixture {
  std::unique_ptr<Env> mem = NewMemEnv();
  MemFixture() { EXPECT_TRUE(mem->CreateDirs("/mem/root").ok()); }
  Env* env() { return mem.get(); }
  std::string root() { return "/mem/root"; }
};

template <typename F>
class EnvTest : public ::testing::Test {
 protected:
  Env* env() { return f_.env(); }
  std::string P(const std::string& name) { return JoinPath(f_.root(), name); }
  F f_;
};

using EnvTypes = ::testing::Types<PosixFixture, PosixDirectFixture, MemFixture>;
class EnvNames {
 public:
  template <typename T>
  static std::string GetName(int) {
    return std::is_same_v<T, PosixFixture> ? "Posix" : std::is_same_v<T, PosixDirectFixture> ? "PosixDirect" : "Mem";
  }
};
TYPED_TEST_SUITE(EnvTest, EnvTypes, EnvNames);

TYPED_TEST(EnvTest, WrittenBytesReadBack) {
  const std::string p = this->P("a.bin");
  ASSERT_TRUE(WriteWhole(this->env(), p, std::string("hello\0world", 11)).ok());
  EXPECT_TRUE(this->env()->FileExists(p));
  EXPECT_FALSE(this->env()->IsDirectory(p));
  EXPECT_EQ(*this->env()->GetFileSize(p), 11u);
  auto f = this->env()->NewRandomAccessFile(p);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->Size(), 11u);
  EXPECT_EQ((*f)->Name(), p);
  char buf[5];
  ASSERT_TRUE((*f)->ReadAt(6, 5, buf).ok());
  EXPECT_EQ(std::string(buf, 5), "world");
  ASSERT_TRUE((*f)->ReadAt(11, 0, buf).ok());  // empty read at the end is fine
}

TYPED_TEST(EnvTest, EmptyFileHasSizeZero) {
  const std::string p = this->P("empty");
  auto w = this->env()->NewWritableFile(p);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ((*w)->Position(), 0u);
  ASSERT_TRUE((*w)->Close().ok());
  EXPECT_EQ(*this->env()->GetFileSize(p), 0u);
  EXPECT_EQ(ContentOf(this->env(), p), "");
}

TYPED_TEST(EnvTest, ReadPastEndIsOutOfRangeNamingPathAndOffset) {
  const std::string p = this->P("small");
  ASSERT_TRUE(WriteWhole(this->env(), p, "0123456789").ok());
  auto f = this->env()->NewRandomAccessFile(p);
  ASSERT_TRUE(f.ok());
  char buf[16];
  Status s = (*f)->ReadAt(8, 4, buf);
  EXPECT_EQ(s.code(), Code::kOutOfRange);
  EXPECT_EQ(s.message(), p + ": read past end at offset 8: wanted 4 bytes, 2 available "
                             "(file size 10)");
  s = (*f)->ReadAt(11, 0, buf);
  EXPECT_EQ(s.code(), Code::kOutOfRange);
  EXPECT_THAT(s.message(), HasSubstr("offset 11"));
  // offset + n overflowing uint64 must not wrap into range.
  s = (*f)->ReadAt(2, SIZE_MAX, buf);
  EXPECT_EQ(s.code(), Code::kOutOfRange);
  s = (*f)->ReadAt(UINT64_MAX, 1, buf);
  EXPECT_EQ(s.code(), Code::kOutOfRange);
}

TYPED_TEST(EnvTest, MissingFileIsNotFoundNamingPath) {
  const std::string p = this->P("nope");
  EXPECT_FALSE(this->env()->FileExists(p));
  auto r = this->env()->NewRandomAccessFile(p);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  EXPECT_EQ(r.status().message(), "open " + p + ": No such file or directory");
  auto sz = this->env()->GetFileSize(p);
  EXPECT_EQ(sz.status().code(), Code::kNotFound);
  EXPECT_THAT(sz.status().message(), HasSubstr(p));
  Status s = this->env()->RemoveFile(p);
  EXPECT_EQ(s.code(), Code::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr(p));
  s = this->env()->RenameFile(p, this->P("other"));
  EXPECT_EQ(s.code(), Code::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr(p));
  auto c = this->env()->GetChildren(p);
  EXPECT_EQ(c.status().code(), Code::kNotFound);
}

TYPED_TEST(EnvTest, CreateInMissingDirectoryIsNotFound) {
  auto w = this->env()->NewWritableFile(this->P("no/such/dir/f"));
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), Code::kNotFound);
  EXPECT_THAT(w.status().message(), HasSubstr(this->P("no/such/dir/f")));
}

TYPED_TEST(EnvTest, OpenThroughAFileIsInvalidArgument) {
  const std::string file = this->P("f");
  ASSERT_TRUE(WriteWhole(this->env(), file, "x").ok());
  auto r = this->env()->NewRandomAccessFile(file + "/g");
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);  // ENOTDIR
  EXPECT_THAT(r.status().message(), HasSubstr(file + "/g"));
  auto w = this->env()->NewWritableFile(file + "/g");
  EXPECT_EQ(w.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr(file + "/g"));
}

TYPED_TEST(EnvTest, DirectoryIsNotAFile) {
  ASSERT_TRUE(this->env()->CreateDirs(this->P("d")).ok());
  EXPECT_EQ(this->env()->NewRandomAccessFile(this->P("d")).status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(this->env()->NewWritableFile(this->P("d")).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(this->env()->GetFileSize(this->P("d")).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(this->env()->RemoveFile(this->P("d")).code(), Code::kInvalidArgument);
  EXPECT_TRUE(this->env()->FileExists(this->P("d")));
  EXPECT_TRUE(this->env()->IsDirectory(this->P("d")));
}

TYPED_TEST(EnvTest, RenameReplacesTargetAtomically) {
  const std::string a = this->P("a"), b = this->P("b");
  ASSERT_TRUE(WriteWhole(this->env(), a, "new").ok());
  ASSERT_TRUE(WriteWhole(this->env(), b, "old content").ok());
  auto old_reader = this->env()->NewRandomAccessFile(b);
  ASSERT_TRUE(old_reader.ok());
  ASSERT_TRUE(this->env()->RenameFile(a, b).ok());
  EXPECT_FALSE(this->env()->FileExists(a));
  EXPECT_EQ(ContentOf(this->env(), b), "new");
  // A reader opened before keeps the replaced file (an open inode).
  char buf[11];
  ASSERT_TRUE((*old_reader)->ReadAt(0, 11, buf).ok());
  EXPECT_EQ(std::string(buf, 11), "old content");
  // Rename into a sibling directory.
  ASSERT_TRUE(this->env()->CreateDirs(this->P("sub")).ok());
  ASSERT_TRUE(this->env()->RenameFile(b, this->P("sub/c")).ok());
  EXPECT_EQ(ContentOf(this->env(), this->P("sub/c")), "new");
}

TYPED_TEST(EnvTest, RemovedFileStaysReadableThroughOpenReader) {
  const std::string p = this->P("r");
  ASSERT_TRUE(WriteWhole(this->env(), p, "abc").ok());
  auto r = this->env()->NewRandomAccessFile(p);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(this->env()->RemoveFile(p).ok());
  EXPECT_FALSE(this->env()->FileExists(p));
  char buf[3];
  ASSERT_TRUE((*r)->ReadAt(0, 3, buf).ok());
  EXPECT_EQ(std::string(buf, 3), "abc");
}

TYPED_TEST(EnvTest, TruncationUnderAnOpenReaderIsDataLoss) {
  const std::string p = this->P("t");
  ASSERT_TRUE(WriteWhole(this->env(), p, "0123456789").ok());
  auto r = this->env()->NewRandomAccessFile(p);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(WriteWhole(this->env(), p, "xy").ok());  // O_TRUNC, same file
  char buf[4];
  Status s = (*r)->ReadAt(0, 4, buf);
  EXPECT_EQ(s.code(), Code::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr(p + ": short read at offset 0: wanted 4 bytes, got 2"));
}

TYPED_TEST(EnvTest, GetChildrenListsSortedNamesOfFilesAndDirs) {
  ASSERT_TRUE(WriteWhole(this->env(), this->P("b"), "").ok());
  ASSERT_TRUE(WriteWhole(this->env(), this->P("a"), "").ok());
  ASSERT_TRUE(WriteWhole(this->env(), this->P("C"), "").ok());
  ASSERT_TRUE(this->env()->CreateDirs(this->P("dir/deeper")).ok());
  ASSERT_TRUE(WriteWhole(this->env(), this->P("dir/inner"), "").ok());
  auto c = this->env()->GetChildren(this->f_.root());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_THAT(*c, ElementsAre("C", "a", "b", "dir"));
  c = this->env()->GetChildren(this->P("dir"));
  ASSERT_TRUE(c.ok());
  EXPECT_THAT(*c, ElementsAre("deeper", "inner"));
  c = this->env()->GetChildren(this->P("dir/deeper"));
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->empty());
  // Trailing slash names the same directory.
  c = this->env()->GetChildren(this->P("dir/"));
  ASSERT_TRUE(c.ok());
  EXPECT_THAT(*c, ElementsAre("deeper", "inner"));
  EXPECT_EQ(this->env()->GetChildren(this->P("a")).status().code(), Code::kInvalidArgument);
}

TYPED_TEST(EnvTest, CreateDirsMakesNestedAndIsIdempotent) {
  const std::string d = this->P("x/y/z");
  ASSERT_TRUE(this->env()->CreateDirs(d).ok());
  EXPECT_TRUE(this->env()->IsDirectory(this->P("x")));
  EXPECT_TRUE(this->env()->IsDirectory(this->P("x/y")));
  EXPECT_TRUE(this->env()->IsDirectory(d));
  ASSERT_TRUE(this->env()->CreateDirs(d).ok());
  ASSERT_TRUE(this->env()->CreateDirs(d + "/").ok());
  ASSERT_TRUE(WriteWhole(this->env(), d + "/f", "z").ok());
  EXPECT_EQ(ContentOf(this->env(), d + "/f"), "z");
  EXPECT_TRUE(this->env()->SyncDir(d).ok());
}

TYPED_TEST(EnvTest, CreateDirsOverAFileFails) {
  ASSERT_TRUE(WriteWhole(this->env(), this->P("f"), "x").ok());
  Status s = this->env()->CreateDirs(this->P("f"));
  EXPECT_EQ(s.code(), Code::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr(this->P("f")));
  s = this->env()->CreateDirs(this->P("f/g"));
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr(this->P("f")));
  EXPECT_EQ(ContentOf(this->env(), this->P("f")), "x");
}

TYPED_TEST(EnvTest, SyncDirOfMissingDirectoryFails) {
  Status s = this->env()->SyncDir(this->P("missing"));
  EXPECT_EQ(s.code(), Code::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr(this->P("missing")));
  EXPECT_TRUE(this->env()->SyncDir(this->f_.root()).ok());
}

TYPED_TEST(EnvTest, RemoveFileDeletes) {
  const std::string p = this->P("gone");
  ASSERT_TRUE(WriteWhole(this->env(), p, "x").ok());
  ASSERT_TRUE(this->env()->RemoveFile(p).ok());
  EXPECT_FALSE(this->env()->FileExists(p));
  EXPECT_EQ(this->env()->RemoveFile(p).code(), Code::kNotFound);
}

TYPED_TEST(EnvTest, NewWritableFileTruncatesExisting) {
  const std::string p = this->P("tr");
  ASSERT_TRUE(WriteWhole(this->env(), p, "long old content").ok());
  ASSERT_TRUE(WriteWhole(this->env(), p, "new").ok());
  EXPECT_EQ(ContentOf(this->env(), p), "new");
}

TYPED_TEST(EnvTest, AppendSyncAfterCloseFail) {
  auto w = this->env()->NewWritableFile(this->P("c"));
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Append("abc").ok());
  ASSERT_TRUE((*w)->Close().ok());
  EXPECT_EQ((*w)->Append("d").code(), Code::kFailedPrecondition);
  EXPECT_EQ((*w)->Sync().code(), Code::kFailedPrecondition);
  EXPECT_TRUE((*w)->Close().ok());
  EXPECT_EQ(ContentOf(this->env(), this->P("c")), "abc");
}

TYPED_TEST(EnvTest, UnclosedWriterStillPersistsBytesWhenDestroyed) {
  {
    auto w = this->env()->NewWritableFile(this->P("u"));
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Append("buffered").ok());
  }
  EXPECT_EQ(ContentOf(this->env(), this->P("u")), "buffered");
}

// Deterministic pseudo-random bytes.
std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

TYPED_TEST(EnvTest, BigWritesAndSmallAppendsGiveIdenticalBytes) {
  const uint32_t seed = 20240611;
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  // Over 3x the 1 MiB PosixWritableFile buffer, not a multiple of it.
  const std::string data = RandomBytes((3 << 20) + 12345, seed);

  auto big = this->env()->NewWritableFile(this->P("big"));
  ASSERT_TRUE(big.ok());
  ASSERT_TRUE((*big)->Append(data.substr(0, 100)).ok());      // buffered
  ASSERT_TRUE((*big)->Append(data.substr(100, (2 << 20))).ok());  // straight through
  EXPECT_EQ((*big)->Position(), 100u + (2 << 20));
  ASSERT_TRUE((*big)->Append(data.substr(100 + (2 << 20))).ok());
  EXPECT_EQ((*big)->Position(), data.size());
  ASSERT_TRUE((*big)->Close().ok());

  auto small = this->env()->NewWritableFile(this->P("small"));
  ASSERT_TRUE(small.ok());
  std::mt19937 rng(seed + 1);
  size_t off = 0;
  while (off < data.size()) {
    // Mostly tiny appends, sometimes one that crosses or equals the buffer size.
    size_t n = rng() % 50 == 0 ? (1 << 20) - (rng() % 3) : rng() % 4097;
    n = std::min(n, data.size() - off);
    ASSERT_TRUE((*small)->Append(std::string_view(data).substr(off, n)).ok());
    off += n;
    ASSERT_EQ((*small)->Position(), off);
  }
  ASSERT_TRUE((*small)->Sync().ok());
  ASSERT_TRUE((*small)->Close().ok());

  auto a = ReadWhole(this->env(), this->P("big"));
  auto b = ReadWhole(this->env(), this->P("small"));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->size(), data.size());
  EXPECT_TRUE(*a == data) << "big-write bytes differ";
  EXPECT_TRUE(*b == data) << "small-append bytes differ";
}

TYPED_TEST(EnvTest, ConcurrentReadAtSeesConsistentBytes) {
  const std::string data = RandomBytes(1 << 20, 7);
  ASSERT_TRUE(WriteWhole(this->env(), this->P("shared"), data).ok());
  auto f = this->env()->NewRandomAccessFile(this->P("shared"));
  ASSERT_TRUE(f.ok());
  const RandomAccessFile* file = f->get();
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      std::string buf;
      for (int i = 0; i < 500; ++i) {
        size_t off = rng() % data.size();
        size_t n = std::min<size_t>(rng() % 8192, data.size() - off);
        buf.resize(n);
        if (!file->ReadAt(off, n, buf.data()).ok() ||
            buf != std::string_view(data).substr(off, n)) {
          ++bad;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

// ---- WriteAt ---------------------------------------------------------------

TYPED_TEST(EnvTest, WriteAtOutOfOrderGivesTheRightBytes) {
  const std::string p = this->P("wa");
  auto w = this->env()->NewWritableFile(p);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->WriteAt(6, "world").ok());
  ASSERT_TRUE((*w)->WriteAt(0, "hello ").ok());
  ASSERT_TRUE((*w)->WriteAt(11, "!").ok());
  ASSERT_TRUE((*w)->WriteAt(0, "J").ok());  // overwrite inside the file
  EXPECT_EQ((*w)->Position(), 0u);          // WriteAt leaves the Append position
  ASSERT_TRUE((*w)->Sync().ok());
  ASSERT_TRUE((*w)->Close().ok());
  EXPECT_EQ(*this->env()->GetFileSize(p), 12u);
  EXPECT_EQ(ContentOf(this->env(), p), "Jello world!");
}

TYPED_TEST(EnvTest, WriteAtGapReadsAsZeros) {
  const std::string p = this->P("gap");
  auto w = this->env()->NewWritableFile(p);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->WriteAt(0, "ab").ok());
  ASSERT_TRUE((*w)->WriteAt(4098, "yz").ok());  // a gap of 4096 bytes
  ASSERT_TRUE((*w)->WriteAt(10000, "").ok());   // empty: does not extend
  ASSERT_TRUE((*w)->Close().ok());
  EXPECT_EQ(ContentOf(this->env(), p), "ab" + std::string(4096, '\0') + "yz");
}

TYPED_TEST(EnvTest, AppendAndWriteAtOnDisjointRangesCompose) {
  // A header reserved by Append, the body appended, the header patched.
  const std::string p = this->P("patch");
  auto w = this->env()->NewWritableFile(p);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Append("????").ok());
  ASSERT_TRUE((*w)->Append("body").ok());
  ASSERT_TRUE((*w)->Sync().ok());  // flushes the Posix buffer
  ASSERT_TRUE((*w)->WriteAt(0, "HDR:").ok());
  EXPECT_EQ((*w)->Position(), 8u);
  ASSERT_TRUE((*w)->Append("tail").ok());
  ASSERT_TRUE((*w)->WriteAt(14, "!!").ok());  // past the appended end
  ASSERT_TRUE((*w)->Close().ok());
  EXPECT_EQ(ContentOf(this->env(), p), std::string("HDR:bodytail\0\0!!", 16));
}

TYPED_TEST(EnvTest, ConcurrentWriteAtOnDisjointRangesGivesTheRightBytes) {
  // 4 threads, each writing its interleaved 64 KiB stripes of a 4 MiB file in
  // reverse order, so writes extend the file concurrently and out of order.
  constexpr size_t kStripe = 64 << 10;
  constexpr size_t kThreads = 4;
  const std::string data = RandomBytes(64 * kStripe, 99);
  const std::string p = this->P("concurrent");
  auto w = this->env()->NewWritableFile(p);
  ASSERT_TRUE(w.ok());
  WritableFile* file = w->get();
  std::vector<Status> errors(kThreads);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = data.size() / kStripe; i-- > 0;) {
        if (i % kThreads != t) continue;
        // Two pieces per stripe, the second first.
        const size_t off = i * kStripe;
        const std::string_view d(data);
        Status s = file->WriteAt(off + 1000, d.substr(off + 1000, kStripe - 1000));
        if (s.ok()) s = file->WriteAt(off, d.substr(off, 1000));
        if (!s.ok() && errors[t].ok()) errors[t] = s;
      }
    });
  }
  for (auto& th : threads) th.join();
  for (size_t t = 0; t < kThreads; ++t) {
    EXPECT_TRUE(errors[t].ok()) << "thread " << t << ": " << errors[t].ToString();
  }
  EXPECT_EQ(file->Position(), 0u);
  ASSERT_TRUE(file->Sync().ok());
  ASSERT_TRUE(file->Close().ok());
  auto got = ReadWhole(this->env(), p);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->size(), data.size());
  EXPECT_TRUE(*got == data) << "bytes differ";
}

TYPED_TEST(EnvTest, WriteAtAfterCloseFailsNamingPath) {
  const std::string p = this->P("closed");
  auto w = this->env()->NewWritableFile(p);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->WriteAt(0, "abc").ok());
  ASSERT_TRUE((*w)->Close().ok());
  Status s = (*w)->WriteAt(3, "d");
  EXPECT_EQ(s.code(), Code::kFailedPrecondition);
  EXPECT_EQ(s.message(), p + ": write after close");
  EXPECT_EQ(ContentOf(this->env(), p), "abc");
}

TYPED_TEST(EnvTest, WriteAtPastTheLargestOffsetIsInvalidArgument) {
  const std::string p = this->P("huge");
  auto w = this->env()->NewWritableFile(p);
  ASSERT_TRUE(w.ok());
  Status s = (*w)->WriteAt(uint64_t{INT64_MAX} - 1, "abc");
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr(p + ": write of 3 bytes at offset 9223372036854775806"));
  ASSERT_TRUE((*w)->Close().ok());
  EXPECT_EQ(*this->env()->GetFileSize(p), 0u);
}

TYPED_TEST(EnvTest, WriteFileAtomicallyPublishesAndLeavesNoTemp) {
  const std::string p = this->P("atomic.json");
  ASSERT_TRUE(WriteWhole(this->env(), p, "old").ok());
  Status s = WriteFileAtomically(this->env(), p, [](WritableFile* f) { return f->Append("new"); });
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(ContentOf(this->env(), p), "new");
  auto c = this->env()->GetChildren(this->f_.root());
  ASSERT_TRUE(c.ok());
  EXPECT_THAT(*c, ElementsAre("atomic.json"));
}

TEST(MemEnv, PathsAreNormalizedLexically) {
  auto env = NewMemEnv();
  ASSERT_TRUE(env->CreateDirs("/a//b/").ok());
  ASSERT_TRUE(WriteWhole(env.get(), "/a/./b//f", "x").ok());
  EXPECT_EQ(ContentOf(env.get(), "/a/b/f"), "x");
  EXPECT_EQ(ContentOf(env.get(), "/a/c/../b/f"), "x");
  // Relative paths live under "." which always exists, apart from "/".
  ASSERT_TRUE(WriteWhole(env.get(), "rel", "r").ok());
  EXPECT_EQ(ContentOf(env.get(), "./rel"), "r");
  EXPECT_FALSE(env->FileExists("/rel"));
  auto c = env->GetChildren(".");
  ASSERT_TRUE(c.ok());
  EXPECT_THAT(*c, ElementsAre("rel"));
  c = env->GetChildren("/");
  ASSERT_TRUE(c.ok());
  EXPECT_THAT(*c, ElementsAre("a"));
}

TEST(MemEnv, CreateUnderAFileIsNotADirectory) {
  auto env = NewMemEnv();
  ASSERT_TRUE(WriteWhole(env.get(), "/f", "x").ok());
  auto w = env->NewWritableFile("/f/g");
  EXPECT_EQ(w.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr("/f/g"));
}

// Folder renames and exchanges move whole subtrees, on MemEnv as on disk.
void CheckFolderMoves(Env* env, const std::string& root) {
  auto put = [&](const std::string& p, const std::string& text) {
    ASSERT_TRUE(WriteFileAtomically(env, p, [&](WritableFile* f) { return f->Append(text); }).ok()) << p;
  };
  auto read = [&](const std::string& p) {
    Result<std::string> r = ::ckpt::testing::ReadWhole(env, p);
    return r.ok() ? *r : "<" + r.status().ToString() + ">";
  };
  ASSERT_TRUE(env->CreateDirs(root + "/a/sub").ok());
  put(root + "/a/x", "ax");
  put(root + "/a/sub/y", "ay");
  // A folder onto a missing path: everything under it moves.
  ASSERT_TRUE(env->RenameFile(root + "/a", root + "/b").ok());
  EXPECT_FALSE(env->FileExists(root + "/a"));
  EXPECT_EQ(read(root + "/b/x"), "ax");
  EXPECT_EQ(read(root + "/b/sub/y"), "ay");
  // Onto a non-empty folder: refused, both as they were.
  ASSERT_TRUE(env->CreateDirs(root + "/c").ok());
  put(root + "/c/z", "cz");
  EXPECT_FALSE(env->RenameFile(root + "/b", root + "/c").ok());
  EXPECT_EQ(read(root + "/c/z"), "cz");
  // Exchange: the two subtrees swap names.
  ASSERT_TRUE(env->ExchangePaths(root + "/b", root + "/c").ok());
  EXPECT_EQ(read(root + "/b/z"), "cz");
  EXPECT_EQ(read(root + "/c/x"), "ax");
  EXPECT_EQ(read(root + "/c/sub/y"), "ay");
  EXPECT_FALSE(env->FileExists(root + "/b/x"));
  EXPECT_EQ(env->ExchangePaths(root + "/b", root + "/missing").code(), Code::kNotFound);
}

TEST(MemEnv, FoldersMoveAndExchangeWithTheirContent) {
  auto env = NewMemEnv();
  CheckFolderMoves(env.get(), "/t");
}

TEST(PosixEnv, FoldersMoveAndExchangeWithTheirContent) {
  const std::string root = (std::filesystem::temp_directory_path() / ("ckpt_env_moves_" + std::to_string(::getpid()))).string();
  std::filesystem::remove_all(root);
  CheckFolderMoves(Env::Default(), root);
  std::filesystem::remove_all(root);
}

TEST(MemEnv, ReaderSeesSizeFixedAtOpen) {
  auto env = NewMemEnv();
  auto w = env->NewWritableFile("/grow");
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Append("abc").ok());
  auto r = env->NewRandomAccessFile("/grow");
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE((*w)->Append("def").ok());
  EXPECT_EQ((*r)->Size(), 3u);
  char buf[4];
  EXPECT_EQ((*r)->ReadAt(0, 4, buf).code(), Code::kOutOfRange);
  EXPECT_EQ(*env->GetFileSize("/grow"), 6u);
}

TEST(LexicallyNormal, CollapsesDotsAndSlashes) {
  using internal_io::LexicallyNormal;
  EXPECT_EQ(LexicallyNormal(""), ".");
  EXPECT_EQ(LexicallyNormal("."), ".");
  EXPECT_EQ(LexicallyNormal("./"), ".");
  EXPECT_EQ(LexicallyNormal("/"), "/");
  EXPECT_EQ(LexicallyNormal("//"), "/");
  EXPECT_EQ(LexicallyNormal("/.."), "/");
  EXPECT_EQ(LexicallyNormal("a//b/./c/"), "a/b/c");
  EXPECT_EQ(LexicallyNormal("/a/b/../c"), "/a/c");
  EXPECT_EQ(LexicallyNormal("a/.."), ".");
  EXPECT_EQ(LexicallyNormal("../a"), "../a");
  EXPECT_EQ(LexicallyNormal("../../a/.."), "../..");
  EXPECT_EQ(LexicallyNormal("./.x.ckptkit-tmp"), ".x.ckptkit-tmp");
}

TEST(PathHelpers, JoinDirnameBasename) {
  EXPECT_EQ(JoinPath("a", "b"), "a/b");
  EXPECT_EQ(JoinPath("a/", "b"), "a/b");
  EXPECT_EQ(JoinPath("", "b"), "b");
  EXPECT_EQ(JoinPath("a", "/abs"), "/abs");
  EXPECT_EQ(Dirname("a/b/c"), "a/b");
  EXPECT_EQ(Dirname("c"), ".");
  EXPECT_EQ(Dirname("/c"), "/");
  EXPECT_EQ(Basename("a/b/c"), "c");
  EXPECT_EQ(Basename("c"), "c");
}

}  // namespace
}  // namespace ckpt
