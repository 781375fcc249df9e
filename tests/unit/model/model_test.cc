// The model layer: layouts, args -> config, family plans (index-tagged: each
// planned row is checked against the QKV / gated-MLP formulas written out
// independently here, not against the planner's own helpers).
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "ckpt/model.h"
#include "testing/testutil.h"

namespace ckpt::model {
namespace {

ModelConfig Llama(int64_t heads, int64_t groups, int64_t hd) {
  ModelConfig c;
  c.num_layers = 2;
  c.hidden_size = 32;
  c.ffn_hidden_size = 48;
  c.num_attention_heads = heads;
  c.num_query_groups = groups;
  c.kv_channels = hd;
  c.padded_vocab_size = 128;
  c.vocab_size = 100;
  c.max_position_embeddings = 64;
  c.add_bias_linear = false;
  c.tied_embeddings = false;
  return c;
}

bool HasAll(std::string_view) { return true; }

// Megatron row index -> (which of q/k/v, row within that HF tensor), as the
// group interleave defines it: group g holds [q heads g*hpg..; k_g; v_g].
std::pair<int, int64_t> QkvOwner(int64_t row, int64_t heads, int64_t groups, int64_t hd) {
  const int64_t hpg = heads / groups, block = (hpg + 2) * hd;
  const int64_t g = row / block, in = row % block;
  if (in < hpg * hd) return {0, g * hpg * hd + in};
  if (in < (hpg + 1) * hd) return {1, g * hd + in - hpg * hd};
  return {2, g * hd + in - (hpg + 1) * hd};
}

TEST(ModelPlan, QkvSplitMatchesTheGroupInterleave) {
  for (auto [heads, groups, hd] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {8, 1, 4}, {8, 2, 4}, {8, 4, 16}, {8, 8, 4}, {4, 2, 16}}) {
    ModelConfig c = Llama(heads, groups, hd);
    auto plan = PlanExport(c, Family::kLlama, HasAll);
    ASSERT_TRUE(plan.ok()) << plan.status().ToString();
    // Expand each q/k/v output of layer 1 into its list of megatron rows.
    std::map<std::string, std::vector<int64_t>> rows;
    for (const TensorPlan& p : plan->outputs) {
      if (p.name.find("layers.1.self_attn.") == std::string::npos || p.name.find("_proj.weight") == std::string::npos) continue;
      if (p.name.find("o_proj") != std::string::npos) continue;
      for (const RowSlice& r : p.rows) {
        EXPECT_EQ(plan->sources[r.source].name, "decoder.layers.1.self_attention.linear_qkv.weight");
        for (int64_t i = r.row_begin; i < r.row_end; ++i) rows[p.name].push_back(i);
      }
    }
    const char* names[3] = {"model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
                            "model.layers.1.self_attn.v_proj.weight"};
    int64_t total = 0;
    for (int w = 0; w < 3; ++w) {
      const std::vector<int64_t>& rs = rows[names[w]];
      total += static_cast<int64_t>(rs.size());
      for (size_t hf_row = 0; hf_row < rs.size(); ++hf_row) {
        auto [which, at] = QkvOwner(rs[hf_row], heads, groups, hd);
        EXPECT_EQ(which, w) << names[w] << " row " << hf_row;
        EXPECT_EQ(at, static_cast<int64_t>(hf_row)) << names[w];
      }
    }
    EXPECT_EQ(total, (heads + 2 * groups) * hd);
  }
}

TEST(ModelPlan, ImportIsTheInverseOfExportRowForRow) {
  ModelConfig c = Llama(8, 2, 4);
  auto exp = PlanExport(c, Family::kLlama, HasAll);
  auto imp = PlanImport(c, Family::kLlama, "local", c.padded_vocab_size, HasAll);
  ASSERT_TRUE(exp.ok() && imp.ok());
  // Export: (hf name, hf row) -> megatron (name, row). Import must map each
  // megatron row back to the same HF row.
  std::map<std::pair<std::string, int64_t>, std::pair<std::string, int64_t>> hf_of;
  for (const TensorPlan& p : exp->outputs) {
    int64_t hf_row = 0;
    for (const RowSlice& r : p.rows) {
      for (int64_t i = r.row_begin; i < r.row_end; ++i) hf_of[{exp->sources[r.source].name, i}] = {p.name, hf_row++};
    }
  }
  int checked = 0;
  for (const TensorPlan& p : imp->outputs) {
    if (p.name != "decoder.layers.self_attention.linear_qkv.weight" && p.name != "decoder.layers.mlp.linear_fc1.weight") continue;
    ASSERT_EQ(p.out_index.size(), 1u);
    const std::string module = p.name == "decoder.layers.self_attention.linear_qkv.weight"
                                   ? "decoder.layers." + std::to_string(p.out_index[0]) + ".self_attention.linear_qkv.weight"
                                   : "decoder.layers." + std::to_string(p.out_index[0]) + ".mlp.linear_fc1.weight";
    int64_t m_row = 0;
    for (const RowSlice& r : p.rows) {
      for (int64_t i = r.row_begin; i < r.row_end; ++i, ++m_row) {
        auto it = hf_of.find({module, m_row});
        ASSERT_NE(it, hf_of.end()) << module << " row " << m_row;
        EXPECT_EQ(it->second.first, imp->sources[r.source].name);
        EXPECT_EQ(it->second.second, i);
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 2 * ((8 + 4) * 4 + 2 * 48));
}

TEST(ModelPlan, GatedFc1IsGateThenUp) {
  ModelConfig c = Llama(4, 4, 8);
  auto plan = PlanExport(c, Family::kLlama, HasAll);
  ASSERT_TRUE(plan.ok());
  for (const TensorPlan& p : plan->outputs) {
    if (p.name == "model.layers.0.mlp.gate_proj.weight") {
      ASSERT_EQ(p.rows.size(), 1u);
      EXPECT_EQ(p.rows[0].row_begin, 0);
      EXPECT_EQ(p.rows[0].row_end, 48);
    }
    if (p.name == "model.layers.0.mlp.up_proj.weight") {
      ASSERT_EQ(p.rows.size(), 1u);
      EXPECT_EQ(p.rows[0].row_begin, 48);
      EXPECT_EQ(p.rows[0].row_end, 96);
    }
  }
}

TEST(ModelPlan, VocabTrimTiedAndLayernorm1p) {
  ModelConfig c = Llama(4, 4, 8);
  c.tied_embeddings = true;
  c.apply_layernorm_1p = true;
  auto plan = PlanExport(c, Family::kLlama, HasAll);
  ASSERT_TRUE(plan.ok());
  std::set<std::string> names;
  for (const TensorPlan& p : plan->outputs) {
    names.insert(p.name);
    if (p.name == "model.embed_tokens.weight") {
      EXPECT_EQ(p.shape, (std::vector<int64_t>{100, 32}));
      EXPECT_EQ(p.rows[0].row_end, 100);
    }
    if (p.name == "model.norm.weight") {
      EXPECT_EQ(p.add, 1.0);
    }
  }
  EXPECT_EQ(names.count("lm_head.weight"), 0u);  // tied: no lm_head
  auto imp = PlanImport(c, Family::kLlama, "te", 128, HasAll);
  ASSERT_TRUE(imp.ok());
  bool saw_norm = false;
  for (const TensorPlan& p : imp->outputs) {
    if (p.name == "embedding.word_embeddings.weight") {
      ASSERT_EQ(p.rows.size(), 2u);
      EXPECT_EQ(p.rows[1].source, -1);  // zero padding rows
      EXPECT_EQ(p.rows[1].row_end - p.rows[1].row_begin, 28);
    }
    if (p.name == "decoder.layers.self_attention.linear_qkv.layer_norm_weight") {  // stored name in both specs
      saw_norm = true;
      EXPECT_EQ(p.add, -1.0);
    }
  }
  EXPECT_TRUE(saw_norm);
}

TEST(ModelPlan, MissingTensorAndWrongFamilyAreNamed) {
  ModelConfig c = Llama(4, 2, 8);
  auto plan = PlanExport(c, Family::kLlama, [](std::string_view n) {
    return n != "decoder.layers.1.mlp.linear_fc1.weight";
  });
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.status().message().find("decoder.layers.1.mlp.linear_fc1.weight"), std::string::npos);
  auto gpt2 = PlanExport(c, Family::kGpt2, HasAll);
  ASSERT_FALSE(gpt2.ok());
  EXPECT_NE(gpt2.status().message().find("LayerNorm"), std::string::npos);
  c.vocab_size = 200;
  EXPECT_FALSE(PlanExport(c, Family::kLlama, HasAll).ok());
}

TEST(ModelPlan, ExpertsUseGlobalIndices) {
  ModelConfig c = Llama(4, 2, 8);
  c.num_experts = 4;
  c.moe_ffn_hidden_size = 16;
  auto plan = PlanExport(c, Family::kMixtral, HasAll);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  int w1 = 0;
  for (const TensorPlan& p : plan->outputs) {
    if (p.name == "model.layers.1.block_sparse_moe.experts.3.w3.weight") {
      EXPECT_EQ(plan->sources[p.rows[0].source].name, "decoder.layers.1.mlp.experts.experts.3.linear_fc1.weight");
      EXPECT_EQ(p.rows[0].row_begin, 16);
    }
    if (p.name.find(".w1.weight") != std::string::npos) ++w1;
  }
  EXPECT_EQ(w1, 2 * 4);
  auto refs = TorchDistCandidates("decoder.layers.1.mlp.experts.experts.3.linear_fc1.weight");
  ASSERT_FALSE(refs.empty());
  EXPECT_EQ(refs[0].key, "decoder.layers.mlp.experts.experts.linear_fc1.weight");
  EXPECT_EQ(refs[0].index, (std::vector<int64_t>{1, 3}));
  auto dense = TorchDistCandidates("decoder.layers.7.self_attention.linear_qkv.weight");
  EXPECT_EQ(dense[0].key, "decoder.layers.self_attention.linear_qkv.weight");
  EXPECT_EQ(dense[0].index, (std::vector<int64_t>{7}));
  EXPECT_EQ(TorchDistCandidates("embedding.word_embeddings.weight")[0].index.size(), 0u);
}

TEST(ModelPlan, Gpt2Conv1DTransposesAndConcatenatesQkv) {
  ModelConfig c = Llama(4, 4, 8);
  c.norm = Norm::kLayerNorm;
  c.activation = Activation::kGeluTanh;
  c.positions = Positions::kLearned;
  c.add_bias_linear = true;
  c.ffn_hidden_size = 128;
  auto plan = PlanExport(c, Family::kGpt2, HasAll);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  for (const TensorPlan& p : plan->outputs) {
    if (p.name == "transformer.h.0.attn.c_attn.weight") {
      EXPECT_TRUE(p.transpose);
      EXPECT_EQ(p.shape, (std::vector<int64_t>{32, 96}));
      // MHA: per head [q, k, v]; HF wants all q, then all k, then all v.
      ASSERT_EQ(p.rows.size(), 12u);
      EXPECT_EQ(p.rows[0].row_begin, 0);
      EXPECT_EQ(p.rows[1].row_begin, 24);  // q of head 1
      EXPECT_EQ(p.rows[4].row_begin, 8);   // k of head 0
    }
    if (p.name == "transformer.h.0.mlp.c_fc.weight") {
      EXPECT_EQ(p.shape, (std::vector<int64_t>{32, 128}));
    }
  }
}

TEST(Layout, StagesAndValidation) {
  ParallelLayout l;
  l.pp = 2;
  l.vpp = 2;
  auto s = l.Stages(8);
  ASSERT_TRUE(s.ok());
  ASSERT_EQ(s->size(), 4u);
  // Rank 0 holds layers 0-1 (stage 0) and 4-5 (stage 1).
  EXPECT_EQ((*s)[0].pp_rank, 0);
  EXPECT_EQ((*s)[0].begin, 0);
  EXPECT_EQ((*s)[2].pp_rank, 0);
  EXPECT_EQ((*s)[2].vp_stage, 1);
  EXPECT_EQ((*s)[2].begin, 4);
  EXPECT_FALSE(l.Stages(6).ok());
  ParallelLayout u;
  u.pp = 3;
  u.first_stage_layers = 2;
  u.last_stage_layers = 2;
  auto su = u.Stages(10);
  ASSERT_TRUE(su.ok());
  EXPECT_EQ((*su)[1].end - (*su)[1].begin, 6);
  ParallelLayout e;
  e.tp = 2;
  e.ep = 3;
  EXPECT_FALSE(e.Validate().ok());
  e.ep = 2;
  e.etp = 1;
  EXPECT_TRUE(e.Validate().ok());
}

TEST(Config, PaddedVocabAndFamilies) {
  ModelConfig c;
  c.make_vocab_size_divisible_by = 128;
  EXPECT_EQ(c.PaddedVocab(128256, 8), 129024);
  EXPECT_EQ(c.PaddedVocab(1003, 1), 1024);
  EXPECT_EQ(c.PaddedVocab(1003, 8), 1024);
  for (int f = 0; f < kFamilyCount; ++f) {
    auto back = ParseFamily(FamilyName(static_cast<Family>(f)));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(static_cast<int>(*back), f);
    EXPECT_EQ(*ParseFamily(FamilyArchitecture(static_cast<Family>(f))), static_cast<Family>(f));
  }
  EXPECT_FALSE(ParseFamily("bert").ok());
}

TEST(Config, HfConfigRoundTrip) {
  ModelConfig c = Llama(8, 2, 16);
  c.qk_layernorm = true;
  c.rotary_base = 1000000;
  c.norm_epsilon = 1e-6;
  auto j = MakeHfConfig(c, Family::kQwen3, DType::kBFloat16);
  ASSERT_TRUE(j.ok()) << j.status().ToString();
  EXPECT_EQ((*j)["head_dim"], 16);
  EXPECT_EQ((*j)["num_key_value_heads"], 2);
  auto back = ParseHfConfig(nlohmann::json::parse(j->dump()));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->family, Family::kQwen3);
  EXPECT_TRUE(CompareConfigs(c, back->config).empty());
  nlohmann::json other = nlohmann::json::parse(j->dump());
  other["num_key_value_heads"] = 4;
  auto diff = CompareConfigs(c, ParseHfConfig(other)->config);
  ASSERT_EQ(diff.size(), 1u);
  EXPECT_NE(diff[0].find("num_key_value_heads"), std::string::npos);
}

// A config.json is untrusted: a field of the wrong type is an error naming
// it, never an exception (the fuzzer found model_type as a number).
TEST(Config, HfConfigFieldsOfTheWrongTypeAreNamed) {
  ModelConfig c = Llama(8, 2, 16);
  auto good = MakeHfConfig(c, Family::kLlama, DType::kBFloat16);
  ASSERT_TRUE(good.ok()) << good.status().ToString();
  const nlohmann::json base = nlohmann::json::parse(good->dump());
  ASSERT_TRUE(ParseHfConfig(base).ok());
  struct Case {
    const char* key;
    nlohmann::json value;
  };
  const std::vector<Case> cases = {
      {"model_type", 5},         {"hidden_act", nlohmann::json::array()}, {"tie_word_embeddings", "yes"},
      {"attention_bias", 1},     {"mlp_bias", "false"},                   {"rope_theta", "1e4"},
      {"num_key_value_heads", "2"}, {"intermediate_size", 48.5},          {"rms_norm_eps", "1e-6"},
      {"vocab_size", "100"},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.key);
    nlohmann::json j = base;
    j[k.key] = k.value;
    auto r = ParseHfConfig(j);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find(k.key), std::string::npos) << r.status().ToString();
  }
  // Inside the rope block too, in both spellings of it.
  for (const char* block : {"rope_scaling", "rope_parameters"}) {
    SCOPED_TRACE(block);
    nlohmann::json j = base;
    j.erase("rope_theta");
    j[block] = {{"rope_type", "llama3"}, {"factor", "8"}};
    auto r = ParseHfConfig(j);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("factor"), std::string::npos) << r.status().ToString();
    j[block] = {{"rope_type", 3}};
    EXPECT_FALSE(ParseHfConfig(j).ok());
  }
  // null is "absent": the default applies.
  nlohmann::json j = base;
  j["tie_word_embeddings"] = nullptr;
  auto r = ParseHfConfig(j);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->config.tied_embeddings);
}

