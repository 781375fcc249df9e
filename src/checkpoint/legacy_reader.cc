// LegacyReader: Megatron-LM legacy (--ckpt-format torch) iteration folders.
#include "checkpoint/legacy_reader.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>

#include "model/args.h"
#include "util/box.h"
#include "util/strings.h"

namespace ckpt::internal_checkpoint {

namespace lg = megatron::legacy;

namespace {

std::string HumanSize(uint64_t n) {
  if (n < 1024) return fmt::format("{} B", n);
  static const char* const kUnits[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n) / 1024;
  int u = 0;
  while (v >= 1024 && u < 3) v /= 1024, ++u;
  return fmt::format("{:.1f} {}", v, kUnits[u]);
}

std::string BufferText(const lg::Buffer& b) {
  std::vector<std::string> names;
  for (const lg::StateTensors& s : b.states) names.push_back(s.name);
  std::string t = StrCat("buffer ", b.index, " ", b.dtype_key, " ", b.numel(), " elements");
  if (!b.bucket_numel.empty() || (!b.states.empty() && b.states[0].tensors.size() > 1)) {
    t += StrCat(" in ", b.states.empty() ? b.bucket_numel.size() : b.states[0].tensors.size(), " buckets");
  }
  return StrCat(t, ": ", fmt::format("{}", fmt::join(names, ", ")));
}

// Rank lines shown by SummaryText before "... N more".
constexpr size_t kMaxRankLines = 64;

}  // namespace

bool IsLegacyIterationDir(Env* env, const std::string& dir) {
  auto children = env->GetChildren(dir);
  if (!children.ok()) return false;
  for (const std::string& c : *children) {
    if (c.rfind(lg::kRankFolderPrefix, 0) == 0 && env->IsDirectory(JoinPath(dir, c))) return true;
  }
  return false;
}

std::string LegacyReader::RelativePath(const Rank& r, FileKind f) {
  return StrCat(r.folder, "/", f == FileKind::kModel ? lg::kModelFileName : lg::kDistribOptimFileName);
}

Result<std::unique_ptr<LegacyReader>> LegacyReader::Open(const std::string& dir,
                                                         std::optional<int64_t> tracker_iteration,
                                                         const OpenOptions& options) {
  std::unique_ptr<LegacyReader> r(new LegacyReader());
  CKPT_RETURN_IF_ERROR(r->Init(dir, tracker_iteration, options));
  return r;
}

Result<std::shared_ptr<const torch::TorchFile>> LegacyReader::OpenPath(const std::string& rel) const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = cache_.begin(); it != cache_.end(); ++it) {
      if (it->first == rel) {
        cache_.splice(cache_.begin(), cache_, it);
        return cache_.front().second;
      }
    }
  }
  // Opened outside the lock: two threads may both open a file; the cache keeps one.
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> f, env_->NewRandomAccessFile(JoinPath(dir_, rel)));
  std::shared_ptr<const ByteSource> src(std::move(f));
  auto tf = torch::TorchFile::Open(src, mode_);
  if (!tf.ok()) return tf.status().WithContext(rel);
  std::shared_ptr<const torch::TorchFile> file(std::move(*tf));
  std::lock_guard<std::mutex> lock(mu_);
  cache_.emplace_front(rel, file);
  if (cache_.size() > kLegacyOpenFileCache) cache_.pop_back();
  return file;
}

Result<std::shared_ptr<const torch::TorchFile>> LegacyReader::OpenRankFile(const lg::RankCoord& c,
                                                                           FileKind f) const {
  const Rank* r = FindRank(c);
  const char* name = f == FileKind::kModel ? lg::kModelFileName : lg::kDistribOptimFileName;
  if (r == nullptr) {
    return NotFoundError(StrCat(dir_, ": rank (tp ", c.tp, ", pp ", c.pp, ", ep ", c.ep, ") is outside the TP ",
                                grid_.sizes.tp, " x PP ", grid_.sizes.pp, " x EP ", grid_.sizes.ep, " grid"));
  }
  const RankFile& rf = f == FileKind::kModel ? r->model : r->distrib_optim;
  if (!rf.present) return NotFoundError(StrCat(dir_, ": ", r->folder, "/", name, " does not exist"));
  return OpenPath(RelativePath(*r, f));
}

