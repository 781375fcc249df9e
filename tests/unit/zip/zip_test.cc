#include "format/zip/zip.h"

#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "testing/testutil.h"
#include "util/coding.h"

namespace ckpt::zip {
namespace {

using nlohmann::json;
using ::ckpt::testing::Crc32;
using ::ckpt::testing::Unhex;

// tests/golden/zip/<name> (a test failure if it is missing).
std::string ReadGolden(const std::string& name) {
  return ::ckpt::testing::ReadRequiredSourceFile("tests/golden/zip/" + name);
}

json Manifest() { return json::parse(ReadGolden("manifest.json")); }

std::shared_ptr<const ByteSource> Src(std::string bytes, std::string name = "test.zip") {
  return std::make_shared<StringSource>(std::move(bytes), std::move(name));
}

// --------------------------------------------------------------- padding

TEST(TorchZipPadding, MatchesTorchForSmallRecords) {
  // torch_save-like first record: "x/data.pkl" at 0 -> payload at 64.
  EXPECT_EQ(TorchZipPadding(0, 10, 162, 64), 64u - (30 + 10 + 4));
  // Payload already aligned -> no padding.
  EXPECT_EQ(TorchZipPadding(30, 0, 5, 64), 0u);  // 30+0+4+30 = 64
  EXPECT_EQ(TorchZipPadding(0, 0, 0, 0), 0u);
}

TEST(TorchZipPadding, CountsZip64LocalExtraLikeTorch) {
  // Values observed in torch 2.13 output (zip64_probe.json): record
  // "archive/big" (11 bytes) of 4 GiB + 100 at 0xc0 has 0x4b-0x14... see below.
  // size >= 0xFFFFFFFF: +4 +16.
  uint64_t start = 0xc0 + 30 + 11 + 4 + 4 + 16;
  EXPECT_EQ(TorchZipPadding(0xc0, 11, (1ull << 32) + 100, 64), (64 - start % 64) % 64);
  // Offset >= 0xFFFFFFFF: +4 +8.
  start = 0x1000001bcull + 30 + 13 + 4 + 4 + 8;
  EXPECT_EQ(TorchZipPadding(0x1000001bcull, 13, 3, 64), (64 - start % 64) % 64);
  // Both.
  start = 0x100000000ull + 30 + 5 + 4 + 4 + 16 + 8;
  EXPECT_EQ(TorchZipPadding(0x100000000ull, 5, 0xFFFFFFFFull, 64), (64 - start % 64) % 64);
  // The boundary itself counts: 0xFFFFFFFF is already ZIP64 (miniz uses >=).
  EXPECT_NE(TorchZipPadding(0, 5, 0xFFFFFFFFull, 64), TorchZipPadding(0, 5, 0xFFFFFFFEull, 64));
}

// ------------------------------------------------------- golden: writer

TEST(ZipWriterGolden, ReproducesPyTorchFileWriterByteForByte) {
  const std::string golden = ReadGolden("torch_records.zip");
  json m = Manifest();
  // The serialization id is a hash torch computes; take it from the golden file.
  auto reader = ZipReader::Open(Src(golden));
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  const Entry* sid = reader->Find("archive/.data/serialization_id");
  ASSERT_NE(sid, nullptr);
  auto sid_bytes = reader->ReadEntry(*sid);
  ASSERT_TRUE(sid_bytes.ok());

  StringSink sink;
  ZipWriter w(&sink);
  for (const auto& r : m["records"]) {
    ASSERT_TRUE(w.AddEntry("archive/" + r["name"].get<std::string>(),
                           Unhex(r["hex"].get<std::string>()))
                    .ok());
  }
  ASSERT_TRUE(w.AddEntry("archive/version", "3\n").ok());
  ASSERT_TRUE(w.AddEntry("archive/byteorder", "little").ok());
  ASSERT_TRUE(w.AddEntry("archive/.data/serialization_id", *sid_bytes).ok());
  ASSERT_TRUE(w.Finish().ok());
  EXPECT_EQ(sink.str().size(), golden.size());
  EXPECT_TRUE(sink.str() == golden) << "first difference at byte "
                                    << [&] {
                                         size_t i = 0;
                                         while (i < golden.size() && i < sink.str().size() &&
                                                golden[i] == sink.str()[i])
                                           ++i;
                                         return i;
                                       }();
  EXPECT_EQ(w.Position(), golden.size());
}

TEST(ZipWriterGolden, StreamingUnsizedEntriesGiveTheSameBytes) {
  const std::string golden = ReadGolden("torch_records.zip");
  json m = Manifest();
  auto reader = ZipReader::Open(Src(golden));
  ASSERT_TRUE(reader.ok());
  auto sid_bytes = reader->ReadEntry(*reader->Find("archive/.data/serialization_id"));
  ASSERT_TRUE(sid_bytes.ok());
  StringSink sink;
  ZipWriter w(&sink);
  auto put = [&](const std::string& name, const std::string& data) {
    ASSERT_TRUE(w.BeginEntry(name).ok());
    // Position already counts the held-back local header.
    EXPECT_EQ(w.Position() % 64, 0u) << name;
    for (size_t i = 0; i < data.size(); i += 7) {
      ASSERT_TRUE(w.Append(std::string_view(data).substr(i, 7)).ok());
    }
    ASSERT_TRUE(w.EndEntry().ok());
  };
  for (const auto& r : m["records"]) {
    put("archive/" + r["name"].get<std::string>(), Unhex(r["hex"].get<std::string>()));
  }
  put("archive/version", "3\n");
  put("archive/byteorder", "little");
  put("archive/.data/serialization_id", *sid_bytes);
  ASSERT_TRUE(w.Finish().ok());
  EXPECT_TRUE(sink.str() == golden);
}

TEST(ZipWriter, EmptyRecordHasNoDescriptorAndFlags0800) {
  StringSink sink;
  ZipWriter w(&sink);
  ASSERT_TRUE(w.AddEntry("archive/e", "").ok());
  ASSERT_TRUE(w.Finish().ok());
  const std::string& s = sink.str();
  EXPECT_EQ(DecodeLE<uint16_t>(s.data() + 6), 0x0800);
  // Payload at 64, then directly the central directory.
  EXPECT_EQ(DecodeLE<uint32_t>(s.data() + 64), 0x02014b50u);
}

TEST(ZipWriter, RejectsDuplicateEmptyAndOpenMisuse) {
  StringSink sink;
  ZipWriter w(&sink);
  ASSERT_TRUE(w.AddEntry("a", "1").ok());
  EXPECT_EQ(w.AddEntry("a", "2").code(), Code::kInvalidArgument);
  EXPECT_EQ(w.BeginEntry("").code(), Code::kInvalidArgument);
  EXPECT_EQ(w.BeginEntry(std::string(kMaxNameBytes + 1, 'n')).code(), Code::kInvalidArgument);
  EXPECT_EQ(w.Append("x").code(), Code::kFailedPrecondition);
  EXPECT_EQ(w.EndEntry().code(), Code::kFailedPrecondition);
  ASSERT_TRUE(w.BeginEntry("b").ok());
  EXPECT_EQ(w.BeginEntry("c").code(), Code::kFailedPrecondition);
  EXPECT_EQ(w.Finish().code(), Code::kFailedPrecondition);
  ASSERT_TRUE(w.EndEntry().ok());
  ASSERT_TRUE(w.Finish().ok());
  EXPECT_EQ(w.Finish().code(), Code::kFailedPrecondition);
  EXPECT_EQ(w.BeginEntry("d").code(), Code::kFailedPrecondition);
}

TEST(ZipWriter, SizedEntryMustReceiveExactlyItsSize) {
  StringSink sink;
  ZipWriter w(&sink);
  ASSERT_TRUE(w.BeginEntry("a", 3).ok());
  ASSERT_TRUE(w.Append("ab").ok());
  EXPECT_EQ(w.Append("cd").code(), Code::kInvalidArgument);
  EXPECT_EQ(w.EndEntry().code(), Code::kInvalidArgument);
  ASSERT_TRUE(w.Append("c").ok());
  EXPECT_TRUE(w.EndEntry().ok());
}

TEST(ZipWriter, RespectsSinkStartOffsetAndOtherAlignments) {
  StringSink sink;
  ASSERT_TRUE(sink.Append("prefix-bytes").ok());
  ZipWriter w(&sink, 4096);
  ASSERT_TRUE(w.AddEntry("archive/data/0", std::string(100, 'q')).ok());
  ASSERT_TRUE(w.AddEntry("archive/data/1", std::string(10, 'r')).ok());
  ASSERT_TRUE(w.Finish().ok());
  auto reader = ZipReader::Open(Src(sink.str().substr(12)));
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  ASSERT_EQ(reader->entries().size(), 2u);
  EXPECT_EQ(reader->entries()[0].data_offset, 4096u);
  EXPECT_EQ(reader->entries()[1].data_offset, 8192u);
  EXPECT_EQ(*reader->ReadEntry(reader->entries()[1]), std::string(10, 'r'));
}

// ------------------------------------------------------- golden: reader

class GoldenRead : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenRead, EveryManifestValueMatches) {
  const std::string file = GetParam();
  json m = Manifest();
  const json& want = m["files"][file];
  auto reader = ZipReader::Open(Src(ReadGolden(file), file));
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  ASSERT_EQ(reader->entries().size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const Entry& e = reader->entries()[i];
    const json& w = want[i];
    SCOPED_TRACE(e.name);
    EXPECT_EQ(e.name, w["name"].get<std::string>());
    EXPECT_EQ(e.size, w["size"].get<uint64_t>());
    EXPECT_EQ(e.compressed_size, w["compressed_size"].get<uint64_t>());
    EXPECT_EQ(e.crc32, w["crc32"].get<uint32_t>());
    EXPECT_EQ(e.method, w["method"].get<uint16_t>());
    EXPECT_EQ(e.header_offset, w["header_offset"].get<uint64_t>());
    EXPECT_EQ(e.data_offset, w["data_offset"].get<uint64_t>());
    EXPECT_EQ(reader->Find(e.name), &e);
    auto data = reader->ReadEntry(e);
    ASSERT_TRUE(data.ok()) << data.status().ToString();
    EXPECT_EQ(data->size(), e.size);
    EXPECT_EQ(Crc32(*data), e.crc32);
    StringSink copy;
    ASSERT_TRUE(reader->CopyEntry(e, &copy).ok());
    EXPECT_EQ(copy.str(), *data);
    if (file.rfind("torch", 0) == 0) {
      EXPECT_EQ(e.data_offset % 64, 0u);
    }
  }
  EXPECT_EQ(reader->Find("no/such/record"), nullptr);
}

INSTANTIATE_TEST_SUITE_P(Files, GoldenRead,
                         ::testing::Values("torch_records.zip", "torch_save.pt", "py_stored.zip",
                                           "py_deflated.zip"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& c : s) {
                             if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           }
                           return s;
                         });

