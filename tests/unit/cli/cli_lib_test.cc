// The CLI library: exit codes, inspect and convert reports (sizes and target
// names: tests/unit/convert/options_test.cc).
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "ckpt/checkpoint.h"
#include "ckpt/fault_env.h"
#include "ckpt/writer.h"
#include "lib/convert.h"
#include "lib/exit_code.h"
#include "lib/inspect.h"
#include "lib/layout_map.h"
#include "lib/layout_svg.h"
#include "unit/checkpoint/checkpoint_testutil.h"

namespace ckpt::cli {
namespace {

using ::ckpt::testing::SourcePath;
using ::ckpt::testing_ckpt::CopyDcpGolden;
using ::ckpt::testing_ckpt::CopyIntoEnv;
using ::ckpt::testing_ckpt::ListDir;
using ::testing::HasSubstr;
using ::testing::Not;

// ---------------------------------------------------------------- ExitCodeFor

TEST(ExitCodeFor, DataProblemsAreOneRequestProblemsAreTwo) {
  EXPECT_EQ(ExitCodeFor(OkStatus()), 0);
  EXPECT_EQ(ExitCodeFor(DataLossError("x")), 1);
  EXPECT_EQ(ExitCodeFor(OutOfRangeError("x")), 1);
  EXPECT_EQ(ExitCodeFor(UnimplementedError("x")), 1);
  EXPECT_EQ(ExitCodeFor(FailedPreconditionError("x")), 1);
  EXPECT_EQ(ExitCodeFor(InvalidArgumentError("x")), 2);
  EXPECT_EQ(ExitCodeFor(NotFoundError("x")), 2);
  EXPECT_EQ(ExitCodeFor(PermissionDeniedError("x")), 2);
  EXPECT_EQ(ExitCodeFor(ResourceExhaustedError("x")), 2);
  EXPECT_EQ(ExitCodeFor(UnavailableError("x")), 2);
  EXPECT_EQ(ExitCodeFor(AlreadyExistsError("x")), 2);
  EXPECT_EQ(ExitCodeFor(CancelledError("x")), 2);
  EXPECT_EQ(ExitCodeFor(InternalError("x")), 2);
}

TEST(ExitCodeFor, RealErrorsMapAsDocumented) {
  // A truncated file is a problem in the data; a missing one is not.
  auto corrupt =
      OpenCheckpoint(SourcePath("tests/corrupt/safetensors/truncated_in_data.safetensors"));
  ASSERT_FALSE(corrupt.ok());
  EXPECT_EQ(ExitCodeFor(corrupt.status()), kExitDataProblem) << corrupt.status().ToString();
  auto missing = OpenCheckpoint(SourcePath("tests/golden/torch/nope.pt"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(ExitCodeFor(missing.status()), kExitUsage);
  auto hostile = OpenCheckpoint(SourcePath("tests/golden/torch/hostile.pt"));
  ASSERT_FALSE(hostile.ok());
  EXPECT_EQ(ExitCodeFor(hostile.status()), kExitDataProblem);
}

// ---------------------------------------------------------------- helpers

TEST(HumanBytes, UsesBinaryUnits) {
  EXPECT_EQ(HumanBytes(0), "0 B");
  EXPECT_EQ(HumanBytes(1023), "1023 B");
  EXPECT_EQ(HumanBytes(1024), "1.00 KiB");
  EXPECT_EQ(HumanBytes(1536), "1.50 KiB");
  EXPECT_EQ(HumanBytes(uint64_t{5} << 30), "5.00 GiB");
  EXPECT_EQ(HumanBytes(UINT64_MAX), "16384.00 PiB");  // the largest unit
}

TEST(ShapeString, PrintsLikeAList) {
  EXPECT_EQ(ShapeString({}), "[]");
  EXPECT_EQ(ShapeString({256, 64}), "[256, 64]");
  EXPECT_EQ(ShapeString({0}), "[0]");
}

// ---------------------------------------------------------------- Inspect

std::string InspectText(const std::string& path, size_t max_rows = 0, Env* env = nullptr) {
  InspectOptions o;
  o.path = path;
  o.max_rows = max_rows;
  o.env = env;
  std::ostringstream out;
  Status s = Inspect(o, out);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return out.str();
}

TEST(Inspect, SampleTextShowsKeysDtypesShapesAndNamespace) {
  const std::string path = SourcePath("examples/sample.pt");
  std::string text = InspectText(path);
  EXPECT_THAT(text, HasSubstr(path + ": torch"));
  EXPECT_THAT(text, HasSubstr("model.model.embed_tokens.weight"));
  EXPECT_THAT(text, HasSubstr("model.lm_head.weight"));
  EXPECT_THAT(text, HasSubstr("model.model.layers.1.mlp.down_proj.weight"));
  EXPECT_THAT(text, HasSubstr("bfloat16"));
  EXPECT_THAT(text, HasSubstr("[256, 64]"));
  EXPECT_THAT(text, HasSubstr("[176, 64]"));
  EXPECT_THAT(text, HasSubstr("argparse.Namespace"));
  EXPECT_THAT(text, HasSubstr("args"));
  EXPECT_THAT(text, HasSubstr("iteration"));
  EXPECT_THAT(text, HasSubstr("Other objects"));
  // One row per tensor.
  auto r = OpenCheckpoint(path);
  ASSERT_TRUE(r.ok());
  size_t rows = 0;
  for (size_t pos = 0; (pos = text.find("\nmodel.", pos)) != std::string::npos; ++pos) ++rows;
  EXPECT_EQ(rows, (*r)->tensors().size());
}

TEST(Inspect, SharedStoragesAreListedWithTheirViews) {
  // views.pt (tests/golden/torch) holds six views of one 4x6 float32 storage.
  std::string text = InspectText(SourcePath("tests/golden/torch/views.pt"));
  EXPECT_THAT(text, HasSubstr("Shared storages"));
  EXPECT_THAT(text, HasSubstr("storage 0 (96 B): base, transposed, step, offset, row, scalar_view"));
  EXPECT_THAT(InspectText(SourcePath("examples/sample.pt")), Not(HasSubstr("Shared storages")));
}

TEST(Inspect, MaxRowsTruncatesTheTable) {
  const std::string path = SourcePath("examples/sample.pt");
  auto r = OpenCheckpoint(path);
  ASSERT_TRUE(r.ok());
  const size_t n = (*r)->tensors().size();
  std::string text = InspectText(path, 3);
  EXPECT_THAT(text, HasSubstr("... " + std::to_string(n - 3) + " more"));
  EXPECT_THAT(text, HasSubstr((*r)->tensors()[2].key));
  EXPECT_THAT(text, Not(HasSubstr((*r)->tensors()[3].key + " ")));
}

TEST(Inspect, HostileFileIsShownNotRefused) {
  std::string text = InspectText(SourcePath("tests/golden/torch/hostile.pt"));
  EXPECT_THAT(text, HasSubstr("payload"));
  EXPECT_THAT(text, HasSubstr("posix.system"));
  EXPECT_THAT(text, HasSubstr("not on the allowlist"));
  EXPECT_THAT(text, HasSubstr("weight"));
}

TEST(Inspect, ShardedFolderShowsShardFiles) {
  std::string text = InspectText(SourcePath("tests/golden/safetensors/sharded"));
  EXPECT_THAT(text, HasSubstr("safetensors-sharded"));
  EXPECT_THAT(text, HasSubstr("21 tensors"));
  EXPECT_THAT(text, HasSubstr("model-00002-of-00002.safetensors"));
}

TEST(Inspect, MissingPathIsNotFound) {
  auto env = NewMemEnv();
  InspectOptions o;
  o.path = "/nope.pt";
  o.env = env.get();
  std::ostringstream out;
  Status s = Inspect(o, out);
  EXPECT_EQ(s.code(), Code::kNotFound) << s.ToString();
  EXPECT_TRUE(out.str().empty());
}

TEST(InspectJson, MatchesTheReader) {
  for (const std::string rel :
       {"examples/sample.pt", "tests/golden/safetensors/all_dtypes.safetensors",
        "tests/golden/safetensors/sharded"}) {
    SCOPED_TRACE(rel);
    const std::string path = SourcePath(rel);
    InspectOptions o;
    o.path = path;
    o.json = true;
    std::ostringstream out;
    Status s = Inspect(o, out);
    ASSERT_TRUE(s.ok()) << s.ToString();
    nlohmann::json j = nlohmann::json::parse(out.str(), nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << out.str();

    auto r = OpenCheckpoint(path, {nullptr, PickleMode::kInspect});
    ASSERT_TRUE(r.ok());
    const CheckpointReader& reader = **r;
    EXPECT_EQ(j["path"], path);
    EXPECT_EQ(j["format"], std::string(reader.format()));
    ASSERT_EQ(j["tensors"].size(), reader.tensors().size());
    uint64_t total = 0;
    for (size_t i = 0; i < reader.tensors().size(); ++i) {
      const TensorInfo& t = reader.tensors()[i];
      const nlohmann::json& jt = j["tensors"][i];
      EXPECT_EQ(jt["key"], t.key);
      EXPECT_EQ(jt["dtype"], std::string(DTypeName(t.dtype)));
      EXPECT_EQ(jt["shape"].get<std::vector<int64_t>>(), t.shape);
      EXPECT_EQ(jt["nbytes"], t.nbytes);
      EXPECT_EQ(jt["data_offset"], t.data_offset);
      total += t.nbytes;
    }
    EXPECT_EQ(j["total_bytes"], total);
    EXPECT_EQ(j["objects"].size(), reader.objects().size());
    EXPECT_EQ(j["details"], reader.Details());
  }
}

// --json, the map's data and page, and the SVG are written a tensor at a
// time; the text is what the whole document gave.
TEST(InspectJson, WrittenATensorAtATimeIsTheWholeDocument) {
  for (const std::string rel :
       {"examples/sample.pt", "tests/golden/safetensors/sharded", "tests/golden/dcp/ws3_uneven",
        "tests/golden/dcp/ws1_threads3_empty", "tests/golden/megatron/mc016_gpt_tp2pp2dp2/iter_0000010",
        "tests/golden/legacy/mc016_llama_tp2pp2dp2/legacy/iter_0000002"}) {
    SCOPED_TRACE(rel);
    const std::string path = SourcePath(rel);
    auto r = OpenCheckpoint(path, {nullptr, PickleMode::kInspect});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    const CheckpointReader& reader = **r;
    const nlohmann::json whole = InspectDocument(path, reader, nullptr);
    ASSERT_FALSE(whole["tensors"].empty());

    InspectOptions o;
    o.path = path;
    o.json = true;
    std::ostringstream out;
    Status s = Inspect(o, out);
    ASSERT_TRUE(s.ok() || s.code() == Code::kDataLoss) << s.ToString();
    EXPECT_EQ(out.str(), whole.dump(2) + "\n");

    nlohmann::json doc = InspectDocument(path, reader, nullptr, /*with_tensors=*/false);
    EXPECT_FALSE(doc.contains("tensors"));
    EXPECT_EQ(doc["tensor_count"], reader.tensors().size());
    AddTensorsForLayoutFiles(reader, &doc);
    EXPECT_EQ(doc.contains("tensors"), !doc["details"].contains("files"));
    EXPECT_EQ(LayoutSvg(doc), LayoutSvg(whole));
    for (bool html : {false, true}) {
      std::string text;
      ASSERT_TRUE(WriteLayoutMap(doc, reader, html, [&](std::string_view piece) {
                    text.append(piece);
                    return OkStatus();
                  }).ok());
      const nlohmann::json data = LayoutMapData(whole);
      EXPECT_EQ(text, html ? LayoutHtml(data) : data.dump());
    }
  }
}

// The map is written piece by piece into a file published only when whole:
// a write that fails leaves the map that was there, and no other file.
TEST(InspectJson, MapThatFailsToWriteLeavesTheOldOne) {
  std::unique_ptr<Env> mem = NewMemEnv();
  CopyDcpGolden(mem.get(), "ws3_uneven", "/ckpt");
  ASSERT_TRUE(mem->CreateDirs("/out").ok());
  ASSERT_TRUE(::ckpt::testing::WriteWhole(mem.get(), "/out/map.html", "old map").ok());
  FaultEnv env(mem.get());
  env.FailNthAppend(3, "map.html");
  InspectOptions o;
  o.path = "/ckpt";
  o.html_path = "/out/map.html";
  o.env = &env;
  std::ostringstream out;
  Status s = Inspect(o, out);
  EXPECT_EQ(s.code(), Code::kUnavailable) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr("injected fault"));
  EXPECT_EQ(ListDir(mem.get(), "/out"), std::vector<std::string>{"map.html"});
  EXPECT_EQ(*::ckpt::testing::ReadWhole(mem.get(), "/out/map.html"), "old map");
  // Without the fault the same call writes the page that LayoutHtml makes.
  env.ClearFaults();
  ASSERT_TRUE(Inspect(o, out).ok());
  auto r = OpenCheckpoint("/ckpt", {mem.get(), PickleMode::kInspect});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*::ckpt::testing::ReadWhole(mem.get(), "/out/map.html"),
            LayoutHtml(LayoutMapData(InspectDocument("/ckpt", **r, mem.get()))));
}

TEST(InspectJson, SampleHasNamespaceObject) {
  auto r = OpenCheckpoint(SourcePath("examples/sample.pt"));
  ASSERT_TRUE(r.ok());
  nlohmann::json j = InspectJson("sample.pt", **r);
  bool found = false;
  for (const auto& o : j["objects"]) {
    if (o["key"] == "args") {
      found = true;
      EXPECT_EQ(o["type"], "argparse.Namespace");
      EXPECT_EQ(o["opaque"], false);
      EXPECT_THAT(o["repr"].get<std::string>(), HasSubstr("num_layers=2"));
    }
  }
  EXPECT_TRUE(found) << j["objects"].dump();
}


TEST(Inspect, ControlBytesInNamesAreEscaped) {
  // A hostile file names its tensor with a terminal escape sequence.
  std::unique_ptr<Env> env = NewMemEnv();
  const std::string key = std::string("w\x1b[2J") + "\rx";
  std::vector<TensorToWrite> items = {
      {key, DType::kFloat32, {1}, [](ByteSink* s) { return s->Append(std::string(4, '\0')); }}};
  ASSERT_TRUE(WriteSafetensorsFile("/evil.safetensors", items, std::nullopt, env.get()).ok());
  InspectOptions o;
  o.path = "/evil.safetensors";
  o.env = env.get();
  std::ostringstream out;
  ASSERT_TRUE(Inspect(o, out).ok());
  EXPECT_THAT(out.str(), Not(HasSubstr("\x1b"))) << out.str();
  EXPECT_THAT(out.str(), Not(HasSubstr("\r"))) << out.str();
  EXPECT_THAT(out.str(), HasSubstr("'w\\x1b[2J\\x0dx'"));
}

// ---------------------------------------------------------------- FoldObjects

ObjectInfo Obj(std::string key, std::string type, std::string repr, bool opaque = false) {
  return {std::move(key), std::move(type), std::move(repr), opaque};
}

TEST(FoldObjects, EqualValuesUnderOneVaryingNumberFoldToASetWithACount) {
  std::vector<ObjectInfo> objects;
  for (int i = 0; i < 16; ++i) {
    objects.push_back(Obj(fmt::format("decoder.layers.{}.self_attention.linear_proj._extra_state", i), "NoneType",
                          "None"));
  }
  objects.push_back(Obj("iteration", "int", "10"));
  std::vector<ObjectLine> lines = FoldObjects(objects);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].key, "decoder.layers.{0..15}.self_attention.linear_proj._extra_state");
  EXPECT_EQ(lines[0].type, "NoneType");
  EXPECT_EQ(lines[0].repr, "None");
  EXPECT_EQ(lines[0].count, 16u);
  EXPECT_EQ(lines[1].key, "iteration");
  EXPECT_EQ(lines[1].repr, "10");
  EXPECT_EQ(lines[1].count, 1u);
}

TEST(FoldObjects, ValuesThatCountAlongWithTheKeyFoldToARange) {
  // An optimizer's param_groups.N.params: the indices of the parameters in each group.
  std::vector<ObjectInfo> objects;
  for (int i = 0; i < 8; ++i) {
    objects.push_back(Obj(fmt::format("optimizer.param_groups.0.params.{}", i), "int", std::to_string(i)));
  }
  for (int i = 0; i < 4; ++i) {
    objects.push_back(Obj(fmt::format("optimizer.param_groups.1.params.{}", i), "int", std::to_string(8 + i)));
  }
  std::vector<ObjectLine> lines = FoldObjects(objects);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].key, "optimizer.param_groups.0.params.{0..7}");
  EXPECT_EQ(lines[0].repr, "{0..7}");
  EXPECT_EQ(lines[0].count, 8u);
  EXPECT_EQ(lines[1].key, "optimizer.param_groups.1.params.{0..3}");
  EXPECT_EQ(lines[1].repr, "{8..11}");
  EXPECT_EQ(lines[1].count, 4u);
}

