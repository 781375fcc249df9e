// `ckptkit inspect`: what is inside a checkpoint, read from metadata only.
#ifndef CKPT_TOOLS_CLI_LIB_INSPECT_H_
#define CKPT_TOOLS_CLI_LIB_INSPECT_H_

#include <functional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "ckpt/checkpoint.h"
#include "ckpt/status.h"

namespace ckpt::cli {

struct InspectOptions {
  std::string path;
  bool json = false;
  // The text report shows at most this many rows of each list (tensors, objects
  // after folding, data files), then "... N more"; 0: all. --json is never cut.
  size_t max_rows = 0;
  // Also write a picture of the files (LayoutSvg, lib/layout_svg.h) here,
  // atomically, once the inspection succeeded (problems found in the data do
  // not stop it: they are drawn); "" for none.
  std::string svg_path;
  // The same for the layout map (LayoutHtml, lib/layout_map.h).
  std::string html_path;
  Env* env = nullptr;
  // False: the checkpoint reader is not destroyed when Inspect returns, for a
  // process that exits right after (freeing the index of a million chunks
  // is ~8% of inspect's time; clang's -disable-free skips the same work). It
  // stays reachable from a static list, so leak checkers do not report it.
  bool free_reader = true;
};

// One line of the text report's object list: objects folded into one. Objects
// fold when their type and opaqueness are equal, their keys differ in one number
// only (a run of decimal digits between separators, as the 3 in `layers.3.` or
// the 5 in `shard_5_32`; not the 1 in `fc1`, nor a zero-padded `0000010`),
// always the same one, and their values are equal or are integers that count
// along with that number (`params.7: 7`, `params.8: 8`). Values shown cut
// ("...") or not read ("<12 bytes in __0_0.distcp>") never fold: equal text
// proves nothing there. Each object joins the earliest line that takes it, so
// runs interleaved by the reader's order (a Megatron layer's four modules'
// `_extra_state/shard_<layer>_<layers>`) fold too; lines keep the order of their
// first objects. The varying number prints as the set it takes, ascending:
// `{0..15}` (runs of three or more), `{0,2,4}`, `{0..3,8..11}`; in the value too
// when it counts along.
struct ObjectLine {
  std::string key;   // the key, or the folded key: "decoder.layers.{0..3}.x"
  std::string type;
  std::string repr;  // the repr, or the folded repr
  bool opaque = false;
  size_t count = 1;  // how many objects this line stands for
};

// objects folded as above; the counts add up to objects.size().
std::vector<ObjectLine> FoldObjects(const std::vector<ObjectInfo>& objects);

// The JSON document `inspect --json` prints:
// {"path", "format", "tensors": [{"key","dtype","shape","nbytes", ...}],
//  "objects": [{"key","type","repr","opaque"}], "total_bytes", "details": {...}}.
// Without `with_tensors`, "tensors" is left out and "tensor_count" says how
// many there are (WriteInspectJson writes them).
nlohmann::json InspectJson(const std::string& path, const CheckpointReader& reader, bool with_tensors = true);
// One tensor of that document.
nlohmann::json TensorJson(const TensorInfo& t);
// Writes `doc` (InspectJson's document without its tensors) as dump(2) would
// with reader's tensors in it, the same text, one tensor at a time: memory
// stays that of one tensor's JSON. No newline at the end.
void WriteInspectJson(const nlohmann::json& doc, const CheckpointReader& reader, std::ostream& out);
// Puts reader's tensors into `doc` (without them) when LayoutFiles reads them
// (formats without details.files: one chunk per tensor, or few).
void AddTensorsForLayoutFiles(const CheckpointReader& reader, nlohmann::json* doc);
// The layout map's data (`html` false: the JSON text of LayoutMapData) or page
// (LayoutHtml) for `doc` (InspectJson's document, tensors as
// AddTensorsForLayoutFiles left them) and reader's tensors, written to `out`
// one tensor at a time. Errors: those of `out`.
Status WriteLayoutMap(const nlohmann::json& doc, const CheckpointReader& reader, bool html,
                      const std::function<Status(std::string_view)>& out);

// InspectJson plus what `inspect` derives from the whole checkpoint at `path`
// (re-read through `env`, nullptr: the disk): for Megatron checkpoints the
// layouts it can be resumed at (details.reshard), for legacy ones the model
// layer's recomputation of their ranks (details.model_layout; a contradiction
// becomes a problem in details.problems). What --json prints.
nlohmann::json InspectDocument(const std::string& path, const CheckpointReader& reader, Env* env,
                                bool with_tensors = true);

// Opens options.path in inspect mode (unknown pickle globals shown as opaque
// records, never executed) and writes a report to out.
// Errors: those of OpenCheckpoint.
Status Inspect(const InspectOptions& options, std::ostream& out);

// "1.50 MiB" style.
std::string HumanBytes(uint64_t n);
// Text from a file, safe for a terminal: as is, or quoted and escaped when it
// holds control bytes.
std::string SafeText(std::string_view s);
// The summary line of a writer's data files: "data files: 2, written around
// the page cache (O_DIRECT)", or which of them went through it and why.
std::string DataFilesLine(size_t files, size_t direct_files, bool asked);
// "[2, 3]".
std::string ShapeString(const std::vector<int64_t>& shape);

}  // namespace ckpt::cli

#endif  // CKPT_TOOLS_CLI_LIB_INSPECT_H_
