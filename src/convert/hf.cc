// Megatron-Core torch_dist <-> HuggingFace, planned by the model layer and
// streamed region by region (see hf.h).
#include "convert/hf.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstring>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "checkpoint/dcp_reader.h"
#include "checkpoint/readers.h"
#include "checkpoint/torch_dist_writer.h"
#include "ckpt/checkpoint.h"
#include "ckpt/engine.h"
#include "ckpt/model.h"
#include "ckpt/writer.h"
#include "convert/cast.h"
#include "convert/dcp_entries.h"
#include "convert/megatron_view.h"
#include "convert/read_ahead.h"
#include "format/megatron/megatron.h"
#include "format/megatron/writer.h"
#include "format/safetensors/safetensors.h"
#include "format/torch/torch_file.h"
#include "format/torch/tree_writer.h"
#include "model/args.h"
#include "util/strings.h"

namespace ckpt::internal_convert {
namespace {

using internal_checkpoint::DcpReader;
using internal_checkpoint::EndsWith;
using model::Plan;
using model::TensorPlan;

constexpr uint64_t kMaxConfigBytes = 16 << 20;

Result<std::optional<DType>> ParseDtypeOption(const std::string& s) {
  if (s.empty()) return std::optional<DType>();
  if (s == "bf16" || s == "bfloat16") return std::optional<DType>(DType::kBFloat16);
  if (s == "fp16" || s == "float16") return std::optional<DType>(DType::kFloat16);
  if (s == "fp32" || s == "float32") return std::optional<DType>(DType::kFloat32);
  return InvalidArgumentError(StrCat("dtype must be \"bf16\", \"fp16\" or \"fp32\", got ", Quote(s)));
}

Result<nlohmann::json> ReadJsonFile(Env* env, const std::string& path, std::string_view what) {
  CKPT_ASSIGN_OR_RETURN(std::string text, internal_checkpoint::ReadSmall(env, path, kMaxConfigBytes),
                        StrCat("reading ", what));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return InvalidArgumentError(StrCat(path, ": ", what, " is not a JSON object"));
  }
  return j;
}

std::string DumpJson(const nlohmann::ordered_json& j) { return j.dump(2) + "\n"; }

// The element-wise and layout transforms of a plan, applied to a whole
// gathered tensor held in memory (only plans that need them buffer).
Status ApplyInMemory(const TensorPlan& p, DType dtype, std::string* bytes, const std::vector<int64_t>& gathered_shape) {
  if (p.add != 0) CKPT_RETURN_IF_ERROR(AddScalar(dtype, p.add, bytes));
  if (p.transpose) {
    if (gathered_shape.size() != 2) {
      return InternalError(StrCat("transpose of a ", gathered_shape.size(), "-D tensor ", Quote(p.name)));
    }
    *bytes = Transpose2D(*bytes, gathered_shape[0], gathered_shape[1], DTypeSize(dtype));
  }
  return OkStatus();
}

// Where a plan's source rows are read from.
struct BoundSource {
  size_t tensor = 0;               // index in reader.tensors()
  std::vector<int64_t> index;      // leading indices into the stored tensor
  std::vector<int64_t> inner;      // the stored tensor's trailing shape
  DType dtype = DType::kFloat32;
  bool transposed = false;         // read whole and transposed (HF Conv1D import)
};

// Streams the rows of `p` (before transforms) to `sink`, converting to `out`.
Status StreamRows(const CheckpointReader& reader, const std::vector<BoundSource>& bound, const TensorPlan& p,
                  DType out, ByteSink* sink, std::map<int, std::string>* transposed_cache) {
  for (const model::RowSlice& r : p.rows) {
    const int64_t rows = r.row_end - r.row_begin;
    if (r.source < 0) {
      // Zero rows (vocab padding): row width from the plan's shape.
      uint64_t row_bytes = DTypeSize(out);
      for (size_t d = 1; d < p.shape.size(); ++d) row_bytes *= static_cast<uint64_t>(p.shape[d]);
      std::string zeros(static_cast<size_t>(std::min<uint64_t>(row_bytes * rows, uint64_t{8} << 20)), '\0');
      uint64_t left = row_bytes * static_cast<uint64_t>(rows);
      while (left > 0) {
        size_t n = static_cast<size_t>(std::min<uint64_t>(left, zeros.size()));
        CKPT_RETURN_IF_ERROR(sink->Append(std::string_view(zeros.data(), n)));
        left -= n;
      }
      continue;
    }
    const BoundSource& b = bound[r.source];
    CastSink cast(b.dtype, out, sink);
    if (b.transposed) {
      // The source is a 2-D [in, out] tensor: read whole once, transpose, take rows.
      auto it = transposed_cache->find(r.source);
      if (it == transposed_cache->end()) {
        StringSink whole;
        CKPT_RETURN_IF_ERROR(reader.ReadTensor(b.tensor, &whole));
        it = transposed_cache->emplace(r.source, Transpose2D(whole.str(), b.inner[0], b.inner[1], DTypeSize(b.dtype)))
                 .first;
      }
      const uint64_t row_bytes = static_cast<uint64_t>(b.inner[0]) * DTypeSize(b.dtype);
      CKPT_RETURN_IF_ERROR(cast.Append(std::string_view(it->second).substr(r.row_begin * row_bytes, rows * row_bytes)));
      CKPT_RETURN_IF_ERROR(cast.Finish());
      continue;
    }
    std::vector<int64_t> start = b.index, count(b.index.size(), 1);
    start.push_back(r.row_begin);
    count.push_back(rows);
    for (size_t d = 1; d < b.inner.size(); ++d) {
      start.push_back(0);
      count.push_back(b.inner[d]);
    }
    CKPT_RETURN_IF_ERROR(reader.ReadTensorRegion(b.tensor, start, count, &cast));
    CKPT_RETURN_IF_ERROR(cast.Finish());
  }
  return OkStatus();
}

// Streams the output of `p` in dtype `out`: directly when it needs no
// whole-tensor transform, else gathered in memory first.
Status WritePlanned(const CheckpointReader& reader, const std::vector<BoundSource>& bound, const TensorPlan& p,
                    DType out, ByteSink* sink) {
  std::map<int, std::string> cache;
  if (p.add == 0 && !p.transpose) return StreamRows(reader, bound, p, out, sink, &cache);
  StringSink gathered;
  CKPT_RETURN_IF_ERROR(StreamRows(reader, bound, p, out, &gathered, &cache));
  std::string bytes = gathered.Release();
  std::vector<int64_t> gshape = p.shape;
  if (p.transpose && gshape.size() == 2) std::swap(gshape[0], gshape[1]);
  CKPT_RETURN_IF_ERROR(ApplyInMemory(p, out, &bytes, gshape));
  return sink->Append(bytes);
}

uint64_t NumBytes(const std::vector<int64_t>& shape, DType d) {
  uint64_t n = DTypeSize(d);
  for (int64_t s : shape) n *= static_cast<uint64_t>(s);
  return n;
}

// Publishes files into folder `dir` as one unit: written into a staging
// folder beside it (engine::FolderCommit), then switched over, so an older
// save there stays intact until this one is complete.
class Publisher {
 public:
  Publisher(Env* env, std::string dir) : env_(env), dir_(std::move(dir)) {}
  Status Begin() {
    if (env_->FileExists(dir_) && !env_->IsDirectory(dir_)) {
      return InvalidArgumentError(StrCat("destination ", dir_, " exists and is not a folder"));
    }
    CKPT_ASSIGN_OR_RETURN(commit_, engine::FolderCommit::Begin(env_, dir_));
    return OkStatus();
  }
  // `write` is given the file's path in the staging folder; files() has its final path.
  Status Write(const std::string& name, const std::function<Status(const std::string& path)>& write) {
    const std::string path = JoinPath(commit_->staging(), name);
    Status s = write(path);
    if (!s.ok()) {
      env_->RemoveFile(path).IgnoreError();
      return s;
    }
    files_.push_back(JoinPath(dir_, name));
    return OkStatus();
  }
  void Rollback() {
    if (commit_) commit_->Abort();
    files_.clear();
  }
  // Carries over the folder's entries that `replaced` does not name, then switches.
  Status Commit(const std::function<bool(std::string_view)>& replaced) {
    CKPT_RETURN_IF_ERROR(commit_->CarryOver(replaced));
    return commit_->Commit();
  }
  const std::vector<std::string>& files() const { return files_; }

