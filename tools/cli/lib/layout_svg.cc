#include "lib/layout_svg.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <set>
#include <string_view>

#include "lib/inspect.h"

namespace ckpt::cli {
namespace {

std::string Xml(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default:
        if (static_cast<unsigned char>(c) >= 0x20 || c == '\t') out += c;  // no control characters in XML 1.0
    }
  }
  return out;
}

std::string Cut(const std::string& s, size_t n) { return s.size() <= n ? s : s.substr(0, n - 3) + "..."; }

bool AllDigits(std::string_view s) {
  return !s.empty() && s.size() <= 9 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// "{0..3}", "{0,2,5}".
std::string NumberSet(const std::set<int64_t>& n) {
  std::string out = "{";
  for (auto it = n.begin(); it != n.end();) {
    auto run_end = it;
    while (std::next(run_end) != n.end() && *std::next(run_end) == *run_end + 1) ++run_end;
    if (out.size() > 1) out += ",";
    out += *run_end - *it >= 2 ? fmt::format("{}..{}", *it, *run_end)
                               : (run_end == it ? std::to_string(*it) : fmt::format("{},{}", *it, *run_end));
    it = std::next(run_end);
  }
  return out + "}";
}

// Keys summarized as groups: "model.layers.{0..3}.*" for keys numbered at one
// dotted component, else the first two components; in first-seen order.
std::string SummarizeKeys(const std::vector<std::string>& keys) {
  std::vector<std::string> order;
  std::map<std::string, std::set<int64_t>> numbers;
  std::map<std::string, size_t> counts;
  for (const std::string& key : keys) {
    std::vector<std::string_view> parts;
    std::string_view k = key;
    for (size_t at = 0;;) {
      size_t dot = k.find('.', at);
      parts.push_back(k.substr(at, dot == std::string_view::npos ? std::string_view::npos : dot - at));
      if (dot == std::string_view::npos) break;
      at = dot + 1;
    }
    std::string group;
    int64_t number = -1;
    for (size_t i = 1; i + 1 < parts.size(); ++i) {
      if (AllDigits(parts[i])) {
        for (size_t j = 0; j < i; ++j) group += std::string(parts[j]) + ".";
        number = std::stoll(std::string(parts[i]));
        break;
      }
    }
    if (number < 0) {  // the first three components
      for (size_t j = 0; j < parts.size() && j < 3; ++j) group += (j ? "." : "") + std::string(parts[j]);
      if (parts.size() > 3) group += ".*";
    }
    if (!counts.count(group)) order.push_back(group);
    ++counts[group];
    if (number >= 0) numbers[group].insert(number);
  }
  std::string out;
  for (size_t i = 0; i < order.size(); ++i) {
    if (i == 6) {
      out += fmt::format("; ... {} more groups", order.size() - i);
      break;
    }
    const std::string& g = order[i];
    std::string shown = numbers.count(g) ? g + NumberSet(numbers[g]) + ".*" : g;
    out += (out.empty() ? "" : "; ") + shown + (counts[g] > 1 ? fmt::format(" ({})", counts[g]) : "");
  }
  return out;
}

// rank and writer from "__R_W.distcp"; a legacy file's rank folder
// ("mp_rank_00_001/...": TP rank 0, PP rank 1) as its group.
void RankOf(const std::string& name, int64_t* rank, int64_t* writer, std::string* group) {
  if (name.rfind("__", 0) == 0) {
    size_t u = name.find('_', 2);
    size_t dot = name.find('.', 2);
    if (u != std::string::npos && dot != std::string::npos && u < dot && AllDigits(std::string_view(name).substr(2, u - 2)) &&
        AllDigits(std::string_view(name).substr(u + 1, dot - u - 1))) {
      *rank = std::stoll(name.substr(2, u - 2));
      *writer = std::stoll(name.substr(u + 1, dot - u - 1));
      *group = fmt::format("rank {}", *rank);
      return;
    }
  }
  const size_t slash = name.find('/');
  if (name.rfind("mp_rank_", 0) == 0 && slash != std::string::npos) {
    const std::string folder = name.substr(0, slash);
    std::vector<std::string> nums;
    for (size_t at = 8; at <= folder.size();) {
      size_t u = folder.find('_', at);
      nums.push_back(folder.substr(at, u == std::string::npos ? std::string::npos : u - at));
      if (u == std::string::npos) break;
      at = u + 1;
    }
    static constexpr const char* kDims[] = {"TP", "PP", "EP"};
    std::string what;
    for (size_t i = 0; i < nums.size() && i < 3; ++i) {
      if (!AllDigits(nums[i])) return;
      what += fmt::format("{}{} rank {}", what.empty() ? "" : ", ", kDims[i], std::stoll(nums[i]));
    }
    *group = fmt::format("{} ({})", folder, what);
  }
}

// A file's contents in lines of at most kLine characters, broken after "; "
// where it can be; at most three lines, the last cut.
std::vector<std::string> WrapContents(const std::string& text) {
  constexpr size_t kLine = 125;
  std::vector<std::string> lines;
  size_t at = 0;
  while (at < text.size() && lines.size() < 3) {
    if (text.size() - at <= kLine || lines.size() == 2) {
      lines.push_back(Cut(text.substr(at), kLine));
      break;
    }
    size_t brk = text.rfind("; ", at + kLine);
    if (brk == std::string::npos || brk <= at) brk = at + kLine - 1;
    lines.push_back(text.substr(at, brk + 1 - at));
    at = brk + 1;
    while (at < text.size() && text[at] == ' ') ++at;
  }
  if (lines.empty()) lines.push_back("");
  return lines;
}

// The rank colours: ten hues that stay apart on white.
constexpr const char* kPalette[] = {"#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2",
                                    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};

}  // namespace