TEST(FoldObjects, NumbersPrintAsAscendingSetsWithRunsOfThreeOrMore) {
  // Readers list keys in string order: layers.0, 1, 10, 11, 2, ...
  std::vector<ObjectInfo> objects;
  for (int i : {0, 1, 10, 11, 12, 2, 20, 3, 8, 9}) objects.push_back(Obj(fmt::format("l.{}.x", i), "NoneType", "None"));
  std::vector<ObjectLine> lines = FoldObjects(objects);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].key, "l.{0..3,8..12,20}.x");
  EXPECT_EQ(lines[0].count, 10u);

  lines = FoldObjects({Obj("a.0", "int", "7"), Obj("a.2", "int", "7"), Obj("a.4", "int", "7")});
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].key, "a.{0,2,4}");
  EXPECT_EQ(lines[0].repr, "7");

  // Megatron ShardedObject keys: the number between separators in shard_<i>_<n>.
  lines = FoldObjects({Obj("m._extra_state/shard_0_2", "NoneType", "None"),
                       Obj("m._extra_state/shard_1_2", "NoneType", "None")});
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].key, "m._extra_state/shard_{0,1}_2");
  EXPECT_EQ(lines[0].count, 2u);
}

TEST(FoldObjects, SequencesThatAreNotOneNumberApartStayUnfolded) {
  const std::vector<std::vector<ObjectInfo>> cases = {
      // Keys that differ in text.
      {Obj("a.weight", "NoneType", "None"), Obj("a.bias", "NoneType", "None")},
      // Digits inside a name are not a number: fc1 / fc2.
      {Obj("mlp.linear_fc1._extra_state", "NoneType", "None"),
       Obj("mlp.linear_fc2._extra_state", "NoneType", "None")},
      // Zero-padded numbers are names.
      {Obj("iter_0000010.x", "int", "1"), Obj("iter_0000020.x", "int", "1")},
      // Two numbers differ.
      {Obj("a.0.b.0", "int", "1"), Obj("a.1.b.1", "int", "1")},
      // The values differ, and not along with the key.
      {Obj("lr.0", "float", "0.5"), Obj("lr.1", "float", "0.25")},
      {Obj("p.0", "int", "3"), Obj("p.1", "int", "2")},
      // Type or opaqueness differ.
      {Obj("a.0", "int", "1"), Obj("a.1", "str", "1")},
      {Obj("a.0", "opaque os.system", "x"), Obj("a.1", "opaque os.system", "x", true)},
      // The same key twice.
      {Obj("a.0", "int", "1"), Obj("a.0", "int", "1")},
  };
  for (const std::vector<ObjectInfo>& objects : cases) {
    SCOPED_TRACE(objects[0].key + " / " + objects[1].key);
    std::vector<ObjectLine> lines = FoldObjects(objects);
    ASSERT_EQ(lines.size(), 2u);
    for (size_t i = 0; i < 2; ++i) {
      EXPECT_EQ(lines[i].key, objects[i].key);
      EXPECT_EQ(lines[i].repr, objects[i].repr);
      EXPECT_EQ(lines[i].count, 1u);
    }
  }
}

