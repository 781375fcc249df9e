// `ckptkit inspect PATH --svg FILE`: a static picture of a checkpoint's files,
// for a README or a bug report.
#ifndef CKPT_TOOLS_CLI_LIB_LAYOUT_SVG_H_
#define CKPT_TOOLS_CLI_LIB_LAYOUT_SVG_H_

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ckpt::cli {

// One file of the picture.
struct LayoutFile {
  std::string name;      // "__0_1.distcp", "model-00001-of-00002.safetensors", "mp_rank_00/model_optim_rng.pt"
  uint64_t bytes = 0;    // the file's bytes (data files), else the bytes of the tensors it holds
  int64_t rank = -1;     // the writing rank (DCP's __R_W, legacy's mp_rank_XX); -1 when none
  int64_t writer = -1;   // W of __R_W.distcp; -1 when none
  std::string group;     // the heading it is drawn under: "rank 3", "mp_rank_00_001 (TP rank 0, PP rank 1)", "files"
  std::string contents;  // what it holds, one line
  bool missing = false;  // .metadata names it, the folder lacks it (details.files' "missing")
};

// The files of an inspected checkpoint, from InspectJson's document (plus the
// details' problems): DCP / torch_dist data files as details.files lists them
// (with their description); otherwise one entry per file the tensors name
// (sharded folders, legacy rank files) or, for a single file, the file itself,
// with their keys summarized: keys numbered at one dotted component as one
// group ("model.layers.{0..3}.* (28)"), others by their first three
// components ("model.embed_tokens.weight").
// Sorted by rank, then group, then writer, then name.
std::vector<LayoutFile> LayoutFiles(const nlohmann::json& doc);
// True when LayoutFiles takes the files from details.files (DCP, torch_dist),
// not from doc's tensors, which then need not be in doc.
bool FilesListed(const nlohmann::json& doc);
// How many tensors doc describes and their bytes: from its "tensors" when it
// holds them, else its "tensor_count" and "total_bytes".
void TensorTotals(const nlohmann::json& doc, size_t* count, uint64_t* bytes);

// A self-contained SVG 1.1 document (no scripts, no external references):
// a title line (path, format, tensors, bytes, files, ranks), then per group
// (a rank; a legacy rank folder) a heading and one row per file: its name, a bar whose length is proportional
// to its bytes (the largest file spans the bar column), its size and its
// contents; other files of the checkpoint (common.pt, metadata.json) listed;
// the problems of details.problems in red. Without "tensors" in doc, the
// title counts "tensor_count" tensors of "total_bytes". At most max_files rows, then a
// "... N more files" line. Every file row is a <g class="file"> carrying
// data-file, data-bytes, data-rank and data-writer attributes (tests and
// scripts read them). Text is XML-escaped; control characters are dropped.
std::string LayoutSvg(const nlohmann::json& doc, size_t max_files = 256);

}  // namespace ckpt::cli

#endif  // CKPT_TOOLS_CLI_LIB_LAYOUT_SVG_H_
