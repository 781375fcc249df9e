// dcp::PlanDcpWrite (torch's _split_by_size_and_type), WriteDcpDataFile and
// SerializeDcpMetadata: the output read back through our own ParseMetadata,
// CheckStructure and OpenChunk; determinism. (Publishing through an Env under
// faults: tests/unit/checkpoint/dcp_write_fault_test.cc; loading with real
// torch: tests/interop/test_dcp_write.py.)
#include "format/dcp/writer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <xxhash.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "format/dcp/check.h"
#include "format/dcp/item.h"
#include "format/dcp/metadata.h"
#include "format/torch/torch_writer.h"
#include "testing/testutil.h"

namespace ckpt::dcp {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

std::function<Status(ByteSink*)> Bytes(std::string s) {
  return [s = std::move(s)](ByteSink* out) { return out->Append(s); };
}

// A tensor entry of float32 with one chunk per box, bytes = a pattern
// depending on the key and chunk.
EntryToWrite Tensor(std::string key, std::vector<int64_t> size,
                    std::vector<std::pair<std::vector<int64_t>, std::vector<int64_t>>> boxes = {},
                    DType dtype = DType::kFloat32) {
  EntryToWrite e;
  e.key = key;
  e.dtype = dtype;
  e.size = size;
  if (boxes.empty()) boxes.push_back({std::vector<int64_t>(size.size(), 0), size});
  for (auto& [off, sz] : boxes) {
    int64_t n = DTypeSize(dtype);
    for (int64_t d : sz) n *= d;
    std::string data(static_cast<size_t>(n), '\0');
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(key.size() * 31 + i * 7 + (off.empty() ? 0 : off[0]));
    e.chunks.push_back({off, sz, Bytes(data)});
  }
  return e;
}

EntryToWrite ByteEntry(std::string key, std::string payload) {
  EntryToWrite e;
  e.key = key;
  e.type = EntryType::kBytes;
  e.write_bytes = Bytes(std::move(payload));
  return e;
}

std::vector<std::string> Names(const PlannedFile& f, const std::vector<EntryToWrite>& entries) {
  std::vector<std::string> out;
  for (const PlannedItem& it : f.items) {
    out.push_back(it.chunk < 0 ? entries[it.entry].key : entries[it.entry].key + "#" + std::to_string(it.chunk));
  }
  return out;
}

TEST(DcpWritePlan, OneThreadKeepsEntryOrderWithBytesFirst) {
  std::vector<EntryToWrite> e = {Tensor("a", {2}), ByteEntry("step", "x"), Tensor("b", {8}),
                                 ByteEntry("lr", "y")};
  auto plan = PlanDcpWrite(e, {});
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  ASSERT_EQ(plan->size(), 1u);
  EXPECT_EQ((*plan)[0].name, "__0_0.distcp");
  EXPECT_THAT(Names((*plan)[0], e), ElementsAre("step", "lr", "a#0", "b#0"));
}

TEST(DcpWritePlan, SeveralThreadsSplitBySizeAndType) {
  // torch: bytes round-robin; tensors sorted by size (stable), each into the
  // lightest bucket (first of equals).
  std::vector<EntryToWrite> e = {Tensor("s4", {1}),  Tensor("m16", {4}), ByteEntry("b0", "x"),
                                 Tensor("l40", {10}), Tensor("m16b", {4}), ByteEntry("b1", "y"),
                                 ByteEntry("b2", "z"), ByteEntry("b3", "w"), Tensor("e0", {0})};
  DcpWriteOptions o;
  o.thread_count = 3;
  o.rank = 2;
  auto plan = PlanDcpWrite(e, o);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  ASSERT_EQ(plan->size(), 3u);
  EXPECT_EQ((*plan)[1].name, "__2_1.distcp");
  // sizes: l40 40, m16 16, m16b 16, s4 4, e0 0.
  // l40 -> 0 (40); m16 -> 1 (16); m16b -> 2 (16); s4 -> 1 (20); e0 -> 2 (16).
  EXPECT_THAT(Names((*plan)[0], e), ElementsAre("b0", "b3", "l40#0"));
  EXPECT_THAT(Names((*plan)[1], e), ElementsAre("b1", "m16#0", "s4#0"));
  EXPECT_THAT(Names((*plan)[2], e), ElementsAre("b2", "m16b#0", "e0#0"));
}

TEST(DcpWritePlan, ShardedTensorChunksWeighAsTheWholeTensor) {
  // torch 2.13 filesystem.py _item_size: tensor_data.size (the GLOBAL size)
  // times the element size, for both the sort and the bucket weights. Checked
  // against torch's own _split_by_size_and_type on the same WriteItems:
  //   [big@0, big@6] [big@2, mid] [big@4, small]
  // Weighing chunks by their own bytes would give
  //   [mid] [small, big@6] [big@0, big@2, big@4].
  std::vector<EntryToWrite> e = {Tensor("small", {5}),
                                 Tensor("big", {8}, {{{0}, {2}}, {{2}, {2}}, {{4}, {2}}, {{6}, {2}}}),
                                 Tensor("mid", {6})};
  DcpWriteOptions o;
  o.thread_count = 3;
  auto plan = PlanDcpWrite(e, o);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  ASSERT_EQ(plan->size(), 3u);
  EXPECT_THAT(Names((*plan)[0], e), ElementsAre("big#0", "big#3"));
  EXPECT_THAT(Names((*plan)[1], e), ElementsAre("big#1", "mid#0"));
  EXPECT_THAT(Names((*plan)[2], e), ElementsAre("big#2", "small#0"));
  // size stays the chunk's bytes (what the callback streams); weight is the tensor's.
  EXPECT_EQ((*plan)[0].items[0].size, 8u);
  EXPECT_EQ((*plan)[0].items[0].weight, 32u);
  EXPECT_EQ((*plan)[2].items[1].weight, 20u);
}

TEST(DcpWritePlan, WeightUsesTheElementSizeOfTheDtype) {
  // 3 float64 (24 bytes) outweighs 5 float32 (20 bytes) though it has fewer elements.
  std::vector<EntryToWrite> e = {Tensor("f32", {5}), Tensor("f64", {3}, {}, DType::kFloat64),
                                 Tensor("i8", {16}, {}, DType::kInt8)};
  DcpWriteOptions o;
  o.thread_count = 2;
  auto plan = PlanDcpWrite(e, o);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  // f64 24 -> 0; f32 20 -> 1; i8 16 -> 1 (20 < 24).
  EXPECT_THAT(Names((*plan)[0], e), ElementsAre("f64#0"));
  EXPECT_THAT(Names((*plan)[1], e), ElementsAre("f32#0", "i8#0"));
}

TEST(DcpWritePlan, RejectsTensorWhoseByteSizeOverflows) {
  EntryToWrite e = Tensor("huge", {0});
  e.size = {int64_t{1} << 62};  // numel fits int64, times 4 bytes does not fit 64 bits
  e.chunks[0].sizes = {int64_t{1} << 62};
  auto plan = PlanDcpWrite(std::vector<EntryToWrite>{e}, {});
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(plan.status().message(), HasSubstr("'huge'"));
  EXPECT_THAT(plan.status().message(), HasSubstr("overflows"));
}

TEST(DcpWritePlan, MoreThreadsThanItemsGivesEmptyFiles) {
  std::vector<EntryToWrite> e = {Tensor("a", {2})};
  DcpWriteOptions o;
  o.thread_count = 3;
  auto plan = PlanDcpWrite(e, o);
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->size(), 3u);
  EXPECT_EQ((*plan)[0].items.size(), 1u);
  EXPECT_THAT((*plan)[1].items, IsEmpty());
  EXPECT_THAT((*plan)[2].items, IsEmpty());
}

