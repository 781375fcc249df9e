// Reads the real megatron-core goldens (tests/golden/megatron/<name>/, made by
// make_golden.py with megatron-core itself) and checks the facts in
// <name>.expected.json.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "ckpt/byte_source.h"
#include "format/dcp/item.h"
#include "format/dcp/metadata.h"
#include "format/megatron/megatron.h"
#include "format/torch/torch_file.h"

namespace ckpt::megatron {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAreArray;

const fs::path kRoot = fs::path(CKPT_SOURCE_DIR) / "tests/golden/megatron";

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> Goldens() {
  std::vector<std::string> out;
  if (!fs::exists(kRoot)) return out;
  for (const auto& e : fs::directory_iterator(kRoot)) {
    std::string n = e.path().filename().string();
    if (e.is_directory() && fs::exists(kRoot / (n + ".expected.json"))) out.push_back(n);
  }
  std::sort(out.begin(), out.end());
  return out;
}

class MegatronGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(MegatronGolden, ReportsTheFactsMegatronCoreWrote) {
  const std::string name = GetParam();
  nlohmann::json exp = nlohmann::json::parse(ReadAll(kRoot / (name + ".expected.json")));
  fs::path root = kRoot / name;

  // Tracker and directory name.
  auto tracker = ParseTracker(ReadAll(root / kTrackerFileName), (root / kTrackerFileName).string());
  ASSERT_TRUE(tracker.ok()) << tracker.status().ToString();
  EXPECT_EQ(tracker->iteration, exp["iteration"].get<int64_t>());
  EXPECT_EQ(IterationDirName(*tracker), exp["iter_dir"].get<std::string>());
  fs::path dir = root / IterationDirName(*tracker);

  // metadata.json
  auto config = ParseConfig(ReadAll(dir / kConfigFileName), (dir / kConfigFileName).string());
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->raw, exp["metadata_json"]);
  EXPECT_EQ(config->sharded_backend, "torch_dist");
  EXPECT_EQ(config->common_backend.has_value(), exp["metadata_json"].contains("common_backend"));

  // .metadata
  StringSource md_src(ReadAll(dir / ".metadata"), (dir / ".metadata").string());
  auto md = dcp::ParseMetadata(md_src);
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  EXPECT_EQ(md->entries.size(), exp["keys"].size());

  // Common state: common.pt (<= 0.18) or common_state/shard_0_1 (>= 0.19).
  std::unique_ptr<torch::TorchFile> common_file;
  if (fs::exists(dir / kCommonFileName)) {
    auto src = std::make_shared<StringSource>(ReadAll(dir / kCommonFileName), (dir / kCommonFileName).string());
    auto tf = torch::TorchFile::Open(src, pickle::Mode::kInspect);
    ASSERT_TRUE(tf.ok()) << tf.status().ToString();
    common_file = std::move(*tf);
  } else {
    int64_t ei = md->FindEntry(kCommonStateKey);
    ASSERT_GE(ei, 0) << "no common.pt and no " << kCommonStateKey;
    const dcp::StorageItem& item = md->items.at(md->entries[ei].item);
    auto file = std::make_shared<StringSource>(ReadAll(dir / item.relative_path), std::string(item.relative_path));
    auto tf = dcp::OpenBytesItem(file, item, pickle::Mode::kInspect);
    ASSERT_TRUE(tf.ok()) << tf.status().ToString();
    common_file = std::move(*tf);
  }
  auto common = ExtractCommonState(common_file->root(), common_file->name());
  ASSERT_TRUE(common.ok()) << common.status().ToString();
  EXPECT_EQ(common->unwrapped_list, !fs::exists(dir / kCommonFileName));
  EXPECT_EQ(common->iteration, exp["iteration"].get<int64_t>());
  EXPECT_EQ(common->args_type, "argparse.Namespace");
  std::vector<std::string> top;
  for (const auto& k : common->top_level) top.push_back(k.key);
  std::vector<std::string> want_top = exp["common_state_keys"].get<std::vector<std::string>>();
  std::sort(top.begin(), top.end());
  std::sort(want_top.begin(), want_top.end());
  EXPECT_EQ(top, want_top);
  std::vector<std::string> fields;
  for (const auto& [k, v] : common->args_fields) fields.push_back(k);
  EXPECT_THAT(fields, ElementsAreArray(exp["common_state"]["args"]["fields"].get<std::vector<std::string>>()));
  const auto& cm = exp["content_metadata"];
  EXPECT_EQ(common->distrib_optim_sharding_type, cm["distrib_optim_sharding_type"].get<std::string>());
  EXPECT_EQ(common->singleton_local_shards, cm["singleton_local_shards"].get<bool>());
  EXPECT_EQ(common->chained_optim_avoid_prefix, cm["chained_optim_avoid_prefix"].get<bool>());
  EXPECT_THAT(common->param_state_sharding_types, ::testing::ElementsAre(exp["optimizer_form"].get<std::string>()));
  EXPECT_TRUE(common->warnings.empty()) << ::testing::PrintToString(common->warnings);