TEST(ZipReader, TorchSaveRecordsAndContents) {
  auto reader = ZipReader::Open(Src(ReadGolden("torch_save.pt"), "torch_save.pt"));
  ASSERT_TRUE(reader.ok());
  std::vector<std::string> names;
  for (const auto& e : reader->entries()) names.push_back(e.name);
  std::vector<std::string> want = {"torch_save/data.pkl",   "torch_save/.format_version",
                                   "torch_save/.storage_alignment", "torch_save/byteorder",
                                   "torch_save/data/0",     "torch_save/data/1",
                                   "torch_save/data/2",     "torch_save/version",
                                   "torch_save/.data/serialization_id"};
  EXPECT_EQ(names, want);
  EXPECT_EQ(*reader->ReadEntry(*reader->Find("torch_save/version")), "3\n");
  EXPECT_EQ(*reader->ReadEntry(*reader->Find("torch_save/byteorder")), "little");
  // data/0 is arange(12) as float32.
  const Entry* d0 = reader->Find("torch_save/data/0");
  ASSERT_NE(d0, nullptr);
  ASSERT_EQ(d0->size, 48u);
  float f[12];
  ASSERT_TRUE(reader->ReadRange(*d0, 0, sizeof(f), f).ok());
  for (int i = 0; i < 12; ++i) EXPECT_EQ(f[i], static_cast<float>(i));
  float one;
  ASSERT_TRUE(reader->ReadRange(*d0, 44, 4, &one).ok());
  EXPECT_EQ(one, 11.0f);
  EXPECT_EQ(reader->ReadRange(*d0, 45, 4, &one).code(), Code::kOutOfRange);
  EXPECT_EQ(reader->Find("torch_save/data/2")->size, 0u);
}