TEST(DcpWritePlan, RejectsBadInput) {
  auto expect_invalid = [](std::vector<EntryToWrite> e, const std::string& what, DcpWriteOptions o = {}) {
    auto plan = PlanDcpWrite(e, o);
    ASSERT_FALSE(plan.ok()) << what;
    EXPECT_EQ(plan.status().code(), Code::kInvalidArgument) << plan.status().ToString();
    EXPECT_THAT(plan.status().message(), HasSubstr(what));
  };
  expect_invalid({Tensor("a", {2}), ByteEntry("a", "x")}, "duplicate key 'a'");
  DcpWriteOptions zero;
  zero.thread_count = 0;
  expect_invalid({Tensor("a", {2})}, "thread_count 0", zero);
  expect_invalid({Tensor("a", {4}, {{{0}, {2}}, {{3}, {2}}})}, "outside the tensor");
  expect_invalid({Tensor("a", {4}, {{{0}, {2}}, {{1}, {3}}})}, "do not tile");
  expect_invalid({Tensor("a", {4}, {{{0}, {2}}})}, "do not tile");
  expect_invalid({Tensor("a", {2, 2}, {{{0}, {2}}})}, "rank differs");
  EntryToWrite bits = Tensor("q", {2}, {}, DType::kBits8);
  expect_invalid({bits}, "cannot be saved in DCP");
  EntryToWrite nocb = ByteEntry("o", "");
  nocb.write_bytes = nullptr;
  expect_invalid({nocb}, "without a write callback");
  expect_invalid({ByteEntry("", "x")}, "empty key");
}

