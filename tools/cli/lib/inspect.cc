#include "lib/inspect.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <optional>
#include <set>
#include <unordered_map>
#include <utility>

#include "ckpt/convert.h"
#include "ckpt/reshard.h"
#include "lib/layout_map.h"
#include "lib/layout_svg.h"
#include "util/strings.h"

namespace ckpt::cli {
namespace {

// Names from a file go to a terminal: control bytes would let a hostile
// checkpoint move the cursor or rewrite lines. Such names are shown quoted
// and escaped; ordinary ones (UTF-8 included) as they are.
std::string Safe(std::string_view s) {
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) return Quote(s, 200);
  }
  return std::string(s);
}

// A piece of a key or repr: text, or a number FoldObjects may fold over.
struct Token {
  std::string text;
  bool number = false;
  uint64_t value = 0;
};

bool IsSeparator(char c) { return !std::isalnum(static_cast<unsigned char>(c)); }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// Splits s into text and numbers: a number is a run of digits with a separator
// (or an end) on each side, no leading zero, at most 18 digits (fits int64).
std::vector<Token> Tokenize(std::string_view s) {
  std::vector<Token> out;
  std::string text;
  for (size_t i = 0; i < s.size();) {
    if (!IsDigit(s[i]) || (i > 0 && !IsSeparator(s[i - 1]))) {
      text.push_back(s[i++]);
      continue;
    }
    size_t j = i;
    while (j < s.size() && IsDigit(s[j])) ++j;
    const size_t len = j - i;
    if ((j < s.size() && !IsSeparator(s[j])) || len > 18 || (len > 1 && s[i] == '0')) {
      text.append(s.substr(i, len));
    } else {
      if (!text.empty()) out.push_back({std::move(text), false, 0});
      text.clear();
      out.push_back({std::string(s.substr(i, len)), true, std::stoull(std::string(s.substr(i, len)))});
    }
    i = j;
  }
  if (!text.empty()) out.push_back({std::move(text), false, 0});
  return out;
}

constexpr size_t kNoPos = static_cast<size_t>(-1);

// The index of the one number token in which a and b differ; kNoPos when they
// are equal, differ in more than one token, or in text.
size_t OneNumberApart(const std::vector<Token>& a, const std::vector<Token>& b) {
  if (a.size() != b.size()) return kNoPos;
  size_t pos = kNoPos;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].number != b[i].number) return kNoPos;
    if (a[i].text == b[i].text) continue;
    if (!a[i].number || pos != kNoPos) return kNoPos;
    pos = i;
  }
  return pos;
}

// {0..15}, {0,2,4}, {0..3,8..11}: the numbers ascending, runs of three or more as a..b.
std::string NumberSet(std::vector<uint64_t> v) {
  std::sort(v.begin(), v.end());
  std::vector<std::string> parts;
  for (size_t i = 0; i < v.size();) {
    size_t j = i;
    while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
    if (j - i >= 2) {
      parts.push_back(fmt::format("{}..{}", v[i], v[j]));
    } else {
      for (size_t k = i; k <= j; ++k) parts.push_back(std::to_string(v[k]));
    }
    i = j + 1;
  }
  return fmt::format("{{{}}}", fmt::join(parts, ","));
}

// The tokens' text with the token at pos replaced.
std::string Join(const std::vector<Token>& tokens, size_t pos, std::string_view replacement) {
  std::string out;
  for (size_t i = 0; i < tokens.size(); ++i) out += i == pos ? replacement : std::string_view(tokens[i].text);
  return out;
}

// A repr that is cut ("...": a long string, deep nesting, many items) or stands
// for a value not read ("<12 bytes in __0_0.distcp>", "<unreadable: ...>") may
// be equal for different values: such objects are never folded.
bool ReprIsComplete(std::string_view repr) {
  return repr.find("...") == std::string_view::npos && (repr.empty() || repr.front() != '<');
}

// A line being folded: its first object, and the number of its key that varies.
struct Fold {
  size_t first = 0;                  // index into objects
  std::vector<Token> key;            // the first object's key, tokenized
  size_t key_pos = kNoPos;           // the varying number; kNoPos while the line holds one object
  bool counts = false;               // the repr is an integer: key number + delta
  std::optional<uint64_t> integer;   // the first object's repr, when it is an integer
  std::vector<uint64_t> numbers;     // the varying number of each object folded
  std::set<uint64_t> seen;
};

}  // namespace

