#include "lib/layout_map.h"

#include <iterator>
#include <map>
#include <optional>
#include <string_view>
#include <vector>

#include "ckpt/model.h"
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

// The parallel grid of a Megatron checkpoint whose args give the layout: each
// rank's coordinates (the model layer's Megatron order), the files it wrote
// and their bytes, and the layers of every pipeline stage. Null when the
// layout is not known or does not fit the files.
// A layout from {"tp": .., "pp": .., ...} (1 for what is absent; etp defaults to tp).
model::ParallelLayout LayoutOf(const nlohmann::json& j) {
  auto size = [&](const char* k) -> int64_t {
    return j.contains(k) && j[k].is_number_integer() ? j[k].get<int64_t>() : 1;
  };
  model::ParallelLayout l;
  l.tp = size("tp");
  l.pp = size("pp");
  l.dp = size("dp");
  l.cp = size("cp");
  l.ep = size("ep");
  l.etp = j.contains("etp") ? size("etp") : l.tp;
  l.vpp = size("vpp");
  return l;
}

// Every (virtual) pipeline stage with its layers, as the model layer splits them.
nlohmann::json StagesJson(const model::ParallelLayout& l, int64_t num_layers) {
  nlohmann::json stages = nlohmann::json::array();
  if (num_layers <= 0) return stages;
  Result<std::vector<model::LayerRange>> ranges = l.Stages(num_layers);
  if (!ranges.ok()) return stages;
  for (const model::LayerRange& r : *ranges) {
    stages.push_back({{"pp", r.pp_rank}, {"vp", r.vp_stage}, {"begin", r.begin}, {"end", r.end}});
  }
  return stages;
}

// The grid of a legacy checkpoint (details["legacy_layout"], from the model
// layer's reading of args and the rank folders): one folder per
// model-parallel rank (TP, PP, EP), written by its data-parallel rank 0,
// with the files under it, their bytes, and the layers and experts it holds.
nlohmann::json LegacyGrid(const nlohmann::json& ll, const std::vector<LayoutFile>& files) {
  const model::ParallelLayout l = LayoutOf(ll);
  if (!l.Validate().ok() || l.world_size() > 65536 || !ll.contains("folders") || !ll["folders"].is_array()) {
    return nullptr;
  }
  const int64_t num_layers = ll.value("num_layers", int64_t{0});
  nlohmann::json g;
  g["legacy"] = true;
  g["sizes"] = {{"tp", l.tp}, {"pp", l.pp}, {"dp", l.dp}, {"cp", l.cp}, {"ep", l.ep}, {"etp", l.etp}, {"vpp", l.vpp}};
  g["num_layers"] = num_layers;
  g["stages"] = StagesJson(l, num_layers);
  g["folders"] = nlohmann::json::array();
  for (const nlohmann::json& f : ll["folders"]) {
    nlohmann::json cell = f;
    const std::string prefix = f.value("folder", std::string()) + "/";
    cell["files"] = nlohmann::json::array();
    uint64_t bytes = 0;
    for (size_t i = 0; i < files.size(); ++i) {
      if (files[i].name.rfind(prefix, 0) != 0) continue;
      cell["files"].push_back(i);
      bytes += files[i].bytes;
    }
    cell["bytes"] = bytes;
    g["folders"].push_back(std::move(cell));
  }
  return g;
}