  // Summary: args and chunk grid both give the layout megatron-core ran with.
  Summary s = Summarize(&*common, *md);
  EXPECT_EQ(s.from_args.tp, exp["tp"].get<int64_t>());
  EXPECT_EQ(s.from_args.pp, exp["pp"].get<int64_t>());
  EXPECT_EQ(s.from_args.dp, exp["dp"].get<int64_t>());
  EXPECT_EQ(s.from_args.world_size, exp["world_size"].get<int64_t>());
  if (exp.contains("ep")) {
    EXPECT_EQ(s.from_args.ep.value_or(1), exp["ep"].get<int64_t>());
  }
  // The model facts are tests/unit/model/summary_test.cc's.
  EXPECT_EQ(s.from_chunks.tp, exp["tp"].get<int64_t>());
  EXPECT_EQ(s.from_chunks.pp, exp["pp"].get<int64_t>());
  EXPECT_EQ(s.from_chunks.rng_tp, exp["tp"].get<int64_t>());
  const auto& keys = exp["keys"];
  if (keys.contains("decoder.layers.mlp.experts.experts.linear_fc2.weight")) {
    EXPECT_EQ(s.from_chunks.etp, exp["etp"].get<int64_t>());
  }
  if (keys.contains("decoder.layers.self_attention.linear_qkv.weight")) {
    EXPECT_TRUE(s.from_chunks.stacked_layers);
  }
  EXPECT_FALSE(s.layout_mismatch) << ::testing::PrintToString(s.mismatches);
  EXPECT_EQ(s.optimizer.sharding_type, exp["optimizer_form"].get<std::string>());
  EXPECT_EQ(s.optimizer.sharding_type_source, "content_metadata");
  int64_t total = 0;
  for (const auto& [k, n] : s.keys_by_kind) total += n;
  EXPECT_EQ(total, static_cast<int64_t>(keys.size()));
  EXPECT_EQ(s.keys_by_kind[KeyKind::kRngState], exp["tp"].get<int64_t>() * exp["pp"].get<int64_t>());
  for (const std::string& line : LayoutText(s)) std::cout << "  " << line << "\n";
  for (const std::string& line : ContentsText(s)) std::cout << "  " << line << "\n";

  // Files: one FileContents per data file, items add up, ranges fit the files.
  std::vector<FileContents> files = DescribeFiles(*md);
  std::vector<std::string> names, want;
  int64_t items = 0;
  for (const FileContents& f : files) {
    names.push_back(f.file);
    items += f.items;
    EXPECT_LE(f.bytes, fs::file_size(dir / f.file)) << f.file;
    EXPECT_TRUE(f.rank.has_value()) << f.file;
    std::cout << "  " << f.text << "\n";
  }
  for (const auto& f : exp["files"]) {
    std::string n = f.get<std::string>();
    if (n.size() > 7 && n.substr(n.size() - 7) == ".distcp") want.push_back(n);
  }
  EXPECT_EQ(names, want);
  EXPECT_EQ(items, static_cast<int64_t>(md->items.size()));
  // Rank 0's first file always holds the first stage's embedding (no FPS) or
  // at least one model or optimizer item (FPS).
  ASSERT_FALSE(files.empty());
  EXPECT_GT(files[0].items, 0);
}

INSTANTIATE_TEST_SUITE_P(Goldens, MegatronGolden, ::testing::ValuesIn(Goldens()),
                         [](const auto& info) { return info.param; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(MegatronGolden);

}  // namespace
}  // namespace ckpt::megatron
