#include "lib/layout_map.h"

#include <map>
#include <string_view>
#include <vector>

#include "lib/layout_svg.h"

namespace ckpt::cli {
namespace {

// "model" or "optimizer", and the key's group: its first two dotted
// components ("decoder.layers"), three under "optimizer." ("optimizer.state.exp_avg").
void Classify(const std::string& key, std::string* section, std::string* group) {
  const bool optim = key.rfind("optimizer.", 0) == 0 || key.find("/optimizer.") != std::string::npos;
  *section = optim ? "optimizer" : "model";
  const int parts = optim ? 3 : 2;
  size_t at = 0;
  for (int i = 0; i < parts; ++i) {
    size_t dot = key.find('.', at);
    if (dot == std::string::npos) {
      *group = key;
      return;
    }
    at = dot + 1;
  }
  *group = key.substr(0, at - 1);
}

constexpr std::string_view kPage = R"HTML(<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ckptkit layout map</title>
<style>
body { font: 13px/1.4 "DejaVu Sans", Arial, sans-serif; margin: 16px 24px; color: #222; }
h1 { font-size: 18px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 22px 0 6px; }
.muted { color: #666; } .problem { color: #c00; } .file.bad .name { color: #c00; font-weight: bold; }
.group-h { font-weight: bold; margin: 10px 0 2px; border-bottom: 1px solid #ddd; }
.file { display: grid; grid-template-columns: 280px 420px 90px; align-items: center; margin: 1px 0 0 10px; }
.file .bar { height: 12px; } .file .contents { grid-column: 2 / 4; font-size: 11px; color: #666; margin-bottom: 4px; }
details.tgroup { margin: 2px 0; } details.tgroup > summary { cursor: pointer; }
.tensor { display: grid; grid-template-columns: 420px 260px 330px; align-items: center; margin: 2px 0 2px 18px; }
.tensor .key { overflow-wrap: anywhere; } svg.chunks { border: 1px solid #bbb; background: #fafafa; }
#search { width: 360px; padding: 3px; } .hidden { display: none !important; }
.legend span { display: inline-block; margin-right: 10px; } .swatch { width: 10px; height: 10px; display: inline-block; margin-right: 3px; }
</style></head>
<body data-rendered="0" data-errors="0">
<h1 id="title"></h1><div id="summary" class="muted"></div>
<div id="problems"></div>
<div id="layout"></div>
<h2>Files</h2><div id="legend" class="legend"></div><div id="files"></div>
<h2>Tensors</h2>
<div><input id="search" type="search" placeholder="filter tensors by key"> <span id="count" class="muted"></span></div>
<div id="tensors"></div>
<script type="application/json" id="data">@DATA@</script>
<script>
(function () {
  "use strict";
  window.addEventListener("error", function () {
    document.body.dataset.errors = String(Number(document.body.dataset.errors) + 1);
  });
  var D = JSON.parse(document.getElementById("data").textContent);
  var PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
  var LAZY = 20000, PAGE = 500, SVGNS = "http://www.w3.org/2000/svg";
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function human(n) {
    var u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"], i = 0;
    while (n >= 1024 && i < 5) { n /= 1024; i++; }
    return i ? n.toFixed(2) + " " + u[i] : n + " B";
  }
  var groupColour = {};
  function colour(file) {
    if (file.rank >= 0) return PALETTE[file.rank % PALETTE.length];
    if (!(file.group in groupColour)) groupColour[file.group] = Object.keys(groupColour).length;
    return PALETTE[groupColour[file.group] % PALETTE.length];
  }
  var badFiles = {};
  D.problems.forEach(function (p) { if (p.file) badFiles[p.file] = true; });
  document.title = "ckptkit layout map: " + D.path;
  document.getElementById("title").textContent = D.path;
  var nchunks = 0;
  D.tensors.forEach(function (t) { nchunks += t.chunks.length; });
  var ranks = {};
  D.files.forEach(function (f) { if (f.rank >= 0) ranks[f.rank] = true; });
  var nranks = Object.keys(ranks).length;
  document.getElementById("summary").textContent = D.format + ": " + D.tensors.length + " tensors, " +
      human(D.tensor_bytes) + " of tensor data in " + nchunks + " chunks; " + D.files.length + " files" +
      (nranks ? " from " + nranks + " ranks" : "") +
      (D.other_files.length ? "; other files: " + D.other_files.join(", ") : "");

  if (D.problems.length) {
    var pr = document.getElementById("problems");
    pr.appendChild(el("h2", "problem", "Problems (" + D.problems.length + ")"));
    var ul = el("ul", "problem");
    D.problems.forEach(function (p) { ul.appendChild(el("li", "problem-item", (p.file ? p.file + ": " : "") + p.message)); });
    pr.appendChild(ul);
  }
  if (D.layout || D.model_layout.length) {
    var lay = document.getElementById("layout");
    lay.appendChild(el("h2", "", "Parallel layout"));
    if (D.layout) lay.appendChild(el("div", "", D.layout));
    D.model_layout.forEach(function (line) { lay.appendChild(el("div", "muted", line)); });
  }

  // Files, by group (rank), bars by bytes.
  var largest = 1;
  D.files.forEach(function (f) { largest = Math.max(largest, f.bytes); });
  var filesDiv = document.getElementById("files"), lastGroup = null;
  D.files.forEach(function (f, i) {
    if (f.group !== lastGroup) { filesDiv.appendChild(el("div", "group-h", f.group)); lastGroup = f.group; }
    var row = el("div", "file" + (badFiles[f.name] ? " bad" : ""));
    row.dataset.file = f.name; row.dataset.bytes = f.bytes; row.dataset.rank = f.rank; row.id = "file-" + i;
    row.appendChild(el("span", "name", f.name));
    var bar = el("div", "bar");
    bar.style.width = (100 * f.bytes / largest).toFixed(2) + "%";
    bar.style.background = colour(f);
    var cell = el("div"); cell.appendChild(bar); row.appendChild(cell);
    row.appendChild(el("span", "muted", human(f.bytes)));
    row.appendChild(el("div", "contents", f.contents));
    filesDiv.appendChild(row);
  });

  // Tensors: sections and groups, each tensor's chunks over its global shape.
  // A tensor's chunks over its global shape: 2-D as it is (axis 0 down),
  // 1-D as one row; 3-D and up as panels side by side, one per index of axis 0
  // (stacked layers, experts; at most 16 drawn), each axis 1 down and the rest
  // flattened across. Each chunk is a <g class="chunk"> holding its offsets and
  // sizes, with one box per panel it covers.
  var MAXPANELS = 16;
  function drawChunks(t) {
    var shape = t.shape.length ? t.shape : [1];
    var nd = shape.length, panels = nd >= 3 ? shape[0] : 1, shown = Math.min(panels, MAXPANELS);
    var rows = nd >= 3 ? shape[1] : (nd === 2 ? shape[0] : 1);
    var inner = 1;
    for (var d = (nd >= 3 ? 3 : 2); d < nd; d++) inner *= shape[d];
    var cols = nd >= 3 ? shape[2] * inner : (nd === 2 ? shape[1] : shape[0]);
    cols = Math.max(cols, 1); rows = Math.max(rows, 1);
    var gap = cols * 0.06, width = shown * cols + (shown - 1) * gap;
    var svg = document.createElementNS(SVGNS, "svg");
    svg.setAttribute("class", "chunks");
    svg.setAttribute("viewBox", "0 0 " + width + " " + rows);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("width", "320");
    svg.setAttribute("height", String(Math.max(10, Math.min(90, Math.round(320 * rows / width)))));
    for (var p = 1; p < shown; p++) {
      var sep = document.createElementNS(SVGNS, "rect");
      sep.setAttribute("x", p * (cols + gap) - gap); sep.setAttribute("y", 0);
      sep.setAttribute("width", gap); sep.setAttribute("height", rows); sep.setAttribute("fill", "#fff");
      svg.appendChild(sep);
    }
    t.chunks.forEach(function (c) {
      var o = c.o.length ? c.o : [0], s = c.s.length ? c.s : [1];
      var f = D.files[c.f] || {rank: -1, group: "", name: "?"};
      var g = document.createElementNS(SVGNS, "g");
      g.setAttribute("class", "chunk");
      g.setAttribute("data-offsets", JSON.stringify(c.o)); g.setAttribute("data-sizes", JSON.stringify(c.s));
      g.setAttribute("data-file", f.name); g.setAttribute("data-rank", f.rank);
      var tip = document.createElementNS(SVGNS, "title");
      tip.textContent = f.name + (f.rank >= 0 ? " (rank " + f.rank + ")" : "") + ": offsets [" + c.o + "], sizes [" + c.s + "]";
      g.appendChild(tip);
      var first = nd >= 3 ? o[0] : 0, last = nd >= 3 ? Math.min(o[0] + s[0], shown) : 1;
      for (var q = first; q < last; q++) {
        var x, y, w, h;
        if (nd >= 3) { y = o[1]; h = s[1]; x = q * (cols + gap) + o[2] * inner; w = s[2] * inner; }
        else if (nd === 2) { y = o[0]; h = s[0]; x = o[1]; w = s[1]; }
        else { y = 0; h = 1; x = o[0]; w = s[0]; }
        var r = document.createElementNS(SVGNS, "rect");
        r.setAttribute("x", x); r.setAttribute("y", y); r.setAttribute("width", w); r.setAttribute("height", h);
        r.setAttribute("fill", colour(f)); r.setAttribute("stroke", "#fff"); r.setAttribute("stroke-width", "0.5");
        r.setAttribute("vector-effect", "non-scaling-stroke");
        g.appendChild(r);
      }
      svg.appendChild(g);
    });
    if (panels > shown) {
      var note = document.createElementNS(SVGNS, "title");
      note.textContent = panels + " panels along axis 0, the first " + shown + " drawn";
      svg.appendChild(note);
    }
    return svg;
  }
  function tensorRow(t) {
    var row = el("div", "tensor");
    row.dataset.key = t.key; row.dataset.shape = JSON.stringify(t.shape);
    row.appendChild(el("span", "key", t.key));
    row.appendChild(el("span", "muted", t.dtype + " [" + t.shape.join(", ") + "] " + human(t.nbytes) + ", " +
                                          t.chunks.length + " chunk" + (t.chunks.length === 1 ? "" : "s")));
    row.appendChild(drawChunks(t));
    return row;
  }
  var lazy = nchunks > LAZY, groups = [], byName = {};
  D.tensors.forEach(function (t) {
    var name = t.section + ": " + t.group;
    if (!(name in byName)) { byName[name] = {name: name, tensors: [], bytes: 0}; groups.push(byName[name]); }
    byName[name].tensors.push(t); byName[name].bytes += t.nbytes;
  });
  var tensorsDiv = document.getElementById("tensors"), query = "";
  function fill(g) {
    var shown = 0;
    g.body.textContent = "";
    for (var i = 0; i < g.tensors.length; i++) {
      var t = g.tensors[i];
      if (query && t.key.toLowerCase().indexOf(query) < 0) continue;
      if (lazy && shown === g.limit) {
        var more = el("button", "more", "show " + Math.min(PAGE, g.tensors.length - i) + " more");
        more.addEventListener("click", function () { g.limit += PAGE; fill(g); });
        g.body.appendChild(more);
        break;
      }
      g.body.appendChild(tensorRow(t)); shown++;
    }
    g.filled = true;
  }
  groups.forEach(function (g) {
    var det = el("details", "tgroup");
    det.dataset.group = g.name;
    det.appendChild(el("summary", "", g.name + " (" + g.tensors.length + " tensors, " + human(g.bytes) + ")"));
    g.body = el("div"); g.limit = PAGE; g.det = det;
    det.appendChild(g.body);
    if (lazy) det.addEventListener("toggle", function () { if (det.open && !g.filled) fill(g); });
    else { fill(g); det.open = true; }
    tensorsDiv.appendChild(det);
  });
  function applySearch() {
    query = document.getElementById("search").value.trim().toLowerCase();
    var total = 0;
    groups.forEach(function (g) {
      var n = 0;
      g.tensors.forEach(function (t) { if (!query || t.key.toLowerCase().indexOf(query) >= 0) n++; });
      total += n;
      g.det.classList.toggle("hidden", n === 0);
      if (!lazy || g.det.open) fill(g); else g.filled = false;
    });
    document.getElementById("count").textContent = total + " of " + D.tensors.length + " tensors" +
        (lazy ? " (large checkpoint: open a group to draw it)" : "");
  }
  document.getElementById("search").addEventListener("input", applySearch);
  applySearch();
  document.body.dataset.renderMs = String(Math.round(performance.now()));
  document.body.dataset.rendered = "1";
})();
</script>
</body></html>
)HTML";

}  // namespace

nlohmann::json LayoutMapData(const nlohmann::json& doc) {
  const nlohmann::json& details = doc.contains("details") ? doc["details"] : nlohmann::json::object();
  nlohmann::json data;
  data["path"] = doc.value("path", "");
  data["format"] = doc.value("format", "");
  std::vector<LayoutFile> files = LayoutFiles(doc);
  std::map<std::string, size_t> index;
  data["files"] = nlohmann::json::array();
  for (const LayoutFile& f : files) {
    index.emplace(f.name, index.size());
    data["files"].push_back({{"name", f.name}, {"bytes", f.bytes}, {"rank", f.rank}, {"writer", f.writer},
                             {"group", f.group}, {"contents", f.contents}});
  }
  data["other_files"] = nlohmann::json::array();
  if (details.contains("other_files") && details["other_files"].is_array()) {
    for (const auto& o : details["other_files"]) {
      data["other_files"].push_back(o.is_string() ? o.get<std::string>() : o.value("name", o.dump()));
    }
  }
  data["problems"] = nlohmann::json::array();
  if (details.contains("problems") && details["problems"].is_array()) {
    for (const auto& p : details["problems"]) {
      data["problems"].push_back({{"file", p.value("file", "")}, {"message", p.value("message", "")}});
    }
  }
  data["layout"] = "";
  if (details.contains("reshard") && details["reshard"].is_object()) {
    data["layout"] = details["reshard"].value("layout", "");
  }
  data["model_layout"] = details.contains("model_layout") && details["model_layout"].is_array()
                             ? details["model_layout"]
                             : nlohmann::json::array();
  // The file a tensor without chunk records lives in: the one it names, else
  // the single file LayoutFiles made of the checkpoint.
  const size_t only = files.size() == 1 ? 0 : SIZE_MAX;
  auto file_of = [&](const std::string& name) -> int64_t {
    auto it = index.find(name);
    if (it != index.end()) return static_cast<int64_t>(it->second);
    return only == SIZE_MAX ? -1 : static_cast<int64_t>(only);
  };
  uint64_t tensor_bytes = 0;
  data["tensors"] = nlohmann::json::array();
  if (doc.contains("tensors")) {
    for (const auto& t : doc["tensors"]) {
      nlohmann::json out;
      const std::string key = t.value("key", "");
      std::string section, group;
      Classify(key, &section, &group);
      out["key"] = key;
      out["dtype"] = t.value("dtype", "");
      out["shape"] = t.contains("shape") ? t["shape"] : nlohmann::json::array();
      out["nbytes"] = t.value("nbytes", uint64_t{0});
      out["section"] = section;
      out["group"] = group;
      tensor_bytes += out["nbytes"].get<uint64_t>();
      out["chunks"] = nlohmann::json::array();
      if (t.contains("chunk_list") && t["chunk_list"].is_array() && !t["chunk_list"].empty()) {
        for (const auto& c : t["chunk_list"]) {
          out["chunks"].push_back({{"o", c.contains("offsets") ? c["offsets"] : nlohmann::json::array()},
                                   {"s", c.contains("sizes") ? c["sizes"] : nlohmann::json::array()},
                                   {"f", file_of(c.value("file", ""))}});
        }
      } else {
        nlohmann::json zeros = nlohmann::json::array();
        for (size_t i = 0; i < out["shape"].size(); ++i) zeros.push_back(0);
        out["chunks"].push_back({{"o", zeros}, {"s", out["shape"]}, {"f", file_of(t.value("file", ""))}});
      }
      data["tensors"].push_back(std::move(out));
    }
  }
  data["tensor_bytes"] = tensor_bytes;
  return data;
}

std::string LayoutHtml(const nlohmann::json& data) {
  // JSON inside <script>: "</" would end the element early ("</script>" in a
  // key); "<\/" is the same string to JSON.parse.
  std::string json = data.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::string safe;
  safe.reserve(json.size());
  for (size_t i = 0; i < json.size(); ++i) {
    if (json[i] == '<' && i + 1 < json.size() && json[i + 1] == '/') {
      safe += "<\\/";
      ++i;
    } else if (json[i] == '<' && json.compare(i, 4, "<!--") == 0) {
      safe += "\\u003c";
    } else {
      safe += json[i];
    }
  }
  std::string page(kPage);
  const size_t at = page.find("@DATA@");
  page.replace(at, 6, safe);
  return page;
}

}  // namespace ckpt::cli