 private:
  Env* env_;
  std::string dir_;
  std::unique_ptr<engine::FolderCommit> commit_;
  std::vector<std::string> files_;
};

// "model.safetensors", "model-00001-of-00003.safetensors", the index (and
// the pytorch_model* forms for `bin`).
bool IsWeightFileName(std::string_view name, bool bin) {
  const std::string_view prefix = bin ? "pytorch_model" : "model";
  const std::string_view ext = bin ? ".bin" : ".safetensors";
  if (name.substr(0, prefix.size()) != prefix) return false;
  std::string_view rest = name.substr(prefix.size());
  if (rest == ext || rest == StrCat(ext, ".index.json")) return true;
  // "-NNNNN-of-NNNNN<ext>"
  if (rest.size() != 15 + ext.size() || rest.substr(15) != ext || rest[0] != '-' || rest.substr(6, 4) != "-of-") {
    return false;
  }
  for (size_t i : {1, 2, 3, 4, 5, 10, 11, 12, 13, 14}) {
    if (rest[i] < '0' || rest[i] > '9') return false;
  }
  return true;
}

}  // namespace

bool IsHfWeightFileName(std::string_view name, bool bin) { return IsWeightFileName(name, bin); }

// ---------------------------------------------------------------------------
// torch_dist -> HF