nlohmann::json Grid(const nlohmann::json& details, const std::vector<LayoutFile>& files) {
  if (details.contains("legacy_layout") && details["legacy_layout"].is_object()) {
    return LegacyGrid(details["legacy_layout"], files);
  }
  const nlohmann::json* summary = nullptr;
  if (details.contains("megatron") && details["megatron"].is_object() && details["megatron"].contains("summary")) {
    summary = &details["megatron"]["summary"];
  }
  if (summary == nullptr || !summary->contains("layout_from_args") || !(*summary)["layout_from_args"].is_object()) {
    return nullptr;
  }
  const nlohmann::json& a = (*summary)["layout_from_args"];
  if (!a.contains("tp") || !a.contains("pp") || !a.contains("dp")) return nullptr;
  const model::ParallelLayout l = LayoutOf(a);
  if (!l.Validate().ok() || l.world_size() > 65536) return nullptr;
  nlohmann::json g;
  g["sizes"] = {{"tp", l.tp}, {"pp", l.pp}, {"dp", l.dp}, {"cp", l.cp}, {"ep", l.ep}, {"etp", l.etp}, {"vpp", l.vpp}};
  int64_t num_layers = 0;
  if (summary->contains("model") && (*summary)["model"].is_object()) {
    num_layers = (*summary)["model"].value("num_layers", int64_t{0});
  }
  g["num_layers"] = num_layers;
  g["stages"] = StagesJson(l, num_layers);
  std::vector<nlohmann::json> ranks(static_cast<size_t>(l.world_size()));
  for (int64_t r = 0; r < l.world_size(); ++r) {
    Result<model::RankCoordinates> c = model::GlobalRankCoordinates(l, r);
    if (!c.ok()) return nullptr;
    ranks[static_cast<size_t>(r)] = {{"rank", r},         {"tp", c->tp_rank}, {"cp", c->cp_rank},
                                     {"dp", c->dp_rank},  {"pp", c->pp_rank}, {"ep", c->ep_rank},
                                     {"etp", c->etp_rank}, {"files", nlohmann::json::array()},
                                     {"bytes", uint64_t{0}}};
  }
  for (size_t i = 0; i < files.size(); ++i) {
    const LayoutFile& f = files[i];
    if (f.rank < 0) continue;
    if (f.rank >= l.world_size()) return nullptr;  // files from ranks the args do not have
    nlohmann::json& r = ranks[static_cast<size_t>(f.rank)];
    r["files"].push_back(i);
    r["bytes"] = r["bytes"].get<uint64_t>() + f.bytes;
  }
  g["ranks"] = std::move(ranks);
  return g;
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
.stage { margin: 8px 0 4px; } .stage-h { font-weight: bold; }
table.grid-t { border-collapse: collapse; margin: 2px 0 0 10px; } table.grid-t th { font-weight: normal; color: #666; padding: 2px 6px; text-align: left; }
table.grid-t td { padding: 2px; vertical-align: top; } td.writers { font-size: 11px; color: #666; }
.rank { border: 2px solid #999; border-radius: 3px; padding: 2px 6px; min-width: 120px; font-size: 12px; } .rank.idle { border-style: dashed; background: #f4f4f4; }
.folder { border: 2px solid #5b7db1; border-radius: 3px; padding: 2px 6px; min-width: 150px; font-size: 12px; } .folder.idle { border-style: dashed; }
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
  D.files.forEach(function (f) { if (f.missing) badFiles[f.name] = true; });
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
    if (D.grid) drawGrid(lay, D.grid);
  }

  // The parallel grid: one block per pipeline stage (its layers), a column
  // per (CP, TP) rank and a row per DP rank, each cell a rank with the bytes
  // of the files it wrote. The DP ranks of a column hold replicas of the same
  // model shard; the column's footer names which of them wrote it.
  function stageBlock(G, p) {
    var z = G.sizes, st = G.stages.filter(function (s) { return s.pp === p; });
    var layers = st.map(function (s) { return s.end - s.begin === 1 ? String(s.begin) : s.begin + "-" + (s.end - 1); });
    var block = el("div", "stage");
    block.dataset.pp = p;
    block.dataset.layers = JSON.stringify(st.map(function (s) { return [s.begin, s.end]; }));
    block.appendChild(el("div", "stage-h", "PP stage " + p + (layers.length ? ": layers " + layers.join(", ") +
        (z.vpp > 1 ? " (" + st.length + " virtual stages)" : "") : "")));
    return block;
  }
  function ranges(ids) {  // [0,1,2,5] -> "0-2, 5"
    var out = [], i = 0;
    while (i < ids.length) {
      var j = i;
      while (j + 1 < ids.length && ids[j + 1] === ids[j] + 1) j++;
      out.push(j > i ? ids[i] + "-" + ids[j] : String(ids[i]));
      i = j + 1;
    }
    return out.join(", ");
  }

  // A legacy checkpoint: one folder per model-parallel rank (TP columns, EP
  // rows, a block per pipeline stage), written by data-parallel rank 0 of its
  // group; distrib_optim.pt holds the optimizer gathered across the replicas.
  function drawLegacyGrid(parent, G) {
    var z = G.sizes, byPos = {};
    G.folders.forEach(function (f) { byPos[f.pp + "/" + f.ep + "/" + f.tp] = f; });
    var wrap = el("div", "grid");
    wrap.appendChild(el("div", "muted", "legacy rank folders by pipeline stage (blocks), tensor parallel rank (columns)" +
        (z.ep > 1 ? " and expert parallel rank (rows)" : "") + "; each written by data-parallel rank 0 of its " + z.dp +
        " replicas (distrib_optim.pt: the optimizer gathered across them)"));
    for (var p = 0; p < z.pp; p++) {
      var block = stageBlock(G, p), table = el("table", "grid-t"), head = el("tr");
      head.appendChild(el("th", "", ""));
      for (var t = 0; t < z.tp; t++) head.appendChild(el("th", "", "TP " + t));
      table.appendChild(head);
      for (var e = 0; e < z.ep; e++) {
        var tr = el("tr");
        tr.appendChild(el("th", "", z.ep > 1 ? "EP " + e : ""));
        for (t = 0; t < z.tp; t++) {
          var f = byPos[p + "/" + e + "/" + t], td = el("td");
          if (f) {
            var cell = el("div", "folder" + (f.bytes ? "" : " idle"));
            cell.dataset.folder = f.folder; cell.dataset.tp = f.tp; cell.dataset.pp = f.pp; cell.dataset.ep = f.ep;
            cell.dataset.bytes = f.bytes; cell.dataset.layers = JSON.stringify(f.layers);
            cell.dataset.experts = JSON.stringify(f.experts);
            cell.dataset.files = JSON.stringify(f.files.map(function (i) { return D.files[i].name; }));
            cell.appendChild(el("b", "", f.folder));
            cell.appendChild(el("div", "muted", human(f.bytes) + " in " + f.files.length + " file" + (f.files.length === 1 ? "" : "s")));
            var all = [].concat.apply([], f.layers).sort(function (a, b) { return a - b; });
            cell.appendChild(el("div", "muted", "layers " + (all.length ? ranges(all) : "none") +
                (f.layers.length > 1 ? " in " + f.layers.length + " virtual stages" : "")));
            if (f.experts.length) cell.appendChild(el("div", "muted", "experts " + ranges(f.experts)));
            td.appendChild(cell);
          }
          tr.appendChild(td);
        }
        table.appendChild(tr);
      }
      block.appendChild(table);
      wrap.appendChild(block);
    }
    parent.appendChild(wrap);
  }

  function drawGrid(parent, G) {
    if (G.legacy) return drawLegacyGrid(parent, G);
    var z = G.sizes, byPos = {};
    G.ranks.forEach(function (r) { byPos[r.pp + "/" + r.dp + "/" + r.cp + "/" + r.tp] = r; });
    var wrap = el("div", "grid");
    wrap.appendChild(el("div", "muted", "ranks by pipeline stage (blocks), tensor" + (z.cp > 1 ? " and context" : "") +
        " parallel rank (columns) and data-parallel replica (rows)" + (z.ep > 1 ? "; experts: EP " + z.ep + " x ETP " + z.etp : "")));
    for (var p = 0; p < z.pp; p++) {
      var block = stageBlock(G, p), table = el("table", "grid-t"), head = el("tr");
      head.appendChild(el("th", "", ""));
      for (var c = 0; c < z.cp; c++) for (var t = 0; t < z.tp; t++) head.appendChild(el("th", "", (z.cp > 1 ? "CP " + c + " " : "") + "TP " + t));
      table.appendChild(head);
      for (var d = 0; d < z.dp; d++) {
        var tr = el("tr");
        tr.appendChild(el("th", "", "DP " + d));
        for (c = 0; c < z.cp; c++) for (t = 0; t < z.tp; t++) {
          var r = byPos[p + "/" + d + "/" + c + "/" + t], td = el("td");
          if (r) {
            var cell = el("div", "rank" + (r.bytes ? "" : " idle"));
            cell.dataset.rank = r.rank; cell.dataset.tp = r.tp; cell.dataset.cp = r.cp; cell.dataset.dp = r.dp;
            cell.dataset.pp = r.pp; cell.dataset.ep = r.ep; cell.dataset.etp = r.etp; cell.dataset.bytes = r.bytes;
            cell.dataset.files = JSON.stringify(r.files.map(function (i) { return D.files[i].name; }));
            cell.style.borderColor = PALETTE[r.rank % PALETTE.length];
            cell.appendChild(el("b", "", "rank " + r.rank));
            cell.appendChild(el("div", "muted", r.bytes ? human(r.bytes) + " in " + r.files.length + " file" + (r.files.length === 1 ? "" : "s")
                                                         : "wrote nothing (its replicas did)"));
            if (z.ep > 1) cell.appendChild(el("div", "muted", "EP " + r.ep + " ETP " + r.etp));
            td.appendChild(cell);
          }
          tr.appendChild(td);
        }
        table.appendChild(tr);
      }
      var foot = el("tr");
      foot.appendChild(el("th", "", "written by"));
      for (c = 0; c < z.cp; c++) for (t = 0; t < z.tp; t++) {
        var writers = [];
        for (d = 0; d < z.dp; d++) {
          var w = byPos[p + "/" + d + "/" + c + "/" + t];
          if (w && w.bytes) writers.push(w.rank);
        }
        var ftd = el("td", "writers", writers.length ? "rank" + (writers.length > 1 ? "s " : " ") + writers.join(", ") : "nobody");
        ftd.dataset.writers = JSON.stringify(writers);
        foot.appendChild(ftd);
      }
      table.appendChild(foot);
      block.appendChild(table);
      wrap.appendChild(block);
    }
    parent.appendChild(wrap);
  }

  // Files, by group (rank), bars by bytes.
  var largest = 1;
  D.files.forEach(function (f) { largest = Math.max(largest, f.bytes); });
  var filesDiv = document.getElementById("files"), lastGroup = null;
  D.files.forEach(function (f, i) {
    if (f.group !== lastGroup) { filesDiv.appendChild(el("div", "group-h", f.group)); lastGroup = f.group; }
    var row = el("div", "file" + (badFiles[f.name] ? " bad" : ""));
    row.dataset.file = f.name; row.dataset.bytes = f.bytes; row.dataset.rank = f.rank; row.id = "file-" + i;
    if (f.missing) row.dataset.missing = "1";
    row.appendChild(el("span", "name", f.name));
    var bar = el("div", "bar");
    bar.style.width = (100 * f.bytes / largest).toFixed(2) + "%";
    bar.style.background = colour(f);
    var cell = el("div"); cell.appendChild(bar); row.appendChild(cell);
    row.appendChild(el("span", "muted", f.missing ? "missing" : human(f.bytes)));
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
      var hs = c.g !== undefined && D.holders ? D.holders[c.g] : null;
      if (hs) {
        g.setAttribute("data-holders", JSON.stringify(hs));
        tip.textContent += "\nheld by rank" + (hs.length > 1 ? "s " : " ") + hs.join(", ") +
            (hs.length > 1 ? " (replicas; written once, by rank " + f.rank + ")" : "");
      }
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

LayoutMapBuilder::LayoutMapBuilder(const nlohmann::json& doc) {
  const nlohmann::json& details = doc.contains("details") ? doc["details"] : nlohmann::json::object();
  nlohmann::json& data = head_;
  data["path"] = doc.value("path", "");
  data["format"] = doc.value("format", "");
  std::vector<LayoutFile> files = LayoutFiles(doc);
  data["files"] = nlohmann::json::array();
  for (const LayoutFile& f : files) {
    index_.emplace(f.name, index_.size());
    data["files"].push_back({{"name", f.name}, {"bytes", f.bytes}, {"rank", f.rank}, {"writer", f.writer},
                             {"group", f.group}, {"contents", f.contents}});
    if (f.missing) data["files"].back()["missing"] = true;
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
  only_ = files.size() == 1 ? 0 : SIZE_MAX;
  data["grid"] = Grid(details, files);
  // Who holds each chunk (Megatron's replicas of it), by the rank that wrote
  // it: the groups of every sharing, one table; chunks index it (Tensor).
  const nlohmann::json& grid = data["grid"];
  if (grid.is_object() && grid.contains("ranks") && grid.contains("sizes")) {
    const model::ParallelLayout l = LayoutOf(grid["sizes"]);
    nlohmann::json table = nlohmann::json::array();
    bool ok = true;
    for (size_t s = 0; s < std::size(holder_of_) && ok; ++s) {
      Result<model::ChunkHolderGroups> h = model::ChunkHolders(l, static_cast<model::ChunkSharing>(s));
      ok = h.ok();
      if (!ok) break;
      const int64_t base = static_cast<int64_t>(table.size());
      for (const std::vector<int64_t>& g : h->groups) table.push_back(g);
      for (int64_t g : h->group_of_rank) holder_of_[s].push_back(base + g);
    }
    if (ok) {
      data["holders"] = std::move(table);
      for (const LayoutFile& f : files) file_rank_.push_back(f.rank);
    } else {
      for (auto& h : holder_of_) h.clear();
    }
  }
  size_t tensor_count = 0;
  uint64_t tensor_bytes = 0;
  TensorTotals(doc, &tensor_count, &tensor_bytes);
  data["tensor_bytes"] = tensor_bytes;
}

nlohmann::json LayoutMapBuilder::Tensor(const nlohmann::json& t) const {
  // The file a tensor without chunk records lives in: the one it names, else
  // the single file LayoutFiles made of the checkpoint.
  auto file_of = [&](const std::string& name) -> int64_t {
    auto it = index_.find(name);
    if (it != index_.end()) return static_cast<int64_t>(it->second);
    return only_ == SIZE_MAX ? -1 : static_cast<int64_t>(only_);
  };
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
  out["chunks"] = nlohmann::json::array();
  if (t.contains("chunk_list") && t["chunk_list"].is_array() && !t["chunk_list"].empty()) {
    for (const auto& c : t["chunk_list"]) {
      out["chunks"].push_back({{"o", c.contains("offsets") ? c["offsets"] : nlohmann::json::array()},
                               {"s", c.contains("sizes") ? c["sizes"] : nlohmann::json::array()},
                               {"f", file_of(c.value("file", ""))}});
    }
    std::optional<model::ChunkSharing> sharing;
    if (!holder_of_[0].empty()) {
      std::vector<model::ChunkExtent> extents;
      for (const nlohmann::json& c : out["chunks"]) {
        extents.push_back({c["o"].get<std::vector<int64_t>>(), c["s"].get<std::vector<int64_t>>()});
      }
      sharing = model::TensorSharing(key, extents);
    }
    if (sharing) {
      const std::vector<int64_t>& group_of = holder_of_[static_cast<size_t>(*sharing)];
      for (nlohmann::json& c : out["chunks"]) {
        const int64_t f = c["f"].get<int64_t>();
        const int64_t rank = f >= 0 && static_cast<size_t>(f) < file_rank_.size() ? file_rank_[static_cast<size_t>(f)] : -1;
        if (rank >= 0 && static_cast<size_t>(rank) < group_of.size()) c["g"] = group_of[static_cast<size_t>(rank)];
      }
    }
  } else {
    nlohmann::json zeros = nlohmann::json::array();
    for (size_t i = 0; i < out["shape"].size(); ++i) zeros.push_back(0);
    out["chunks"].push_back({{"o", zeros}, {"s", out["shape"]}, {"f", file_of(t.value("file", ""))}});
  }
  return out;
}

nlohmann::json LayoutMapData(const nlohmann::json& doc) {
  LayoutMapBuilder map(doc);
  nlohmann::json data = map.head();
  data["tensors"] = nlohmann::json::array();
  if (doc.contains("tensors")) {
    for (const auto& t : doc["tensors"]) data["tensors"].push_back(map.Tensor(t));
  }
  return data;
}

namespace {

std::string Dump(const nlohmann::json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

// JSON inside <script>: "</" would end the element early ("</script>" in a
// key), "<!--" would open a comment; "<\/" and "\u003c!--" are the same
// strings to JSON.parse. Pieces are whole JSON values or punctuation, so no
// "</" straddles two of them.
std::string ScriptSafe(std::string_view json) {
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
  return safe;
}

}  // namespace

Status WriteLayoutData(const nlohmann::json& head, size_t count, const std::function<nlohmann::json(size_t)>& tensor,
                       bool html, const std::function<Status(std::string_view)>& out) {
  nlohmann::json top = head;
  top["tensors"] = nullptr;
  // "tensors" sorts last of the map's keys: the text ends with it.
  std::string text = Dump(top);
  constexpr std::string_view kTail = "\"tensors\":null}";
  if (text.size() < kTail.size() || text.compare(text.size() - kTail.size(), kTail.size(), kTail) != 0) {
    return InternalError("layout map: \"tensors\" is not the data's last key");
  }
  text.resize(text.size() - kTail.size() + std::string_view("\"tensors\":").size());
  std::string_view page(kPage);
  const size_t at = page.find("@DATA@");
  if (html) CKPT_RETURN_IF_ERROR(out(page.substr(0, at)));
  CKPT_RETURN_IF_ERROR(html ? out(ScriptSafe(text)) : out(text));
  std::string piece;
  for (size_t i = 0; i < count; ++i) {
    piece.assign(i == 0 ? "[" : ",");
    piece += Dump(tensor(i));
    CKPT_RETURN_IF_ERROR(html ? out(ScriptSafe(piece)) : out(piece));
  }
  CKPT_RETURN_IF_ERROR(out(count == 0 ? "[]}" : "]}"));
  if (html) CKPT_RETURN_IF_ERROR(out(page.substr(at + 6)));
  return OkStatus();
}

std::string LayoutHtml(const nlohmann::json& data) {
  nlohmann::json head = data;
  head.erase("tensors");
  const nlohmann::json empty = nlohmann::json::array();
  const nlohmann::json& tensors = data.contains("tensors") && data["tensors"].is_array() ? data["tensors"] : empty;
  std::string page;
  Status st = WriteLayoutData(
      head, tensors.size(), [&](size_t i) { return tensors[i]; }, /*html=*/true,
      [&](std::string_view s) {
        page.append(s);
        return OkStatus();
      });
  (void)st;  // appending to a string cannot fail
  return page;
}

}  // namespace ckpt::cli