TEST(ZipReader, ReadRangeNeedsStoredRecord) {
  auto reader = ZipReader::Open(Src(ReadGolden("py_deflated.zip")));
  ASSERT_TRUE(reader.ok());
  char c;
  EXPECT_EQ(reader->ReadRange(*reader->Find("top.txt"), 0, 1, &c).code(),
            Code::kFailedPrecondition);
}

TEST(ZipReader, ReadEntryHonoursMaxBytes) {
  auto reader = ZipReader::Open(Src(ReadGolden("py_deflated.zip")));
  ASSERT_TRUE(reader.ok());
  auto r = reader->ReadEntry(*reader->Find("dir/big.bin"), 14999);
  EXPECT_EQ(r.status().code(), Code::kResourceExhausted);
  EXPECT_NE(r.status().message().find("dir/big.bin"), std::string::npos);
}

// ------------------------------------------------------------- ZIP64 paths

// A sink that keeps runs of small appends and drops large ones (payloads), so a
// > 4 GiB archive can be written without 4 GiB of memory or disk.
class SparseSink final : public ByteSink {
 public:
  Status Append(std::string_view data) override {
    if (data.size() < (1u << 16)) {
      if (!runs_.empty() && runs_.rbegin()->first + runs_.rbegin()->second.size() == pos_) {
        runs_.rbegin()->second.append(data);
      } else {
        runs_[pos_] = std::string(data);
      }
    }
    pos_ += data.size();
    return OkStatus();
  }
  uint64_t Position() const override { return pos_; }
  const std::map<uint64_t, std::string>& runs() const { return runs_; }