Result<ConvertReport> ConvertToHf(const std::string& src, const std::string& dst, const ConvertOptions& options,
                                  Env* env) {
  CKPT_ASSIGN_OR_RETURN(std::optional<DType> want_dtype, ParseDtypeOption(options.dtype));
  if (EndsWith(dst, ".safetensors") || EndsWith(dst, ".json") || EndsWith(dst, ".bin")) {
    return InvalidArgumentError(StrCat("destination ", dst, " names a file, but an HF model is a folder"));
  }
  CKPT_ASSIGN_OR_RETURN(TorchDistSource s, OpenMegatronSource(src, env, "to=\"hf\" converts"));
  const CheckpointReader& reader = *s.reader;

  // The model: args, cross-checked with the stored shapes, then the user's HF config.
  model::ShapeOf shape_of = [&](std::string_view key) -> std::optional<std::vector<int64_t>> {
    auto it = s.by_key.find(key);
    if (it == s.by_key.end()) return std::nullopt;
    return reader.tensors()[it->second].shape;
  };
  CKPT_ASSIGN_OR_RETURN(model::ModelConfig config,
                        model::ConfigFromArgs(s.common ? &*s.common : nullptr, shape_of), src);
  std::optional<model::Family> family;
  nlohmann::json reference;
  if (!options.hf_config.empty()) {
    CKPT_ASSIGN_OR_RETURN(reference, ReadJsonFile(env, options.hf_config, "hf_config"));
    CKPT_ASSIGN_OR_RETURN(model::HfModel hf, model::ParseHfConfig(reference), StrCat("hf_config ", options.hf_config));
    std::vector<std::string> diffs = model::CompareConfigs(config, hf.config);
    if (!diffs.empty()) {
      return InvalidArgumentError(StrCat("hf_config ", options.hf_config, " (", model::FamilyName(hf.family),
                                         ") does not describe the checkpoint ", src, ": ",
                                         fmt::format("{}", fmt::join(diffs, "; "))));
    }
    family = hf.family;
    if (config.vocab_size && *config.vocab_size != *hf.config.vocab_size) {
      return InvalidArgumentError(StrCat("hf_config ", options.hf_config, " has vocab_size ", *hf.config.vocab_size,
                                         ", the checkpoint's args.vocab_size is ", *config.vocab_size));
    }
    config.vocab_size = hf.config.vocab_size;
  }
  if (options.vocab_size) {
    if (config.vocab_size && *config.vocab_size != *options.vocab_size) {
      return InvalidArgumentError(StrCat("vocab_size ", *options.vocab_size, " disagrees with ",
                                         options.hf_config.empty() ? "args.vocab_size " : "hf_config's ",
                                         *config.vocab_size));
    }
    config.vocab_size = options.vocab_size;
  }
  if (!options.family.empty()) {
    CKPT_ASSIGN_OR_RETURN(model::Family f, model::ParseFamily(options.family), "family");
    if (family && *family != f) {
      return InvalidArgumentError(StrCat("family ", Quote(options.family), " disagrees with hf_config's ",
                                         model::FamilyName(*family)));
    }
    family = f;
  }
  if (!family) family = model::GuessFamily(config);
  if (!config.vocab_size) {
    return InvalidArgumentError(StrCat(
        src, ": the unpadded vocabulary size is not in args (args.vocab_size is None; the embedding has ",
        config.padded_vocab_size,
        " rows, padded to a multiple of make_vocab_size_divisible_by * TP): give the HF config (hf_config) or "
        "vocab_size; ckptkit does not guess it"));
  }
  if (*config.vocab_size > config.padded_vocab_size) {
    return InvalidArgumentError(StrCat("vocab_size ", *config.vocab_size, " is larger than the checkpoint's ",
                                       config.padded_vocab_size, " embedding rows (", src, ")"));
  }

  // Plan every output tensor before writing anything.
  auto has_module = [&](std::string_view n) { return FindStored(s, n).has_value(); };
  CKPT_ASSIGN_OR_RETURN(Plan plan, model::PlanExport(config, *family, has_module), src);
  std::vector<BoundSource> bound;
  std::set<std::string> used_keys;
  for (const model::SourceRef& ref : plan.sources) {
    std::optional<model::StoredRef> where = FindStored(s, ref.name);
    if (!where) return NotFoundError(StrCat(src, ": no stored tensor holds ", Quote(ref.name)));
    const size_t ti = s.by_key.find(where->key)->second;
    const TensorInfo& t = reader.tensors()[ti];
    std::vector<int64_t> inner(t.shape.begin() + where->index.size(), t.shape.end());
    if (inner != ref.shape) {
      return InvalidArgumentError(StrCat(src, ": ", Quote(t.key),
                                         where->index.empty() ? "" : StrCat(" at ", fmt::format("{}", where->index)),
                                         " has shape [", fmt::format("{}", fmt::join(inner, ", ")),
                                         "], the args (", model::FamilyName(*family), ") give [",
                                         fmt::format("{}", fmt::join(ref.shape, ", ")), "]"));
    }
    bound.push_back({ti, where->index, inner, t.dtype, false});
    used_keys.insert(t.key);
  }
  // Every model tensor of the checkpoint must have a place in the mapping:
  // one left over means the args (or the family) miss part of the model.
  std::vector<std::string> skipped_kinds;
  std::map<std::string, int64_t> skipped_count;
  for (const TensorInfo& t : reader.tensors()) {
    if (used_keys.count(t.key)) continue;
    megatron::KeyKind kind = megatron::Classify(t.key, false);
    if (kind == megatron::KeyKind::kModel) {
      if (t.key == "output_layer.weight" && config.tied_embeddings) {
        ++skipped_count["output_layer.weight (a copy of the tied embedding)"];
        continue;
      }
      return InvalidArgumentError(StrCat(src, ": tensor ", Quote(t.key), " has no place in the ",
                                         model::FamilyName(*family),
                                         " mapping for these args (a bias, norm or layer the args do not describe)"));
    }
    ++skipped_count[std::string(megatron::KeyKindName(kind))];
  }
  for (const ObjectInfo& o : reader.objects()) {
    (void)o;
    ++skipped_count["objects (common state, rng, extra state)"];
  }

  // Output dtype and files.
  std::vector<DType> out_dtype;
  std::vector<safetensors::ShardTensor> st;
  uint64_t total = 0;
  for (const TensorPlan& p : plan.outputs) {
    DType d = want_dtype ? *want_dtype : bound[p.rows.front().source].dtype;
    if (!IsFloatCastable(d) && want_dtype) {
      return InvalidArgumentError(StrCat("cannot cast ", Quote(p.name), " to ", DTypeName(d)));
    }
    for (const model::RowSlice& r : p.rows) {
      if (r.source >= 0 && bound[r.source].dtype != d && !(IsFloatCastable(bound[r.source].dtype) && IsFloatCastable(d))) {
        return InvalidArgumentError(StrCat("cannot convert ", Quote(p.name), " from ",
                                           DTypeName(bound[r.source].dtype), " to ", DTypeName(d)));
      }
    }
    out_dtype.push_back(d);
    st.push_back({p.name, NumBytes(p.shape, d), -1});
    total += NumBytes(p.shape, d);
  }
  safetensors::ShardPlanOptions spo;
  spo.max_shard_size = options.max_shard_size ? options.max_shard_size : 5'000'000'000;
  spo.prefix = options.bin ? "pytorch_model" : "model";
  spo.extension = options.bin ? ".bin" : ".safetensors";
  CKPT_ASSIGN_OR_RETURN(safetensors::ShardPlan shards, safetensors::PlanShards(st, spo));
  const DType config_dtype = want_dtype ? *want_dtype : config.params_dtype;
  CKPT_ASSIGN_OR_RETURN(nlohmann::ordered_json hf_config, model::MakeHfConfig(config, *family, config_dtype));
  for (const char* k : {"bos_token_id", "eos_token_id", "pad_token_id"}) {
    if (reference.is_object() && reference.contains(k)) hf_config[k] = reference[k];
  }
  std::optional<nlohmann::ordered_json> gen = model::MakeGenerationConfig(reference);

  // Write.
  ConvertReport report;
  report.warnings.push_back(StrCat("family ", model::FamilyName(*family), ": ", plan.outputs.size(),
                                   " HF tensors from ", plan.sources.size(), " Megatron tensors"));
  {
    std::vector<std::string> parts;
    for (const auto& [what, n] : skipped_count) parts.push_back(StrCat(n, " ", what));
    if (!parts.empty()) {
      report.warnings.push_back(StrCat("not converted (HF holds model weights only): ",
                                       fmt::format("{}", fmt::join(parts, ", "))));
    }
  }
  Publisher pub(env, dst);
  CKPT_RETURN_IF_ERROR(pub.Begin());
  uint64_t done = 0;
  ReadAhead read_ahead;
  auto fail = [&](Status st_) {
    pub.Rollback();
    return st_;
  };
  const std::map<std::string, std::string> st_meta = {{"format", "pt"}};
  for (const auto& [file, indices] : shards.shards) {
    std::vector<TensorToWrite> items;
    for (size_t i : indices) {
      const TensorPlan& p = plan.outputs[i];
      const DType d = out_dtype[i];
      items.push_back({p.name, d, p.shape, [&, i, d](ByteSink* sink) -> Status {
                         const TensorPlan& pp = plan.outputs[i];
                         CKPT_RETURN_IF_ERROR(
                             read_ahead.Run([&](ByteSink* ahead) { return WritePlanned(reader, bound, pp, d, ahead); },
                                            sink),
                             StrCat("writing ", Quote(pp.name), " (", pp.why, ")"));
                         done += NumBytes(pp.shape, d);
                         if (options.progress) options.progress(done, total);
                         return OkStatus();
                       }});
    }
    Status w = pub.Write(file, [&](const std::string& path) {
      return options.bin ? WriteTorchFile(path, items, env) : WriteSafetensorsFile(path, items, st_meta, env);
    });
    if (!w.ok()) return fail(w);
  }
  if (shards.shards.size() > 1) {
    auto text = safetensors::SerializeIndex(shards.Index(st));
    if (!text.ok()) return fail(text.status());
    Status w = pub.Write(options.bin ? "pytorch_model.bin.index.json" : "model.safetensors.index.json",
                         [&](const std::string& path) {
                           return WriteFileAtomically(env, path, [&](WritableFile* f) { return f->Append(*text); });
                         });
    if (!w.ok()) return fail(w);
  }
  // As save_pretrained does: weight files of an older save in the folder that
  // this one did not write (other shard counts, the other single/sharded
  // form) do not survive (they are not carried over), so no loader can pick
  // them up.
  {
    std::set<std::string> ours;
    for (const std::string& f : pub.files()) ours.insert(Basename(f));
    auto children = env->GetChildren(dst);
    if (children.ok()) {
      for (const std::string& name : *children) {
        if (ours.count(name) || !IsWeightFileName(name, options.bin)) continue;
        report.warnings.push_back(StrCat("removed ", name, " of an older save in ", dst));
      }
    }
  }
  if (gen) {
    std::string text = DumpJson(*gen);
    Status w = pub.Write("generation_config.json", [&](const std::string& path) {
      return WriteFileAtomically(env, path, [&](WritableFile* f) { return f->Append(text); });
    });
    if (!w.ok()) return fail(w);
  }
  {
    std::string text = DumpJson(hf_config);
    Status w = pub.Write("config.json", [&](const std::string& path) {
      return WriteFileAtomically(env, path, [&](WritableFile* f) { return f->Append(text); });
    });
    if (!w.ok()) return fail(w);
  }
  {
    const bool bin = options.bin;
    Status w = pub.Commit([bin](std::string_view name) { return IsWeightFileName(name, bin); });
    if (!w.ok()) return fail(w);
  }
  report.files = pub.files();
  report.tensors = plan.outputs.size();
  report.bytes = total;
  return report;
}

