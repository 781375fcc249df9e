// dcp::ParseMetadata on hand-built pickles (written with our own pickler, in
// the shapes torch 2.3 .. 2.13 and Megatron-Core write) and on the golden
// `.metadata` files of tests/golden/dcp; ParseDataFileName.
#include "format/dcp/metadata.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "format/pickle/pickler.h"
#include "format/pickle/value.h"
#include "testing/testutil.h"

namespace ckpt::dcp {
namespace {

using ::ckpt::pickle::Arena;
using ::ckpt::pickle::Kind;
using ::ckpt::pickle::Value;
using ::ckpt::testing::ReadSourceFile;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

constexpr char kMod[] = "torch.distributed.checkpoint.metadata";

// Builds Value graphs the way torch's pickler lays out DCP metadata: every
// dataclass is `cls.__new__(cls)` (NEWOBJ with no args) plus BUILD of its
// attribute dict (or a (None, slots) pair for slotted dataclasses).
class Builder {
 public:
  Value* Obj(const std::string& module, const std::string& name, Value* state) {
    Value* v = a_.Object(a_.Global(module, name), a_.Tuple({}), /*newobj=*/true);
    if (state != nullptr) a_.SetState(v, state);
    return v;
  }
  Value* Reduce(const std::string& module, const std::string& name, std::vector<Value*> args) {
    return a_.Object(a_.Global(module, name), a_.Tuple(args));
  }
  Value* Dict(std::vector<std::pair<std::string, Value*>> kv) {
    Value* d = a_.Dict();
    for (auto& [k, v] : kv) a_.SetItem(d, a_.String(k), v);
    return d;
  }
  Value* Size(std::vector<int64_t> dims) {
    std::vector<Value*> items;
    for (int64_t d : dims) items.push_back(a_.Int(d));
    Value* t = a_.Tuple(std::move(items));
    t->torch_size = true;
    return t;
  }
  // torch 2.13: TensorProperties state is a 5-tuple.
  Value* Props(const std::string& dtype, const std::string& module = kMod) {
    Value* layout = Reduce("torch.serialization", "_get_layout", {a_.String("torch.strided")});
    Value* memfmt = Reduce(module, "_MEM_FORMAT_ENCODING", {a_.Int(0)});
    return Obj(module, "TensorProperties",
               a_.Tuple({a_.Global("torch", dtype), layout, a_.Bool(false), memfmt, a_.Bool(false)}));
  }
  Value* ChunkMd(std::vector<int64_t> offsets, std::vector<int64_t> sizes) {
    return Obj(kMod, "ChunkStorageMetadata", Dict({{"offsets", Size(offsets)}, {"sizes", Size(sizes)}}));
  }
  Value* Tensor(Value* props, std::vector<int64_t> size, std::vector<Value*> chunks) {
    return Obj(kMod, "TensorStorageMetadata",
               Dict({{"properties", props}, {"size", Size(size)}, {"chunks", a_.List(std::move(chunks))}}));
  }
  Value* BytesMd() { return Obj(kMod, "BytesStorageMetadata", nullptr); }
  Value* Index(const std::string& fqn, Value* offset, Value* index) {
    return Obj(kMod, "MetadataIndex", Dict({{"fqn", a_.String(fqn)}, {"offset", offset}, {"index", index}}));
  }
  Value* Info(const std::string& path, int64_t offset, int64_t length, Value* transforms = nullptr) {
    std::vector<std::pair<std::string, Value*>> kv = {
        {"relative_path", a_.String(path)}, {"offset", a_.Int(offset)}, {"length", a_.Int(length)}};
    if (transforms) kv.emplace_back("transform_descriptors", transforms);
    return Obj("torch.distributed.checkpoint.filesystem", "_StorageInfo", Dict(std::move(kv)));
  }
  Value* Pairs(std::vector<std::pair<Value*, Value*>> kv) {
    Value* d = a_.Dict();
    a_.SetPairs(d, kv);
    return d;
  }
  Arena& a() { return a_; }

