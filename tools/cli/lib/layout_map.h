// `ckptkit inspect PATH --html FILE`: the layout map, one self-contained HTML
// page (no network, no external scripts) that draws which file and rank holds
// which slice of which tensor.
#ifndef CKPT_TOOLS_CLI_LIB_LAYOUT_MAP_H_
#define CKPT_TOOLS_CLI_LIB_LAYOUT_MAP_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "ckpt/status.h"

namespace ckpt::cli {

// The map's data, from InspectJson's document (details.problems and the
// Megatron layout included):
//   {"path", "format", "tensor_bytes",
//    "files": [{"name", "bytes", "rank", "writer", "group", "contents",
//               "missing" (only when true)}] (LayoutFiles, lib/layout_svg.h),
//    "other_files": [name], "problems": [{"file", "message"}],
//    "layout": "TP=2 PP=2 DP=2 (world 8)" or "", "model_layout": [line],
//    "tensors": [{"key", "dtype", "shape", "nbytes", "section" ("model" |
//                 "optimizer"), "group",
//                 "chunks": [{"o": offsets, "s": sizes, "f": file index,
//                             "g": index in "holders" (Megatron torch_dist with
//                             a grid; absent where unknown)}]}],
//    "holders": [[rank]] (with "g"): the ranks that hold a chunk, Megatron's
//               replicas of it (model::ChunkHolders by the writing rank and
//               the tensor's model::TensorSharing),
//    "grid": null, or for a Megatron checkpoint whose args give the layout
//            {"sizes": {tp, pp, dp, cp, ep, etp, vpp}, "num_layers",
//             "stages": [{"pp", "vp", "begin", "end"}] (the model layer's
//             ParallelLayout::Stages), "ranks": [{"rank", "tp", "cp", "dp",
//             "pp", "ep", "etp" (GlobalRankCoordinates), "files": [file
//             index], "bytes"}]}}
// A tensor without chunk records (a single file, a sharded folder) is one
// chunk covering its shape in the file it names.
nlohmann::json LayoutMapData(const nlohmann::json& doc);

// LayoutMapData one tensor at a time, so that a checkpoint of a million chunks
// never has all of them in one document. `doc` need not hold "tensors" where
// LayoutFiles does not read them (formats with details.files); then
// "tensor_bytes" is its "total_bytes" (TensorTotals, lib/layout_svg.h).
class LayoutMapBuilder {
 public:
  explicit LayoutMapBuilder(const nlohmann::json& doc);
  // The map's data but its "tensors".
  const nlohmann::json& head() const { return head_; }
  // The map's entry for one tensor of InspectJson's document.
  nlohmann::json Tensor(const nlohmann::json& t) const;

 private:
  nlohmann::json head_;
  std::map<std::string, size_t> index_;  // file name -> index in head_["files"]
  std::vector<int64_t> holder_of_[4];     // by model::ChunkSharing, by rank: index in head_["holders"]
  std::vector<int64_t> file_rank_;        // by file index: its writing rank (-1: none)
  size_t only_ = SIZE_MAX;               // the file of tensors that name none, when there is one file
};

// Writes the map's data, `head` with "tensors" being tensor(0) .. tensor(count
// - 1) (map entries), as compact JSON to `out` in pieces, one per tensor;
// with `html`, the whole page of LayoutHtml around it. The text is the same
// as LayoutHtml / the dump of the assembled data. Errors: those of `out`.
Status WriteLayoutData(const nlohmann::json& head, size_t count, const std::function<nlohmann::json(size_t)>& tensor,
                       bool html, const std::function<Status(std::string_view)>& out);

// The HTML page for LayoutMapData's `data`: files by rank with bars by bytes
// and what each holds; tensors grouped by model/optimizer and key group
// (collapsible, searchable), each drawn as its global shape with its chunks
// as boxes coloured by the rank that wrote them (2-D as it is, 1-D as a row,
// 3-D and up as one panel per index of axis 0, at most 16); the Megatron layout
// and its grid (a block per pipeline rank with the layers of its stages, a
// `.stage[data-pp][data-layers]`; a cell per rank, `.rank[data-rank][data-tp]
// [data-cp][data-dp][data-pp][data-ep][data-etp][data-bytes][data-files]`, in
// columns of (CP, TP) rank and rows of DP replica, with each column's
// `td.writers[data-writers]`: the replicas that wrote files); problems in red
// (listed, and their files marked, missing files as `.file[data-missing]`).
// Past 20,000 chunks in all, groups draw their tensors only when opened and
// show 500 tensors at a time. Every file is a
// `.file[data-file][data-bytes][data-rank]`, every tensor a
// `.tensor[data-key][data-shape]`, every chunk a
// `g.chunk[data-offsets][data-sizes][data-file][data-rank]` (its boxes inside;
// `[data-holders]`, the ranks that hold it, where "holders" tells); the body gets
// data-rendered="1" when drawing finished (data-render-ms: milliseconds from
// navigation start), and data-errors counts script errors (tests and the
// benchmark read them). The data is embedded as JSON with "</" escaped.
std::string LayoutHtml(const nlohmann::json& data);

}  // namespace ckpt::cli

#endif  // CKPT_TOOLS_CLI_LIB_LAYOUT_MAP_H_