// ---------------------------------------------------------------------------
// HF -> torch_dist

bool IsHfModelFolder(Env* env, const std::string& src) {
  if (!env->IsDirectory(src)) return false;
  const std::string cfg = JoinPath(src, "config.json");
  if (!env->FileExists(cfg)) return false;
  auto j = ReadJsonFile(env, cfg, "config.json");
  if (!j.ok()) return false;
  std::string type = j->value("model_type", std::string());
  return model::ParseFamily(type).ok();
}

Result<ConvertReport> ConvertHfToTorchDist(const std::string& src, const std::string& dst,
                                           const ConvertOptions& options, Env* env) {
  CKPT_ASSIGN_OR_RETURN(std::optional<DType> want_dtype, ParseDtypeOption(options.dtype));
  const std::string cfg_path = JoinPath(src, "config.json");
  CKPT_ASSIGN_OR_RETURN(nlohmann::json cfg_json, ReadJsonFile(env, cfg_path, "config.json"));
  CKPT_ASSIGN_OR_RETURN(model::HfModel hf, model::ParseHfConfig(cfg_json), cfg_path);
  model::ModelConfig config = hf.config;
  model::ParallelLayout layout;
  layout.tp = options.tp;
  layout.pp = options.pp;
  layout.ep = options.ep;
  layout.etp = options.etp.value_or(options.tp);
  // The smallest data-parallel size that fits the expert grid.
  layout.dp = 1;
  while ((layout.tp * layout.cp * layout.dp) % (layout.ep * layout.etp) != 0 && layout.dp < 1 << 20) ++layout.dp;
  CKPT_RETURN_IF_ERROR(layout.Validate(), "tp/pp/ep/etp");
  if (config.moe() && config.num_experts % layout.ep != 0) {
    return InvalidArgumentError(StrCat("ep ", layout.ep, " does not divide the ", config.num_experts, " experts"));
  }
  if (config.num_query_groups % layout.tp != 0 && layout.tp % config.num_query_groups != 0) {
    return InvalidArgumentError(StrCat("tp ", layout.tp, " and num_key_value_heads ", config.num_query_groups,
                                       ": one must divide the other"));
  }
  CKPT_RETURN_IF_ERROR(layout.Stages(config.num_layers).status(), "pp");
  config.make_vocab_size_divisible_by = options.make_vocab_size_divisible_by;
  if (config.make_vocab_size_divisible_by < 1) {
    return InvalidArgumentError("make_vocab_size_divisible_by must be >= 1");
  }
  config.padded_vocab_size = config.PaddedVocab(*config.vocab_size, layout.tp);

  OpenOptions open;
  open.env = env;
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader, OpenCheckpoint(src, open), StrCat("reading ", src));
  std::map<std::string, size_t, std::less<>> by_key;
  for (size_t i = 0; i < reader->tensors().size(); ++i) by_key.emplace(reader->tensors()[i].key, i);
  auto has_tensor = [&](std::string_view n) { return by_key.count(n) > 0; };
  CKPT_ASSIGN_OR_RETURN(Plan plan,
                        model::PlanImport(config, hf.family, options.megatron_layer_spec, config.padded_vocab_size,
                                          has_tensor),
                        src);
  std::vector<BoundSource> bound;
  std::set<std::string> used;
  for (const model::SourceRef& ref : plan.sources) {
    const size_t ti = by_key.find(ref.name)->second;
    const TensorInfo& t = reader->tensors()[ti];
    if (t.shape != ref.shape) {
      return InvalidArgumentError(StrCat(src, ": ", Quote(t.key), " has shape [", fmt::format("{}", fmt::join(t.shape, ", ")),
                                         "], config.json gives [", fmt::format("{}", fmt::join(ref.shape, ", ")), "]"));
    }
    BoundSource b{ti, {}, t.shape, t.dtype, false};
    used.insert(t.key);
    bound.push_back(std::move(b));
  }
  for (const TensorPlan& p : plan.outputs) {
    if (!p.transpose_sources) continue;
    for (const model::RowSlice& r : p.rows) {
      if (r.source >= 0) bound[r.source].transposed = true;
    }
  }
  for (const TensorInfo& t : reader->tensors()) {
    if (used.count(t.key)) continue;
    // Buffers some checkpoints carry: rotary inv_freq, GPT-2's causal mask.
    if (EndsWith(t.key, ".rotary_emb.inv_freq") || EndsWith(t.key, ".attn.bias") || EndsWith(t.key, ".attn.masked_bias")) {
      continue;
    }
    if (t.key == "lm_head.weight" && config.tied_embeddings) continue;  // a tied copy
    return InvalidArgumentError(StrCat(src, ": tensor ", Quote(t.key), " has no place in the ",
                                       model::FamilyName(hf.family), " mapping (config.json does not describe it)"));
  }
  DType params = want_dtype ? *want_dtype : bound.empty() ? DType::kFloat32 : bound.front().dtype;
  config.params_dtype = params;

  // Entries: one per stored key, one chunk per (layer[, expert]) plan.
  std::vector<dcp::EntryToWrite> entries;
  std::map<std::string, size_t> entry_of;
  uint64_t total = 0;
  internal_convert::ChunkProgress progress(options.progress);
  for (size_t i = 0; i < plan.outputs.size(); ++i) {
    const TensorPlan& p = plan.outputs[i];
    auto [it, inserted] = entry_of.emplace(p.name, entries.size());
    if (inserted) {
      dcp::EntryToWrite e;
      e.key = p.name;
      e.type = dcp::EntryType::kTensor;
      e.dtype = params;
      e.size = p.out_index.empty() ? p.shape : p.full_shape;
      entries.push_back(std::move(e));
    }
    dcp::ChunkToWrite c;
    c.offsets = p.out_index;
    c.sizes.assign(p.out_index.size(), 1);
    for (int64_t d : p.shape) {
      c.offsets.push_back(0);
      c.sizes.push_back(d);
    }
    const uint64_t nbytes = NumBytes(p.shape, params);
    total += nbytes;
    c.write = [&reader, &bound, &plan, &progress, i, params, nbytes](ByteSink* sink) -> Status {
      const TensorPlan& pp = plan.outputs[i];
      CKPT_RETURN_IF_ERROR(WritePlanned(*reader, bound, pp, params, sink),
                           StrCat("writing ", Quote(pp.name), " (", pp.why, ")"));
      progress.Add(nbytes);
      return OkStatus();
    };
    entries[it->second].chunks.push_back(std::move(c));
  }
  progress.set_total(total);
  // The ShardedObjects the model requests (linear layers' _extra_state = None):
  // each stored as Megatron stores a ShardedObject, torch.save([data]).
  for (const std::string& key : plan.none_objects) entries.push_back(NoneObjectEntry(key));

  internal_checkpoint::TorchDistWriteOptions wo;
  if (!options.megatron_version.empty()) {
    CKPT_ASSIGN_OR_RETURN(wo.version, megatron::ParseCoreVersion(options.megatron_version), "megatron_version");
  }
  wo.thread_count = options.thread_count;
  wo.direct_io = options.direct_io;
  const int64_t iteration = options.iteration.value_or(0);
  if (iteration < 0) return InvalidArgumentError(StrCat("iteration ", iteration, " is negative"));
  wo.tracker = megatron::Tracker{false, iteration};

  // The common state: {"args": Namespace(...), "checkpoint_version": 3.0, "iteration": N}.
  const std::vector<std::pair<std::string, model::ArgValue>> args = model::MegatronArgs(config, layout);
  const megatron::CoreVersion version = wo.version;
  auto write_common = [args, version, iteration](ByteSink* sink) -> Status {
    torch::TorchTreeWriter w;
    pickle::Arena& a = w.arena();
    pickle::Value* fields = a.Dict();
    for (const auto& [name, v] : args) {
      pickle::Value* val = nullptr;
      switch (v.kind) {
        case model::ArgValue::Kind::kNone: val = a.None(); break;
        case model::ArgValue::Kind::kBool: val = a.Bool(v.i != 0); break;
        case model::ArgValue::Kind::kInt: val = a.Int(v.i); break;
        case model::ArgValue::Kind::kFloat: val = a.Float(v.f); break;
        case model::ArgValue::Kind::kString: val = w.Str(v.s); break;
        case model::ArgValue::Kind::kTorchDType: val = a.Global("torch", v.s); break;
      }
      a.SetItem(fields, w.Str(name), val);
    }
    pickle::Value* ns = a.New(pickle::Kind::kObject);
    a.SetCallable(ns, a.Global("argparse", "Namespace"));
    a.SetArgs(ns, a.Tuple({}));
    ns->newobj = true;
    a.SetState(ns, fields);
    pickle::Value* root = a.Dict();
    a.SetItem(root, w.Str("args"), ns);
    a.SetItem(root, w.Str("checkpoint_version"), a.Float(3.0));
    a.SetItem(root, w.Str("iteration"), a.Int(iteration));
    return megatron::WriteCommonTree(version, &w, root, sink);
  };
  CKPT_ASSIGN_OR_RETURN(internal_checkpoint::TorchDistWriteReport r,
                        internal_checkpoint::WriteTorchDistCheckpoint(env, dst, std::move(entries), write_common, wo));
  ConvertReport report;
  report.files = std::move(r.files);
  report.data_files = r.data_files;
  report.direct_io_files = r.direct_io_files;
  report.tensors = plan.outputs.size();
  report.bytes = total;
  report.warnings.push_back(StrCat("HF ", model::FamilyName(hf.family), " -> Megatron GPTModel for ",
                                   model::LayoutString(layout), ", ", options.megatron_layer_spec,
                                   " layer spec, padded vocabulary ", config.padded_vocab_size,
                                   "; no optimizer state (start a fine-tuning run with --finetune / no optimizer load)"));
  return report;
}

}  // namespace ckpt::internal_convert