// Writes all planned files into memory.
struct Written {
  std::map<std::string, std::string> files;
  std::string metadata;
};

Written WriteAll(const std::vector<EntryToWrite>& e, const DcpWriteOptions& o) {
  Written w;
  auto plan = PlanDcpWrite(e, o);
  EXPECT_TRUE(plan.ok()) << plan.status().ToString();
  if (!plan.ok()) return w;
  std::vector<WrittenItem> items;
  std::vector<uint64_t> digests;
  for (const PlannedFile& f : *plan) {
    StringSink sink;
    uint64_t digest = kFnvOffset;
    const size_t first = items.size();
    Status s = WriteDcpDataFile(e, f, &sink, &items, &digest);
    EXPECT_TRUE(s.ok()) << s.ToString();
    // The file's digest: its items' lengths and XXH3s, in order, which cover
    // every byte of the file.
    uint64_t want = kFnvOffset;
    uint64_t end = 0;
    for (size_t k = first; k < items.size(); ++k) {
      EXPECT_EQ(items[k].offset, end);
      end = items[k].offset + items[k].length;
      want = ItemDigest(want, items[k].length, XXH3_64bits(sink.str().data() + items[k].offset, items[k].length));
    }
    EXPECT_EQ(end, sink.str().size());
    EXPECT_EQ(digest, want);
    digests.push_back(digest);
    w.files[f.name] = sink.Release();
  }
  auto md = SerializeDcpMetadata(e, items, o, CombineFileDigests(digests));
  EXPECT_TRUE(md.ok()) << md.status().ToString();
  if (md.ok()) w.metadata = *md;
  return w;
}

std::vector<EntryToWrite> Sample() {
  EntryToWrite nested = Tensor("model.layers.0.w", {4, 3}, {{{0, 0}, {2, 3}}, {{2, 0}, {2, 3}}});
  nested.path = {{false, "model", 0}, {false, "layers", 0}, {true, "", 0}, {false, "w", 0}};
  return {nested,
          Tensor("bf", {5}, {}, DType::kBFloat16),
          ByteEntry("opt.step", std::string("PK\3\4fake archive", 17)),
          Tensor("scalar", {}, {}, DType::kFloat64),
          Tensor("empty", {0, 2}),
          Tensor("flags", {3}, {}, DType::kBool)};
}

