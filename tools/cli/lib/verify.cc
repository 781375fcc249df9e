#include "lib/verify.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "ckpt/convert.h"
#include "ckpt/verify.h"
#include "lib/exit_code.h"
#include "lib/inspect.h"

namespace ckpt::cli {

Status RunVerify(const VerifyCommandOptions& options, std::ostream& out, std::ostream& err, int* exit_code) {
  VerifyOptions v;
  v.deep = options.deep;
  v.env = options.env;
  if (options.show_progress) {
    v.progress = [&err](uint64_t done, uint64_t total) {
      if (done % 64 != 0 && done != total) return;
      err << fmt::format("\rverifying: {}/{} pieces", done, total) << std::flush;
    };
  }
  CKPT_ASSIGN_OR_RETURN(VerifyReport rep, Verify(options.path, v));
  if (options.show_progress) err << "\r\033[K" << std::flush;
  // A sound Megatron checkpoint, in model space: its optimizer buffers
  // against the layout recomputed from args; with --deep its optimizer state
  // against its model.
  bool optimizer_checked = false;
  if (rep.ok()) {
    OpenOptions open;
    open.env = options.env;
    open.pickle_mode = PickleMode::kInspect;
    Result<std::unique_ptr<CheckpointReader>> ms = OpenModelSpace(options.path, open);
    if (ms.ok() && options.deep) {
      CKPT_ASSIGN_OR_RETURN(std::vector<VerifyProblem> more, CheckOptimizerState(**ms));
      for (const TensorInfo& t : (*ms)->tensors()) {
        optimizer_checked = optimizer_checked || t.key.rfind("optimizer.state.param.", 0) == 0;
      }
      for (VerifyProblem& p : more) rep.problems.push_back(std::move(p));
    } else if (!ms.ok() && ms.status().code() == Code::kDataLoss) {
      rep.problems.push_back({"", false, 0, "", ms.status().message()});
    } else if (!ms.ok() && !options.json) {
      err << "note: not checked in model space: " << ms.status().message() << "\n";
    }
  }
  *exit_code = rep.ok() ? kExitOk : kExitDataProblem;
  if (options.json) {
    nlohmann::json j;
    j["path"] = options.path;
    j["format"] = rep.format;
    j["deep"] = rep.deep;
    j["ok"] = rep.ok();
    j["tensors"] = rep.tensors;
    j["chunks"] = rep.chunks;
    j["objects"] = rep.objects;
    j["files"] = rep.files;
    j["bytes_read"] = rep.bytes_read;
    j["manifests"] = rep.manifests;
    j["checksums"] = rep.checksums;
    j["optimizer_checked"] = optimizer_checked;
    nlohmann::json probs = nlohmann::json::array();
    for (const VerifyProblem& p : rep.problems) {
      nlohmann::json pj = {{"message", p.message}};
      if (!p.file.empty()) pj["file"] = p.file;
      if (p.has_offset) pj["offset"] = p.offset;
      if (!p.key.empty()) pj["key"] = p.key;
      probs.push_back(std::move(pj));
    }
    j["problems"] = std::move(probs);
    if (!rep.layout.empty()) j["layout"] = rep.layout;
    out << j.dump(2) << "\n";
    return OkStatus();
  }
  std::string what = fmt::format("{} tensors ({} stored pieces){}{}", rep.tensors, rep.chunks,
                                 rep.objects ? fmt::format(", {} objects", rep.objects) : "",
                                 rep.files ? fmt::format(" in {} data files", rep.files) : "");
  std::string depth = rep.deep ? fmt::format("; deep: {} read and decoded", HumanBytes(rep.bytes_read))
                               : "; metadata and archive structure (use --deep to read every byte)";
  if (rep.deep && rep.checksums) {
    depth += fmt::format("; {} items match the checksum manifest{}", rep.checksums, rep.manifests == 1 ? "" : "s");
  }
  if (optimizer_checked && rep.ok()) depth += "; fp32 main params round to the model weights";
  for (const std::string& line : rep.layout) out << "  " << SafeText(line) << "\n";
  if (rep.ok()) {
    out << fmt::format("OK {} ({}): {}{}\n", options.path, rep.format, what, depth);
    return OkStatus();
  }
  size_t shown = 0;
  for (const VerifyProblem& p : rep.problems) {
    if (shown == options.max_problems) {
      out << fmt::format("... {} more problems (use --json for all)\n", rep.problems.size() - shown);
      break;
    }
    out << "PROBLEM " << ToString(p) << "\n";
    ++shown;
  }
  out << fmt::format("FAILED {} ({}): {} problem{} in {}{}\n", options.path, rep.format, rep.problems.size(),
                     rep.problems.size() == 1 ? "" : "s", what, depth);
  return OkStatus();
}

}  // namespace ckpt::cli
