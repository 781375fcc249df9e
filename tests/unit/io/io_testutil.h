// Helpers for the io tests: a scratch directory and whole-file read/write.
#ifndef CKPT_TESTS_UNIT_IO_IO_TESTUTIL_H_
#define CKPT_TESTS_UNIT_IO_IO_TESTUTIL_H_

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <string>

#include "ckpt/env.h"

namespace ckpt {
namespace testing_io {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents at
// destruction.
class ScratchDir {
 public:
  ScratchDir() {
    const char* t = getenv("TMPDIR");
    std::string tmpl = std::string(t && *t ? t : "/tmp") + "/ckpt_io_test.XXXXXX";
    char* p = mkdtemp(tmpl.data());
    EXPECT_NE(p, nullptr) << "mkdtemp " << tmpl;
    path_ = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline Status WriteString(Env* env, const std::string& path, std::string_view data) {
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> f, env->NewWritableFile(path));
  CKPT_RETURN_IF_ERROR(f->Append(data));
  CKPT_RETURN_IF_ERROR(f->Sync());
  return f->Close();
}

inline Result<std::string> ReadWhole(Env* env, const std::string& path) {
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> f, env->NewRandomAccessFile(path));
  std::string out(f->Size(), '\0');
  CKPT_RETURN_IF_ERROR(f->ReadAt(0, out.size(), out.data()));
  return out;
}

// The content of path, or "<error: ...>" (for EXPECT_EQ on file content).
inline std::string ContentOf(Env* env, const std::string& path) {
  Result<std::string> r = ReadWhole(env, path);
  return r.ok() ? *r : "<error: " + r.status().ToString() + ">";
}

}  // namespace testing_io
}  // namespace ckpt

#endif  // CKPT_TESTS_UNIT_IO_IO_TESTUTIL_H_
