// Helpers for the checkpoint and CLI tests: golden files, copying them into a
// MemEnv, hashing streamed tensors, listing folders.
#ifndef CKPT_TESTS_UNIT_CHECKPOINT_CHECKPOINT_TESTUTIL_H_
#define CKPT_TESTS_UNIT_CHECKPOINT_CHECKPOINT_TESTUTIL_H_

#include <gtest/gtest.h>
#include <stdlib.h>
#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "ckpt/checkpoint.h"
#include "ckpt/env.h"

namespace ckpt::testing_ckpt {

inline std::string SourcePath(const std::string& rel) {
  return std::string(CKPT_SOURCE_DIR) + "/" + rel;
}

// Whole file from the source tree ("" if missing; tests check sizes).
inline std::string ReadSourceFile(const std::string& rel) {
  std::ifstream f(SourcePath(rel), std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The golden torch files that have a <name>.json manifest.
inline std::vector<std::string> GoldenTorchNames() {
  return {"bigendian", "dtypes",       "hostile", "megatron_legacy", "nested",
          "params",    "small",        "state_dict", "views",        "writer_target"};
}

// zlib crc32 of everything appended.
class CrcSink final : public ByteSink {
 public:
  Status Append(std::string_view d) override {
    crc_ = crc32(crc_, reinterpret_cast<const Bytef*>(d.data()), static_cast<uInt>(d.size()));
    n_ += d.size();
    return OkStatus();
  }
  uint64_t Position() const override { return n_; }
  uint32_t crc() const { return static_cast<uint32_t>(crc_); }

 private:
  uLong crc_ = crc32(0, nullptr, 0);
  uint64_t n_ = 0;
};

inline uint32_t Crc32Of(std::string_view d) {
  CrcSink s;
  s.Append(d).IgnoreError();
  return s.crc();
}

inline Status WriteWhole(Env* env, const std::string& path, std::string_view data) {
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

// Copies the source-tree file `rel` to env_path (creating its folder).
inline void CopyIntoEnv(Env* env, const std::string& rel, const std::string& env_path) {
  std::string bytes = ReadSourceFile(rel);
  ASSERT_FALSE(bytes.empty()) << "missing test file " << rel;
  ASSERT_TRUE(env->CreateDirs(Dirname(env_path)).ok());
  Status s = WriteWhole(env, env_path, bytes);
  ASSERT_TRUE(s.ok()) << s.ToString();
}

// Sorted child names of dir, or {"<error: ...>"}.
inline std::vector<std::string> ListDir(Env* env, const std::string& dir) {
  Result<std::vector<std::string>> r = env->GetChildren(dir);
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

// A fresh directory on disk, removed with its contents at destruction.
class ScratchDir {
 public:
  ScratchDir() {
    const char* t = getenv("TMPDIR");
    std::string tmpl = std::string(t && *t ? t : "/tmp") + "/ckpt_ckpt_test.XXXXXX";
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

}  // namespace ckpt::testing_ckpt

#endif  // CKPT_TESTS_UNIT_CHECKPOINT_CHECKPOINT_TESTUTIL_H_