TEST(DcpWrite, MetadataRoundTripsThroughParseMetadataAndCheckStructure) {
  std::vector<EntryToWrite> e = Sample();
  DcpWriteOptions o;
  o.thread_count = 2;
  o.checkpoint_id = "/ckpt/step10";
  Written w = WriteAll(e, o);
  auto md = ParseMetadata(StringSource(w.metadata, ".metadata"));
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  EXPECT_EQ(md->class_name, "torch.distributed.checkpoint.metadata.Metadata");
  EXPECT_EQ(md->version, "1.0.0");
  EXPECT_THAT(md->opaque_globals, IsEmpty());
  ASSERT_TRUE(md->storage_meta.has_value());
  EXPECT_EQ(md->storage_meta->checkpoint_id, "/ckpt/step10");
  EXPECT_EQ(md->storage_meta->save_id.size(), 36u);
  ASSERT_EQ(md->entries.size(), e.size());
  for (size_t i = 0; i < e.size(); ++i) {
    SCOPED_TRACE(e[i].key);
    const Entry& got = md->entries[i];
    EXPECT_EQ(got.key, e[i].key);
    EXPECT_EQ(got.type, e[i].type);
    if (got.type == EntryType::kBytes) {
      ASSERT_GE(got.item, 0);
      const StorageItem& it = md->items[static_cast<size_t>(got.item)];
      EXPECT_FALSE(it.has_offset);
      EXPECT_EQ(w.files[std::string(it.relative_path)].substr(it.offset_in_file, it.length), std::string("PK\3\4fake archive", 17));
      continue;
    }
    EXPECT_EQ(got.dtype, e[i].dtype);
    EXPECT_EQ(got.size, e[i].size);
    EXPECT_EQ(got.layout, "strided");
    ASSERT_EQ(got.chunks.size(), e[i].chunks.size());
    for (size_t c = 0; c < got.chunks.size(); ++c) {
      EXPECT_THAT(got.chunks[c].offsets, ElementsAreArray(e[i].chunks[c].offsets));
      EXPECT_THAT(got.chunks[c].sizes, ElementsAreArray(e[i].chunks[c].sizes));
      ASSERT_GE(got.chunks[c].item, 0);
      const StorageItem& it = md->items[static_cast<size_t>(got.chunks[c].item)];
      ASSERT_TRUE(it.index.has_value());
      EXPECT_EQ(*it.index, static_cast<int64_t>(c));
      // The chunk's archive holds exactly the bytes the callback streamed.
      auto file = std::make_shared<StringSource>(w.files[std::string(it.relative_path)], std::string(it.relative_path));
      auto arch = OpenChunk(file, got, got.chunks[c], it);
      ASSERT_TRUE(arch.ok()) << arch.status().ToString();
      StringSink want, have;
      ASSERT_TRUE(e[i].chunks[c].write(&want).ok());
      ASSERT_TRUE(arch->archive->ReadTensor(*arch->tensor, &have).ok());
      EXPECT_EQ(have.str(), want.str());
      EXPECT_EQ(arch->archive->archive_name(), "archive");
    }
  }
  // planner_data: the given path, else (key,).
  ASSERT_EQ(md->planner_paths.count("model.layers.0.w"), 1u);
  const auto& p = md->planner_paths.at("model.layers.0.w");
  ASSERT_EQ(p.size(), 4u);
  EXPECT_EQ(p[0].key, "model");
  EXPECT_TRUE(p[2].is_index);
  EXPECT_EQ(p[2].index, 0);
  ASSERT_EQ(md->planner_paths.at("bf").size(), 1u);
  EXPECT_EQ(md->planner_paths.at("bf")[0].key, "bf");

  dcp::FileSizes sizes;
  for (const auto& [name, data] : w.files) sizes[name] = data.size();
  EXPECT_THAT(CheckStructure(*md, sizes), IsEmpty());
}

