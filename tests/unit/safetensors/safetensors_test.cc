#include "format/safetensors/safetensors.h"

#include <gtest/gtest.h>

#include <string>

#include "testing/testutil.h"
#include "util/coding.h"

namespace ckpt::safetensors {
namespace {

using nlohmann::json;

using ::ckpt::testing::Crc32;
using ::ckpt::testing::ReadRequiredSourceFile;
using ::ckpt::testing::SourcePath;
using ::ckpt::testing::Unhex;

// Relative to the source tree, as ReadRequiredSourceFile takes it.
std::string GoldenDir() { return "tests/golden/safetensors/"; }

const json& Manifest() {
  static const json m = json::parse(ReadRequiredSourceFile(GoldenDir() + "manifest.json"));
  return m;
}

std::string Mk(std::string_view header, std::string_view data = "") {
  std::string out;
  PutLE<uint64_t>(&out, header.size());
  out.append(header);
  out.append(data);
  return out;
}

Result<Header> Parse(std::string bytes) { return ReadHeader(StringSource(std::move(bytes), "t.st")); }

// Checks a parsed header against a manifest description.
void ExpectMatches(const std::string& rel, const json& want) {
  StringSource src(ReadRequiredSourceFile(rel), SourcePath(rel));
  auto h = ReadHeader(src);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->header_size, want["header_size"].get<uint64_t>());
  EXPECT_EQ(h->data_start, 8 + want["header_size"].get<uint64_t>());
  EXPECT_EQ(src.Size(), want["file_size"].get<uint64_t>());
  if (want["metadata"].is_null()) {
    EXPECT_FALSE(h->has_metadata);
    EXPECT_TRUE(h->metadata.empty());
  } else {
    EXPECT_TRUE(h->has_metadata);
    using StrMap = std::map<std::string, std::string>;
    EXPECT_EQ(h->metadata, want["metadata"].get<StrMap>());
  }
  ASSERT_EQ(h->tensors.size(), want["tensors"].size());
  uint64_t prev_end = 0;
  for (const TensorEntry& t : h->tensors) {
    SCOPED_TRACE(t.name);
    ASSERT_TRUE(want["tensors"].contains(t.name));
    const json& w = want["tensors"][t.name];
    EXPECT_EQ(t.dtype_name, w["dtype"].get<std::string>());
    if (t.dtype != DType::kFloat4_e2m1fn_x2) {
      EXPECT_EQ(std::string(DTypeSafetensorsName(t.dtype)), t.dtype_name);
    }
    EXPECT_EQ(t.shape, w["shape"].get<std::vector<int64_t>>());
    EXPECT_EQ(t.begin, w["data_offsets"][0].get<uint64_t>());
    EXPECT_EQ(t.end, w["data_offsets"][1].get<uint64_t>());
    EXPECT_EQ(t.begin, prev_end);  // data-section order
    prev_end = t.end;
    std::string bytes(t.nbytes(), '\0');
    ASSERT_TRUE(src.ReadAt(h->data_start + t.begin, bytes.size(), bytes.data()).ok());
    EXPECT_EQ(Crc32(bytes), w["crc32"].get<uint32_t>());
    EXPECT_EQ(h->Find(t.name), &t);
  }
  EXPECT_EQ(h->Find("no such tensor"), nullptr);
}

// ------------------------------------------------------------------ golden

TEST(SafetensorsGolden, EveryManifestValueMatches) {
  size_t files = 0;
  for (const auto& [fname, want] : Manifest()["files"].items()) {
    SCOPED_TRACE(fname);
    ExpectMatches(GoldenDir() + fname, want);
    ++files;
  }
  EXPECT_EQ(files, 5u);
}

TEST(SafetensorsGolden, ShardFilesMatchManifest) {
  for (const auto& [fname, want] : Manifest()["sharded"]["files"].items()) {
    SCOPED_TRACE(fname);
    ExpectMatches(GoldenDir() + "sharded/" + fname, want);
  }
}

TEST(SafetensorsGolden, AllDtypesFileMapsEveryTorchDtype) {
  auto h = ReadHeader(StringSource(ReadRequiredSourceFile(GoldenDir() + "all_dtypes.safetensors")));
  ASSERT_TRUE(h.ok());
  // Names are "<letter>.<torch dtype name>".
  for (const TensorEntry& t : h->tensors) {
    if (t.name == "b.second_f32") continue;
    EXPECT_EQ(t.name.substr(2), DTypeName(t.dtype)) << t.dtype_name;
  }
  const TensorEntry* f4 = h->Find("a.float4_e2m1fn_x2");
  ASSERT_NE(f4, nullptr);
  EXPECT_EQ(f4->shape, (std::vector<int64_t>{3, 4}));  // file counts 4-bit values
  EXPECT_EQ(*TorchShape(*f4), (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(f4->nbytes(), 6u);
}

std::vector<WriteEntry> EntriesFromInputs(const json& inputs, std::vector<std::string>* storage) {
  std::vector<WriteEntry> entries;
  storage->reserve(inputs["tensors"].size());
  for (const json& t : inputs["tensors"]) {
    storage->push_back(Unhex(t["hex"].get<std::string>()));
    const std::string* bytes = &storage->back();
    auto dtype = DTypeFromName(t["dtype"].get<std::string>());
    EXPECT_TRUE(dtype.has_value()) << t["dtype"];
    WriteEntry e;
    e.spec = {t["name"].get<std::string>(), dtype.value_or(DType::kUInt8),
              t["shape"].get<std::vector<int64_t>>()};
    // Stream in small pieces to exercise the bounded sink.
    e.write = [bytes](ByteSink* sink) -> Status {
      for (size_t i = 0; i < bytes->size(); i += 5) {
        CKPT_RETURN_IF_ERROR(sink->Append(std::string_view(*bytes).substr(i, 5)));
      }
      return OkStatus();
    };
    entries.push_back(std::move(e));
  }
  return entries;
}

std::optional<std::map<std::string, std::string>> MetadataOf(const json& inputs) {
  if (inputs["metadata"].is_null()) return std::nullopt;
  using StrMap = std::map<std::string, std::string>;
  return inputs["metadata"].get<StrMap>();
}

TEST(SafetensorsWriterGolden, ByteIdenticalToSaveFile) {
  size_t compared = 0;
  for (const auto& [fname, inputs] : Manifest()["inputs"].items()) {
    if (fname == "multi_meta.safetensors") continue;  // HashMap order in 0.8.0
    SCOPED_TRACE(fname);
    std::vector<std::string> storage;
    auto entries = EntriesFromInputs(inputs, &storage);
    StringSink sink;
    Status s = WriteFile(entries, MetadataOf(inputs), &sink);
    ASSERT_TRUE(s.ok()) << s.ToString();
    const std::string golden = ReadRequiredSourceFile(GoldenDir() + fname);
    EXPECT_EQ(sink.str().size(), golden.size());
    EXPECT_TRUE(sink.str() == golden) << sink.str().substr(8, 200);
    ++compared;
  }
  EXPECT_EQ(compared, 4u);
}

TEST(SafetensorsWriterGolden, MultiKeyMetadataIsSortedAndEquivalent) {
  const json& inputs = Manifest()["inputs"]["multi_meta.safetensors"];
  std::vector<std::string> storage;
  auto entries = EntriesFromInputs(inputs, &storage);
  StringSink sink;
  ASSERT_TRUE(WriteFile(entries, MetadataOf(inputs), &sink).ok());
  const std::string golden = ReadRequiredSourceFile(GoldenDir() + "multi_meta.safetensors");
  EXPECT_EQ(sink.str().size(), golden.size());
  EXPECT_NE(sink.str().find("{\"__metadata__\":{\"a\":\"\xc3\xa9\\t\",\"b\":\"2\",\"format\":\"pt\"},"),
            std::string::npos)
      << sink.str();
  auto ours = Parse(sink.str());
  auto theirs = Parse(golden);
  ASSERT_TRUE(ours.ok() && theirs.ok());
  EXPECT_EQ(ours->metadata, theirs->metadata);
  EXPECT_EQ(sink.str().substr(ours->data_start), golden.substr(theirs->data_start));
}

TEST(SafetensorsWriter, PlanMatchesWhatReadHeaderReturns) {
  std::vector<TensorSpec> specs = {{"b", DType::kFloat16, {2}},
                                   {"a", DType::kFloat16, {3}},
                                   {"c", DType::kInt64, {}},
                                   {"z", DType::kBool, {0, 4}}};
  auto plan = PlanFile(specs, std::map<std::string, std::string>{{"format", "pt"}});
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(plan->order, (std::vector<size_t>{2, 1, 0, 3}));  // I64, then F16 a, b, then BOOL
  EXPECT_EQ(plan->header_bytes.size() % 8, 0u);
  EXPECT_EQ(plan->file_size, plan->header_bytes.size() + 8 + 6 + 4);
  std::string file = plan->header_bytes + std::string(plan->file_size - plan->header_bytes.size(), 'x');
  auto h = Parse(file);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_EQ(h->tensors.size(), plan->header.tensors.size());
  for (size_t i = 0; i < h->tensors.size(); ++i) {
    EXPECT_EQ(h->tensors[i].name, plan->header.tensors[i].name);
    EXPECT_EQ(h->tensors[i].begin, plan->header.tensors[i].begin);
    EXPECT_EQ(h->tensors[i].end, plan->header.tensors[i].end);
  }
}

TEST(SafetensorsWriter, CallbackMustWriteExactlyDeclaredBytes) {
  std::vector<WriteEntry> entries(1);
  entries[0].spec = {"t", DType::kFloat32, {2}};
  entries[0].write = [](ByteSink* s) { return s->Append("1234"); };
  StringSink sink;
  Status st = WriteFile(entries, std::nullopt, &sink);
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  EXPECT_NE(st.message().find("wrote 4 bytes, declared 8"), std::string::npos) << st.ToString();
  entries[0].write = [](ByteSink* s) { return s->Append("123456789"); };
  StringSink sink2;
  st = WriteFile(entries, std::nullopt, &sink2);
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  EXPECT_NE(st.message().find("more than the declared 8"), std::string::npos) << st.ToString();
  entries[0].write = [](ByteSink*) { return DataLossError("source gone"); };
  StringSink sink3;
  st = WriteFile(entries, std::nullopt, &sink3);
  EXPECT_EQ(st.code(), Code::kDataLoss);
  EXPECT_EQ(st.message(), "tensor 't': source gone");
}

TEST(SafetensorsWriter, RejectsUnrepresentableInput) {
  auto code = [](std::vector<TensorSpec> specs) {
    return PlanFile(specs, std::nullopt).status().code();
  };
  EXPECT_EQ(code({{"a", DType::kComplex128, {1}}}), Code::kInvalidArgument);
  EXPECT_EQ(code({{"a", DType::kFloat32, {1}}, {"a", DType::kFloat32, {1}}}),
            Code::kInvalidArgument);
  EXPECT_EQ(code({{"", DType::kFloat32, {1}}}), Code::kInvalidArgument);
  EXPECT_EQ(code({{"__metadata__", DType::kFloat32, {1}}}), Code::kInvalidArgument);
  EXPECT_EQ(code({{"a", DType::kFloat32, {-1}}}), Code::kInvalidArgument);
  EXPECT_EQ(code({{"\xff", DType::kFloat32, {1}}}), Code::kInvalidArgument);
  EXPECT_EQ(code({{"a", DType::kFloat4_e2m1fn_x2, {}}}), Code::kInvalidArgument);
  EXPECT_EQ(code({{"a", DType::kFloat32, {INT64_MAX, 2}}}), Code::kInvalidArgument);
}

TEST(SafetensorsWriter, EmptyFileIsEightBytesOfBraces) {
  StringSink sink;
  ASSERT_TRUE(WriteFile({}, std::nullopt, &sink).ok());
  EXPECT_EQ(sink.str(), Mk("{}      "));
}

// ------------------------------------------------------------------ reader

TEST(SafetensorsHeader, AcceptsReferenceQuirks) {
  // null metadata, whitespace around the JSON, unpadded header length.
  auto h = Parse(Mk(R"( {"__metadata__":null,"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} )",
                    "abcd"));
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_FALSE(h->has_metadata);
  EXPECT_EQ(h->tensors[0].name, "a");
}

TEST(SafetensorsHeader, RejectsDuplicateKeysThatTheReferenceWouldMerge) {
  auto h = Parse(Mk(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                    "abcd"));
  EXPECT_EQ(h.status().code(), Code::kDataLoss);
  EXPECT_NE(h.status().message().find("duplicate key 'a'"), std::string::npos);
  h = Parse(Mk(R"({"__metadata__":{"k":"1","k":"2"}})"));
  EXPECT_NE(h.status().message().find("duplicate key 'k' in '__metadata__'"), std::string::npos)
      << h.status().ToString();
}

TEST(SafetensorsHeader, ErrorsCarryRustNameFileTensorAndOffsets) {
  auto h = Parse(Mk(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                    std::string(12, '\0')));
  EXPECT_EQ(h.status().message(),
            "t.st: InvalidOffset: tensor 'b': data_offsets [8, 12] leave a gap after the previous "
            "tensor, which ends at 4");
}

TEST(SafetensorsHeader, RejectsDeepNestingBeforeParsing) {
  std::string deep = "{\"__metadata__\":" + std::string(10000, '[') + std::string(10000, ']') + "}";
  auto h = Parse(Mk(deep));
  EXPECT_EQ(h.status().code(), Code::kDataLoss);
  EXPECT_NE(h.status().message().find("nests deeper"), std::string::npos);
}

TEST(SafetensorsHeader, F6DtypesAreReportedAsUnimplemented) {
  auto h = Parse(Mk(R"({"a":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]}})", "abc"));
  EXPECT_EQ(h.status().code(), Code::kUnimplemented);
  EXPECT_NE(h.status().message().find("F6_E2M3"), std::string::npos);
}

// ------------------------------------------------------------------ index

TEST(ShardIndex, ParsesAndReserializesTransformersIndexByteForByte) {
  const std::string text =
      ReadRequiredSourceFile(GoldenDir() + "sharded/model.safetensors.index.json");
  auto index = ParseIndex(text, "model.safetensors.index.json");
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  EXPECT_EQ(index->total_size(), 26944u);
  EXPECT_EQ(index->Files(), (std::vector<std::string>{"model-00001-of-00002.safetensors",
                                                      "model-00002-of-00002.safetensors"}));
  ASSERT_NE(index->FileOf("lm_head.weight"), nullptr);
  EXPECT_EQ(*index->FileOf("lm_head.weight"), "model-00002-of-00002.safetensors");
  EXPECT_EQ(index->FileOf("nope"), nullptr);
  auto out = SerializeIndex(*index);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out, text);
}

