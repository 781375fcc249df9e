// Helpers for the io tests that read an Env's files back for EXPECT_EQ. The
// scratch directory and whole-file read/write are shared with every area in
// testing/testutil.h.
#ifndef CKPT_TESTS_UNIT_IO_IO_TESTUTIL_H_
#define CKPT_TESTS_UNIT_IO_IO_TESTUTIL_H_

#include <string>

#include "ckpt/env.h"
#include "testing/testutil.h"

namespace ckpt {
namespace testing_io {

// The content of path, or "<error: ...>" (for EXPECT_EQ on file content).
inline std::string ContentOf(Env* env, const std::string& path) {
  Result<std::string> r = ::ckpt::testing::ReadWhole(env, path);
  return r.ok() ? *r : "<error: " + r.status().ToString() + ">";
}

}  // namespace testing_io
}  // namespace ckpt

#endif  // CKPT_TESTS_UNIT_IO_IO_TESTUTIL_H_
