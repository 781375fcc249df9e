// Megatron-Core torch_dist on top of the DCP reader: the Megatron-LM root
// (tracker file -> iteration folder), metadata.json, the common state
// (common.pt up to core 0.18, the `common_state` DCP object from 0.19) and the
// summary: layout and optimizer from format/megatron, the model from
// src/model, merged here. Everything is read through the safe unpickler in
// inspect mode: args are shown, nothing runs.
#include <nlohmann/json.hpp>

#include "checkpoint/dcp_reader.h"
#include "checkpoint/readers.h"
#include "format/megatron/megatron.h"
#include "format/torch/torch_file.h"
#include "model/summary.h"
#include "util/strings.h"

namespace ckpt::internal_checkpoint {
namespace {

void AddProblem(DcpReader* r, std::string file, std::string message) {
  nlohmann::json& probs = r->extra_details()["megatron_problems"];
  if (!probs.is_array()) probs = nlohmann::json::array();
  probs.push_back({{"file", std::move(file)}, {"message", std::move(message)}});
}

}  // namespace

bool IsMegatronRoot(Env* env, const std::string& path) {
  return env->FileExists(JoinPath(path, megatron::kTrackerFileName));
}

Result<MegatronIteration> ResolveMegatronRoot(Env* env, const std::string& root) {
  const std::string tracker_path = JoinPath(root, megatron::kTrackerFileName);
  CKPT_ASSIGN_OR_RETURN(std::string text, ReadSmall(env, tracker_path, 4096));
  CKPT_ASSIGN_OR_RETURN(megatron::Tracker t, megatron::ParseTracker(text, tracker_path));
  std::string dir = JoinPath(root, megatron::IterationDirName(t));
  if (!env->IsDirectory(dir)) {
    return DataLossError(StrCat(tracker_path, " names iteration ", Quote(megatron::IterationDirName(t)),
                                " but ", dir, " does not exist (deleted, or the save never finished)"));
  }
  MegatronIteration it;
  it.dir = std::move(dir);
  if (!t.release) it.iteration = t.iteration;
  return it;
}

Status AttachMegatron(DcpReader* r, Env* env, std::optional<int64_t> tracker_iteration) {
  const std::string folder = r->folder();
  const std::string cfg_path = JoinPath(folder, megatron::kConfigFileName);
  nlohmann::json meg;
  auto text = ReadSmall(env, cfg_path, megatron::kMaxConfigBytes);
  if (!text.ok()) return text.status();
  auto cfg = megatron::ParseConfig(*text, cfg_path);
  if (!cfg.ok()) {
    if (cfg.status().code() == Code::kUnimplemented) return cfg.status();
    AddProblem(r, megatron::kConfigFileName, cfg.status().message());
  } else {
    meg["config"] = cfg->raw;
  }
  r->set_kind(SourceKind::kTorchDist);

  // Common state: common.pt (<= 0.18) or the common_state DCP object (>= 0.19).
  std::unique_ptr<torch::TorchFile> common_file;
  std::string common_source;
  const std::string common_pt = JoinPath(folder, megatron::kCommonFileName);
  if (env->FileExists(common_pt)) {
    common_source = megatron::kCommonFileName;
    auto f = env->NewRandomAccessFile(common_pt);
    if (f.ok()) {
      std::shared_ptr<const ByteSource> src(std::move(*f));
      auto tf = torch::TorchFile::Open(src, pickle::Mode::kInspect);
      if (tf.ok()) {
        common_file = std::move(*tf);
      } else {
        AddProblem(r, megatron::kCommonFileName, tf.status().message());
      }
    } else {
      AddProblem(r, megatron::kCommonFileName, f.status().message());
    }
  } else if (int64_t ei = r->metadata().FindEntry(megatron::kCommonStateKey); ei >= 0) {
    common_source = megatron::kCommonStateKey;
    auto tf = r->OpenBytes(r->metadata().entries[ei], pickle::Mode::kInspect);
    if (tf.ok()) {
      common_file = std::move(*tf);
    } else {
      AddProblem(r, megatron::kCommonStateKey, tf.status().message());
    }
  }
  std::optional<megatron::CommonState> common;
  if (common_file) {
    auto cs = megatron::ExtractCommonState(common_file->root(), common_source);
    if (cs.ok()) {
      common = std::move(*cs);
    } else {
      AddProblem(r, common_source, cs.status().message());
    }
    // The common dict's leaves as objects (the 0.19 list wrapper "0." dropped).
    std::vector<ObjectInfo>& objs = r->mutable_objects();
    if (common_source == megatron::kCommonStateKey) {
      objs.erase(std::remove_if(objs.begin(), objs.end(),
                                [](const ObjectInfo& o) { return o.key == megatron::kCommonStateKey; }),
                 objs.end());
    }
    for (const torch::ObjectRecord& o : common_file->objects()) {
      std::string key = o.key;
      if (common_source == megatron::kCommonStateKey && key.rfind("0.", 0) == 0) key = key.substr(2);
      objs.push_back({StrCat(common_source, ":", key), o.type, o.repr, o.opaque});
    }
  }
  meg["common_state_source"] = common_source.empty() ? nlohmann::json(nullptr) : nlohmann::json(common_source);
  const megatron::CommonState* cs = common ? &*common : nullptr;
  megatron::Summary summary = megatron::Summarize(cs, r->metadata());
  model::ModelSummary model_summary = model::SummarizeModel(cs, r->metadata());
  // One list of disagreements with the chunk grid: the layout's, then the model's.
  summary.mismatches.insert(summary.mismatches.end(), model_summary.mismatches.begin(),
                            model_summary.mismatches.end());
  summary.layout_mismatch = !summary.mismatches.empty();
  nlohmann::json summary_json = megatron::ToJson(summary);
  summary_json["layout_from_chunks"].update(model::ToJson(model_summary.from_shapes));
  summary_json["model"] = model::ToJson(model_summary);
  meg["summary"] = std::move(summary_json);
  std::optional<int64_t> iteration = tracker_iteration;
  if (!iteration && common && common->iteration) iteration = common->iteration;
  nlohmann::json& extra = r->extra_details();
  if (iteration) extra["iteration"] = *iteration;
  std::vector<std::string> lines = megatron::LayoutText(summary);
  for (std::string& l : model::ToText(model_summary)) lines.push_back(std::move(l));
  for (std::string& l : megatron::ContentsText(summary)) lines.push_back(std::move(l));
  extra["summary_text"] = lines;
  nlohmann::json desc = nlohmann::json::object();
  for (const megatron::FileContents& fc : megatron::DescribeFiles(r->metadata())) {
    std::string groups;
    for (size_t i = 0; i < fc.groups.size(); ++i) groups += StrCat(i ? "; " : "", fc.groups[i]);
    desc[fc.file] = groups;
  }
  extra["file_descriptions"] = std::move(desc);
  extra["megatron"] = std::move(meg);
  return OkStatus();
}

}  // namespace ckpt::internal_checkpoint