TEST(ShardIndex, PlannerReproducesTransformersShards) {
  const json& sh = Manifest()["sharded"];
  std::vector<ShardTensor> tensors;
  for (const json& t : sh["state_dict"]) {
    tensors.push_back({t["name"].get<std::string>(), t["nbytes"].get<uint64_t>()});
  }
  ShardPlanOptions opt;
  opt.max_shard_size = sh["max_shard_size"].get<uint64_t>();
  auto plan = PlanShards(tensors, opt);
  ASSERT_TRUE(plan.ok());
  ShardIndex index = plan->Index(tensors);
  const std::string text =
      ReadRequiredSourceFile(GoldenDir() + "sharded/model.safetensors.index.json");
  auto golden = ParseIndex(text, "index");
  ASSERT_TRUE(golden.ok());
  EXPECT_EQ(index.weight_map, golden->weight_map);
  EXPECT_EQ(index.total_size(), golden->total_size());
  // transformers adds total_parameters; with it the bytes match.
  index.metadata["total_parameters"] = golden->metadata["total_parameters"];
  EXPECT_EQ(*SerializeIndex(index), text);
  // Each shard file holds exactly the planned tensors.
  for (const auto& [file, members] : plan->shards) {
    auto h =
        ReadHeader(StringSource(ReadRequiredSourceFile(GoldenDir() + "sharded/" + file), file));
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    EXPECT_EQ(h->tensors.size(), members.size()) << file;
    for (size_t i : members) EXPECT_NE(h->Find(tensors[i].name), nullptr) << tensors[i].name;
  }
}