bool FilesListed(const nlohmann::json& doc) {
  if (!doc.contains("details")) return false;
  const nlohmann::json& details = doc["details"];
  return details.contains("files") && details["files"].is_array() && !details["files"].empty();
}

void TensorTotals(const nlohmann::json& doc, size_t* count, uint64_t* bytes) {
  *count = doc.value("tensor_count", size_t{0});
  *bytes = doc.value("total_bytes", uint64_t{0});
  if (doc.contains("tensors")) {
    *count = doc["tensors"].size();
    *bytes = 0;
    for (const auto& t : doc["tensors"]) *bytes += t.value("nbytes", uint64_t{0});
  }
}

std::vector<LayoutFile> LayoutFiles(const nlohmann::json& doc) {
  std::vector<LayoutFile> files;
  const nlohmann::json& details = doc.contains("details") ? doc["details"] : nlohmann::json::object();
  if (FilesListed(doc)) {
    for (const auto& f : details["files"]) {
      LayoutFile lf;
      lf.name = f.value("name", "");
      lf.bytes = f.value("bytes", uint64_t{0});
      lf.missing = f.value("missing", false);
      lf.rank = f.value("rank", int64_t{-1});
      lf.writer = f.value("writer", int64_t{-1});
      lf.contents = f.value("description", "");
      lf.group = lf.rank >= 0 ? fmt::format("rank {}", lf.rank) : "files";
      files.push_back(std::move(lf));
    }
  } else {
    // Files named by the tensors (or their chunks); a single file otherwise.
    std::map<std::string, std::pair<uint64_t, std::vector<std::string>>> by_file;
    std::vector<std::string> order;
    const std::string self = [&] {
      std::string p = doc.value("path", "");
      while (p.size() > 1 && p.back() == '/') p.pop_back();
      size_t slash = p.find_last_of('/');
      return slash == std::string::npos ? p : p.substr(slash + 1);
    }();
    auto add = [&](const std::string& file, uint64_t bytes, const std::string& key) {
      auto [it, fresh] = by_file.try_emplace(file.empty() ? self : file);
      if (fresh) order.push_back(it->first);
      it->second.first += bytes;
      it->second.second.push_back(key);
    };
    if (doc.contains("tensors")) {
      for (const auto& t : doc["tensors"]) {
        const std::string key = t.value("key", "");
        if (t.contains("chunk_list") && t["chunk_list"].is_array() && !t["chunk_list"].empty()) {
          for (const auto& c : t["chunk_list"]) add(c.value("file", ""), c.value("length", uint64_t{0}), key);
        } else {
          add(t.value("file", ""), t.value("nbytes", uint64_t{0}), key);
        }
      }
    }
    if (order.empty()) order.push_back(self), by_file[self];
    // A legacy checkpoint: each rank folder's coordinates (the folder name
    // alone does not tell PP from EP when one of them is 1) and its files'
    // sizes on disk, from the reader's details.
    std::map<std::string, std::string> folder_group;
    std::map<std::string, uint64_t> disk_bytes;
    if (details.contains("legacy") && details["legacy"].is_object() && details["legacy"].contains("ranks") &&
        details["legacy"]["ranks"].is_array()) {
      const nlohmann::json& legacy = details["legacy"];
      const nlohmann::json grid = legacy.value("grid", nlohmann::json::object());
      const bool pp = grid.value("pipeline_parallel", false), ep = grid.value("expert_parallel", false);
      for (const auto& r : legacy["ranks"]) {
        if (!r.is_object() || !r.contains("folder") || !r["folder"].is_string()) continue;
        const std::string folder = r["folder"].get<std::string>();
        std::string what = fmt::format("TP rank {}", r.value("tp", int64_t{0}));
        if (pp) what += fmt::format(", PP rank {}", r.value("pp", int64_t{0}));
        if (ep) what += fmt::format(", EP rank {}", r.value("ep", int64_t{0}));
        folder_group[folder] = fmt::format("{} ({})", folder, what);
        if (r.contains("files") && r["files"].is_object()) {
          for (auto f = r["files"].begin(); f != r["files"].end(); ++f) {
            if (f.value().is_object() && f.value().contains("bytes") && f.value()["bytes"].is_number_unsigned()) {
              disk_bytes[folder + "/" + f.key()] = f.value()["bytes"].get<uint64_t>();
            }
          }
        }
      }
    }
    for (const std::string& name : order) {
      LayoutFile lf;
      lf.name = name;
      lf.bytes = by_file[name].first;
      lf.group = "files";
      RankOf(name, &lf.rank, &lf.writer, &lf.group);
      if (auto g = folder_group.find(name.substr(0, name.find('/'))); g != folder_group.end()) lf.group = g->second;
      if (auto b = disk_bytes.find(name); b != disk_bytes.end()) lf.bytes = b->second;
      // Keys a legacy reader prefixes with the rank folder: summarized without it.
      std::vector<std::string> keys = by_file[name].second;
      const size_t slash = name.find('/');
      if (slash != std::string::npos) {
        const std::string prefix = name.substr(0, slash + 1);
        for (std::string& k : keys) {
          if (k.rfind(prefix, 0) == 0) k.erase(0, prefix.size());
        }
      }
      lf.contents = SummarizeKeys(keys);
      files.push_back(std::move(lf));
    }
  }
  std::stable_sort(files.begin(), files.end(), [](const LayoutFile& a, const LayoutFile& b) {
    return std::tie(a.rank, a.group, a.writer, a.name) < std::tie(b.rank, b.group, b.writer, b.name);
  });
  return files;
}

