#include "lib/inspect.h"

#include <fmt/format.h>

#include <algorithm>
#include <set>

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

}  // namespace

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

nlohmann::json InspectJson(const std::string& path, const CheckpointReader& reader) {
  nlohmann::json doc;
  doc["path"] = path;
  doc["format"] = reader.format();
  uint64_t total = 0;
  nlohmann::json tensors = nlohmann::json::array();
  for (const TensorInfo& t : reader.tensors()) {
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
    total += t.nbytes;
    tensors.push_back(std::move(j));
  }
  doc["tensors"] = std::move(tensors);
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

Status Inspect(const InspectOptions& options, std::ostream& out) {
  OpenOptions open;
  open.env = options.env;
  open.pickle_mode = PickleMode::kInspect;
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader,
                        OpenCheckpoint(options.path, open));
  if (options.json) {
    nlohmann::json doc = InspectJson(options.path, *reader);
    out << doc.dump(2) << "\n";
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
  if (details.contains("files") && details["files"].is_array()) {
    const auto& files = details["files"];
    out << fmt::format(
        "\nData files: {} from {} writing rank{} (__<R>_<W>.distcp = global rank R, file W of that rank: one per "
        "writer thread, or per item without single_file_per_rank):\n",
        files.size(), details.value("ranks", size_t{0}), details.value("ranks", size_t{0}) == 1 ? "" : "s");
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
                         f.value("writer", int64_t{-1}), HumanBytes(f.value("bytes", uint64_t{0})), chunks,
                         chunks == 1 ? "" : "s", objs, objs == 1 ? "" : "s", desc.empty() ? "" : ": ", desc);
    }
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
      std::set<std::string> in_files;
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
    out << "\nOther objects (shown, never executed):\n";
    for (const ObjectInfo& o : reader->objects()) {
      out << fmt::format("  {} ({}{}): {}\n", Safe(o.key), Safe(o.type),
                         o.opaque ? ", not on the allowlist" : "", Safe(o.repr));
    }
  }
  return ProblemsStatus(details);
}

}  // namespace ckpt::cli