const LegacyReader::Rank* LegacyReader::FindRank(const lg::RankCoord& c) const {
  const lg::RankEntry* e = grid_.Find(c);
  if (e == nullptr) return nullptr;
  return &ranks_[static_cast<size_t>(e - grid_.ranks.data())];
}

void LegacyReader::AddFileTensors(size_t rank, FileKind f, const torch::TorchFile& tf, const std::string& prefix) {
  RankFile& rf = f == FileKind::kModel ? ranks_[rank].model : ranks_[rank].distrib_optim;
  const std::string file = RelativePath(ranks_[rank], f);
  rf.first_tensor = tensors_.size();
  rf.tensor_count = tf.tensors().size();
  for (size_t i = 0; i < tf.tensors().size(); ++i) {
    const torch::TensorRecord& r = tf.tensors()[i];
    const torch::StorageRecord& s = tf.storages()[r.storage];
    TensorInfo t;
    t.key = prefix + r.key;
    t.dtype = r.dtype;
    t.shape = r.shape;
    t.nbytes = r.nbytes;
    t.file = file;
    t.storage = s.key;
    t.stride = r.stride;
    t.storage_offset = r.storage_offset;
    t.data_offset = s.entry ? s.entry->data_offset : 0;
    t.requires_grad = r.requires_grad;
    t.is_parameter = r.is_parameter;
    tensors_.push_back(std::move(t));
    locations_.push_back({rank, f, i});
  }
  for (const torch::ObjectRecord& o : tf.objects()) objects_.push_back({prefix + o.key, o.type, o.repr, o.opaque});
}