  // A small, valid torch 2.13-shaped Metadata: a (4, 2) float32 tensor "w" in
  // two row chunks and a bytes entry "step", all in __0_0.distcp.
  Value* Valid(const std::string& cls_module = kMod, const std::string& cls = "Metadata") {
    Value* sdm = Dict({{"w", Tensor(Props("float32"), {4, 2}, {ChunkMd({0, 0}, {2, 2}), ChunkMd({2, 0}, {2, 2})})},
                       {"step", BytesMd()}});
    Value* sd = Pairs({
        {Index("w", Size({0, 0}), a_.Int(0)), Info("__0_0.distcp", 0, 100)},
        {Index("w", Size({2, 0}), a_.Int(1)), Info("__0_0.distcp", 100, 100)},
        {Index("step", a_.None(), a_.None()), Info("__0_0.distcp", 200, 50)},
    });
    Value* sm = Obj(kMod, "StorageMeta",
                    Dict({{"checkpoint_id", Reduce("pathlib", "PosixPath", {a_.String("/"), a_.String("ckpt")})},
                          {"save_id", a_.String("abc")},
                          {"load_id", a_.None()},
                          {"modules", a_.List({})}}));
    Value* pd = Pairs({{a_.String("w"), a_.Tuple({a_.String("model"), a_.Int(0), a_.String("w")})}});
    return Obj(cls_module, cls,
               Dict({{"state_dict_metadata", sdm},
                     {"planner_data", pd},
                     {"storage_data", sd},
                     {"storage_meta", sm},
                     {"version", a_.String("1.0.0")}}));
  }

