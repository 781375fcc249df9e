// Megatron key names: ShardedObject unique keys, classification, per-file contents.
#include <algorithm>
#include <charconv>
#include <set>
#include <string>
#include <tuple>

#include <fmt/ranges.h>

#include "format/megatron/internal.h"
#include "format/megatron/megatron.h"
#include "util/checked_math.h"
#include "util/strings.h"

namespace ckpt::megatron {
namespace internal_megatron {

bool StartsWith(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.compare(0, p.size(), p) == 0;
}
bool EndsWith(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

std::optional<int64_t> ParseDecimal(std::string_view s) {
  if (s.empty()) return std::nullopt;
  bool neg = false;
  if (s[0] == '+' || s[0] == '-') {
    neg = s[0] == '-';
    s.remove_prefix(1);
  }
  if (s.empty() || s[0] < '0' || s[0] > '9') return std::nullopt;
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  if (!neg) {
    if (v > uint64_t{INT64_MAX}) return std::nullopt;
    return static_cast<int64_t>(v);
  }
  if (v > uint64_t{INT64_MAX} + 1) return std::nullopt;
  return v == uint64_t{INT64_MAX} + 1 ? INT64_MIN : -static_cast<int64_t>(v);
}

std::string_view StripChainedPrefix(std::string_view key) {
  // ChainedOptimizer without chained_optim_avoid_prefix: "chained_<n>.".
  if (!StartsWith(key, "chained_")) return key;
  size_t i = 8;
  size_t start = i;
  while (i < key.size() && key[i] >= '0' && key[i] <= '9') ++i;
  if (i == start || i >= key.size() || key[i] != '.') return key;
  return key.substr(i + 1);
}

std::string_view ModelKeyOfOptimizerKey(std::string_view key) {
  key = StripChainedPrefix(key);
  constexpr std::string_view kState = "optimizer.state.";
  if (!StartsWith(key, kState)) return {};
  std::string_view rest = key.substr(kState.size());
  size_t dot = rest.find('.');
  if (dot == std::string_view::npos) return {};
  return rest.substr(dot + 1);
}

}  // namespace internal_megatron

using namespace internal_megatron;  // NOLINT

std::optional<int64_t> PerLayerIndex(std::string_view key, std::string_view prefix,
                                     std::string_view* rest) {
  if (!StartsWith(key, prefix)) return std::nullopt;
  std::string_view tail = key.substr(prefix.size());
  size_t i = 0;
  while (i < tail.size() && tail[i] >= '0' && tail[i] <= '9') ++i;
  if (i == 0 || i > 18 || i >= tail.size() || tail[i] != '.') return std::nullopt;
  if (rest != nullptr) *rest = tail.substr(i + 1);
  return ParseDecimal(tail.substr(0, i));
}

std::optional<ShardedObjectKey> ParseShardedObjectKey(std::string_view unique_key) {
  // ShardedObject.empty_from_unique_key: key, shard_key = unique_key.split("/");
  // shard_str, offset, shape = shard_key.split("_"); ints split on '.'.
  size_t slash = unique_key.find('/');
  if (slash == std::string_view::npos || unique_key.find('/', slash + 1) != std::string_view::npos) {
    return std::nullopt;
  }
  std::string_view shard = unique_key.substr(slash + 1);
  size_t u1 = shard.find('_');
  if (u1 == std::string_view::npos) return std::nullopt;
  size_t u2 = shard.find('_', u1 + 1);
  if (u2 == std::string_view::npos || shard.find('_', u2 + 1) != std::string_view::npos) {
    return std::nullopt;
  }
  if (shard.substr(0, u1) != "shard") return std::nullopt;
  auto parse_list = [](std::string_view s, std::vector<int64_t>* out) {
    // "".split(".") == [""] and int("") fails: an empty list is not accepted.
    while (true) {
      size_t dot = s.find('.');
      std::optional<int64_t> v = ParseDecimal(s.substr(0, dot));
      if (!v.has_value() || out->size() >= 64) return false;
      out->push_back(*v);
      if (dot == std::string_view::npos) return true;
      s.remove_prefix(dot + 1);
    }
  };
  ShardedObjectKey k;
  k.key = std::string(unique_key.substr(0, slash));
  if (!parse_list(shard.substr(u1 + 1, u2 - u1 - 1), &k.offset)) return std::nullopt;
  if (!parse_list(shard.substr(u2 + 1), &k.shape)) return std::nullopt;
  if (k.shape.size() + 1 == k.offset.size()) k.shape.push_back(-1);  // older writers
  return k;
}

std::string ShardedObjectKeyString(const ShardedObjectKey& k) {
  return StrCat(k.key, "/shard_", Join(k.offset, "."), "_", Join(k.shape, "."));
}

std::string_view KeyKindName(KeyKind k) {
  static constexpr std::string_view kNames[] = {
      "model",       "optimizer state", "fp32 main params", "extra state", "rng state",
      "rerun state", "common state",    "sharded object",   "other"};
  static_assert(std::size(kNames) == kKeyKindCount);
  int i = static_cast<int>(k);
  if (i < 0 || i >= kKeyKindCount) return "?";
  return kNames[i];
}

KeyKind Classify(std::string_view key, bool is_bytes) {
  std::optional<ShardedObjectKey> so;
  std::string_view base = key;
  if (is_bytes) {
    so = ParseShardedObjectKey(key);
    if (so.has_value()) base = std::string_view(key).substr(0, so->key.size());
    if (so.has_value() && base == "common_state") return KeyKind::kCommonState;
  }
  std::string_view b = StripChainedPrefix(base);
  if (StartsWith(b, "optimizer.")) {
    if (StartsWith(b, "optimizer.state.fp32_param.") || StartsWith(b, "optimizer.state.param.")) {
      return KeyKind::kOptimizerParam;
    }
    // dp_reshardable / fully_sharded_bucket_space bucket tensors: "...bucket_idx_<b>.param".
    if (!is_bytes && b.find(".bucket_idx_") != std::string_view::npos && EndsWith(b, ".param")) {
      return KeyKind::kOptimizerParam;
    }
    return KeyKind::kOptimizerState;
  }
  if (b == "rng_state" || EndsWith(b, "rng_state")) return KeyKind::kRngState;
  if (b == "rerun_state_machine_state" || EndsWith(b, ".rerun_state_machine_state")) {
    return KeyKind::kRerunState;
  }
  if (b == "_extra_state" || EndsWith(b, "._extra_state")) return KeyKind::kExtraState;
  if (is_bytes) return so.has_value() ? KeyKind::kShardedObject : KeyKind::kOther;
  return KeyKind::kModel;
}

std::string RangesString(const std::vector<int64_t>& v) {
  std::string out;
  size_t i = 0;
  while (i < v.size()) {
    size_t j = i;
    while (j + 1 < v.size() && v[j] != INT64_MAX && v[j + 1] == v[j] + 1) ++j;
    if (!out.empty()) out += ",";
    out += j == i ? StrCat(v[i]) : StrCat(v[i], "-", v[j]);
    i = j + 1;
  }
  return out;
}

std::string internal_megatron::HumanBytes(uint64_t n) {
  if (n < 1024) return StrCat(n, " B");
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double d = static_cast<double>(n);
  int u = -1;
  while (d >= 1024 && u + 1 < 6) {
    d /= 1024;
    ++u;
  }
  return fmt::format("{:.1f} {}", d, kUnits[u]);
}

namespace {

// The model group of a model key and the layers its chunk covers.
struct GroupRef {
  std::string label;
  int64_t layer_begin = -1, layer_end = -1;  // [begin, end) or -1
};

GroupRef ModelGroup(std::string_view key, const dcp::Entry* e, const dcp::Chunk* c) {
  GroupRef g;
  std::string_view rest;
  if (auto i = PerLayerIndex(key, "decoder.layers.", &rest)) {
    g.label = "decoder layers";
    g.layer_begin = *i;
    g.layer_end = *i + 1;
    return g;
  }
  if (StartsWith(key, "decoder.layers.")) {
    g.label = "decoder layers";
    if (c != nullptr && !c->offsets.empty() && !c->sizes.empty() && c->sizes[0] > 0 &&
        c->offsets[0] >= 0 && c->sizes[0] <= 1 << 20 && c->offsets[0] <= INT64_MAX - c->sizes[0]) {
      g.layer_begin = c->offsets[0];
      g.layer_end = c->offsets[0] + c->sizes[0];
    }
    return g;
  }
  if (auto i = PerLayerIndex(key, "mtp.layers.", &rest)) {
    g.label = "mtp layers";
    g.layer_begin = *i;
    g.layer_end = *i + 1;
    return g;
  }
  size_t dot = key.find('.');
  if (StartsWith(key, "decoder.") && dot != std::string_view::npos) {
    size_t dot2 = key.find('.', dot + 1);
    g.label = std::string(key.substr(0, dot2));
  } else {
    g.label = std::string(key.substr(0, dot));
  }
  if (dot == std::string_view::npos || g.label.empty()) g.label = std::string(key);
  return g;
}

struct Group {
  std::string label;
  std::set<int64_t> layers;
  std::vector<std::string> sub_order;  // for optimizer groups: model groups covered
  std::map<std::string, std::set<int64_t>> sub_layers;
  int64_t count = 0;
};

std::string LayersText(const std::set<int64_t>& s) {
  return RangesString(std::vector<int64_t>(s.begin(), s.end()));
}

struct FileAcc {
  FileContents fc;
  std::vector<Group> groups;
  std::map<std::string, size_t> index;
  Group& Get(const std::string& label) {
    auto it = index.find(label);
    if (it != index.end()) return groups[it->second];
    index.emplace(label, groups.size());
    groups.push_back(Group{label, {}, {}, {}, 0});
    return groups.back();
  }
};

void AddRange(std::set<int64_t>* s, int64_t b, int64_t e) {
  // Chunk sizes along the layer axis are 1 in Megatron; cap what one item adds.
  for (int64_t i = b; i < e && i - b < 4096; ++i) s->insert(i);
}

std::string GroupText(const Group& g) {
  std::string t = g.label;
  if (!g.layers.empty()) t += " " + LayersText(g.layers);
  if (!g.sub_order.empty()) {
    std::vector<std::string> parts;
    for (const std::string& s : g.sub_order) {
      const auto& ls = g.sub_layers.at(s);
      parts.push_back(ls.empty() ? s : StrCat(s, " ", LayersText(ls)));
    }
    t += StrCat(" (", Join(parts, ", "), ")");
  } else if (g.layers.empty() && g.count > 1) {
    t += StrCat(" (", g.count, ")");
  }
  return t;
}

}  // namespace

std::vector<FileContents> DescribeFiles(const dcp::Metadata& md) {
  // item -> (entry, chunk)
  std::vector<std::pair<const dcp::Entry*, const dcp::Chunk*>> owner(md.items.size(), {nullptr, nullptr});
  for (const dcp::Entry& e : md.entries) {
    if (e.type == dcp::EntryType::kBytes) {
      if (e.item >= 0 && static_cast<size_t>(e.item) < owner.size()) owner[e.item] = {&e, nullptr};
      continue;
    }
    for (const dcp::Chunk& c : e.chunks) {
      if (c.item >= 0 && static_cast<size_t>(c.item) < owner.size()) owner[c.item] = {&e, &c};
    }
  }
  std::map<std::string_view, FileAcc> files;  // views into the metadata
  for (size_t i = 0; i < md.items.size(); ++i) {
    const dcp::StorageItem& it = md.items[i];
    FileAcc& acc = files[it.relative_path];
    FileContents& fc = acc.fc;
    fc.items++;
    auto sum = CheckedAdd(fc.bytes, it.length);
    fc.bytes = sum.value_or(UINT64_MAX);
    const dcp::Entry* e = owner[i].first;
    if (e == nullptr && it.entry >= 0 && static_cast<size_t>(it.entry) < md.entries.size()) {
      e = &md.entries[it.entry];
    }
    if (e == nullptr) {
      fc.items_by_kind[KeyKind::kOther]++;
      acc.Get("unreferenced items").count++;
      continue;
    }
    bool is_bytes = e->type == dcp::EntryType::kBytes;
    (is_bytes ? fc.bytes_items : fc.tensor_chunks)++;
    KeyKind kind = Classify(e->key, is_bytes);
    fc.items_by_kind[kind]++;
    const dcp::Chunk* c = owner[i].second;
    switch (kind) {
      case KeyKind::kModel: {
        GroupRef g = ModelGroup(e->key, e, c);
        Group& grp = acc.Get(g.label);
        grp.count++;
        if (g.layer_begin >= 0) AddRange(&grp.layers, g.layer_begin, g.layer_end);
        break;
      }
      case KeyKind::kOptimizerState:
      case KeyKind::kOptimizerParam: {
        Group& grp = acc.Get(kind == KeyKind::kOptimizerParam ? "fp32 main params" : "optimizer state");
        grp.count++;
        std::string_view mk = ModelKeyOfOptimizerKey(e->key);
        std::string sub;
        GroupRef g;
        if (!mk.empty() && !is_bytes) {
          g = ModelGroup(mk, e, c);
          sub = g.label;
        } else if (StripChainedPrefix(e->key).find(".bucket_idx_") != std::string_view::npos) {
          sub = "grad-buffer buckets";
        } else if (StartsWith(StripChainedPrefix(e->key), "optimizer.distributed.")) {
          sub = is_bytes ? "distributed optimizer objects" : "distributed optimizer tensors";
        } else {
          sub = "other";
        }
        if (!grp.sub_layers.count(sub)) {
          grp.sub_order.push_back(sub);
          grp.sub_layers[sub];
        }
        if (g.layer_begin >= 0) AddRange(&grp.sub_layers[sub], g.layer_begin, g.layer_end);
        break;
      }
      case KeyKind::kExtraState: {
        Group& grp = acc.Get("TE extra state");
        grp.count++;
        auto so = ParseShardedObjectKey(e->key);
        if (so.has_value() && StartsWith(so->key, "decoder.layers.")) {
          std::string_view rest;
          if (auto li = PerLayerIndex(so->key, "decoder.layers.", &rest)) {
            grp.layers.insert(*li);
          } else if (!so->offset.empty() && so->offset[0] >= 0) {
            grp.layers.insert(so->offset[0]);
          }
        }
        break;
      }
      case KeyKind::kRngState:
      case KeyKind::kRerunState:
      case KeyKind::kCommonState:
      case KeyKind::kShardedObject:
      case KeyKind::kOther: {
        auto so = is_bytes ? ParseShardedObjectKey(e->key) : std::nullopt;
        std::string label;
        if (kind == KeyKind::kRngState) {
          label = "rng state";
        } else if (kind == KeyKind::kRerunState) {
          label = "rerun state";
        } else if (kind == KeyKind::kCommonState) {
          label = "common state";
        } else {
          label = so.has_value() ? so->key : e->key;
        }
        Group& grp = acc.Get(label);
        grp.count++;
        if (so.has_value() && (kind == KeyKind::kRngState || kind == KeyKind::kRerunState)) {
          // rng_state: (pp_rank, tp_rank[, dp]); rerun: (global rank,).
          std::string coord = StrCat(Join(so->offset, "."));
          if (!grp.sub_layers.count(coord)) {
            grp.sub_order.push_back(coord);
            grp.sub_layers[coord];
          }
        }
        break;
      }
    }
  }

  std::vector<FileContents> out;
  for (auto& [name, acc] : files) {
    FileContents fc = std::move(acc.fc);
    fc.file = name;
    // "<prefix>__X_Y.distcp" (separation hint) or "__X_Y.distcp".
    size_t pos = name.rfind("__");
    if (pos != std::string::npos) {
      int64_t r = 0, w = 0;
      if (dcp::ParseDataFileName(std::string_view(name).substr(pos), &r, &w)) {
        fc.rank = r;
        fc.writer = w;
        fc.prefix = name.substr(0, pos);
      }
    }
    // Canonical order: model groups in module order, then the rest.
    auto order = [](const std::string& label) {
      static constexpr std::string_view kOrder[] = {
          "embedding", "decoder layers", "mtp layers", "", "decoder.final_layernorm", "output_layer",
          "TE extra state", "fp32 main params", "optimizer state", "rng state", "rerun state",
          "common state"};
      for (size_t i = 0; i < std::size(kOrder); ++i) {
        if (label == kOrder[i]) return static_cast<int>(i);
      }
      return 3;  // other model groups / sharded objects: between layers and final norm
    };
    std::stable_sort(acc.groups.begin(), acc.groups.end(),
                     [&](const Group& x, const Group& y) { return order(x.label) < order(y.label); });
    for (const Group& g : acc.groups) {
      std::string t = GroupText(g);
      if (g.label == "rng state" || g.label == "rerun state") {
        // GroupText put coordinates in parentheses; make it read as shard coordinates.
        t = g.label;
        if (!g.sub_order.empty()) t += StrCat(" [", Join(g.sub_order, ", "), "]");
      }
      fc.groups.push_back(std::move(t));
    }
    std::string head = fc.file;
    if (fc.rank.has_value()) {
      head += StrCat(": rank ", *fc.rank, ", file ", *fc.writer);
      if (!fc.prefix.empty()) head += StrCat(" (prefix ", Quote(fc.prefix), ")");
    }
    fc.text = StrCat(head, ": ", fc.items, fc.items == 1 ? " item" : " items", " (",
                     fc.tensor_chunks, fc.tensor_chunks == 1 ? " tensor chunk, " : " tensor chunks, ",
                     fc.bytes_items, fc.bytes_items == 1 ? " object), " : " objects), ",
                     HumanBytes(fc.bytes), ": ", Join(fc.groups, "; "));
    out.push_back(std::move(fc));
  }
  std::sort(out.begin(), out.end(), [](const FileContents& a, const FileContents& b) {
    auto key = [](const FileContents& f) {
      return std::make_tuple(!f.rank.has_value(), f.prefix, f.rank.value_or(0), f.writer.value_or(0),
                             std::cref(f.file));
    };
    return key(a) < key(b);
  });
  return out;
}

}  // namespace ckpt::megatron