std::string LayoutSvg(const nlohmann::json& doc, size_t max_files) {
  const std::vector<LayoutFile> files = LayoutFiles(doc);
  const nlohmann::json& details = doc.contains("details") ? doc["details"] : nlohmann::json::object();
  uint64_t largest = 1, tensor_bytes = 0;
  for (const LayoutFile& f : files) largest = std::max(largest, f.bytes);
  size_t tensor_count = 0;
  TensorTotals(doc, &tensor_count, &tensor_bytes);
  std::set<int64_t> ranks;
  for (const LayoutFile& f : files) {
    if (f.rank >= 0) ranks.insert(f.rank);
  }

  constexpr int kWidth = 1100, kNameX = 16, kBarX = 300, kBarW = 480, kSizeX = kBarX + kBarW + 10;
  std::string body;
  int y = 28;
  body += fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"15\" font-weight=\"bold\">{}</text>\n", kNameX, y,
                      Xml(Cut(doc.value("path", ""), 120)));
  y += 20;
  body += fmt::format(
      "<text x=\"{}\" y=\"{}\" fill=\"#444\">{}: {} tensors, {} of tensor data; {} file{}{}</text>\n", kNameX, y,
      Xml(doc.value("format", "")), tensor_count, Xml(HumanBytes(tensor_bytes)),
      files.size(), files.size() == 1 ? "" : "s",
      !ranks.empty() ? fmt::format(" from {} rank{}", ranks.size(), ranks.size() == 1 ? "" : "s") : "");
  y += 10;
  std::string last_group;
  std::map<std::string, size_t> group_colour;
  size_t shown = 0;
  for (const LayoutFile& f : files) {
    if (shown == max_files) {
      y += 22;
      body += fmt::format("<text x=\"{}\" y=\"{}\" fill=\"#444\">... {} more files (ckptkit inspect --json lists every one)</text>\n",
                          kNameX, y, files.size() - shown);
      break;
    }
    ++shown;
    if (shown == 1 || f.group != last_group) {
      last_group = f.group;
      y += 26;
      body += fmt::format("<text x=\"{}\" y=\"{}\" font-weight=\"bold\" class=\"group\">{}</text>\n", kNameX, y,
                          Xml(f.group));
      body += fmt::format("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#ccc\"/>\n", kNameX, y + 5,
                          kWidth - 16, y + 5);
    }
    y += 22;
    const double w = static_cast<double>(kBarW) * static_cast<double>(f.bytes) / static_cast<double>(largest);
    const std::vector<std::string> lines = WrapContents(f.contents);
    const size_t hue = f.rank >= 0 ? static_cast<size_t>(f.rank) : group_colour.try_emplace(f.group, group_colour.size()).first->second;
    const char* colour = kPalette[hue % std::size(kPalette)];
    body += fmt::format(
        "<g class=\"file\" data-file=\"{}\" data-bytes=\"{}\" data-rank=\"{}\" data-writer=\"{}\">\n"
        "  <text x=\"{}\" y=\"{}\">{}</text>\n"
        "  <rect class=\"bar\" x=\"{}\" y=\"{}\" width=\"{:.2f}\" height=\"13\" fill=\"{}\"/>\n"
        "  <text x=\"{}\" y=\"{}\" fill=\"#444\">{}</text>\n"
        "  <text class=\"contents\" x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"#666\">{}</text>\n",
        Xml(f.name), f.bytes, f.rank, f.writer, kNameX + 10, y, Xml(Cut(f.name, 40)), kBarX, y - 11, w, colour,
        kSizeX, y, f.missing ? "MISSING" : Xml(HumanBytes(f.bytes)), kBarX, y + 14, Xml(lines[0]));
    for (size_t i = 1; i < lines.size(); ++i) {
      y += 13;
      body += fmt::format("  <text class=\"contents\" x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"#666\">{}</text>\n",
                          kBarX, y + 14, Xml(lines[i]));
    }
    body += "</g>\n";
    y += 14;
  }
  if (details.contains("other_files") && details["other_files"].is_array() && !details["other_files"].empty()) {
    std::string names;
    for (const auto& o : details["other_files"]) {
      names += (names.empty() ? "" : ", ") + (o.is_string() ? o.get<std::string>() : o.value("name", o.dump()));
    }
    y += 28;
    body += fmt::format("<text x=\"{}\" y=\"{}\" fill=\"#444\" class=\"other\">other files: {}</text>\n", kNameX, y,
                        Xml(Cut(names, 150)));
  }
  if (details.contains("problems") && details["problems"].is_array() && !details["problems"].empty()) {
    y += 28;
    body += fmt::format("<text x=\"{}\" y=\"{}\" font-weight=\"bold\" fill=\"#c00\">PROBLEMS ({})</text>\n", kNameX,
                        y, details["problems"].size());
    for (const auto& p : details["problems"]) {
      y += 18;
      const std::string file = p.value("file", "");
      body += fmt::format("<text class=\"problem\" x=\"{}\" y=\"{}\" fill=\"#c00\">{}</text>\n", kNameX + 10, y,
                          Xml(Cut((file.empty() ? "" : file + ": ") + p.value("message", ""), 160)));
    }
  }
  y += 20;
  return fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"DejaVu Sans, Arial, sans-serif\" font-size=\"12\">\n"
      "<title>ckptkit layout of {2}</title>\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\n{3}</svg>\n",
      kWidth, y, Xml(doc.value("path", "")), body);
}

}  // namespace ckpt::cli