TEST(ShardIndex, PlannerMatchesHuggingfaceHubCases) {
  for (const json& c : Manifest()["planner_cases"]) {
    std::vector<ShardTensor> tensors;
    for (const json& t : c["tensors"]) {
      tensors.push_back({t["name"].get<std::string>(), t["nbytes"].get<uint64_t>()});
    }
    ShardPlanOptions opt;
    opt.max_shard_size = c["max_shard_size"].get<uint64_t>();
    if (c.contains("prefix")) opt.prefix = c["prefix"].get<std::string>();
    if (c.contains("extension")) opt.extension = c["extension"].get<std::string>();
    auto plan = PlanShards(tensors, opt);
    ASSERT_TRUE(plan.ok());
    json got = json::object();
    for (const auto& [file, members] : plan->shards) {
      json names = json::array();
      for (size_t i : members) names.push_back(tensors[i].name);
      got[file] = names;
    }
    EXPECT_EQ(got, c["filename_to_tensors"]) << got.dump();
    EXPECT_EQ(plan->total_size, c["metadata"]["total_size"].get<uint64_t>());
  }
}

TEST(ShardIndex, TiedStoragesFollowTheirFirstTensorAndCountOnce) {
  std::vector<ShardTensor> t = {{"emb", 60, 7}, {"x", 50, -1}, {"head", 60, 7}, {"y", 30, -1}};
  ShardPlanOptions opt;
  opt.max_shard_size = 100;
  auto plan = PlanShards(t, opt);
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->shards.size(), 2u);
  EXPECT_EQ(plan->shards[0].second, (std::vector<size_t>{0, 2}));
  EXPECT_EQ(plan->shards[1].second, (std::vector<size_t>{1, 3}));
  EXPECT_EQ(plan->total_size, 140u);
}