 private:
  Arena a_;
};

Result<Metadata> ParseValue(const Value* root) {
  auto bytes = pickle::PickleToString(root);
  EXPECT_TRUE(bytes.ok()) << bytes.status().ToString();
  if (!bytes.ok()) return bytes.status();
  StringSource src(*bytes, "ckpt/.metadata");
  return ParseMetadata(src);
}

// The TensorStorageMetadata dict of `root` (for mutation).
Value* FindAttr(Value* obj, const std::string& name) {
  for (const auto& [k, v] : obj->state()->dict()) {
    if (k->str() == name) return v;
  }
  return nullptr;
}

TEST(DcpMetadata, ParsesTorch213Shape) {
  Builder b;
  auto md = ParseValue(b.Valid());
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  EXPECT_EQ(md->class_name, "torch.distributed.checkpoint.metadata.Metadata");
  EXPECT_EQ(md->pickle_protocol, 2u);
  ASSERT_EQ(md->entries.size(), 2u);
  const Entry& w = md->entries[0];
  EXPECT_EQ(w.key, "w");
  EXPECT_EQ(w.type, EntryType::kTensor);
  EXPECT_EQ(w.dtype, DType::kFloat32);
  EXPECT_EQ(w.layout, "strided");
  EXPECT_EQ(w.size, (std::vector<int64_t>{4, 2}));
  ASSERT_EQ(w.chunks.size(), 2u);
  EXPECT_THAT(w.chunks[1].offsets, ElementsAre(2, 0));
  EXPECT_EQ(w.chunks[0].item, 0);
  EXPECT_EQ(w.chunks[1].item, 1);
  EXPECT_EQ(md->entries[1].type, EntryType::kBytes);
  EXPECT_EQ(md->entries[1].item, 2);
  ASSERT_EQ(md->items.size(), 3u);
  EXPECT_EQ(md->items[1].offset_in_file, 100u);
  EXPECT_EQ(md->items[1].index, 1);
  EXPECT_EQ(md->items[1].entry, 0);
  EXPECT_FALSE(md->items[2].has_offset);
  EXPECT_FALSE(md->items[2].index.has_value());
  EXPECT_EQ(md->items[2].entry, 1);
  EXPECT_EQ(md->version, "1.0.0");
  ASSERT_TRUE(md->storage_meta.has_value());
  EXPECT_EQ(md->storage_meta->checkpoint_id, "/ckpt");
  EXPECT_EQ(md->storage_meta->save_id, "abc");
  EXPECT_EQ(md->storage_meta->load_id, "");
  EXPECT_TRUE(md->has_planner_data);
  ASSERT_EQ(md->planner_paths.count("w"), 1u);
  const auto& path = md->planner_paths.at("w");
  ASSERT_EQ(path.size(), 3u);
  EXPECT_EQ(path[0].key, "model");
  EXPECT_TRUE(path[1].is_index);
  EXPECT_EQ(path[1].index, 0);
  EXPECT_TRUE(md->extra_attributes.empty());
  EXPECT_EQ(md->FindEntry("step"), 1);
  EXPECT_EQ(md->FindEntry("nope"), -1);
  // pathlib paths are allowlisted: nothing is opaque.
  EXPECT_TRUE(md->opaque_globals.empty()) << md->opaque_globals[0];
}

// torch 2.3: TensorProperties from torch.distributed._shard.sharded_tensor.metadata
// with a MEM_FORMAT_ENCODING enum and a plain torch.strided global; Metadata
// has only state_dict_metadata, planner_data and storage_data.
TEST(DcpMetadata, ParsesTorch23Shape) {
  Builder b;
  Arena& a = b.a();
  const std::string old = "torch.distributed._shard.sharded_tensor.metadata";
  Value* props = b.Obj(old, "TensorProperties",
                       a.Tuple({a.Global("torch", "bfloat16"), a.Global("torch", "strided"), a.Bool(true),
                                b.Reduce(old, "MEM_FORMAT_ENCODING", {a.Int(1)}), a.Bool(true)}));
  Value* sdm = b.Dict({{"x", b.Tensor(props, {3}, {b.ChunkMd({0}, {3})})}});
  Value* sd = b.Pairs({{b.Index("x", b.Size({0}), a.Int(0)), b.Info("__0_0.distcp", 0, 10)}});
  Value* root = b.Obj(kMod, "Metadata",
                      b.Dict({{"state_dict_metadata", sdm}, {"planner_data", a.None()}, {"storage_data", sd}}));
  auto md = ParseValue(root);
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  ASSERT_EQ(md->entries.size(), 1u);
  EXPECT_EQ(md->entries[0].dtype, DType::kBFloat16);
  EXPECT_EQ(md->entries[0].layout, "strided");
  EXPECT_TRUE(md->entries[0].requires_grad);
  EXPECT_TRUE(md->entries[0].pin_memory);
  EXPECT_EQ(md->entries[0].memory_format, 1);
  EXPECT_FALSE(md->version.has_value());
  EXPECT_FALSE(md->storage_meta.has_value());
  EXPECT_FALSE(md->has_planner_data);
  EXPECT_TRUE(md->opaque_globals.empty()) << md->opaque_globals[0];
  EXPECT_EQ(md->entries[0].chunks[0].item, 0);
}

// TensorProperties given as a state dict (a dataclass without __getstate__).
TEST(DcpMetadata, ParsesTensorPropertiesAsDict) {
  Builder b;
  Arena& a = b.a();
  Value* props = b.Obj(kMod, "TensorProperties",
                       b.Dict({{"dtype", a.Global("torch", "int16")}, {"requires_grad", a.Bool(true)}}));
  Value* root = b.Obj(kMod, "Metadata",
                      b.Dict({{"state_dict_metadata", b.Dict({{"x", b.Tensor(props, {0}, {})}})}}));
  auto md = ParseValue(root);
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  EXPECT_EQ(md->entries[0].dtype, DType::kInt16);
  EXPECT_TRUE(md->entries[0].requires_grad);
  EXPECT_TRUE(md->items.empty());
}

// A slotted dataclass pickles its state as (None, {slot: value}); a class with
// both gives (dict, slots): the two are merged.
TEST(DcpMetadata, ParsesDataclassStateAsNoneSlotsPair) {
  Builder b;
  Arena& a = b.a();
  Value* chunk = b.Obj(kMod, "ChunkStorageMetadata",
                       a.Tuple({a.None(), b.Dict({{"offsets", b.Size({0})}, {"sizes", b.Size({5})}})}));
  Value* tensor = b.Obj(kMod, "TensorStorageMetadata",
                        a.Tuple({b.Dict({{"properties", b.Props("float64")}}),
                                 b.Dict({{"size", b.Size({5})}, {"chunks", a.List({chunk})}})}));
  Value* index = b.Obj(kMod, "MetadataIndex",
                       a.Tuple({a.None(), b.Dict({{"fqn", a.String("v")}, {"offset", b.Size({0})}})}));
  Value* sd = b.Pairs({{index, b.Info("__1_0.distcp", 8, 40)}});
  Value* root = b.Obj(kMod, "Metadata",
                      a.Tuple({a.None(), b.Dict({{"state_dict_metadata", b.Dict({{"v", tensor}})},
                                                 {"storage_data", sd}})}));
  auto md = ParseValue(root);
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  ASSERT_EQ(md->entries.size(), 1u);
  EXPECT_EQ(md->entries[0].dtype, DType::kFloat64);
  EXPECT_EQ(md->entries[0].size, (std::vector<int64_t>{5}));
  ASSERT_EQ(md->entries[0].chunks.size(), 1u);
  EXPECT_THAT(md->entries[0].chunks[0].sizes, ElementsAre(5));
  EXPECT_EQ(md->entries[0].chunks[0].item, 0);
  EXPECT_EQ(md->items[0].relative_path, "__1_0.distcp");
  EXPECT_EQ(md->items[0].offset_in_file, 8u);
}

// Megatron-Core: MCoreMetadata subclass with mcore_data and all_local_plans.
TEST(DcpMetadata, KeepsMCoreMetadataAndUnknownAttributes) {
  Builder b;
  Arena& a = b.a();
  Value* root = b.Valid("megatron.core.dist_checkpointing.strategies.torch", "MCoreMetadata");
  a.SetItem(root->state(), a.String("all_local_plans"), a.List({a.None()}));
  a.SetItem(root->state(), 
      a.String("mcore_data"),
      b.Dict({{"w", b.Dict({{"nd_reformulated_orig_global_shape", a.Tuple({a.Int(2), a.Int(2), a.Int(2)})}})}}));
  a.SetItem(root->state(), a.String("future_field"), a.Int(7));
  auto md = ParseValue(root);
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  EXPECT_EQ(md->class_name, "megatron.core.dist_checkpointing.strategies.torch.MCoreMetadata");
  EXPECT_THAT(md->extra_attributes, ElementsAre("all_local_plans", "mcore_data", "future_field"));
  ASSERT_EQ(md->nd_reformulated_shapes.count("w"), 1u);
  EXPECT_EQ(md->nd_reformulated_shapes.at("w"), (std::vector<int64_t>{2, 2, 2}));
  EXPECT_EQ(md->entries.size(), 2u);
}

TEST(DcpMetadata, BytesItemWithoutOffsetLinksToBytesEntry) {
  Builder b;
  Arena& a = b.a();
  // MetadataIndex of a bytes entry as torch writes it: offset None, index None.
  Value* sdm = b.Dict({{"obj", b.BytesMd()}, {"obj2", b.BytesMd()}});
  // obj2's MetadataIndex has no offset attribute at all.
  Value* idx2 = b.Obj(kMod, "MetadataIndex", b.Dict({{"fqn", a.String("obj2")}}));
  Value* sd = b.Pairs({{b.Index("obj", a.None(), a.None()), b.Info("__0_0.distcp", 0, 12)},
                       {idx2, b.Info("__0_0.distcp", 12, 3)}});
  Value* root = b.Obj(kMod, "Metadata", b.Dict({{"state_dict_metadata", sdm}, {"storage_data", sd}}));
  auto md = ParseValue(root);
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  EXPECT_EQ(md->entries[0].item, 0);
  EXPECT_EQ(md->entries[1].item, 1);
  EXPECT_FALSE(md->items[0].has_offset);
  EXPECT_FALSE(md->items[1].has_offset);
  EXPECT_EQ(md->items[1].length, 3u);
}

TEST(DcpMetadata, KeepsTransformDescriptors) {
  Builder b;
  Arena& a = b.a();
  Value* sdm = b.Dict({{"obj", b.BytesMd()}});
  Value* sd = b.Pairs({{b.Index("obj", a.None(), a.None()),
                        b.Info("__0_0.distcp", 0, 12, a.List({a.String("stream.zstd/1")}))}});
  auto md = ParseValue(b.Obj(kMod, "Metadata", b.Dict({{"state_dict_metadata", sdm}, {"storage_data", sd}})));
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  EXPECT_THAT(md->items[0].transforms, ElementsAre("stream.zstd/1"));
}

TEST(DcpMetadata, UnknownDtypeIsUnimplemented) {
  Builder b;
  Arena& a = b.a();
  Value* root = b.Obj(kMod, "Metadata",
                      b.Dict({{"state_dict_metadata", b.Dict({{"q", b.Tensor(b.Props("float99"), {1}, {})}})}}));
  auto md = ParseValue(root);
  ASSERT_FALSE(md.ok());
  EXPECT_EQ(md.status().code(), Code::kUnimplemented) << md.status().ToString();
  EXPECT_THAT(md.status().message(), HasSubstr("torch.float99"));
  EXPECT_THAT(md.status().message(), HasSubstr("'q'"));
  EXPECT_THAT(md.status().message(), HasSubstr("ckpt/.metadata"));
  (void)a;
}

struct WrongTypeCase {
  std::string name;
  std::function<void(Builder&, Value* root)> mutate;
  std::string want;  // substring of the DataLoss message
};

class DcpMetadataWrongType : public ::testing::TestWithParam<WrongTypeCase> {};

TEST_P(DcpMetadataWrongType, IsDataLossNamingTheKey) {
  Builder b;
  Value* root = b.Valid();
  GetParam().mutate(b, root);
  auto md = ParseValue(root);
  ASSERT_FALSE(md.ok());
  EXPECT_EQ(md.status().code(), Code::kDataLoss) << md.status().ToString();
  EXPECT_THAT(md.status().message(), HasSubstr(GetParam().want));
  EXPECT_THAT(md.status().message(), HasSubstr("ckpt/.metadata"));
}

Value* W(Value* root) { return FindAttr(root, "state_dict_metadata")->dict()[0].second; }
Value* FirstChunk(Value* root) { return FindAttr(W(root), "chunks")->items()[0]; }
Value* FirstInfo(Value* root) { return FindAttr(root, "storage_data")->dict()[0].second; }

INSTANTIATE_TEST_SUITE_P(
    Cases, DcpMetadataWrongType,
    ::testing::Values(
        WrongTypeCase{"EntryNotStorageMetadata",
                      [](Builder& b, Value* r) { b.a().MutablePairs(FindAttr(r, "state_dict_metadata"))[0].second = b.a().Int(3); },
                      "entry 'w': expected TensorStorageMetadata or BytesStorageMetadata"},
        WrongTypeCase{"SizeIsString",
                      [](Builder& b, Value* r) {
                        for (auto& [k, v] : b.a().MutablePairs(W(r)->state()))
                          if (k->str() == "size") v = b.a().String("4x2");
                      },
                      "tensor 'w' size"},
        WrongTypeCase{"NegativeSize",
                      [](Builder& b, Value* r) {
                        for (auto& [k, v] : b.a().MutablePairs(W(r)->state()))
                          if (k->str() == "size") v = b.Size({-4, 2});
                      },
                      "tensor 'w' size: negative value -4"},
        WrongTypeCase{"ChunksNotList",
                      [](Builder& b, Value* r) {
                        for (auto& [k, v] : b.a().MutablePairs(W(r)->state()))
                          if (k->str() == "chunks") v = b.a().None();
                      },
                      "tensor 'w': expected a list of chunks"},
        WrongTypeCase{"ChunkOffsetFloat",
                      [](Builder& b, Value* r) {
                        Value* offsets = FindAttr(FirstChunk(r), "offsets");
                        b.a().MutableItems(offsets)[0] = b.a().Float(0.5);
                        offsets->torch_size = false;  // a plain tuple (torch.Size refuses floats)
                      },
                      "tensor 'w' chunk 0 offsets: expected an int, found float"},
        WrongTypeCase{"ChunkRankMismatch",
                      [](Builder& b, Value* r) {
                        for (auto& [k, v] : b.a().MutablePairs(FirstChunk(r)->state()))
                          if (k->str() == "sizes") v = b.Size({2});
                      },
                      "tensor 'w' chunk 0: rank of offsets (2) / sizes (1)"},
        WrongTypeCase{"ChunkWrongClass",
                      [](Builder& b, Value* r) {
                        b.a().MutableItems(FindAttr(W(r), "chunks"))[1] = b.Dict({});
                      },
                      "tensor 'w' chunk 1: expected ChunkStorageMetadata"},
        WrongTypeCase{"DtypeNotGlobal",
                      [](Builder& b, Value* r) {
                        b.a().MutableItems(FindAttr(W(r), "properties")->state())[0] = b.a().String("float32");
                      },
                      "tensor 'w' properties: expected a torch dtype"},
        WrongTypeCase{"PropertiesMissing",
                      [](Builder& b, Value* r) {
                        for (auto& [k, v] : b.a().MutablePairs(W(r)->state()))
                          if (k->str() == "properties") v = b.a().None();
                      },
                      "tensor 'w' properties: expected TensorProperties"},
        WrongTypeCase{"StorageInfoNegativeLength",
                      [](Builder& b, Value* r) {
                        for (auto& [k, v] : b.a().MutablePairs(FirstInfo(r)->state()))
                          if (k->str() == "length") v = b.a().Int(-1);
                      },
                      "storage item 'w' length: expected a non-negative int"},
        WrongTypeCase{"StorageInfoPathNotStr",
                      [](Builder& b, Value* r) {
                        for (auto& [k, v] : b.a().MutablePairs(FirstInfo(r)->state()))
                          if (k->str() == "relative_path") v = b.a().Int(0);
                      },
                      "storage item 'w': relative_path is not a str"},
        WrongTypeCase{"StorageKeyNotIndex",
                      [](Builder& b, Value* r) { b.a().MutablePairs(FindAttr(r, "storage_data"))[0].first = b.a().String("w"); },
                      "storage_data key: expected MetadataIndex"},
        WrongTypeCase{"IndexOffsetNotTuple",
                      [](Builder& b, Value* r) {
                        Value* idx = FindAttr(r, "storage_data")->dict()[1].first;
                        for (auto& [k, v] : b.a().MutablePairs(idx->state()))
                          if (k->str() == "offset") v = b.a().Int(2);
                      },
                      "MetadataIndex 'w' offset"},
        WrongTypeCase{"StorageDataNotDict",
                      [](Builder& b, Value* r) {
                        for (auto& [k, v] : b.a().MutablePairs(r->state()))
                          if (k->str() == "storage_data") v = b.a().List({});
                      },
                      "storage_data is not a dict"},
        WrongTypeCase{"TransformsNotList",
                      [](Builder& b, Value* r) {
                        b.a().SetItem(FirstInfo(r)->state(), b.a().String("transform_descriptors"),
                                                               b.a().String("stream.zstd/1"));
                      },
                      "storage item 'w': transform_descriptors is not a list"},
        WrongTypeCase{"NoStateDictMetadata",
                      [](Builder& b, Value* r) {
                        std::vector<pickle::Pair> rest(r->state()->dict().begin() + 1, r->state()->dict().end());
                        b.a().SetPairs(r->state(), rest);
                      },
                      "state_dict_metadata dict"},
        WrongTypeCase{"DuplicateKey",
                      [](Builder& b, Value* r) {
                        Value* sdm = FindAttr(r, "state_dict_metadata");
                        b.a().SetItem(sdm, b.a().String("w"), b.BytesMd());
                      },
                      "duplicate key 'w'"}),
    [](const auto& info) { return info.param.name; });

TEST(DcpMetadata, RootNotAnObjectIsDataLoss) {
  Arena a;
  Value* root = a.List({a.Int(1)});
  auto md = ParseValue(root);
  ASSERT_FALSE(md.ok());
  EXPECT_EQ(md.status().code(), Code::kDataLoss);
  EXPECT_THAT(md.status().message(), HasSubstr("expected a pickled torch.distributed.checkpoint.metadata.Metadata"));
}

TEST(DcpMetadata, NotAPickleIsDataLossNamingTheSource) {
  for (std::string bytes : {std::string(), std::string("PK\x03\x04 not a pickle"), std::string("\x80\x02}q\x00")}) {
    StringSource src(bytes, "dir/.metadata");
    auto md = ParseMetadata(src);
    ASSERT_FALSE(md.ok());
    EXPECT_EQ(md.status().code(), Code::kDataLoss) << md.status().ToString();
    EXPECT_THAT(md.status().message(), HasSubstr("dir/.metadata"));
  }
}

// A hostile pickle (os.system via REDUCE) is parsed without running anything;
// the global is listed as opaque, and the non-Metadata root is refused.
TEST(DcpMetadata, HostileGlobalIsOpaqueNeverRun) {
  Builder b;
  Arena& a = b.a();
  Value* root = b.Valid();
  a.SetItem(root->state(), a.String("evil"), b.Reduce("os", "system", {a.String("touch /tmp/pwned")}));
  auto md = ParseValue(root);
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  EXPECT_THAT(md->opaque_globals, ::testing::Contains("os.system"));
  EXPECT_THAT(md->extra_attributes, ElementsAre("evil"));
}

// Every golden .metadata parses and agrees with the sidecar torch wrote.
TEST(DcpMetadata, GoldenFilesMatchSidecars) {
  for (std::string name :
       {"ws1_plain", "ws1_threads3_empty", "ws2_threads2", "ws2_zstd", "ws3_uneven", "ws4_per_item", "all_dtypes"}) {
    SCOPED_TRACE(name);
    std::string bytes = ReadSourceFile("tests/golden/dcp/" + name + "/.metadata");
    ASSERT_FALSE(bytes.empty());
    nlohmann::json side = nlohmann::json::parse(ReadSourceFile("tests/golden/dcp/" + name + ".json"));
    StringSource src(bytes, name + "/.metadata");
    auto md = ParseMetadata(src);
    ASSERT_TRUE(md.ok()) << md.status().ToString();
    EXPECT_EQ(md->pickle_protocol, 4u);
    EXPECT_EQ(md->version, side["metadata_version"].get<std::string>());
    EXPECT_TRUE(md->opaque_globals.empty()) << md->opaque_globals[0];
    std::vector<std::string> keys;
    for (const Entry& e : md->entries) keys.push_back(e.key);
    EXPECT_EQ(keys, side["key_order"].get<std::vector<std::string>>());
    EXPECT_EQ(md->items.size(), side["storage_order"].size());
    for (auto& [key, t] : side["tensors"].items()) {
      int64_t i = md->FindEntry(key);
      ASSERT_GE(i, 0) << key;
      const Entry& e = md->entries[i];
      EXPECT_EQ(DTypeName(e.dtype), t["dtype"].get<std::string>()) << key;
      EXPECT_EQ(e.size, t["shape"].get<std::vector<int64_t>>()) << key;
      ASSERT_EQ(e.chunks.size(), t["chunks"].size()) << key;
      for (size_t c = 0; c < e.chunks.size(); ++c) {
        ASSERT_GE(e.chunks[c].item, 0) << key;
        const StorageItem& it = md->items[e.chunks[c].item];
        EXPECT_EQ(it.relative_path, t["chunks"][c]["file"].get<std::string>());
        EXPECT_EQ(it.offset_in_file, t["chunks"][c]["offset"].get<uint64_t>());
        EXPECT_EQ(it.length, t["chunks"][c]["length"].get<uint64_t>());
      }
    }
    for (auto& [key, o] : side["bytes"].items()) {
      int64_t i = md->FindEntry(key);
      ASSERT_GE(i, 0) << key;
      ASSERT_GE(md->entries[i].item, 0) << key;
      EXPECT_EQ(md->items[md->entries[i].item].offset_in_file, o["offset"].get<uint64_t>()) << key;
    }
  }
}

// The unpickler reads the three consumed classes flat (pickle::Reducer); the
// same files read by its VM alone give the same Metadata. Every .metadata
// torch and Megatron wrote for the goldens, and each one cut short.
TEST(DcpMetadata, FlatReadsGiveWhatTheVmGives) {
  size_t files = 0, flat_chunks = 0;
  for (const auto& f : std::filesystem::recursive_directory_iterator(::ckpt::testing::SourcePath("tests/golden"))) {
    if (f.path().filename() != ".metadata") continue;
    SCOPED_TRACE(f.path().string());
    ++files;
    std::string bytes = ReadSourceFile(f.path().lexically_relative(CKPT_SOURCE_DIR).string());
    ASSERT_FALSE(bytes.empty());
    StringSource src(bytes, ".metadata");
    auto flat = ParseMetadata(src);
    auto vm = internal_dcp::ParseMetadataThroughTheVm(src);
    ASSERT_TRUE(flat.ok()) << flat.status().ToString();
    ASSERT_TRUE(vm.ok()) << vm.status().ToString();
    EXPECT_EQ(internal_dcp::DebugString(*flat), internal_dcp::DebugString(*vm));
    for (const Entry& e : flat->entries) flat_chunks += e.chunks.size();
    for (size_t cut : {bytes.size() / 3, bytes.size() / 2, bytes.size() - 2}) {
      StringSource part(bytes.substr(0, cut), ".metadata");
      auto a = ParseMetadata(part);
      auto b = internal_dcp::ParseMetadataThroughTheVm(part);
      ASSERT_FALSE(a.ok());
      EXPECT_EQ(a.status().ToString(), b.status().ToString());
    }
  }
  EXPECT_GE(files, 20u);  // tests/golden/{dcp,torch_dist,megatron...}
  EXPECT_GE(flat_chunks, 1000u);
  // What the differential fuzz target found: a root that is the shared None
  // first met inside a flat-read object (its offset, which the error names,
  // must not depend on the way read).
  for (const auto& f : std::filesystem::directory_iterator(::ckpt::testing::SourcePath("tests/fuzz/seeds/dcp_metadata"))) {
    SCOPED_TRACE(f.path().string());
    StringSource src(ReadSourceFile(f.path().lexically_relative(CKPT_SOURCE_DIR).string()), ".metadata");
    auto a = ParseMetadata(src);
    auto b = internal_dcp::ParseMetadataThroughTheVm(src);
    ASSERT_EQ(a.ok(), b.ok());
    EXPECT_EQ(a.ok() ? internal_dcp::DebugString(*a) : a.status().ToString(),
              b.ok() ? internal_dcp::DebugString(*b) : b.status().ToString());
  }
}

// The chunks' and items' numbers and names live in a store the copies of a
// Metadata share: a copy stays whole after the parsed original is gone.
TEST(DcpMetadata, CopyKeepsItsViewsAfterTheOriginalIsGone) {
  std::string bytes = ReadSourceFile("tests/golden/dcp/ws2_threads2/.metadata");
  ASSERT_FALSE(bytes.empty());
  StringSource src(bytes, "ws2_threads2/.metadata");
  auto want = ParseMetadata(src);
  ASSERT_TRUE(want.ok()) << want.status().ToString();
  std::optional<Metadata> copy;
  {
    auto parsed = ParseMetadata(src);
    ASSERT_TRUE(parsed.ok());
    copy = *parsed;
  }  // the original and its shared_ptr are gone; the store lives on in the copy
  ASSERT_EQ(copy->items.size(), want->items.size());
  for (size_t i = 0; i < want->items.size(); ++i) {
    EXPECT_EQ(copy->items[i].fqn, want->items[i].fqn);
    EXPECT_EQ(copy->items[i].relative_path, want->items[i].relative_path);
    EXPECT_THAT(copy->items[i].offset, ElementsAreArray(want->items[i].offset));
  }
  for (size_t e = 0; e < want->entries.size(); ++e) {
    for (size_t c = 0; c < want->entries[e].chunks.size(); ++c) {
      EXPECT_THAT(copy->entries[e].chunks[c].offsets, ElementsAreArray(want->entries[e].chunks[c].offsets));
      EXPECT_THAT(copy->entries[e].chunks[c].sizes, ElementsAreArray(want->entries[e].chunks[c].sizes));
    }
  }
}

// A MetadataIndex's offsets are its chunk's numbers, kept once, when the
// items come in the chunks' order (torch's); in another order each item
// still gets its own offsets and links to the right chunk.
TEST(DcpMetadata, ItemOffsetsShareTheChunksNumbersOnlyWhenEqual) {
  for (bool reversed : {false, true}) {
    SCOPED_TRACE(reversed ? "items in reverse order" : "items in chunk order");
    Builder b;
    Value* sdm = b.Dict({{"w", b.Tensor(b.Props("float32"), {4, 2}, {b.ChunkMd({0, 0}, {2, 2}), b.ChunkMd({2, 0}, {2, 2})})}});
    std::vector<std::pair<Value*, Value*>> items = {
        {b.Index("w", b.Size({0, 0}), b.a().Int(0)), b.Info("__0_0.distcp", 0, 100)},
        {b.Index("w", b.Size({2, 0}), b.a().Int(1)), b.Info("__0_0.distcp", 100, 100)}};
    if (reversed) std::swap(items[0], items[1]);
    Value* root = b.Obj(kMod, "Metadata", b.Dict({{"state_dict_metadata", sdm}, {"storage_data", b.Pairs(items)}}));
    auto md = ParseValue(root);
    ASSERT_TRUE(md.ok()) << md.status().ToString();
    const Entry& w = md->entries[0];
    for (size_t c = 0; c < 2; ++c) {
      ASSERT_GE(w.chunks[c].item, 0);
      const StorageItem& it = md->items[static_cast<size_t>(w.chunks[c].item)];
      EXPECT_EQ(w.chunks[c].item, reversed ? 1 - static_cast<int64_t>(c) : static_cast<int64_t>(c));
      EXPECT_THAT(it.offset, ElementsAreArray(w.chunks[c].offsets));
      EXPECT_EQ(it.offset.data() == w.chunks[c].offsets.data(), !reversed);
    }
  }
}

// Every prefix of a golden .metadata fails cleanly (never a crash, never Internal).
TEST(DcpMetadata, EveryTruncationFailsCleanly) {
  std::string bytes = ReadSourceFile("tests/golden/dcp/ws2_threads2/.metadata");
  ASSERT_FALSE(bytes.empty());
  for (size_t n = 0; n < bytes.size(); n += 3) {
    StringSource src(bytes.substr(0, n), "cut/.metadata");
    auto md = ParseMetadata(src);
    ASSERT_FALSE(md.ok()) << n;
    EXPECT_EQ(md.status().code(), Code::kDataLoss) << n << ": " << md.status().ToString();
  }
}

TEST(DcpDataFileName, ParsesRankAndFile) {
  int64_t r = -1, f = -1;
  EXPECT_TRUE(ParseDataFileName("__3_1.distcp", &r, &f));
  EXPECT_EQ(r, 3);
  EXPECT_EQ(f, 1);
  EXPECT_TRUE(ParseDataFileName("__0_0.distcp", &r, &f));
  EXPECT_EQ(r, 0);
  EXPECT_TRUE(ParseDataFileName("__12_345.distcp", &r, &f));
  EXPECT_EQ(r, 12);
  EXPECT_EQ(f, 345);
}

TEST(DcpDataFileName, RejectsOtherNames) {
  int64_t r, f;
  for (const char* name : {"", "__.distcp", "__1.distcp", "__1_.distcp", "___1.distcp", "_1_1.distcp",
                           "__1_1.distcpx", "__1_1", "__a_1.distcp", "__1_b.distcp", "__-1_0.distcp",
                           "__1_2_3.distcp", ".metadata", "__99999999999999999999_0.distcp"}) {
    EXPECT_FALSE(ParseDataFileName(name, &r, &f)) << name;
  }
}

}  // namespace
}  // namespace ckpt::dcp