// Inputs the fuzzers found (tests/corrupt/hf_config/README.md): each parses
// as expected.json says, and both plans name every source exactly once with
// every row slice pointing into the source list.
TEST(HfConfigCorruptCases, EachParsesAndPlansAsExpected) {
  testing::ExpectEveryCorruptFileListed("hf_config", "README.md");
  testing::ForEachCorruptCase("hf_config", 1, [](const std::string& file, nlohmann::json& want,
                                                 const std::string& bytes) {
    nlohmann::json j = nlohmann::json::parse(bytes, nullptr, /*allow_exceptions=*/false);
    ASSERT_FALSE(j.is_discarded()) << file;
    auto hf = ParseHfConfig(j);
    ASSERT_TRUE(hf.ok()) << hf.status().ToString();
    EXPECT_EQ(FamilyName(hf->family), want["family"].get<std::string>());
    const ModelConfig& c = hf->config;
    EXPECT_EQ(c.num_layers, want["num_layers"].get<int64_t>());
    EXPECT_EQ(c.num_experts, want["num_experts"].get<int64_t>());
    auto all = [](std::string_view) { return true; };
    auto check = [](const Plan& plan) {
      std::set<std::string> names;
      for (const SourceRef& s : plan.sources) EXPECT_TRUE(names.insert(s.name).second) << s.name;
      for (const TensorPlan& t : plan.outputs) {
        for (const RowSlice& r : t.rows) EXPECT_LT(r.source, static_cast<int>(plan.sources.size())) << t.name;
      }
    };
    auto imp = PlanImport(c, hf->family, "local", c.PaddedVocab(*c.vocab_size, 2), all);
    ASSERT_TRUE(imp.ok()) << imp.status().ToString();
    check(*imp);
    // Every expert of every layer reads its three HF matrices (w1, w2, w3).
    size_t expert_sources = 0;
    for (const SourceRef& s : imp->sources) expert_sources += s.name.find(".experts.") != std::string::npos;
    EXPECT_EQ(expert_sources, static_cast<size_t>(c.num_layers * c.num_experts * 3));
    auto exp = PlanExport(c, hf->family, all);
    ASSERT_TRUE(exp.ok()) << exp.status().ToString();
    check(*exp);
  });
}

}  // namespace
}  // namespace ckpt::model