TEST(DcpWrite, ItemsAreBackToBackBytesFirst) {
  std::vector<EntryToWrite> e = Sample();
  Written w = WriteAll(e, {});
  auto md = ParseMetadata(StringSource(w.metadata));
  ASSERT_TRUE(md.ok());
  ASSERT_EQ(w.files.size(), 1u);
  uint64_t pos = 0;
  ASSERT_FALSE(md->items.empty());
  EXPECT_FALSE(md->items[0].has_offset);  // the bytes entry comes first
  for (const StorageItem& it : md->items) {
    EXPECT_EQ(it.offset_in_file, pos) << it.fqn;
    pos += it.length;
  }
  EXPECT_EQ(pos, w.files.begin()->second.size());
}

TEST(DcpWrite, OutputIsDeterministicAndSaveIdFollowsContent) {
  Written a = WriteAll(Sample(), {});
  Written b = WriteAll(Sample(), {});
  EXPECT_EQ(a.files, b.files);
  EXPECT_EQ(a.metadata, b.metadata);

  std::vector<EntryToWrite> changed = Sample();
  changed[1].chunks[0].write = Bytes(std::string(10, '\x7f'));
  Written c = WriteAll(changed, {});
  auto ma = ParseMetadata(StringSource(a.metadata));
  auto mc = ParseMetadata(StringSource(c.metadata));
  ASSERT_TRUE(ma.ok() && mc.ok());
  EXPECT_NE(ma->storage_meta->save_id, mc->storage_meta->save_id);
}

TEST(DcpWrite, CallbackWithWrongByteCountFailsNamingTheChunk) {
  std::vector<EntryToWrite> e = {Tensor("w", {4, 2}, {{{0, 0}, {2, 2}}, {{2, 0}, {2, 2}}})};
  e[0].chunks[1].write = Bytes("short");
  auto plan = PlanDcpWrite(e, {});
  ASSERT_TRUE(plan.ok());
  StringSink sink;
  std::vector<WrittenItem> items;
  Status s = WriteDcpDataFile(e, (*plan)[0], &sink, &items);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.ToString(), HasSubstr("tensor 'w' chunk at [2, 0]"));
  EXPECT_THAT(s.ToString(), HasSubstr("__0_0.distcp"));
}

TEST(DcpWrite, MetadataRefusesEntriesThatWereNotWritten) {
  std::vector<EntryToWrite> e = {Tensor("a", {2}), Tensor("b", {2})};
  auto plan = PlanDcpWrite(e, {});
  ASSERT_TRUE(plan.ok());
  std::vector<WrittenItem> items = {{0, 0, "__0_0.distcp", 0, 10}};
  auto md = SerializeDcpMetadata(e, items, {}, 0);
  ASSERT_FALSE(md.ok());
  EXPECT_THAT(md.status().message(), HasSubstr("entry 'b'"));
}

}  // namespace
}  // namespace ckpt::dcp

namespace ckpt::dcp {
namespace {

// The GLOBAL opcodes of a protocol-2 pickle: "module\nname\n" after 'c'.
bool HasGlobal(const std::string& pkl, const std::string& module, const std::string& name) {
  return pkl.find("c" + module + "\n" + name + "\n") != std::string::npos;
}

TEST(DcpMetadataLayout, NamesRoundTrip) {
  for (MetadataLayout l : {MetadataLayout::kTorch2_13, MetadataLayout::kTorch2_3, MetadataLayout::kTorch2_0}) {
    auto back = ParseMetadataLayout(MetadataLayoutName(l));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, l);
  }
  auto bad = ParseMetadataLayout("torch1.9");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("torch2.3"));
}