 private:
  uint64_t pos_ = 0;
  std::map<uint64_t, std::string> runs_;
};

// Zeros except where runs say otherwise.
class SparseSource final : public ByteSource {
 public:
  SparseSource(std::map<uint64_t, std::string> runs, uint64_t size)
      : runs_(std::move(runs)), size_(size) {}
  uint64_t Size() const override { return size_; }
  std::string_view Name() const override { return "sparse.zip"; }
  Status ReadAt(uint64_t offset, size_t n, void* dst) const override {
    if (offset > size_ || n > size_ - offset) return OutOfRangeError("sparse: past end");
    char* out = static_cast<char*>(dst);
    std::memset(out, 0, n);
    for (const auto& [o, s] : runs_) {
      uint64_t lo = std::max<uint64_t>(o, offset), hi = std::min<uint64_t>(o + s.size(), offset + n);
      if (lo < hi) std::memcpy(out + (lo - offset), s.data() + (lo - o), hi - lo);
    }
    return OkStatus();
  }

 private:
  std::map<uint64_t, std::string> runs_;
  uint64_t size_;
};

json Probe() { return json::parse(ReadGolden("zip64_probe.json")); }

std::map<uint64_t, std::string> ProbeRuns(const json& probe) {
  std::map<uint64_t, std::string> runs;
  for (const auto& r : probe["runs"]) runs[r["offset"].get<uint64_t>()] = Unhex(r["hex"]);
  return runs;
}