TEST(FoldObjects, ALineVariesOneNumberOnly) {
  // a.0.b.{0,1} and a.1.b.{0,1}: two lines; the third key is one number from the
  // first, but not the number that line varies.
  std::vector<ObjectLine> lines = FoldObjects({Obj("a.0.b.0", "int", "1"), Obj("a.0.b.1", "int", "1"),
                                               Obj("a.1.b.0", "int", "1"), Obj("a.1.b.1", "int", "1")});
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].key, "a.0.b.{0,1}");
  EXPECT_EQ(lines[1].key, "a.1.b.{0,1}");
  EXPECT_EQ(lines[0].count + lines[1].count, 4u);
}

TEST(FoldObjects, InterleavedRunsFoldAtTheirFirstObject) {
  // Megatron's metadata lists a layer's four modules, then the next layer's.
  const std::vector<std::string> modules = {"self_attention.linear_proj", "mlp.linear_fc1"};
  std::vector<ObjectInfo> objects = {Obj("iteration", "int", "10")};
  for (int layer = 0; layer < 4; ++layer) {
    for (const std::string& m : modules) {
      objects.push_back(Obj(fmt::format("decoder.layers.{}._extra_state/shard_{}_4", m, layer), "NoneType", "None"));
    }
  }
  objects.push_back(Obj("args", "argparse.Namespace", "argparse.Namespace(x=1)"));
  std::vector<ObjectLine> lines = FoldObjects(objects);
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[0].key, "iteration");
  EXPECT_EQ(lines[1].key, "decoder.layers.self_attention.linear_proj._extra_state/shard_{0..3}_4");
  EXPECT_EQ(lines[1].count, 4u);
  EXPECT_EQ(lines[2].key, "decoder.layers.mlp.linear_fc1._extra_state/shard_{0..3}_4");
  EXPECT_EQ(lines[2].count, 4u);
  EXPECT_EQ(lines[3].key, "args");
}