Status LegacyReader::Init(const std::string& dir, std::optional<int64_t> tracker_iteration,
                          const OpenOptions& options) {
  env_ = options.env ? options.env : Env::Default();
  mode_ = options.pickle_mode == PickleMode::kInspect ? pickle::Mode::kInspect : pickle::Mode::kStrict;
  dir_ = dir;
  tracker_iteration_ = tracker_iteration;
  CKPT_ASSIGN_OR_RETURN(std::vector<std::string> children, env_->GetChildren(dir));
  std::sort(children.begin(), children.end());
  std::vector<std::string> folders;       // mp_rank_* folders
  std::vector<std::string> with_model;    // ... that hold model_optim_rng.pt
  for (const std::string& c : children) {
    if (c.rfind(lg::kRankFolderPrefix, 0) != 0 || !env_->IsDirectory(JoinPath(dir, c))) continue;
    folders.push_back(c);
    if (env_->FileExists(JoinPath(JoinPath(dir, c), lg::kModelFileName))) with_model.push_back(c);
  }
  if (folders.empty()) return NotFoundError(StrCat(dir, ": no mp_rank_* folder (not a legacy Megatron checkpoint)"));

  // Rank 0's args decide the grid (find_checkpoint_rank_0, then its args).
  std::optional<lg::GridSizes> sizes;
  if (auto r0 = lg::FindRank0Folder(with_model)) {
    rank0_folder_ = *r0;
    const std::string rel = StrCat(*r0, "/", lg::kModelFileName);
    auto tf = OpenPath(rel);
    if (!tf.ok()) {
      AddProblem(rel, tf.status().message());
    } else {
      auto cs = megatron::ExtractCommonState((*tf)->root(), rel);
      if (!cs.ok()) {
        AddProblem(rel, cs.status().message());
      } else {
        rank0_file_ = *tf;
        common_ = std::move(*cs);
        auto tp = megatron::ArgInt(*common_, "tensor_model_parallel_size");
        auto pp = megatron::ArgInt(*common_, "pipeline_model_parallel_size");
        auto ep = megatron::ArgInt(*common_, "expert_model_parallel_size");
        if (tp && pp) sizes = lg::GridSizes{*tp, *pp, ep.value_or(1)};
        use_distributed_optimizer_ = megatron::ArgBool(*common_, "use_distributed_optimizer");
        no_save_optim_ = megatron::ArgBool(*common_, "no_save_optim").value_or(false);
      }
    }
  } else {
    AddProblem("", "no rank 0 folder with model_optim_rng.pt (looked for mp_rank_00, mp_rank_00_000, "
                   "mp_rank_00_000_000 as find_checkpoint_rank_0 does); parallel sizes inferred from folder names");
  }
  auto grid = lg::MapRankFolders(children, sizes, Basename(dir));
  if (!grid.ok() && sizes) {
    AddProblem(rank0_folder_ + "/" + lg::kModelFileName,
               StrCat("args give an unusable grid (", grid.status().message(), "); inferred from folder names"));
    grid = lg::MapRankFolders(children, std::nullopt, Basename(dir));
  }
  if (!grid.ok()) return grid.status();
  grid_ = std::move(*grid);
  // Which folders megatron writes for the layout in args (with expert
  // parallelism not the whole tp x pp x ep product, and some without a
  // model file: model::LegacyRanks); empty when args do not say.
  std::map<std::string, model::LegacyRankFolder> written;
  if (common_) {
    if (auto layout = model::LayoutFromArgs(*common_); layout.ok()) {
      if (auto folders = model::LegacyRanks(*layout); folders.ok()) {
        for (model::LegacyRankFolder& f : *folders) written.emplace(f.folder, std::move(f));
      }
    }
  }
  for (const lg::RankEntry& e : grid_.ranks) {
    if (!written.empty() && !written.count(e.folder)) continue;  // megatron does not write it
    if (!e.present) AddProblem(e.folder, StrCat("rank folder (tp ", e.coord.tp, ", pp ", e.coord.pp, ", ep ",
                                                e.coord.ep, ") is missing"));
  }
  for (const std::string& u : grid_.unexpected) {
    AddProblem(u, StrCat("not a rank of the TP ", grid_.sizes.tp, " x PP ", grid_.sizes.pp, " x EP ", grid_.sizes.ep,
                         " grid (sizes from ", grid_.sizes_source, "); not read"));
  }
  if (grid_.suffix_ambiguous) {
    AddProblem("", "rank folders mp_rank_TT_NNN are PP or EP ranks; without args they are taken as PP");
  }
  const bool want_distrib = use_distributed_optimizer_.value_or(false) && !no_save_optim_;

  // Each present rank: list and parse its files.
  ranks_.resize(grid_.ranks.size());
  for (size_t ri = 0; ri < grid_.ranks.size(); ++ri) {
    Rank& r = ranks_[ri];
    r.coord = grid_.ranks[ri].coord;
    r.folder = grid_.ranks[ri].folder;
    r.present = grid_.ranks[ri].present;
    if (!r.present) continue;
    const std::string rdir = JoinPath(dir, r.folder);
    auto files = env_->GetChildren(rdir);
    if (!files.ok()) {
      AddProblem(r.folder, files.status().message());
      continue;
    }
    std::sort(files->begin(), files->end());
    for (const std::string& f : *files) {
      auto size = env_->GetFileSize(JoinPath(rdir, f));
      if (f == lg::kModelFileName) {
        r.model.present = true;
        r.model.size = size.ok() ? *size : 0;
      } else if (f == lg::kDistribOptimFileName) {
        r.distrib_optim.present = true;
        r.distrib_optim.size = size.ok() ? *size : 0;
      } else {
        r.other_files.push_back(f);
      }
    }
    const std::string prefix = r.folder + "/";
    const auto w = written.find(r.folder);
    if (!r.model.present) {
      if (w == written.end() || w->second.model_file) {
        AddProblem(RelativePath(r, FileKind::kModel), "missing (this rank folder's writer saves model_optim_rng.pt)");
      }
    } else {
      const std::string rel = RelativePath(r, FileKind::kModel);
      auto tf = OpenPath(rel);
      if (!tf.ok()) {
        AddProblem(rel, tf.status().message());
      } else {
        auto mor = lg::ParseModelOptimRng(**tf, rel);
        if (!mor.ok()) {
          AddProblem(rel, mor.status().message());
        } else {
          r.model.opened = true;
          for (const std::string& p : mor->problems) AddProblem(rel, p);
          r.chunks = std::move(mor->chunks);
          r.iteration = mor->common.iteration;
          r.has_optimizer = mor->has_optimizer;
          r.chained_optimizer = mor->chained_optimizer;
          r.optimizers = static_cast<int64_t>(mor->optimizers.size());
          r.distributed_optimizer = !mor->optimizers.empty();
          for (const lg::OptimizerEntry& e : mor->optimizers) r.distributed_optimizer &= e.distributed;
          AddFileTensors(ri, FileKind::kModel, **tf, prefix);
        }
      }
    }
    if (!r.distrib_optim.present) {
      if (want_distrib && (w == written.end() || w->second.dense_optimizer || w->second.expert_optimizer)) {
        AddProblem(RelativePath(r, FileKind::kDistribOptim),
                   "missing: args.use_distributed_optimizer is set, so the optimizer's tensor state is in this file");
      }
    } else {
      const std::string rel = RelativePath(r, FileKind::kDistribOptim);
      auto tf = OpenPath(rel);
      if (!tf.ok()) {
        AddProblem(rel, tf.status().message());
      } else {
        auto d = lg::ParseDistribOptim(**tf, rel);
        if (!d.ok()) {
          AddProblem(rel, d.status().message());
        } else {
          r.distrib_optim.opened = true;
          for (const std::string& p : d->problems) AddProblem(rel, p);
          r.distrib = std::move(*d);
          AddFileTensors(ri, FileKind::kDistribOptim, **tf, prefix + "distrib_optim.");
        }
      }
    }
  }
  // One iteration for all.
  iteration_ = tracker_iteration;
  if (!iteration_ && common_) iteration_ = common_->iteration;
  if (iteration_) {
    for (const Rank& r : ranks_) {
      if (r.iteration && *r.iteration != *iteration_) {
        AddProblem(RelativePath(r, FileKind::kModel), StrCat("iteration ", *r.iteration, " differs from ",
                                                            tracker_iteration ? "the tracker's " : "rank 0's ",
                                                            *iteration_));
      }
    }
  }
  return OkStatus();
}

