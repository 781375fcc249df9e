// Runs every damaged DCP checkpoint of tests/corrupt/dcp/ (written by real
// torch and then damaged by make_corrupt.py there) through OpenCheckpoint,
// Details()["problems"] and ReadTensor, as expected.json says.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "ckpt/checkpoint.h"
#include "testing/testutil.h"

namespace ckpt {
namespace {

using ::ckpt::testing::ExpectEveryCorruptFileListed;
using ::ckpt::testing::LoadCorruptExpectations;
using ::ckpt::testing::ScratchDir;
using ::ckpt::testing::SourcePath;

std::string CasePath(const std::string& name) { return SourcePath("tests/corrupt/dcp/" + name); }

// "file @ offset: 'key': message", as dcp::ToString renders a Problem.
std::string Render(const nlohmann::json& p) {
  std::string s = p.value("file", std::string());
  if (p.contains("offset")) s += " @ " + std::to_string(p["offset"].get<uint64_t>());
  if (!s.empty()) s += ": ";
  if (p.contains("key")) s += "'" + p["key"].get<std::string>() + "': ";
  return s + p["message"].get<std::string>();
}

void ExpectStatus(const Status& st, const nlohmann::json& want, const std::string& what) {
  SCOPED_TRACE(what);
  if (want["code"] == "ok") {
    EXPECT_TRUE(st.ok()) << st.ToString();
    return;
  }
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(CodeName(st.code()), want["code"].get<std::string>()) << st.ToString();
  for (const auto& m : want["message"]) {
    EXPECT_THAT(st.message(), ::testing::HasSubstr(m.get<std::string>()));
  }
}

TEST(DcpCorruptCases, EachBehavesAsExpected) {
  nlohmann::json expected = LoadCorruptExpectations("dcp");
  ASSERT_GE(expected.size(), 13u);
  for (auto& [name, want] : expected.items()) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(std::filesystem::is_directory(CasePath(name)));
    std::string marker = want.value("marker", std::string());
    if (!marker.empty()) std::filesystem::remove(marker);

    auto r = OpenCheckpoint(CasePath(name));
    if (!marker.empty()) {
      EXPECT_FALSE(std::filesystem::exists(marker)) << "a hostile pickle ran";
    }
    ExpectStatus(r.ok() ? OkStatus() : r.status(), want["open"], "open");
    if (!r.ok()) {
      // The error names the folder (or its .metadata).
      EXPECT_THAT(r.status().message(), ::testing::HasSubstr(name));
      continue;
    }
    const CheckpointReader& reader = **r;
    EXPECT_EQ(reader.format(), "dcp");
    nlohmann::json details = reader.Details();
    std::vector<std::string> problems;
    for (const auto& p : details["problems"]) problems.push_back(Render(p));
    std::string all = ::testing::PrintToString(problems);
    if (want["problems"].empty()) {
      EXPECT_TRUE(problems.empty()) << all;
    }
    for (const auto& sub : want["problems"]) {
      const std::string s = sub.get<std::string>();
      EXPECT_TRUE(std::any_of(problems.begin(), problems.end(),
                              [&](const std::string& p) { return p.find(s) != std::string::npos; }))
          << "no problem contains " << s << " in " << all;
    }
    for (const auto& g : want.value("opaque_globals", nlohmann::json::array())) {
      EXPECT_THAT(details.value("opaque_globals", std::vector<std::string>{}),
                  ::testing::Contains(g.get<std::string>()));
    }
    for (auto& [key, rw] : want["read"].items()) {
      auto idx = reader.Find(key);
      ASSERT_TRUE(idx.ok()) << key;
      CountingSink sink;
      Status st = reader.ReadTensor(*idx, &sink);
      ExpectStatus(st, rw, "read " + key);
      if (st.ok()) {
        EXPECT_EQ(sink.Position(), reader.tensors()[*idx].nbytes);
      }
    }
    // Every tensor either reads completely or fails with a specific code.
    for (size_t i = 0; i < reader.tensors().size(); ++i) {
      CountingSink sink;
      Status st = reader.ReadTensor(i, &sink);
      EXPECT_NE(st.code(), Code::kInternal) << st.ToString();
      if (st.ok()) {
        EXPECT_EQ(sink.Position(), reader.tensors()[i].nbytes);
      }
    }
    if (!marker.empty()) {
      EXPECT_FALSE(std::filesystem::exists(marker)) << "a hostile pickle ran";
    }
  }
}

TEST(DcpCorruptCases, EveryFolderIsListed) { ExpectEveryCorruptFileListed("dcp", "make_corrupt.py"); }

// Byte flips anywhere in a valid data file: open and read never crash and
// never fail with Internal; a flip that changes nothing reads back fine.
TEST(DcpCorruptCases, ByteFlipsInDataFilesAreHandled) {
  for (const char* base : {"valid", "valid_zstd"}) {
    for (const auto& f : std::filesystem::directory_iterator(CasePath(base))) {
      const std::string fname = f.path().filename().string();
      if (fname.size() < 7 || fname.substr(fname.size() - 7) != ".distcp") continue;
      std::ifstream in(f.path(), std::ios::binary);
      std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      for (size_t pos = 0; pos < bytes.size(); pos += 61) {
        SCOPED_TRACE(std::string(base) + "/" + fname + " flip at " + std::to_string(pos));
        ScratchDir dir;
        std::filesystem::copy(CasePath(base), dir.path(), std::filesystem::copy_options::recursive);
        std::string b = bytes;
        b[pos] ^= 0x5a;
        std::ofstream(dir.path() + "/" + fname, std::ios::binary | std::ios::trunc) << b;
        auto r = OpenCheckpoint(dir.path());
        ASSERT_TRUE(r.ok()) << r.status().ToString();  // structure is unchanged
        for (size_t i = 0; i < (*r)->tensors().size(); ++i) {
          CountingSink sink;
          Status st = (*r)->ReadTensor(i, &sink);
          EXPECT_NE(st.code(), Code::kInternal) << st.ToString();
        }
      }
    }
  }
}

}  // namespace
}  // namespace ckpt