TEST(FoldObjects, CutOrUnreadValuesNeverFold) {
  // Equal text of a cut repr proves nothing about the values.
  for (const std::string repr : {"[{'random_rng_state': (3, (2147483648, 681931688...", "<12 bytes in __0_0.distcp>"}) {
    SCOPED_TRACE(repr);
    std::vector<ObjectLine> lines = FoldObjects({Obj("rng_state/shard_0.0_2.2", "list", repr),
                                                 Obj("rng_state/shard_0.1_2.2", "list", repr)});
    ASSERT_EQ(lines.size(), 2u);
    EXPECT_EQ(lines[0].key, "rng_state/shard_0.0_2.2");
    EXPECT_EQ(lines[1].key, "rng_state/shard_0.1_2.2");
  }
}

TEST(Inspect, TorchDistSampleFoldsObjectsAndJsonDoesNot) {
  const std::string path = SourcePath("examples/torch_dist");
  std::string text = InspectText(path);
  EXPECT_THAT(text, HasSubstr("\n  decoder.layers.self_attention.linear_proj._extra_state/shard_{0..3}_4 (NoneType): "
                              "None  (x4)\n"));
  EXPECT_THAT(text,
              HasSubstr("\n  decoder.layers.mlp.linear_fc2._extra_state/shard_{0..3}_4 (NoneType): None  (x4)\n"));
  EXPECT_THAT(text,
              HasSubstr("\n  common.pt:optimizer.optimizer.param_groups.0.params.{0..12} (int): {0..12}  (x13)\n"));
  EXPECT_THAT(text, Not(HasSubstr("_extra_state/shard_2_4")));
  // The RNG states are cut ("..."): one line each.
  EXPECT_THAT(text, HasSubstr("\n  rng_state/shard_0.0_2.2 (list): "));
  EXPECT_THAT(text, HasSubstr("\n  rng_state/shard_1.1_2.2 (list): "));
  // Not folded: betas differ; fc1 / fc2 are names.
  EXPECT_THAT(text, HasSubstr("\n  common.pt:optimizer.optimizer.param_groups.0.betas.0 (float): 0.9\n"));
  EXPECT_THAT(text, HasSubstr("\n  common.pt:optimizer.optimizer.param_groups.0.betas.1 (float): 0.95\n"));

  InspectOptions o;
  o.path = path;
  o.json = true;
  std::ostringstream out;
  ASSERT_TRUE(Inspect(o, out).ok());
  nlohmann::json j = nlohmann::json::parse(out.str(), nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  auto r = OpenCheckpoint(path, {nullptr, PickleMode::kInspect});
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(j["objects"].size(), (*r)->objects().size());
  size_t extra_states = 0;
  for (const auto& obj : j["objects"]) {
    const std::string key = obj["key"].get<std::string>();
    EXPECT_EQ(key.find('{'), std::string::npos) << key;
    if (key.find("._extra_state/shard_") != std::string::npos) ++extra_states;
  }
  EXPECT_EQ(extra_states, 16u);
}

TEST(Inspect, MaxRowsBoundsTheObjectLines) {
  const std::string path = SourcePath("examples/torch_dist");
  auto r = OpenCheckpoint(path, {nullptr, PickleMode::kInspect});
  ASSERT_TRUE(r.ok());
  const size_t n = (*r)->objects().size();
  std::string text = InspectText(path, 3);
  const size_t at = text.find("Other objects");
  ASSERT_NE(at, std::string::npos) << text;
  std::istringstream objects(text.substr(at));
  std::string line;
  std::getline(objects, line);
  std::vector<std::string> rows;
  while (std::getline(objects, line) && !line.empty()) rows.push_back(line);
  // Three lines (the first three modules' extra states, 4 objects each), then the rest counted.
  ASSERT_EQ(rows.size(), 4u) << text;
  EXPECT_THAT(rows[0], HasSubstr("linear_proj._extra_state/shard_{0..3}_4"));
  EXPECT_THAT(rows[2], HasSubstr("linear_fc1._extra_state/shard_{0..3}_4"));
  EXPECT_EQ(rows[3], "  ... " + std::to_string(n - 12) + " more objects (use --json for all)");
  EXPECT_THAT(text, Not(HasSubstr("common.pt:iteration")));
  // Without --max-rows every line is there.
  EXPECT_THAT(InspectText(path), HasSubstr("common.pt:iteration (int): 10\n"));
}

// ---------------------------------------------------------------- LayoutSvg

// Names and descriptions come from files: every one is XML-escaped (a file
// cannot inject markup or script into the picture), control bytes dropped.
TEST(LayoutSvg, EscapesWhatTheCheckpointSays) {
  nlohmann::json doc = {
      {"path", "ck<&>\"'\x01pt"},
      {"format", "dcp"},
      {"tensors", nlohmann::json::array()},
      {"details",
       {{"files",
         {{{"name", "__0_0.distcp"}, {"bytes", 10}, {"rank", 0}, {"writer", 0},
           {"description", "<script>alert(1)</script>"}},
          {{"name", "__1_0.distcp"}, {"bytes", 5}, {"rank", 1}, {"writer", 0}, {"description", "a & b"}}}},
        {"problems", {{{"file", "__1_0.distcp"}, {"message", "short <by> 3 bytes"}}}}}}};
  const std::string svg = LayoutSvg(doc);
  EXPECT_THAT(svg, Not(HasSubstr("<script")));
  EXPECT_THAT(svg, HasSubstr("&lt;script&gt;alert(1)&lt;/script&gt;"));
  EXPECT_THAT(svg, HasSubstr("ck&lt;&amp;&gt;&quot;&apos;pt"));
  EXPECT_THAT(svg, Not(HasSubstr("\x01")));
  EXPECT_THAT(svg, HasSubstr("a &amp; b"));
  EXPECT_THAT(svg, HasSubstr("__1_0.distcp: short &lt;by&gt; 3 bytes"));
  // The larger file spans the bar column (480), the other half of it.
  EXPECT_THAT(svg, HasSubstr("data-file=\"__0_0.distcp\" data-bytes=\"10\""));
  EXPECT_THAT(svg, HasSubstr("width=\"480.00\""));
  EXPECT_THAT(svg, HasSubstr("width=\"240.00\""));
  // At most max_files rows, then a line saying how many more.
  EXPECT_THAT(LayoutSvg(doc, 1), HasSubstr("... 1 more files"));
}

TEST(LayoutSvg, SummarizesKeysOfFilesWithoutDescriptions) {
  nlohmann::json doc = {{"path", "/x/model.pt"}, {"format", "torch"}, {"details", nlohmann::json::object()},
                        {"tensors", nlohmann::json::array()}};
  for (int i : {0, 1, 2, 3, 7}) doc["tensors"].push_back({{"key", fmt::format("model.layers.{}.w", i)}, {"nbytes", 4}});
  doc["tensors"].push_back({{"key", "lm_head.weight"}, {"nbytes", 8}});
  std::vector<LayoutFile> files = LayoutFiles(doc);
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0].name, "model.pt");
  EXPECT_EQ(files[0].bytes, 28u);
  EXPECT_EQ(files[0].contents, "model.layers.{0..3,7}.* (5); lm_head.weight");
  EXPECT_EQ(files[0].group, "files");
}