TEST(DcpMetadataLayout, DefaultHasStorageMetaAndVersion) {
  Written w = WriteAll(Sample(), {});
  EXPECT_TRUE(HasGlobal(w.metadata, "torch.distributed.checkpoint.metadata", "StorageMeta"));
  EXPECT_TRUE(HasGlobal(w.metadata, "torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"));
  EXPECT_TRUE(HasGlobal(w.metadata, "torch.distributed.checkpoint.metadata", "TensorProperties"));
  EXPECT_NE(w.metadata.find("storage_meta"), std::string::npos);
  EXPECT_NE(w.metadata.find("1.0.0"), std::string::npos);
}

TEST(DcpMetadataLayout, Torch2_3OmitsStorageMetaAndVersionOnly) {
  DcpWriteOptions o;
  o.thread_count = 2;
  o.checkpoint_id = "/ckpt";  // dropped with storage_meta
  Written now = WriteAll(Sample(), o);
  o.metadata_layout = MetadataLayout::kTorch2_3;
  Written old = WriteAll(Sample(), o);
  EXPECT_EQ(old.files, now.files);  // the data files do not depend on the layout
  EXPECT_FALSE(HasGlobal(old.metadata, "torch.distributed.checkpoint.metadata", "StorageMeta"));
  EXPECT_EQ(old.metadata.find("storage_meta"), std::string::npos);
  EXPECT_EQ(old.metadata.find("version"), std::string::npos);
  EXPECT_EQ(old.metadata.find("/ckpt"), std::string::npos);
  EXPECT_TRUE(HasGlobal(old.metadata, "torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"));
  // Everything before storage_meta is the same object graph: the default's
  // pickle starts with the old one minus its closing SETITEMS, BUILD, STOP
  // (the default goes on with the storage_meta and version items).
  ASSERT_GE(old.metadata.size(), 3u);
  const size_t common = old.metadata.size() - 3;
  EXPECT_EQ(old.metadata.substr(common), "ub.");
  EXPECT_EQ(now.metadata.substr(0, common), old.metadata.substr(0, common));
  EXPECT_EQ(now.metadata.substr(common, 17), std::string("X\x0c\0\0\0storage_meta", 17));

  auto a = ParseMetadata(StringSource(now.metadata));
  auto b = ParseMetadata(StringSource(old.metadata));
  ASSERT_TRUE(a.ok() && b.ok()) << b.status().ToString();
  EXPECT_FALSE(b->storage_meta.has_value());
  EXPECT_FALSE(b->version.has_value());
  EXPECT_THAT(b->opaque_globals, IsEmpty());
  EXPECT_THAT(b->extra_attributes, IsEmpty());
  ASSERT_EQ(b->entries.size(), a->entries.size());
  ASSERT_EQ(b->items.size(), a->items.size());
  for (size_t i = 0; i < a->items.size(); ++i) {
    EXPECT_EQ(b->items[i].relative_path, a->items[i].relative_path);
    EXPECT_EQ(b->items[i].offset_in_file, a->items[i].offset_in_file);
    EXPECT_EQ(b->items[i].length, a->items[i].length);
  }
}

TEST(DcpMetadataLayout, Torch2_0UsesShardedTensorPropertiesClasses) {
  DcpWriteOptions o;
  o.metadata_layout = MetadataLayout::kTorch2_0;
  Written w = WriteAll(Sample(), o);
  const std::string shard = "torch.distributed._shard.sharded_tensor.metadata";
  EXPECT_TRUE(HasGlobal(w.metadata, shard, "TensorProperties"));
  EXPECT_TRUE(HasGlobal(w.metadata, shard, "MEM_FORMAT_ENCODING"));
  EXPECT_FALSE(HasGlobal(w.metadata, "torch.distributed.checkpoint.metadata", "TensorProperties"));
  EXPECT_FALSE(HasGlobal(w.metadata, "torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"));
  EXPECT_FALSE(HasGlobal(w.metadata, "torch.distributed.checkpoint.metadata", "StorageMeta"));
  EXPECT_EQ(w.metadata.find("version"), std::string::npos);
  // The rest of the graph is unchanged.
  EXPECT_TRUE(HasGlobal(w.metadata, "torch.distributed.checkpoint.metadata", "TensorStorageMetadata"));
  EXPECT_TRUE(HasGlobal(w.metadata, "torch.distributed.checkpoint.filesystem", "_StorageInfo"));
  EXPECT_TRUE(HasGlobal(w.metadata, "torch.serialization", "_get_layout"));

  auto md = ParseMetadata(StringSource(w.metadata));
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  EXPECT_THAT(md->opaque_globals, IsEmpty());
  std::vector<EntryToWrite> e = Sample();
  ASSERT_EQ(md->entries.size(), e.size());
  EXPECT_EQ(md->entries[1].dtype, DType::kBFloat16);
  EXPECT_EQ(md->entries[1].memory_format, 0);
  EXPECT_FALSE(md->entries[1].requires_grad);
}

