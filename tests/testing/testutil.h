// Helpers shared by the unit tests of every area (tests/unit/<area>/): files
// from the source tree, CRC-32, byte-string diffs, scratch directories, whole-
// file I/O through an Env, and the loop over a corrupt corpus
// (tests/corrupt/<area>/expected.json).
//
// Header-only: each test binary compiles what it uses, so a binary that never
// calls the Env helpers does not need ckpt_io. Every function may be called
// from any test thread; ScratchDir and CrcSink are single-owner objects.
// Paths named "rel" are relative to CKPT_SOURCE_DIR (the repository root, a
// compile definition of every test binary).
#ifndef CKPT_TESTS_TESTING_TESTUTIL_H_
#define CKPT_TESTS_TESTING_TESTUTIL_H_

#include <gtest/gtest.h>
#include <stdlib.h>
#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ckpt/byte_source.h"
#include "ckpt/env.h"
#include "ckpt/status.h"

namespace ckpt::testing {

// ------------------------------------------------------------ source files

// Absolute path of `rel` in the source tree.
inline std::string SourcePath(const std::string& rel) {
  return std::string(CKPT_SOURCE_DIR) + "/" + rel;
}

// Whole file `rel` from the source tree; "" when it cannot be opened (callers
// that need it check the size).
inline std::string ReadSourceFile(const std::string& rel) {
  std::ifstream f(SourcePath(rel), std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// As ReadSourceFile, and a (non-fatal) test failure naming the path when the
// file cannot be opened.
inline std::string ReadRequiredSourceFile(const std::string& rel) {
  std::ifstream f(SourcePath(rel), std::ios::binary);
  EXPECT_TRUE(f.good()) << SourcePath(rel);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// ------------------------------------------------------------------- bytes

// zlib crc32 of everything appended; also records the largest single Append
// (to check that streaming readers bound their pieces).
class CrcSink final : public ByteSink {
 public:
  Status Append(std::string_view d) override {
    crc_ = crc32(crc_, reinterpret_cast<const Bytef*>(d.data()), static_cast<uInt>(d.size()));
    n_ += d.size();
    max_piece_ = std::max(max_piece_, d.size());
    return OkStatus();
  }
  uint64_t Position() const override { return n_; }
  uint32_t crc() const { return static_cast<uint32_t>(crc_); }
  size_t max_piece() const { return max_piece_; }

 private:
  uLong crc_ = crc32(0, nullptr, 0);
  uint64_t n_ = 0;
  size_t max_piece_ = 0;
};

// zlib crc32 of d (as zip records and the golden manifests store it).
inline uint32_t Crc32(std::string_view d) {
  return static_cast<uint32_t>(
      crc32(0, reinterpret_cast<const Bytef*>(d.data()), static_cast<uInt>(d.size())));
}

// Index of the first byte where a and b differ (the shorter size when one is
// a prefix of the other; the size when equal).
inline size_t FirstDiff(const std::string& a, const std::string& b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return i;
}

// Bytes of a lower/upper-case hex string (as the golden manifests write
// them); a trailing odd digit is ignored. REQUIRES: only hex digits.
inline std::string Unhex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

// ---------------------------------------------------------------- on disk

// A fresh directory under $TMPDIR (or /tmp), removed with its contents at
// destruction. A failed mkdtemp is a test failure.
class ScratchDir {
 public:
  ScratchDir() {
    const char* t = getenv("TMPDIR");
    std::string tmpl = std::string(t && *t ? t : "/tmp") + "/ckpt_test.XXXXXX";
    char* p = mkdtemp(tmpl.data());
    EXPECT_NE(p, nullptr) << "mkdtemp " << tmpl;
    path_ = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// ----------------------------------------------------------- through an Env

// Writes data as the whole of path (create/truncate, append, sync, close).
// Errors: those of the Env's file operations.
inline Status WriteWhole(Env* env, const std::string& path, std::string_view data) {
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> f, env->NewWritableFile(path));
  CKPT_RETURN_IF_ERROR(f->Append(data));
  CKPT_RETURN_IF_ERROR(f->Sync());
  return f->Close();
}

// The whole content of path. Errors: those of NewRandomAccessFile / ReadAt.
inline Result<std::string> ReadWhole(Env* env, const std::string& path) {
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> f, env->NewRandomAccessFile(path));
  std::string out(f->Size(), '\0');
  CKPT_RETURN_IF_ERROR(f->ReadAt(0, out.size(), out.data()));
  return out;
}

// ---------------------------------------------------------- corrupt corpora

// "tests/corrupt/<area>/": a folder of hostile files and expected.json, which
// maps each file name to {"code": CodeName, "message": substring, ...}.
inline std::string CorruptDir(std::string_view area) {
  return "tests/corrupt/" + std::string(area) + "/";
}

// expected.json of tests/corrupt/<area>/ (throws, failing the test, when it
// is missing or not JSON).
inline nlohmann::json LoadCorruptExpectations(std::string_view area) {
  return nlohmann::json::parse(ReadSourceFile(CorruptDir(area) + "expected.json"));
}

// Calls check(file, want, bytes) for every case of tests/corrupt/<area>/
// under SCOPED_TRACE(file), where want is the case's expected.json entry (a
// mutable nlohmann::json&, so want["absent_key"] reads as null rather than
// asserting) and bytes the file's content ("" if unreadable). Fails (fatally) unless there
// are at least min_cases; stops at the first fatal failure inside check, as
// an ASSERT in the loop body would.
template <typename CheckFn>
void ForEachCorruptCase(std::string_view area, size_t min_cases, CheckFn&& check) {
  const std::string dir = CorruptDir(area);
  nlohmann::json expected = LoadCorruptExpectations(area);
  ASSERT_GE(expected.size(), min_cases);
  for (auto& [file, want] : expected.items()) {
    SCOPED_TRACE(file);
    check(file, want, ReadSourceFile(dir + file));
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// Every file in tests/corrupt/<area>/ other than expected.json and
// generator_script has an entry in expected.json.
inline void ExpectEveryCorruptFileListed(std::string_view area,
                                         std::string_view generator_script) {
  const nlohmann::json expected = LoadCorruptExpectations(area);
  for (const auto& f : std::filesystem::directory_iterator(SourcePath(CorruptDir(area)))) {
    std::string name = f.path().filename().string();
    if (name == "expected.json" || name == generator_script) continue;
    EXPECT_TRUE(expected.contains(name)) << name;
  }
}

// ------------------------------------------------------- crash-point budget

// The op counts after which a crash-at-every-step test crashes a run of
// `steps` mutating ops: every point 0..steps when that is at most `budget`
// points (or CKPT_FAULT_EXHAUSTIVE=1 is set), else every point of the first
// `head` and the last `tail` ops (where files are opened and where the commit
// renames, syncs and tracker happen) and an even stride over the data writes
// between them, `budget` points in all. Ascending, no duplicates.
inline std::vector<uint64_t> CrashPoints(uint64_t steps, uint64_t budget = 200, uint64_t head = 16,
                                         uint64_t tail = 64) {
  std::vector<uint64_t> out;
  const char* all = ::getenv("CKPT_FAULT_EXHAUSTIVE");
  if (steps + 1 <= budget || (all != nullptr && std::string_view(all) == "1")) {
    for (uint64_t n = 0; n <= steps; ++n) out.push_back(n);
    return out;
  }
  head = std::min(head, steps + 1);
  tail = std::min(tail, steps + 1 - head);
  const uint64_t middle_begin = head, middle_end = steps + 1 - tail;  // [begin, end)
  const uint64_t middle_budget = budget > head + tail ? budget - head - tail : 1;
  const uint64_t stride = std::max<uint64_t>(1, (middle_end - middle_begin + middle_budget - 1) / middle_budget);
  for (uint64_t n = 0; n < head; ++n) out.push_back(n);
  for (uint64_t n = middle_begin; n < middle_end; n += stride) out.push_back(n);
  for (uint64_t n = middle_end; n <= steps; ++n) out.push_back(n);
  return out;
}

}  // namespace ckpt::testing

#endif  // CKPT_TESTS_TESTING_TESTUTIL_H_