// ---------------------------------------------------------------- RunConvert

class RunConvertTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CopyIntoEnv(env_.get(), "examples/sample.pt", "/src/sample.pt");
    opts_.src = "/src/sample.pt";
    opts_.dst = "/out";
    opts_.to = "safetensors";
    opts_.env = env_.get();
  }
  std::unique_ptr<Env> env_ = NewMemEnv();
  ConvertCommandOptions opts_;
  std::ostringstream out_, err_;
};

TEST_F(RunConvertTest, JsonReportIsParseableAndTrue) {
  opts_.json = true;
  opts_.max_shard_size = "40KB";
  Status s = RunConvert(opts_, out_, err_);
  ASSERT_TRUE(s.ok()) << s.ToString();
  nlohmann::json j = nlohmann::json::parse(out_.str(), nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << out_.str();
  EXPECT_EQ(j["src"], "/src/sample.pt");
  EXPECT_EQ(j["dst"], "/out");
  EXPECT_EQ(j["to"], "safetensors");
  auto src = OpenCheckpoint("/src/sample.pt", {env_.get()});
  ASSERT_TRUE(src.ok());
  uint64_t total = 0;
  for (const TensorInfo& t : (*src)->tensors()) total += t.nbytes;
  EXPECT_EQ(j["tensors"], (*src)->tensors().size());
  EXPECT_EQ(j["bytes"], total);
  ASSERT_GE(j["files"].size(), 3u);
  EXPECT_EQ(j["files"].back(), "/out/model.safetensors.index.json");
  for (const auto& f : j["files"]) EXPECT_TRUE(env_->FileExists(f.get<std::string>())) << f;
  EXPECT_EQ(j["warnings"].size(), (*src)->objects().size());
  // Warnings also go to err, one line each.
  EXPECT_THAT(err_.str(), HasSubstr("warning: dropped non-tensor object 'args'"));
}

// --to dcp on disk: the report says how many data files went around the
// page cache (all of them on the file systems CI runs on), --buffered-io
// none; the text summary says it in words; the bytes do not depend on it.
TEST(RunConvertOnDisk, ReportsDirectIoOfTheDataFiles) {
  ::ckpt::testing::ScratchDir dir;
  std::string bytes[2];
  for (bool buffered : {false, true}) {
    SCOPED_TRACE(buffered ? "--buffered-io" : "default");
    ConvertCommandOptions o;
    o.src = SourcePath("examples/sample.pt");
    o.dst = dir.path() + (buffered ? "/buffered" : "/direct");
    o.to = "dcp";
    o.thread_count = 2;
    o.buffered_io = buffered;
    o.json = true;
    std::ostringstream out, err;
    Status s = RunConvert(o, out, err);
    ASSERT_TRUE(s.ok()) << s.ToString();
    nlohmann::json j = nlohmann::json::parse(out.str(), nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << out.str();
    EXPECT_EQ(j["data_files"], 2);
    EXPECT_EQ(j["direct_io_files"], buffered ? 0 : 2);
    for (const char* f : {"/__0_0.distcp", "/__0_1.distcp"}) {
      Result<std::string> b = ::ckpt::testing::ReadWhole(Env::Default(), o.dst + f);
      ASSERT_TRUE(b.ok());
      bytes[buffered ? 1 : 0] += *b;
    }
    o.json = false;
    o.dst += "_text";
    std::ostringstream text;
    ASSERT_TRUE(RunConvert(o, text, err).ok());
    EXPECT_THAT(text.str(), HasSubstr(buffered ? "data files: 2, written through the page cache (--buffered-io)"
                                               : "data files: 2, written around the page cache (O_DIRECT)"));
  }
  EXPECT_FALSE(bytes[0].empty());
  EXPECT_TRUE(bytes[0] == bytes[1]) << "the data files differ with and without O_DIRECT";
  ConvertCommandOptions o;
  o.src = SourcePath("examples/sample.pt");
  o.dst = dir.path() + "/x.safetensors";
  o.to = "safetensors";
  o.buffered_io = true;
  std::ostringstream out, err;
  Status s = RunConvert(o, out, err);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("--buffered-io applies to --to dcp and --to torch_dist only"));
}

TEST_F(RunConvertTest, TextSummaryListsFiles) {
  Status s = RunConvert(opts_, out_, err_);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_THAT(out_.str(), HasSubstr("to 1 file:"));
  EXPECT_THAT(out_.str(), HasSubstr("/out/model.safetensors"));
}

TEST_F(RunConvertTest, QuietPrintsNothing) {
  opts_.quiet = true;
  Status s = RunConvert(opts_, out_, err_);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(out_.str(), "");
  EXPECT_EQ(err_.str(), "");
}

TEST_F(RunConvertTest, BadTargetIsInvalidArgument) {
  opts_.to = "gguf";
  Status s = RunConvert(opts_, out_, err_);
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr("gguf"));
  EXPECT_FALSE(env_->FileExists("/out"));
}