TEST(ZipWriterZip64, MatchesTorchAroundA4GiBRecord) {
  json probe = Probe();
  auto golden_runs = ProbeRuns(probe);
  const uint64_t big = probe["big_size"].get<uint64_t>();
  // The serialization id is in the last record; read it via the reader.
  auto shared = std::make_shared<SparseSource>(golden_runs, probe["size"].get<uint64_t>());
  auto reader = ZipReader::Open(shared);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  auto sid = reader->ReadEntry(*reader->Find("archive/.data/serialization_id"));
  ASSERT_TRUE(sid.ok()) << sid.status().ToString();

  SparseSink sink;
  ZipWriter w(&sink);
  ASSERT_TRUE(w.AddEntry("archive/a", "hello").ok());
  ASSERT_TRUE(w.AddEntry("archive/empty", "").ok());
  ASSERT_TRUE(w.BeginEntry("archive/big", big).ok());
  const std::string zeros(1u << 20, '\0');
  for (uint64_t done = 0; done < big;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(zeros.size(), big - done));
    ASSERT_TRUE(w.Append(std::string_view(zeros.data(), n)).ok());
    done += n;
  }
  ASSERT_TRUE(w.EndEntry().ok());
  ASSERT_TRUE(w.AddEntry("archive/after", "xyz").ok());
  ASSERT_TRUE(w.AddEntry("archive/version", "3\n").ok());
  ASSERT_TRUE(w.AddEntry("archive/byteorder", "little").ok());
  ASSERT_TRUE(w.AddEntry("archive/.data/serialization_id", *sid).ok());
  ASSERT_TRUE(w.Finish().ok());
  EXPECT_EQ(sink.Position(), probe["size"].get<uint64_t>());
  // Compare the two sparse images (zeros outside the kept runs): every run of
  // either side must read the same from the other.
  const uint64_t size = probe["size"].get<uint64_t>();
  SparseSource mine(sink.runs(), size), theirs(golden_runs, size);
  size_t compared = 0;
  for (const std::map<uint64_t, std::string>* runs : std::initializer_list<const std::map<uint64_t, std::string>*>{&sink.runs(), &golden_runs}) {
    for (const auto& [offset, bytes] : *runs) {
      std::string a(bytes.size(), '\0'), b(bytes.size(), '\0');
      ASSERT_TRUE(mine.ReadAt(offset, a.size(), a.data()).ok());
      ASSERT_TRUE(theirs.ReadAt(offset, b.size(), b.data()).ok());
      EXPECT_TRUE(a == b) << "run at offset " << offset;
      compared += bytes.size();
    }
  }
  EXPECT_GT(compared, 1000u);
}

TEST(ZipReaderZip64, ReadsTorchZip64Archive) {
  json probe = Probe();
  auto src = std::make_shared<SparseSource>(ProbeRuns(probe), probe["size"].get<uint64_t>());
  auto reader = ZipReader::Open(src);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  const Entry* big = reader->Find("archive/big");
  ASSERT_NE(big, nullptr);
  EXPECT_EQ(big->size, (1ull << 32) + 100);
  EXPECT_EQ(big->compressed_size, (1ull << 32) + 100);
  EXPECT_EQ(big->data_offset % 64, 0u);
  const Entry* after = reader->Find("archive/after");
  ASSERT_NE(after, nullptr);
  EXPECT_GT(after->header_offset, 0xFFFFFFFFull);
  EXPECT_EQ(after->data_offset % 64, 0u);
  EXPECT_EQ(*reader->ReadEntry(*after), "xyz");
  EXPECT_EQ(*reader->ReadEntry(*reader->Find("archive/version")), "3\n");
  char tail[4];
  ASSERT_TRUE(reader->ReadRange(*big, big->size - 4, 4, tail).ok());
  EXPECT_EQ(std::string(tail, 4), std::string(4, '\0'));
  // A 4 GiB record exceeds the default ReadEntry cap.
  EXPECT_EQ(reader->ReadEntry(*big).status().code(), Code::kResourceExhausted);
}