Status LegacyReader::ReadTensor(size_t i, ByteSink* out) const {
  if (i >= tensors_.size()) return OutOfRangeError(StrCat("tensor index ", i, " out of range"));
  const TensorLocation& loc = locations_[i];
  const Rank& r = ranks_[loc.rank];
  CKPT_ASSIGN_OR_RETURN(std::shared_ptr<const torch::TorchFile> tf, OpenPath(RelativePath(r, loc.file)));
  if (loc.index >= tf->tensors().size()) {
    return DataLossError(StrCat(RelativePath(r, loc.file), ": tensor ", Quote(tensors_[i].key),
                                ": the file changed since it was opened"));
  }
  return tf->ReadTensor(tf->tensors()[loc.index], out)
      .WithContext(StrCat(RelativePath(r, loc.file), ": tensor ", Quote(tensors_[i].key)));
}

Status LegacyReader::ReadTensorRegion(size_t i, std::span<const int64_t> start, std::span<const int64_t> count,
                                      ByteSink* out) const {
  if (i >= tensors_.size()) return OutOfRangeError(StrCat("tensor index ", i, " out of range"));
  const TensorInfo& t = tensors_[i];
  Box region{{start.begin(), start.end()}, {count.begin(), count.end()}};
  CKPT_RETURN_IF_ERROR(CheckBoxInside(region, t.shape, StrCat("region of ", Quote(t.key))));
  // Contiguous when every axis after the first is whole.
  bool slab = !t.shape.empty();
  uint64_t inner = 1;
  for (size_t d = 1; d < t.shape.size(); ++d) {
    slab = slab && start[d] == 0 && count[d] == t.shape[d];
    inner *= static_cast<uint64_t>(t.shape[d]);
  }
  if (!slab) return CheckpointReader::ReadTensorRegion(i, start, count, out);
  const TensorLocation& loc = locations_[i];
  const Rank& r = ranks_[loc.rank];
  CKPT_ASSIGN_OR_RETURN(std::shared_ptr<const torch::TorchFile> tf, OpenPath(RelativePath(r, loc.file)));
  if (loc.index >= tf->tensors().size()) {
    return DataLossError(StrCat(RelativePath(r, loc.file), ": tensor ", Quote(t.key),
                                ": the file changed since it was opened"));
  }
  return tf->ReadTensorElements(tf->tensors()[loc.index], static_cast<uint64_t>(start[0]) * inner,
                                static_cast<uint64_t>(count[0]) * inner, out)
      .WithContext(RelativePath(r, loc.file));
}