TEST_F(RunConvertTest, BadShardSizeIsInvalidArgumentNamingTheOption) {
  opts_.max_shard_size = "5XB";
  Status s = RunConvert(opts_, out_, err_);
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr("max_shard_size"));
  EXPECT_THAT(s.message(), HasSubstr("5XB"));
  EXPECT_FALSE(env_->FileExists("/out"));
}

// The flag goes through ckpt::ParseSize, as Python's max_shard_size does:
// "320Kb" is 320000 bits, the same 40000-byte limit as "40KB".
TEST_F(RunConvertTest, ShardSizeInBitsIsReadAsTransformersReadsIt) {
  opts_.json = true;
  opts_.max_shard_size = "40KB";
  ASSERT_TRUE(RunConvert(opts_, out_, err_).ok());
  nlohmann::json bytes = nlohmann::json::parse(out_.str());
  std::ostringstream out2, err2;
  opts_.dst = "/out2";
  opts_.max_shard_size = "320Kb";
  Status s = RunConvert(opts_, out2, err2);
  ASSERT_TRUE(s.ok()) << s.ToString();
  nlohmann::json bits = nlohmann::json::parse(out2.str());
  ASSERT_EQ(bits["files"].size(), bytes["files"].size());
  for (size_t i = 0; i < bits["files"].size(); ++i) {
    std::string a = bytes["files"][i], b = bits["files"][i];
    EXPECT_EQ(Basename(a), Basename(b));
  }
}

