// ckptkit's checksum manifest of a DCP folder (format/dcp/manifest.h): what
// the writers record, and what `verify --deep` finds with it that the format's
// own checks cannot (files that are each well-formed but not the saved bytes).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "checkpoint/dcp_writer.h"
#include "ckpt/checkpoint.h"
#include "ckpt/verify.h"
#include "format/dcp/manifest.h"
#include "format/dcp/writer.h"
#include "testing/testutil.h"
#include "util/strings.h"

namespace ckpt {
namespace {

using ::ckpt::internal_checkpoint::WriteDcpCheckpoint;
using ::ckpt::testing::ReadWhole;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Tensors t0..t<n-1> (float32, 16+i elements of byte `i + base`).
std::vector<dcp::EntryToWrite> Entries(int n, char base) {
  std::vector<dcp::EntryToWrite> entries;
  for (int i = 0; i < n; ++i) {
    dcp::EntryToWrite e;
    e.key = "t" + std::to_string(i);
    e.size = {16 + i};
    std::string data(static_cast<size_t>(4 * (16 + i)), static_cast<char>(base + i));
    e.chunks.push_back({{0}, e.size, [data](ByteSink* s) { return s->Append(data); }});
    entries.push_back(std::move(e));
  }
  return entries;
}

Status Put(Env* env, const std::string& path, const std::string& text) {
  return WriteFileAtomically(env, path, [&](WritableFile* f) { return f->Append(text); });
}

std::string Messages(const VerifyReport& r) {
  std::string out;
  for (const VerifyProblem& p : r.problems) out += ToString(p) + "\n";
  return out;
}

TEST(Manifest, NamesPrefixesAndRoundTrips) {
  EXPECT_EQ(dcp::ManifestFileName("__3_"), "ckptkit-manifest__3_.json");
  EXPECT_TRUE(dcp::IsManifestFileName("ckptkit-manifest__3_.json"));
  EXPECT_FALSE(dcp::IsManifestFileName("__3_0.distcp"));
  EXPECT_EQ(dcp::ManifestPrefix("ckptkit-manifest__3_.json"), "__3_");
  EXPECT_EQ(dcp::DataFilePrefix("__3_12.distcp"), "__3_");
  EXPECT_EQ(dcp::DataFilePrefix("__3_.distcp"), "");
  EXPECT_EQ(dcp::DataFilePrefix("__3_x.distcp"), "");
  EXPECT_EQ(dcp::DataFilePrefix(".metadata"), "");
  std::vector<dcp::ManifestItem> items = {{"__0_1.distcp", 0, 10, 0x0123456789abcdefULL},
                                          {"__0_0.distcp", 5, 7, 42},
                                          {"__0_1.distcp", 10, 3, UINT64_MAX}};
  const std::string text = dcp::SerializeManifest(items);
  EXPECT_THAT(text, HasSubstr("\"hash\":\"xxh3-64\""));
  EXPECT_THAT(text, HasSubstr("[0,10,\"0123456789abcdef\"]"));
  auto back = dcp::ParseManifest(text, "m.json");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ASSERT_EQ(back->size(), 3u);
  EXPECT_EQ((*back)[0].file, "__0_0.distcp");  // files sorted, items in order within a file
  EXPECT_EQ((*back)[1].xxh3, 0x0123456789abcdefULL);
  EXPECT_EQ((*back)[2].xxh3, UINT64_MAX);
  EXPECT_EQ((*back)[2].offset, 10u);
  for (const char* bad : {"", "[]", "{\"format\":\"x\"}",
                          "{\"format\":\"ckptkit-manifest\",\"version\":2,\"hash\":\"xxh3-64\",\"files\":{}}",
                          "{\"format\":\"ckptkit-manifest\",\"version\":1,\"hash\":\"md5\",\"files\":{}}",
                          "{\"format\":\"ckptkit-manifest\",\"version\":1,\"hash\":\"xxh3-64\",\"files\":{\"a\":[[1,2]]}}",
                          "{\"format\":\"ckptkit-manifest\",\"version\":1,\"hash\":\"xxh3-64\",\"files\":{\"a\":[[1,2,\"zz\"]]}}",
                          "{\"format\":\"ckptkit-manifest\",\"version\":1,\"hash\":\"xxh3-64\",\"files\":{\"a\":[[-1,2,\"0000000000000000\"]]}}"}) {
    SCOPED_TRACE(bad);
    auto r = dcp::ParseManifest(bad, "m.json");
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Code::kDataLoss);
    EXPECT_THAT(r.status().message(), HasSubstr("m.json: not a ckptkit manifest"));
  }
  // The streaming digest equals the one-shot digest, whatever the pieces.
  dcp::Xxh3Stream h;
  h.Update("hello ");
  h.Update("");
  h.Update("world");
  EXPECT_EQ(h.Digest(), dcp::Xxh3("hello world"));
  EXPECT_NE(dcp::Xxh3("hello world"), dcp::Xxh3("hello worle"));
}

class ManifestVerifyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dcp::DcpWriteOptions o;
    o.thread_count = 2;
    ASSERT_TRUE(WriteDcpCheckpoint(mem_.get(), "/a", Entries(6, 'a'), o).ok());
    ASSERT_TRUE(WriteDcpCheckpoint(mem_.get(), "/b", Entries(6, 'A'), o).ok());
  }
  VerifyReport Check(const std::string& dir, bool deep = true) {
    VerifyOptions v;
    v.env = mem_.get();
    v.deep = deep;
    auto r = Verify(dir, v);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : VerifyReport{};
  }
  std::unique_ptr<Env> mem_ = NewMemEnv();
};

