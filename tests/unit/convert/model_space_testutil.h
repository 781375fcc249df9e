// Helpers for tests over the real megatron-core goldens of tests/golden/legacy
// read in model space (OpenModelSpace).
#ifndef CKPT_TESTS_UNIT_CONVERT_MODEL_SPACE_TESTUTIL_H_
#define CKPT_TESTS_UNIT_CONVERT_MODEL_SPACE_TESTUTIL_H_

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "ckpt/checkpoint.h"
#include "ckpt/convert.h"
#include "unit/checkpoint/checkpoint_testutil.h"

namespace ckpt::testing_model_space {

// tests/golden/legacy/<name>/<format> in the source tree.
inline std::string Golden(const std::string& name, const std::string& format) {
  return ::ckpt::testing::SourcePath("tests/golden/legacy/" + name + "/" + format);
}

// OpenModelSpace in inspect mode; null (and a test failure) when it fails.
inline std::unique_ptr<CheckpointReader> Open(const std::string& path) {
  OpenOptions o;
  o.pickle_mode = PickleMode::kInspect;
  Result<std::unique_ptr<CheckpointReader>> r = OpenModelSpace(path, o);
  EXPECT_TRUE(r.ok()) << path << ": " << r.status().ToString();
  return r.ok() ? std::move(*r) : nullptr;
}

// Tensor i's bytes (a test failure when the read fails).
inline std::string Bytes(const CheckpointReader& r, size_t i) {
  StringSink s;
  Status st = r.ReadTensor(i, &s);
  EXPECT_TRUE(st.ok()) << r.tensors()[i].key << ": " << st.ToString();
  return s.str();
}

}  // namespace ckpt::testing_model_space

#endif  // CKPT_TESTS_UNIT_CONVERT_MODEL_SPACE_TESTUTIL_H_
