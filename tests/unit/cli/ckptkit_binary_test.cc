// The built `ckptkit` binary (found next to this test binary): exit codes as
// diff(1) uses them: 0 ok, 1 a problem in the data, 2 usage or unreadable input.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "unit/checkpoint/checkpoint_testutil.h"

namespace ckpt::cli {
namespace {

using ::ckpt::testing::ScratchDir;
using ::ckpt::testing::SourcePath;

std::string CkptkitPath() {
  std::error_code ec;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return "";
  std::filesystem::path p = self.parent_path() / "ckptkit";
  return std::filesystem::exists(p) ? p.string() : "";
}

// Runs ckptkit with args (already shell-quoted), output discarded; the exit code.
int RunCkptkit(const std::string& args) {
  std::string cmd = "'" + CkptkitPath() + "' " + args + " >/dev/null 2>&1";
  int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

class CkptkitBinary : public ::testing::Test {
 protected:
  void SetUp() override {
    if (CkptkitPath().empty()) GTEST_SKIP() << "ckptkit is not built next to this test";
  }
};

std::string Q(const std::string& s) { return "'" + s + "'"; }

TEST_F(CkptkitBinary, InspectGoodFilesExitZero) {
  EXPECT_EQ(RunCkptkit("inspect " + Q(SourcePath("examples/sample.pt"))), 0);
  EXPECT_EQ(RunCkptkit("inspect --json " + Q(SourcePath("tests/golden/safetensors/sharded"))), 0);
  EXPECT_EQ(RunCkptkit("inspect " + Q(SourcePath("tests/golden/torch/hostile.pt"))), 0);
}

TEST_F(CkptkitBinary, CorruptFilesExitOne) {
  EXPECT_EQ(RunCkptkit("inspect " + Q(SourcePath("tests/corrupt/safetensors/truncated_in_data.safetensors"))), 1);
  EXPECT_EQ(RunCkptkit("inspect " + Q(SourcePath("tests/corrupt/safetensors/offsets_overlap.safetensors"))), 1);
  EXPECT_EQ(RunCkptkit("inspect " + Q(SourcePath("tests/golden/torch/legacy.pt"))), 1);
}

TEST_F(CkptkitBinary, MissingInputAndBadFlagsExitTwo) {
  EXPECT_EQ(RunCkptkit("inspect " + Q(SourcePath("tests/golden/torch/no_such.pt"))), 2);
  EXPECT_EQ(RunCkptkit("inspect --no-such-flag " + Q(SourcePath("examples/sample.pt"))), 2);
  EXPECT_EQ(RunCkptkit("frobnicate"), 2);
  EXPECT_EQ(RunCkptkit(""), 2);
  EXPECT_EQ(RunCkptkit("convert " + Q(SourcePath("examples/sample.pt")) + " /tmp/x --to gguf"), 2);
}

TEST_F(CkptkitBinary, ConvertExitCodes) {
  ScratchDir dir;
  EXPECT_EQ(RunCkptkit("convert -q " + Q(SourcePath("examples/sample.pt")) + " " + Q(dir.path() + "/out") +
                " --to safetensors --max-shard-size 40KB"),
            0);
  EXPECT_TRUE(std::filesystem::exists(dir.path() + "/out/model.safetensors.index.json"));
  // Strict mode refuses an unknown pickle global: a problem in the data.
  EXPECT_EQ(RunCkptkit("convert " + Q(SourcePath("tests/golden/torch/hostile.pt")) + " " +
                Q(dir.path() + "/h") + " --to torch"),
            1);
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/h/pytorch_model.bin"));
  EXPECT_EQ(RunCkptkit("convert " + Q(SourcePath("examples/sample.pt")) + " " + Q(dir.path() + "/x") +
                " --to safetensors --max-shard-size 0"),
            2);
  EXPECT_EQ(RunCkptkit("--version"), 0);
}

}  // namespace
}  // namespace ckpt::cli