TEST_F(RunConvertTest, TargetNamesComeFromTheLibrary) {
  opts_.to = "hf";  // a known target: the source (a torch.save file) is what it refuses
  Status s = RunConvert(opts_, out_, err_);
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr("torch_dist"));
  opts_.to = "torch-dist";
  s = RunConvert(opts_, out_, err_);
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr("safetensors, torch, dcp, torch_dist, hf"));
}

TEST_F(RunConvertTest, ProgressReachesOneHundredPercent) {
  opts_.show_progress = true;
  Status s = RunConvert(opts_, out_, err_);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_THAT(err_.str(), HasSubstr("100%"));
}

TEST_F(RunConvertTest, ConvertErrorsPassThrough) {
  CopyIntoEnv(env_.get(), "tests/golden/torch/hostile.pt", "/src/hostile.pt");
  opts_.src = "/src/hostile.pt";
  Status s = RunConvert(opts_, out_, err_);
  EXPECT_EQ(s.code(), Code::kUnimplemented) << s.ToString();
  EXPECT_EQ(ExitCodeFor(s), kExitDataProblem);
  EXPECT_EQ(out_.str(), "");
  opts_.allow_opaque = true;
  s = RunConvert(opts_, out_, err_);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_THAT(err_.str(), HasSubstr("payload"));
}

}  // namespace
}  // namespace ckpt::cli