TEST(ZipWriterZip64, UnsizedRecordCannotCross4GiB) {
  SparseSink sink;
  ZipWriter w(&sink);
  ASSERT_TRUE(w.BeginEntry("archive/x").ok());
  const std::string chunk(1u << 20, '\0');
  Status s;
  for (int i = 0; i < 4096 && s.ok(); ++i) s = w.Append(chunk);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("BeginEntry(name, size)"), std::string::npos);
}

// ------------------------------------------------------ round trip + random

TEST(ZipRoundTrip, RandomRecordsSurviveWriteThenRead) {
  uint32_t seed = 12345;
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::srand(seed);
  StringSink sink;
  ZipWriter w(&sink);
  std::map<std::string, std::string> want;
  for (int i = 0; i < 50; ++i) {
    std::string name = "archive/data/" + std::to_string(i);
    std::string data(std::rand() % 300, '\0');
    for (char& c : data) c = static_cast<char>(std::rand());
    want[name] = data;
    ASSERT_TRUE(w.AddEntry(name, data).ok());
  }
  ASSERT_TRUE(w.Finish().ok());
  auto reader = ZipReader::Open(Src(sink.Release()));
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  ASSERT_EQ(reader->entries().size(), want.size());
  for (const auto& [name, data] : want) {
    const Entry* e = reader->Find(name);
    ASSERT_NE(e, nullptr) << name;
    EXPECT_EQ(e->data_offset % 64, 0u);
    EXPECT_EQ(*reader->ReadEntry(*e), data);
  }
}

TEST(ZipRoundTrip, EmptyArchiveIsReadable) {
  StringSink sink;
  ZipWriter w(&sink);
  ASSERT_TRUE(w.Finish().ok());
  EXPECT_EQ(sink.str().size(), 56u + 20u + 22u);
  auto reader = ZipReader::Open(Src(sink.str()));
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  EXPECT_TRUE(reader->entries().empty());
}

}  // namespace
}  // namespace ckpt::zip

namespace ckpt::zip {
namespace {

class FailingSink final : public ByteSink {
 public:
  explicit FailingSink(uint64_t fail_at) : fail_at_(fail_at) {}
  Status Append(std::string_view data) override {
    if (n_ + data.size() > fail_at_) return ResourceExhaustedError("disk full at " + std::to_string(n_));
    n_ += data.size();
    return OkStatus();
  }
  uint64_t Position() const override { return n_; }

 private:
  uint64_t fail_at_;
  uint64_t n_ = 0;
};

TEST(ZipWriter, SinkErrorsPropagateFromEveryStep) {
  // Fail at each byte boundary of a small archive: some call must return the
  // sink's error, and none may report success for the whole archive.
  StringSink full;
  {
    ZipWriter w(&full);
    ASSERT_TRUE(w.AddEntry("archive/a", "hello").ok());
    ASSERT_TRUE(w.Finish().ok());
  }
  for (uint64_t cut = 0; cut < full.str().size(); ++cut) {
    FailingSink sink(cut);
    ZipWriter w(&sink);
    Status s = w.AddEntry("archive/a", "hello");
    if (s.ok()) s = w.Finish();
    EXPECT_EQ(s.code(), Code::kResourceExhausted) << "cut at " << cut;
  }
}

TEST(ZipWriter, ZeroAlignmentIsRejected) {
  StringSink sink;
  ZipWriter w(&sink, 0);
  EXPECT_EQ(w.BeginEntry("a").code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace ckpt::zip