std::vector<std::string> LegacyReader::SummaryText() const {
  std::vector<std::string> out;
  out.push_back(StrCat("Megatron-LM legacy checkpoint (--ckpt-format torch), iteration ",
                       iteration_ ? std::to_string(*iteration_) : std::string("unknown (release)")));
  if (common_) {
    dcp::Metadata empty;
    megatron::Summary s = megatron::Summarize(&*common_, empty);
    for (const std::string& l : megatron::LayoutText(s)) {
      if (l.rfind("iteration:", 0) != 0) out.push_back(l);
    }
  }
  size_t present = 0;
  for (const Rank& r : ranks_) present += r.present ? 1 : 0;
  out.push_back(StrCat("rank grid: TP=", grid_.sizes.tp, " x PP=", grid_.sizes.pp, " x EP=", grid_.sizes.ep,
                       " (sizes from ", grid_.sizes_source == "args" ? StrCat("args of ", rank0_folder_)
                                                                      : std::string("folder names"),
                       "); ", present, " of ", ranks_.size(), " rank folders present"));
  size_t shown = 0;
  for (const Rank& r : ranks_) {
    if (shown++ == kMaxRankLines) {
      out.push_back(StrCat("  ... ", ranks_.size() - kMaxRankLines, " more ranks (use --json)"));
      break;
    }
    std::string t = StrCat("  ", r.folder, "  tp ", r.coord.tp, " pp ", r.coord.pp, " ep ", r.coord.ep, ": ");
    if (!r.present) {
      out.push_back(t + "MISSING");
      continue;
    }
    if (r.model.present) {
      std::vector<std::string> chunks;
      for (const lg::ModelChunk& c : r.chunks) chunks.push_back(StrCat(c.name, " ", c.tensors.size(), " tensors"));
      t += StrCat(lg::kModelFileName, " ", HumanSize(r.model.size));
      if (r.model.opened) t += StrCat(" (", fmt::format("{}", fmt::join(chunks, ", ")), ")");
      else t += " (unreadable)";
    } else {
      t += StrCat(lg::kModelFileName, " MISSING");
    }
    if (r.distrib_optim.present) {
      t += StrCat("; ", lg::kDistribOptimFileName, " ", HumanSize(r.distrib_optim.size));
      if (!r.distrib_optim.opened) t += " (unreadable)";
    }
    out.push_back(t);
    if (r.distrib) {
      for (size_t i = 0; i < r.distrib->optimizers.size(); ++i) {
        const auto& o = r.distrib->optimizers[i];
        std::string head = r.distrib->chained ? StrCat("    optimizer ", i, ": ") : std::string("    ");
        if (!o) {
          out.push_back(head + "None (not DP rank 0 of this sub-optimizer)");
          continue;
        }
        for (const lg::Buffer& b : o->buffers) {
          out.push_back(StrCat(head, "format ", lg::DistribOptimFormatName(o->format), ", ", BufferText(b)));
        }
      }
    }
  }
  std::string opt = "optimizer: ";
  if (use_distributed_optimizer_.value_or(false)) {
    opt += no_save_optim_ ? "distributed, not saved (no_save_optim)" : "distributed (state in distrib_optim.pt per rank)";
  } else if (!ranks_.empty() && std::any_of(ranks_.begin(), ranks_.end(), [](const Rank& r) { return r.has_optimizer; })) {
    opt += "non-distributed (state in model_optim_rng.pt)";
  } else {
    opt += "none saved";
  }
  out.push_back(opt);
  return out;
}