std::vector<ObjectLine> FoldObjects(const std::vector<ObjectInfo>& objects) {
  std::vector<Fold> folds;
  // Where an object may join: its type, opaqueness and key with one number left
  // out (the hole's index in the key too), then "=" and its repr, or "+" and its
  // integer repr minus that number. The latest line registered under it.
  std::unordered_map<std::string, size_t> open;
  auto signature = [](const ObjectInfo& o, const std::vector<Token>& key, size_t pos, const std::string& value) {
    return fmt::format("{}\x1f{}\x1f{}\x1f{}\x1f{}", o.type, o.opaque ? 1 : 0, pos, Join(key, pos, "#"), value);
  };
  for (size_t i = 0; i < objects.size(); ++i) {
    const ObjectInfo& o = objects[i];
    std::vector<Token> key = Tokenize(o.key);
    std::vector<std::pair<std::string, bool>> sigs;  // (signature, counts)
    std::optional<uint64_t> integer;                 // the repr, when it is an integer
    if (ReprIsComplete(o.repr)) {
      const std::vector<Token> repr = Tokenize(o.repr);
      if (repr.size() == 1 && repr[0].number) integer = repr[0].value;
      for (size_t p = 0; p < key.size(); ++p) {
        if (!key[p].number) continue;
        sigs.emplace_back(signature(o, key, p, "=" + o.repr), false);
        if (integer) {
          const int64_t delta = static_cast<int64_t>(*integer) - static_cast<int64_t>(key[p].value);
          sigs.emplace_back(signature(o, key, p, fmt::format("+{}", delta)), true);
        }
      }
    }
    // Join the earliest line that takes it: one whose number varies where this
    // key's does (or that holds one object yet), in the same way, without this number.
    size_t best = kNoPos, best_pos = kNoPos;
    bool best_counts = false;
    for (const auto& [sig, counts] : sigs) {
      auto it = open.find(sig);
      if (it == open.end() || (best != kNoPos && it->second >= best)) continue;
      // The signature finds a line; this decides (a signature is no proof).
      const Fold& f = folds[it->second];
      const ObjectInfo& first = objects[f.first];
      const size_t pos = OneNumberApart(f.key, key);
      if (pos == kNoPos || first.type != o.type || first.opaque != o.opaque ||
          (f.key_pos != kNoPos && (f.key_pos != pos || f.counts != counts)) || f.seen.count(key[pos].value)) {
        continue;
      }
      if (!counts && first.repr != o.repr) continue;
      if (counts && (!f.integer || !integer ||
                     static_cast<int64_t>(*integer) - static_cast<int64_t>(key[pos].value) !=
                         static_cast<int64_t>(*f.integer) - static_cast<int64_t>(f.key[pos].value))) {
        continue;
      }
      best = it->second;
      best_pos = pos;
      best_counts = counts;
    }
    if (best != kNoPos) {
      Fold& f = folds[best];
      if (f.key_pos == kNoPos) {
        f.key_pos = best_pos;
        f.counts = best_counts;
        f.numbers.push_back(f.key[best_pos].value);
        f.seen.insert(f.key[best_pos].value);
      }
      f.numbers.push_back(key[best_pos].value);
      f.seen.insert(key[best_pos].value);
      continue;
    }
    for (const auto& [sig, counts] : sigs) open[sig] = folds.size();
    Fold f;
    f.first = i;
    f.key = std::move(key);
    f.integer = integer;
    folds.push_back(std::move(f));
  }

  std::vector<ObjectLine> lines;
  lines.reserve(folds.size());
  for (const Fold& f : folds) {
    const ObjectInfo& o = objects[f.first];
    ObjectLine line{o.key, o.type, o.repr, o.opaque, 1};
    if (f.key_pos != kNoPos) {
      line.count = f.numbers.size();
      line.key = Join(f.key, f.key_pos, NumberSet(f.numbers));
      if (f.counts) {
        const int64_t delta = static_cast<int64_t>(*f.integer) - static_cast<int64_t>(f.key[f.key_pos].value);
        std::vector<uint64_t> values;
        for (uint64_t n : f.numbers) values.push_back(static_cast<uint64_t>(static_cast<int64_t>(n) + delta));
        line.repr = NumberSet(std::move(values));
      }
    }
    lines.push_back(std::move(line));
  }
  return lines;
}

std::string SafeText(std::string_view s) { return Safe(s); }