TEST(ShardIndex, RejectsHostileFileNames) {
  for (const char* f : {"../model.safetensors", "/etc/passwd", "a/b.safetensors",
                        "a\\\\b.safetensors", "..", "", "x\\u0000y"}) {
    std::string text = std::string(R"({"weight_map":{"t":")") + f + "\"}}";
    auto r = ParseIndex(text, "idx.json");
    EXPECT_EQ(r.status().code(), Code::kDataLoss) << f;
    EXPECT_NE(r.status().message().find("idx.json"), std::string::npos);
  }
}

TEST(ShardIndex, ToleratesUnknownKeysAndRejectsBrokenShapes) {
  auto r = ParseIndex(R"({"extra":[1,2],"metadata":{"total_size":5,"x":"y"},"weight_map":{"b":"f.bin","a":"f.bin"}})",
                      "i");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->weight_map.front().first, "a");
  EXPECT_EQ(r->total_size(), 5u);
  EXPECT_FALSE(ParseIndex(R"({"metadata":{}})", "i").ok());
  EXPECT_FALSE(ParseIndex(R"({"weight_map":{"a":1}})", "i").ok());
  EXPECT_FALSE(ParseIndex(R"({"weight_map":{"a":"f","a":"g"}})", "i").ok());
  EXPECT_FALSE(ParseIndex(R"([])", "i").ok());
  EXPECT_FALSE(ParseIndex("{", "i").ok());
}

TEST(ShardIndex, SerializesLikePythonJsonDumps) {
  ShardIndex idx;
  idx.metadata["total_size"] = 3;
  idx.metadata["note"] = "caf\u00e9 \U0001F600 \x7f";
  idx.weight_map = {{"a", "model.safetensors"}};
  auto s = SerializeIndex(idx);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(*s,
            "{\n  \"metadata\": {\n    \"note\": \"caf\\u00e9 \\ud83d\\ude00 \\u007f\",\n"
            "    \"total_size\": 3\n  },\n  \"weight_map\": {\n    \"a\": \"model.safetensors\"\n"
            "  }\n}\n");
}

}  // namespace
}  // namespace ckpt::safetensors