nlohmann::json LegacyReader::Details() const {
  nlohmann::json d;
  if (iteration_) d["iteration"] = *iteration_;
  nlohmann::json lj;
  lj["grid"] = {{"tp", grid_.sizes.tp},
                {"pp", grid_.sizes.pp},
                {"ep", grid_.sizes.ep},
                {"sizes_source", grid_.sizes_source},
                {"pipeline_parallel", grid_.pipeline_parallel},
                {"expert_parallel", grid_.expert_parallel},
                {"suffix_ambiguous", grid_.suffix_ambiguous}};
  lj["rank0_folder"] = rank0_folder_;
  lj["missing"] = grid_.missing;
  lj["unexpected"] = grid_.unexpected;
  if (use_distributed_optimizer_) lj["use_distributed_optimizer"] = *use_distributed_optimizer_;
  nlohmann::json ranks = nlohmann::json::array();
  for (const Rank& r : ranks_) {
    nlohmann::json j = {{"folder", r.folder}, {"tp", r.coord.tp}, {"pp", r.coord.pp}, {"ep", r.coord.ep},
                        {"present", r.present}};
    if (r.present) {
      nlohmann::json files = nlohmann::json::object();
      auto file_json = [](const RankFile& f) {
        return nlohmann::json{{"bytes", f.size}, {"opened", f.opened}, {"tensors", f.tensor_count}};
      };
      if (r.model.present) files[lg::kModelFileName] = file_json(r.model);
      if (r.distrib_optim.present) files[lg::kDistribOptimFileName] = file_json(r.distrib_optim);
      j["files"] = std::move(files);
      if (!r.other_files.empty()) j["other_files"] = r.other_files;
      j["distrib_optim_present"] = r.distrib_optim.present;
      nlohmann::json chunks = nlohmann::json::array();
      for (const lg::ModelChunk& c : r.chunks) {
        nlohmann::json cj = {{"name", c.name}, {"tensors", c.tensors.size()}};
        if (c.vpp_rank) cj["vpp_rank"] = *c.vpp_rank;
        chunks.push_back(std::move(cj));
      }
      j["model_chunks"] = std::move(chunks);
      if (r.iteration) j["iteration"] = *r.iteration;
      j["optimizer"] = {{"present", r.has_optimizer},
                        {"chained", r.chained_optimizer},
                        {"entries", r.optimizers},
                        {"distributed", r.distributed_optimizer}};
      if (r.distrib) {
        nlohmann::json dj = {{"chained", r.distrib->chained}};
        nlohmann::json opts = nlohmann::json::array();
        for (const auto& o : r.distrib->optimizers) {
          if (!o) {
            opts.push_back(nullptr);
            continue;
          }
          nlohmann::json bufs = nlohmann::json::array();
          for (const lg::Buffer& b : o->buffers) {
            nlohmann::json states = nlohmann::json::array();
            for (const lg::StateTensors& s : b.states) {
              nlohmann::json keys = nlohmann::json::array();
              for (const lg::TensorRef& t : s.tensors) keys.push_back(r.folder + "/distrib_optim." + t.key);
              states.push_back({{"name", s.name}, {"tensors", std::move(keys)}});
            }
            nlohmann::json bj = {{"index", b.index},           {"dtype_key", b.dtype_key},
                                 {"param_dtype", b.param_dtype}, {"grad_dtype", b.grad_dtype},
                                 {"numel", b.numel()},          {"states", std::move(states)}};
            if (b.numel_unpadded) bj["numel_unpadded"] = *b.numel_unpadded;
            if (!b.bucket_numel.empty()) bj["bucket_numel"] = b.bucket_numel;
            if (!b.bucket_numel_unpadded.empty()) bj["bucket_numel_unpadded"] = b.bucket_numel_unpadded;
            bufs.push_back(std::move(bj));
          }
          opts.push_back({{"format", lg::DistribOptimFormatName(o->format)}, {"buffers", std::move(bufs)}});
        }
        dj["optimizers"] = std::move(opts);
        j["distrib_optim"] = std::move(dj);
      }
    }
    ranks.push_back(std::move(j));
  }
  lj["ranks"] = std::move(ranks);
  if (common_) {
    dcp::Metadata empty;
    lj["summary"] = megatron::ToJson(megatron::Summarize(&*common_, empty));
  }
  d["legacy"] = std::move(lj);
  d["summary_text"] = SummaryText();
  nlohmann::json probs = nlohmann::json::array();
  for (const Problem& p : problems_) probs.push_back({{"file", p.file}, {"message", p.message}});
  d["problems"] = std::move(probs);
  return d;
}

}  // namespace ckpt::internal_checkpoint
