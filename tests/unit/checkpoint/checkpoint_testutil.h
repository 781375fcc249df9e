// Helpers for the checkpoint and CLI tests: the golden torch and sharded
// sets, copying source-tree files into an Env, reading every tensor, listing folders. The
// helpers every area shares (source files, CRC-32, ScratchDir, whole-file
// Env I/O) are in testing/testutil.h.
#ifndef CKPT_TESTS_UNIT_CHECKPOINT_CHECKPOINT_TESTUTIL_H_
#define CKPT_TESTS_UNIT_CHECKPOINT_CHECKPOINT_TESTUTIL_H_

#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "ckpt/checkpoint.h"
#include "ckpt/env.h"
#include "testing/testutil.h"

namespace ckpt::testing_ckpt {

// The golden torch files that have a <name>.json manifest.
inline std::vector<std::string> GoldenTorchNames() {
  return {"bigendian", "dtypes",       "hostile", "megatron_legacy", "nested",
          "params",    "small",        "state_dict", "views",        "writer_target"};
}

// Copies the source-tree file `rel` to env_path (creating its folder).
inline void CopyIntoEnv(Env* env, const std::string& rel, const std::string& env_path) {
  std::string bytes = ::ckpt::testing::ReadSourceFile(rel);
  ASSERT_FALSE(bytes.empty()) << "missing test file " << rel;
  ASSERT_TRUE(env->CreateDirs(Dirname(env_path)).ok());
  Status s = ::ckpt::testing::WriteWhole(env, env_path, bytes);
  ASSERT_TRUE(s.ok()) << s.ToString();
}

// Copies the golden transformers sharded set (tests/golden/safetensors/sharded/:
// model-0000{1,2}-of-00002.safetensors and model.safetensors.index.json) into
// env under dir.
inline void CopyShardedGoldenSet(Env* env, const std::string& dir) {
  for (const char* f : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                        "model.safetensors.index.json"}) {
    CopyIntoEnv(env, std::string("tests/golden/safetensors/sharded/") + f, dir + "/" + f);
  }
}

// Copies the golden DCP folder tests/golden/dcp/<name> (every file in it) into
// env under dir.
inline void CopyDcpGolden(Env* env, const std::string& name, const std::string& dir) {
  const std::string rel = "tests/golden/dcp/" + name;
  for (const auto& f : std::filesystem::directory_iterator(::ckpt::testing::SourcePath(rel))) {
    const std::string file = f.path().filename().string();
    CopyIntoEnv(env, rel + "/" + file, dir + "/" + file);
  }
}

// Sorted child names of dir ({} when there is no dir), or {"<error: ...>"}.
inline std::vector<std::string> ListDir(Env* env, const std::string& dir) {
  Result<std::vector<std::string>> r = env->GetChildren(dir);
  if (!r.ok() && r.status().code() == Code::kNotFound) return {};
  if (!r.ok()) return {"<error: " + r.status().ToString() + ">"};
  return *r;
}

// Every tensor's bytes, keyed by tensor key (ADD_FAILURE on a read error).
inline std::map<std::string, std::string> ReadAllTensors(const CheckpointReader& reader) {
  std::map<std::string, std::string> out;
  for (size_t i = 0; i < reader.tensors().size(); ++i) {
    StringSink sink;
    Status s = reader.ReadTensor(i, &sink);
    EXPECT_TRUE(s.ok()) << reader.tensors()[i].key << ": " << s.ToString();
    out[reader.tensors()[i].key] = sink.Release();
  }
  return out;
}

}  // namespace ckpt::testing_ckpt

#endif  // CKPT_TESTS_UNIT_CHECKPOINT_CHECKPOINT_TESTUTIL_H_