TEST(DcpMetadataLayout, UnknownLayoutValueIsRefused) {
  DcpWriteOptions o;
  o.metadata_layout = static_cast<MetadataLayout>(7);
  std::vector<EntryToWrite> e = {Tensor("a", {2})};
  std::vector<WrittenItem> items = {{0, 0, "__0_0.distcp", 0, 10}};
  auto md = SerializeDcpMetadata(e, items, o, 0);
  ASSERT_FALSE(md.ok());
  EXPECT_EQ(md.status().code(), Code::kInvalidArgument);
}

TEST(DcpWrite, FileDigestsCombineInPlanOrder) {
  const uint64_t d[] = {1, 2};
  const uint64_t r[] = {2, 1};
  EXPECT_NE(CombineFileDigests(d), CombineFileDigests(r));
  EXPECT_EQ(CombineFileDigests({}), kFnvOffset);
  // One file: FNV-1a over its digest's 8 little-endian bytes.
  const uint64_t one[] = {0x0102030405060708ull};
  EXPECT_EQ(CombineFileDigests(one), Fnv1a64(kFnvOffset, std::string("\x08\x07\x06\x05\x04\x03\x02\x01", 8)));
}

}  // namespace
}  // namespace ckpt::dcp

namespace ckpt::dcp {
namespace {

// Golden output of every MetadataLayout for a tensors-only sample (two files),
// kept in tests/unit/dcp/testdata/metadata_layouts/<layout>/ so that
// tests/interop/test_dcp_write.py can load the very same bytes with stock
// torch. CKPT_UPDATE_GOLDEN=1 rewrites them.
TEST(DcpMetadataLayout, OutputMatchesTheGoldenFilesTorchLoads) {
  std::vector<EntryToWrite> sample;
  for (EntryToWrite& e : Sample()) {
    if (e.type == EntryType::kTensor) sample.push_back(std::move(e));
  }
  const bool update = std::getenv("CKPT_UPDATE_GOLDEN") != nullptr;
  for (MetadataLayout l : {MetadataLayout::kTorch2_13, MetadataLayout::kTorch2_3, MetadataLayout::kTorch2_0}) {
    SCOPED_TRACE(std::string(MetadataLayoutName(l)));
    DcpWriteOptions o;
    o.thread_count = 2;
    o.metadata_layout = l;
    Written w = WriteAll(sample, o);
    w.files[".metadata"] = w.metadata;
    const std::string dir = "tests/unit/dcp/testdata/metadata_layouts/" + std::string(MetadataLayoutName(l));
    for (const auto& [name, data] : w.files) {
      if (update) {
        std::filesystem::create_directories(::ckpt::testing::SourcePath(dir));
        std::ofstream(::ckpt::testing::SourcePath(dir + "/" + name), std::ios::binary) << data;
      }
      EXPECT_TRUE(::ckpt::testing::ReadRequiredSourceFile(dir + "/" + name) == data) << name;
    }
  }
}

}  // namespace
}  // namespace ckpt::dcp