std::string HumanBytes(uint64_t n) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  if (n < 1024) return fmt::format("{} B", n);
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  return fmt::format("{:.2f} {}", v, kUnits[u]);
}

std::string DataFilesLine(size_t files, size_t direct_files, bool asked) {
  if (files == 0) return "";
  if (!asked) return fmt::format("data files: {}, written through the page cache (--buffered-io)\n", files);
  if (direct_files == files) return fmt::format("data files: {}, written around the page cache (O_DIRECT)\n", files);
  return fmt::format("data files: {}, {} through the page cache: the file system refused O_DIRECT\n", files,
                     files - direct_files);
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// Problems found while opening a chunked checkpoint make inspect exit 1 (after printing).
Status ProblemsStatus(const nlohmann::json& details) {
  if (details.contains("problems") && details["problems"].is_array() && !details["problems"].empty()) {
    return DataLossError(fmt::format("{} problem{} in the checkpoint (listed above; `ckptkit verify` checks more)",
                                     details["problems"].size(), details["problems"].size() == 1 ? "" : "s"));
  }
  return OkStatus();
}

nlohmann::json TensorJson(const TensorInfo& t) {
  nlohmann::json j;
  j["key"] = t.key;
  j["dtype"] = DTypeName(t.dtype);
  j["shape"] = t.shape;
  j["nbytes"] = t.nbytes;
  if (!t.file.empty()) j["file"] = t.file;
  if (!t.storage.empty()) {
    j["storage"] = t.storage;
    j["stride"] = t.stride;
    j["storage_offset"] = t.storage_offset;
  }
  j["data_offset"] = t.data_offset;
  if (t.requires_grad) j["requires_grad"] = true;
  if (t.is_parameter) j["parameter"] = true;
  j["chunks"] = t.chunks.empty() ? size_t{1} : t.chunks.size();
  if (!t.chunks.empty()) {
    nlohmann::json cl = nlohmann::json::array();
    for (const ChunkInfo& c : t.chunks) {
      cl.push_back({{"offsets", c.offsets}, {"sizes", c.sizes}, {"file", c.file}, {"offset", c.offset},
                    {"length", c.length}});
    }
    j["chunk_list"] = std::move(cl);
  }
  return j;
}

nlohmann::json InspectJson(const std::string& path, const CheckpointReader& reader, bool with_tensors) {
  nlohmann::json doc;
  doc["path"] = path;
  doc["format"] = reader.format();
  uint64_t total = 0;
  nlohmann::json tensors = nlohmann::json::array();
  for (const TensorInfo& t : reader.tensors()) {
    total += t.nbytes;
    if (with_tensors) tensors.push_back(TensorJson(t));
  }
  if (with_tensors) {
    doc["tensors"] = std::move(tensors);
  } else {
    doc["tensor_count"] = reader.tensors().size();
  }
  nlohmann::json objects = nlohmann::json::array();
  for (const ObjectInfo& o : reader.objects()) {
    objects.push_back({{"key", o.key}, {"type", o.type}, {"repr", o.repr}, {"opaque", o.opaque}});
  }
  doc["objects"] = std::move(objects);
  doc["total_bytes"] = total;
  doc["details"] = reader.Details();
  // Chunked formats: the data files and, for Megatron, the iteration, at the top level.
  if (doc["details"].contains("files")) doc["files"] = doc["details"]["files"];
  if (doc["details"].contains("iteration")) doc["iteration"] = doc["details"]["iteration"];
  return doc;
}

void WriteInspectJson(const nlohmann::json& doc, const CheckpointReader& reader, std::ostream& out) {
  nlohmann::json top = doc;
  top.erase("tensor_count");
  top["tensors"] = nullptr;
  const std::string text = top.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
  // The top level's key: deeper keys are indented further, and a string
  // holds no raw newline.
  constexpr std::string_view kKey = "\n  \"tensors\": ";
  const size_t at = text.find(std::string(kKey) + "null");
  if (at == std::string::npos) {  // not reached: dump(2) writes the key so
    nlohmann::json whole = doc;
    whole.erase("tensor_count");
    whole["tensors"] = nlohmann::json::array();
    for (const TensorInfo& t : reader.tensors()) whole["tensors"].push_back(TensorJson(t));
    out << whole.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
    return;
  }
  out << std::string_view(text).substr(0, at + kKey.size());
  const std::vector<TensorInfo>& tensors = reader.tensors();
  if (tensors.empty()) {
    out << "[]";
  } else {
    out << "[";
    for (size_t i = 0; i < tensors.size(); ++i) {
      // As dump(2) nests it: each line of the tensor indented by two levels.
      out << (i == 0 ? "\n    " : ",\n    ");
      const std::string t = TensorJson(tensors[i]).dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
      size_t from = 0;
      for (size_t nl = t.find('\n'); nl != std::string::npos; nl = t.find('\n', from)) {
        out << std::string_view(t).substr(from, nl + 1 - from) << "    ";
        from = nl + 1;
      }
      out << std::string_view(t).substr(from);
    }
    out << "\n  ]";
  }
  out << std::string_view(text).substr(at + kKey.size() + 4);
}

void AddTensorsForLayoutFiles(const CheckpointReader& reader, nlohmann::json* doc) {
  if (FilesListed(*doc)) return;
  nlohmann::json tensors = nlohmann::json::array();
  for (const TensorInfo& t : reader.tensors()) tensors.push_back(TensorJson(t));
  (*doc)["tensors"] = std::move(tensors);
  doc->erase("tensor_count");
}

Status WriteLayoutMap(const nlohmann::json& doc, const CheckpointReader& reader, bool html,
                      const std::function<Status(std::string_view)>& out) {
  LayoutMapBuilder map(doc);
  const std::vector<TensorInfo>& tensors = reader.tensors();
  return WriteLayoutData(
      map.head(), tensors.size(), [&](size_t i) { return map.Tensor(TensorJson(tensors[i])); }, html, out);
}

void AddLayoutDetails(const std::string& path, const CheckpointReader& reader, Env* env, nlohmann::json* details) {
  OpenOptions open;
  open.env = env;
  open.pickle_mode = PickleMode::kInspect;
  // A legacy checkpoint: what each rank folder holds by the model layer's
  // recomputation from args, its buffers checked against that layout.
  nlohmann::json layout_lines = nlohmann::json::array();
  nlohmann::json legacy_layout;
  std::string layout_problem;
  if (reader.kind() == SourceKind::kLegacy) {
    Result<LegacyLayout> layout = DescribeLegacyFolders(path, open);
    if (layout.ok()) {
      legacy_layout = {{"tp", layout->tp}, {"pp", layout->pp}, {"dp", layout->dp}, {"cp", layout->cp},
                       {"ep", layout->ep}, {"etp", layout->etp}, {"vpp", layout->vpp},
                       {"num_layers", layout->num_layers}, {"folders", nlohmann::json::array()}};
      for (const LegacyFolderLayout& f : layout->folders) {
        layout_lines.push_back(f.line);
        legacy_layout["folders"].push_back({{"folder", f.folder}, {"tp", f.tp}, {"pp", f.pp}, {"ep", f.ep},
                                            {"layers", f.layers}, {"experts", f.experts}});
      }
    } else if (layout.status().code() == Code::kDataLoss) {
      layout_problem = layout.status().message();
    } else {
      layout_lines.push_back(StrCat("(not derived: ", layout.status().message(), ")"));
    }
  }
  // A Megatron checkpoint: the sizes it can be resumed at, and where
  // megatron-core loads it as it is (the reshard preflight, one size at a time).
  nlohmann::json reshard;
  if (reader.kind() == SourceKind::kLegacy || reader.format() == "megatron-torch_dist") {
    ReshardOptions ro;
    ro.env = env;
    Result<ReshardChoices> choices = DescribeReshard(path, ro);
    if (choices.ok()) {
      reshard = {{"layout", choices->layout},
                 {"optimizer_sharding", choices->optimizer},
                 {"padded_vocab", choices->padded_vocab},
                 {"sizes", nlohmann::json::array()}};
      for (const ReshardChoices::Size& z : choices->sizes) {
        reshard["sizes"].push_back({{"dim", z.name},
                                    {"size", z.size},
                                    {"padded_vocab", z.padded_vocab},
                                    {"reshardable", z.reshardable},
                                    {"loads_as_is", z.load_blockers.empty()},
                                    {"load_blockers", z.load_blockers}});
      }
    } else {
      reshard = {{"error", choices.status().ToString()}};
    }
  }
  if (!reshard.is_null()) (*details)["reshard"] = reshard;
  if (!layout_lines.empty()) (*details)["model_layout"] = layout_lines;
  if (!legacy_layout.is_null()) (*details)["legacy_layout"] = legacy_layout;
  if (!layout_problem.empty()) {
    if (!details->contains("problems") || !(*details)["problems"].is_array()) {
      (*details)["problems"] = nlohmann::json::array();
    }
    (*details)["problems"].push_back({{"file", ""}, {"message", layout_problem}});
  }
}

nlohmann::json InspectDocument(const std::string& path, const CheckpointReader& reader, Env* env,
                                bool with_tensors) {
  nlohmann::json doc = InspectJson(path, reader, with_tensors);
  AddLayoutDetails(path, reader, env, &doc["details"]);
  return doc;
}

Status Inspect(const InspectOptions& options, std::ostream& out) {
  OpenOptions open;
  open.env = options.env;
  open.pickle_mode = PickleMode::kInspect;
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader,
                        OpenCheckpoint(options.path, open));
  struct KeepReader {  // options.free_reader false: moved to a list never freed
    std::unique_ptr<CheckpointReader>* reader;
    ~KeepReader() {
      static auto* kept = new std::vector<std::unique_ptr<CheckpointReader>>();
      if (reader != nullptr) kept->push_back(std::move(*reader));
    }
  } keep{options.free_reader ? nullptr : &reader};
  // What inspect derives from the whole checkpoint, once (merged into each report).
  nlohmann::json derived = nlohmann::json::object();
  AddLayoutDetails(options.path, *reader, options.env, &derived);
  auto add_layout = [&](nlohmann::json* details) {
    for (auto it = derived.begin(); it != derived.end(); ++it) {
      if (it.key() == "problems" && details->contains("problems") && (*details)["problems"].is_array()) {
        for (const auto& p : it.value()) (*details)["problems"].push_back(p);
      } else {
        (*details)[it.key()] = it.value();
      }
    }
  };
  const nlohmann::json reshard = derived.value("reshard", nlohmann::json());
  const nlohmann::json layout_lines = derived.value("model_layout", nlohmann::json::array());
  // The pictures and --json write the tensors one at a time (a checkpoint of
  // a million chunks never has them all in one JSON document).
  if (!options.svg_path.empty() || !options.html_path.empty()) {
    nlohmann::json doc = InspectJson(options.path, *reader, /*with_tensors=*/false);
    add_layout(&doc["details"]);
    AddTensorsForLayoutFiles(*reader, &doc);
    Env* env = options.env ? options.env : Env::Default();
    if (!options.svg_path.empty()) {
      const std::string svg = LayoutSvg(doc);
      CKPT_RETURN_IF_ERROR(
          WriteFileAtomically(env, options.svg_path, [&](WritableFile* f) { return f->Append(svg); }));
    }
    if (!options.html_path.empty()) {
      CKPT_RETURN_IF_ERROR(WriteFileAtomically(env, options.html_path, [&](WritableFile* f) {
        return WriteLayoutMap(doc, *reader, /*html=*/true, [&](std::string_view s) { return f->Append(s); });
      }));
    }
  }
  if (options.json) {
    nlohmann::json doc = InspectJson(options.path, *reader, /*with_tensors=*/false);
    add_layout(&doc["details"]);
    WriteInspectJson(doc, *reader, out);
    out << "\n";
    return ProblemsStatus(doc["details"]);
  }

  const auto& tensors = reader->tensors();
  uint64_t total = 0;
  size_t key_w = 3, dtype_w = 5, shape_w = 5;
  for (const TensorInfo& t : tensors) {
    total += t.nbytes;
    key_w = std::max(key_w, t.key.size());
    dtype_w = std::max(dtype_w, DTypeName(t.dtype).size());
    shape_w = std::max(shape_w, ShapeString(t.shape).size());
  }
  key_w = std::min<size_t>(key_w, 72);
  out << fmt::format("{}: {}\n", options.path, reader->format());
  out << fmt::format("{} tensors, {} of tensor data; {} other objects\n", tensors.size(),
                     HumanBytes(total), reader->objects().size());
  nlohmann::json details = reader->Details();
  add_layout(&details);
  for (auto it = details.begin(); it != details.end(); ++it) {
    if (it.value().is_primitive()) {
      out << fmt::format("  {}: {}\n", it.key(),
                         it.value().is_string() ? it.value().get<std::string>() : it.value().dump());
    }
  }
  // Chunked formats (DCP / torch_dist): the model summary, what each data file
  // is, and problems found while opening.
  if (details.contains("summary_text") && details["summary_text"].is_array()) {
    out << "\n";
    for (const auto& line : details["summary_text"]) {
      if (line.is_string()) out << "  " << Safe(line.get<std::string>()) << "\n";
    }
  }
  if (reshard.contains("sizes")) {
    out << fmt::format("  resuming at another layout (one size changed; 'as is': megatron-core loads it without "
                       "`ckptkit reshard`):\n");
    for (const char* dim : {"tp", "pp", "dp", "ep"}) {
      std::string line;
      for (const auto& z : reshard["sizes"]) {
        if (z["dim"] != dim) continue;
        std::string what = z["loads_as_is"].get<bool>() ? "as is" : (z["reshardable"].get<bool>() ? "reshard" : "no");
        if (z["padded_vocab"] != reshard["padded_vocab"]) what += fmt::format(", vocab {}", z["padded_vocab"].get<int64_t>());
        line += fmt::format("{}{} ({})", line.empty() ? "" : ", ", z["size"].get<int64_t>(), what);
      }
      if (!line.empty()) out << fmt::format("    {}: {}\n", dim, line);
    }
  } else if (reshard.contains("error")) {
    out << "  resuming at another layout: not derived (" << Safe(reshard["error"].get<std::string>()) << ")\n";
  }
  if (!layout_lines.empty()) {
    out << "  model layout (the model layer's recomputation of megatron's ranks and optimizer buffers):\n";
    for (const auto& line : layout_lines) out << "    " << Safe(line.get<std::string>()) << "\n";
  }
  if (details.contains("files") && details["files"].is_array()) {
    const auto& files = details["files"];
    size_t missing = 0;
    for (const auto& f : files) missing += f.value("missing", false) ? 1 : 0;
    out << fmt::format(
        "\nData files: {}{} from {} writing rank{} (__<R>_<W>.distcp = global rank R, file W of that rank: one per "
        "writer thread, or per item without single_file_per_rank):\n",
        files.size(), missing ? fmt::format(" ({} MISSING)", missing) : "", details.value("ranks", size_t{0}),
        details.value("ranks", size_t{0}) == 1 ? "" : "s");
    size_t shown_files = 0;
    for (const auto& f : files) {
      if (options.max_rows && shown_files == options.max_rows) {
        out << fmt::format("  ... {} more files (use --json for all)\n", files.size() - shown_files);
        break;
      }
      ++shown_files;
      std::string desc;
      if (f.contains("description") && f["description"].is_string()) {
        desc = Safe(f["description"].get<std::string>());
      } else {
        std::vector<std::string> keys;
        for (const auto& k : f.value("keys", nlohmann::json::array())) keys.push_back(Safe(k.get<std::string>()));
        size_t kc = f.value("key_count", size_t{0});
        desc = fmt::format("{}{}", fmt::join(keys, ", "), kc > keys.size() ? fmt::format(", ... ({} keys)", kc) : "");
      }
      int64_t chunks = f.value("tensor_chunks", int64_t{0}), objs = f.value("bytes_items", int64_t{0});
      out << fmt::format("  {}  rank {} writer {}  {:>10}  {} tensor chunk{}, {} object{}{}{}\n",
                         Safe(f.value("name", std::string())), f.value("rank", int64_t{-1}),
                         f.value("writer", int64_t{-1}),
                         f.value("missing", false) ? "MISSING" : HumanBytes(f.value("bytes", uint64_t{0})), chunks,
                         chunks == 1 ? "" : "s", objs, objs == 1 ? "" : "s", desc.empty() ? "" : ": ", desc);
    }
  }
  if (details.contains("checksum_manifests") && details["checksum_manifests"].is_array()) {
    std::vector<std::string> names;
    for (const auto& m : details["checksum_manifests"]) names.push_back(Safe(m.get<std::string>()));
    out << fmt::format("\nChecksums: {} (ckptkit's XXH3 of every item; `ckptkit verify --deep` checks them)\n",
                       fmt::join(names, ", "));
  }
  if (details.contains("problems") && details["problems"].is_array() && !details["problems"].empty()) {
    out << fmt::format("\nPROBLEMS ({}; run `ckptkit verify` for the full check):\n", details["problems"].size());
    size_t shown_p = 0;
    for (const auto& p : details["problems"]) {
      if (shown_p++ == 20) {
        out << "  ...\n";
        break;
      }
      std::string where = Safe(p.value("file", std::string()));
      if (p.contains("offset")) where += fmt::format(" @ {}", p["offset"].get<uint64_t>());
      if (p.contains("key")) where += fmt::format("{}'{}'", where.empty() ? "" : ": ", Safe(p["key"].get<std::string>()));
      out << fmt::format("  {}{}{}\n", where, where.empty() ? "" : ": ", Safe(p.value("message", std::string())));
    }
  }
  bool chunked = std::any_of(tensors.begin(), tensors.end(), [](const TensorInfo& t) { return !t.chunks.empty(); });
  if (!tensors.empty() && chunked) {
    out << "\n"
        << fmt::format("{:<{}}  {:<{}}  {:<{}}  {:>12}  {:>6}\n", "KEY", key_w, "DTYPE", dtype_w, "SHAPE",
                       shape_w, "BYTES", "CHUNKS");
    size_t shown = 0;
    for (const TensorInfo& t : tensors) {
      if (options.max_rows && shown == options.max_rows) {
        out << fmt::format("... {} more (use --json for all)\n", tensors.size() - shown);
        break;
      }
      std::set<std::string_view> in_files;
      for (const ChunkInfo& c : t.chunks) in_files.insert(c.file);
      std::string where = in_files.size() == 1 ? Safe(*in_files.begin()) : fmt::format("{} files", in_files.size());
      out << fmt::format("{:<{}}  {:<{}}  {:<{}}  {:>12}  {:>6}  {}\n", Safe(t.key), key_w, DTypeName(t.dtype),
                         dtype_w, ShapeString(t.shape), shape_w, t.nbytes, t.chunks.size(), where);
      ++shown;
    }
  } else if (!tensors.empty()) {
    out << "\n"
        << fmt::format("{:<{}}  {:<{}}  {:<{}}  {:>12}\n", "KEY", key_w, "DTYPE", dtype_w, "SHAPE",
                       shape_w, "BYTES");
    size_t shown = 0;
    for (const TensorInfo& t : tensors) {
      if (options.max_rows && shown == options.max_rows) {
        out << fmt::format("... {} more (use --json for all)\n", tensors.size() - shown);
        break;
      }
      std::string note;
      if (!t.storage.empty()) {
        note = fmt::format("  storage {}", t.storage);
        if (t.storage_offset) note += fmt::format(" +{}", t.storage_offset);
      }
      if (!t.file.empty()) note += "  " + Safe(t.file);
      if (t.is_parameter) note += "  Parameter";
      out << fmt::format("{:<{}}  {:<{}}  {:<{}}  {:>12}{}\n", Safe(t.key), key_w, DTypeName(t.dtype),
                         dtype_w, ShapeString(t.shape), shape_w, t.nbytes, note);
      ++shown;
    }
  }
  if (details.contains("shared_storages") && details["shared_storages"].is_array()) {
    out << "\nShared storages (several tensors view the same bytes):\n";
    for (const auto& s : details["shared_storages"]) {
      std::vector<std::string> keys;
      for (const auto& k : s.value("tensors", nlohmann::json::array())) {
        if (k.is_string()) keys.push_back(Safe(k.get<std::string>()));
      }
      out << fmt::format("  storage {} ({}): {}\n", Safe(s.value("storage", std::string())),
                         HumanBytes(s.value("nbytes", uint64_t{0})), fmt::join(keys, ", "));
    }
  }
  if (!reader->objects().empty()) {
    // Folded (FoldObjects): one line per run of objects whose keys differ in one number.
    out << "\nOther objects (shown, never executed):\n";
    const std::vector<ObjectLine> lines = FoldObjects(reader->objects());
    size_t shown = 0;
    for (const ObjectLine& l : lines) {
      if (options.max_rows && shown == options.max_rows) {
        size_t left = 0;
        for (size_t i = shown; i < lines.size(); ++i) left += lines[i].count;
        out << fmt::format("  ... {} more object{} (use --json for all)\n", left, left == 1 ? "" : "s");
        break;
      }
      out << fmt::format("  {} ({}{}): {}{}\n", Safe(l.key), Safe(l.type), l.opaque ? ", not on the allowlist" : "",
                         Safe(l.repr), l.count > 1 ? fmt::format("  (x{})", l.count) : "");
      ++shown;
    }
  }
  return ProblemsStatus(details);
}

}  // namespace ckpt::cli