TEST_F(ManifestVerifyTest, EveryItemIsRecordedAndChecked) {
  auto text = ReadWhole(mem_.get(), "/a/ckptkit-manifest__0_.json");
  ASSERT_TRUE(text.ok());
  auto items = dcp::ParseManifest(*text, "m");
  ASSERT_TRUE(items.ok());
  EXPECT_EQ(items->size(), 6u);  // one per tensor chunk
  // Each digest is XXH3 of the item's bytes in its file.
  for (const dcp::ManifestItem& it : *items) {
    auto data = ReadWhole(mem_.get(), JoinPath("/a", it.file));
    ASSERT_TRUE(data.ok());
    EXPECT_EQ(it.xxh3, dcp::Xxh3(std::string_view(*data).substr(it.offset, it.length))) << it.file << " @ " << it.offset;
  }
  VerifyReport r = Check("/a");
  EXPECT_TRUE(r.ok()) << Messages(r);
  EXPECT_EQ(r.manifests, 1u);
  EXPECT_EQ(r.checksums, 6u);
  // inspect's details name it.
  auto reader = OpenCheckpoint("/a", {mem_.get()});
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  EXPECT_EQ((*reader)->Details()["checksum_manifests"], nlohmann::json::array({"ckptkit-manifest__0_.json"}));
  VerifyReport shallow = Check("/a", false);
  EXPECT_TRUE(shallow.ok());
  EXPECT_EQ(shallow.manifests, 1u);
  EXPECT_EQ(shallow.checksums, 0u);  // digests are compared only in deep mode
}

// A byte of a stored tensor changed: the item is named with its file,
// offset and key (the zip record's CRC-32 says so too).
TEST_F(ManifestVerifyTest, AChangedByteIsNamed) {
  auto items = dcp::ParseManifest(*ReadWhole(mem_.get(), "/a/ckptkit-manifest__0_.json"), "m");
  ASSERT_TRUE(items.ok());
  const dcp::ManifestItem& it = items->back();
  std::string data = *ReadWhole(mem_.get(), JoinPath("/a", it.file));
  const size_t at = it.offset + it.length / 2;
  data[at] = static_cast<char>(data[at] ^ 0x40);
  ASSERT_TRUE(Put(mem_.get(), JoinPath("/a", it.file), data).ok());
  VerifyReport r = Check("/a");
  bool found = false;
  for (const VerifyProblem& p : r.problems) {
    if (p.message.find("differ from what was saved") == std::string::npos) continue;
    found = true;
    EXPECT_EQ(p.file, it.file);
    EXPECT_EQ(p.offset, it.offset);
    EXPECT_THAT(p.key, ::testing::StartsWith("t"));
  }
  EXPECT_TRUE(found) << Messages(r);
}

// A data file of another save of the same structure: every check of the
// format passes (sizes, archives, CRCs); the manifest does not.
TEST_F(ManifestVerifyTest, ADataFileOfAnotherSaveIsFoundByTheManifestOnly) {
  ASSERT_TRUE(Put(mem_.get(), "/a/__0_1.distcp", *ReadWhole(mem_.get(), "/b/__0_1.distcp")).ok());
  VerifyReport r = Check("/a");
  ASSERT_EQ(r.problems.size(), 3u) << Messages(r);  // the file's three items
  for (const VerifyProblem& p : r.problems) {
    EXPECT_EQ(p.file, "__0_1.distcp");
    EXPECT_THAT(p.message, HasSubstr("differ from what was saved"));
  }
  ASSERT_TRUE(mem_->RemoveFile("/a/ckptkit-manifest__0_.json").ok());
  EXPECT_TRUE(Check("/a").ok()) << "without the manifest no check can tell";
}

TEST_F(ManifestVerifyTest, AStaleOrUnreadableManifestIsAProblem) {
  // A manifest naming items .metadata does not have.
  std::vector<dcp::ManifestItem> stale = {{"__0_0.distcp", 1, 3, 7}};
  ASSERT_TRUE(Put(mem_.get(), "/a/ckptkit-manifest__0_.json", dcp::SerializeManifest(stale)).ok());
  VerifyReport r = Check("/a", false);
  EXPECT_THAT(Messages(r), HasSubstr("__0_0.distcp @ 1: the checksum manifest ckptkit-manifest__0_.json names an item"));
  EXPECT_THAT(Messages(r), HasSubstr("not in the checksum manifest ckptkit-manifest__0_.json"));
  ASSERT_TRUE(Put(mem_.get(), "/a/ckptkit-manifest__0_.json", "{").ok());
  r = Check("/a", false);
  ASSERT_EQ(r.problems.size(), 1u) << Messages(r);
  EXPECT_EQ(r.problems[0].file, "ckptkit-manifest__0_.json");
  EXPECT_THAT(r.problems[0].message, HasSubstr("not a ckptkit manifest"));
}

}  // namespace
}  // namespace ckpt
