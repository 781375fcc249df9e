// Megatron-LM legacy checkpoints: rank folders, model_optim_rng.pt, distrib_optim.pt.
#include "format/megatron/legacy.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>
#include <unordered_map>

#include "util/strings.h"

namespace ckpt::megatron::legacy {
namespace {

using pickle::Kind;
using pickle::Value;

// Parses `s` as a run of decimal digits of at least `width` characters,
// formatted as Python's '{:0<width>d}' would print its value (so no extra
// leading zeros). At most 18 digits (fits int64).
std::optional<int64_t> ParseWidthInt(std::string_view s, size_t width) {
  if (s.size() < width || s.size() > 18) return std::nullopt;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  if (fmt::format("{:0{}d}", v, width) != s) return std::nullopt;
  return v;
}

std::string CoordString(const RankCoord& r) { return StrCat("tp ", r.tp, ", pp ", r.pp, ", ep ", r.ep); }

// "torch.bfloat16" for the global torch.bfloat16; "" for anything else.
std::string DTypeGlobal(const Value* v) {
  if (v == nullptr || v->kind != Kind::kGlobal) return "";
  return StrCat(v->str(), ".", v->name());
}

// Maps each tensor rebuild value of `file` to its first index in tensors().
class TensorIndex {
 public:
  explicit TensorIndex(const torch::TorchFile& file) : file_(file) {
    const auto& ts = file.tensors();
    for (size_t i = 0; i < ts.size(); ++i) index_.emplace(ts[i].value, i);
  }
  // nullopt unless v is a tensor of the file.
  std::optional<TensorRef> Ref(const Value* v) const {
    auto it = index_.find(v);
    if (it == index_.end()) return std::nullopt;
    return RefAt(it->second);
  }
  TensorRef RefAt(size_t i) const {
    const torch::TensorRecord& t = file_.tensors()[i];
    return TensorRef{i, t.key, t.dtype, t.shape, t.numel};
  }

 private:
  const torch::TorchFile& file_;
  std::unordered_map<const Value*, size_t> index_;
};

std::optional<int64_t> IntOf(const Value* v) {
  if (v != nullptr && v->kind == Kind::kInt) return v->i;
  return std::nullopt;
}

// A list (or tuple) of ints >= 0; nullopt otherwise.
std::optional<std::vector<int64_t>> IntList(const Value* v) {
  if (v == nullptr || (v->kind != Kind::kList && v->kind != Kind::kTuple)) return std::nullopt;
  std::vector<int64_t> out;
  for (const Value* x : v->items()) {
    auto i = IntOf(x);
    if (!i || *i < 0) return std::nullopt;
    out.push_back(*i);
  }
  return out;
}

class DistribOptimParser {
 public:
  DistribOptimParser(const torch::TorchFile& file, std::string_view name, DistribOptim* out)
      : tensors_(file), name_(name), out_(out) {}

  // `where`: "" for a single optimizer, "optimizer 1: " in a chained list.
  Result<DistribOptimState> ParseOne(const Value* d, const std::string& where) {
    DistribOptimState st;
    std::optional<bool> coalesced;
    const Value* per_bucket = nullptr;
    const Value* per_bucket_unpadded = nullptr;
    std::map<int64_t, const Value*> buffers;
    for (const auto& [k, v] : d->dict()) {
      if (k->kind == Kind::kString) {
        if (k->str() == "buckets_coalesced") {
          if (v->kind != Kind::kBool) return Err(where, "buckets_coalesced is not a bool: ", pickle::Repr(v, 40));
          coalesced = v->i != 0;
        } else if (k->str() == "per_bucket_numel") {
          per_bucket = v;
        } else if (k->str() == "per_bucket_numel_unpadded") {
          per_bucket_unpadded = v;
        } else {
          return Err(where, "unknown key ", Quote(k->str()),
                     " (expected buckets_coalesced, per_bucket_numel[_unpadded] and buffer indices)");
        }
      } else if (k->kind == Kind::kInt) {
        if (k->i < 0 || !buffers.emplace(k->i, v).second) {
          return Err(where, "buffer index ", k->i, " is negative or repeated");
        }
      } else {
        return Err(where, "key ", pickle::Repr(k, 60), " is neither a buffer index nor a known name");
      }
    }
    int64_t expect = 0;
    for (const auto& [i, v] : buffers) {
      if (i != expect) return Err(where, "buffer indices are not 0..", buffers.size() - 1, ": ", i, " follows ", expect - 1);
      ++expect;
    }
    if (coalesced && !*coalesced) return Err(where, "buckets_coalesced is False (Megatron writes True or omits it)");
    const bool is_c = coalesced.value_or(false);
    for (const auto& [i, v] : buffers) {
      CKPT_ASSIGN_OR_RETURN(Buffer b, ParseBuffer(i, v, is_c, where));
      st.buffers.push_back(std::move(b));
    }
    if (is_c) {
      st.format = DistribOptimFormat::kCoalesced;
      if (per_bucket || per_bucket_unpadded) {
        return Err(where, "per_bucket_numel keys beside buckets_coalesced (Megatron writes one or the other)");
      }
    } else {
      bool tuple_keys = !st.buffers.empty() && !st.buffers[0].dtype_key.empty() && st.buffers[0].dtype_key[0] == '(';
      for (const Buffer& b : st.buffers) {
        if ((!b.dtype_key.empty() && b.dtype_key[0] == '(') != tuple_keys) {
          return Err(where, "buffers mix (param_dtype, grad_dtype) and single dtype keys");
        }
      }
      st.format = tuple_keys ? DistribOptimFormat::kPerBucket : DistribOptimFormat::kPerBucketLegacy;
      CKPT_RETURN_IF_ERROR(ApplyPerBucket(per_bucket, "per_bucket_numel", where, &st, false));
      CKPT_RETURN_IF_ERROR(ApplyPerBucket(per_bucket_unpadded, "per_bucket_numel_unpadded", where, &st, true));
      CheckBuckets(where, st);
    }
    return st;
  }

 private:
  template <typename... Args>
  Status Err(const std::string& where, const Args&... args) const {
    return DataLossError(StrCat(name_, ": ", where, args...));
  }
  template <typename... Args>
  void Problem(const std::string& where, const Args&... args) {
    out_->problems.push_back(StrCat(name_, ": ", where, args...));
  }

  static std::string BufferName(const Buffer& b) { return StrCat("buffer ", b.index, " ", b.dtype_key); }

  Result<Buffer> ParseBuffer(int64_t index, const Value* v, bool coalesced, const std::string& where) {
    Buffer b;
    b.index = index;
    if (v == nullptr || v->kind != Kind::kDict || v->dict().size() != 1) {
      return Err(where, "buffer ", index, ": not a dict of one dtype key ",
                 "(get_parameter_state_dp_zero asserts a single dtype): ", pickle::Repr(v, 60));
    }
    const Value* key = v->dict()[0].first;
    const Value* body = v->dict()[0].second;
    if (key->kind == Kind::kTuple && key->items().size() == 2 && !DTypeGlobal(key->items()[0]).empty() &&
        !DTypeGlobal(key->items()[1]).empty()) {
      b.param_dtype = DTypeGlobal(key->items()[0]);
      b.grad_dtype = DTypeGlobal(key->items()[1]);
      b.dtype_key = StrCat("(", b.param_dtype, ", ", b.grad_dtype, ")");
    } else if (!coalesced && !DTypeGlobal(key).empty()) {
      b.param_dtype = b.grad_dtype = DTypeGlobal(key);
      b.dtype_key = b.param_dtype;
    } else {
      return Err(where, "buffer ", index, ": dtype key ", pickle::Repr(key, 60),
                 coalesced ? " is not a (param_dtype, grad_dtype) tuple" : " is not a torch dtype or a dtype pair");
    }
    const std::string bname = BufferName(b);
    if (body == nullptr || body->kind != Kind::kDict) {
      return Err(where, bname, ": state is not a dict: ", pickle::Repr(body, 60));
    }
    for (const auto& [k, x] : body->dict()) {
      if (k->kind != Kind::kString) return Err(where, bname, ": state key ", pickle::Repr(k, 40), " is not a str");
      if (coalesced && k->str() == "numel_unpadded") {
        auto n = IntOf(x);
        if (!n || *n < 0) return Err(where, bname, ": numel_unpadded is not an int >= 0: ", pickle::Repr(x, 40));
        b.numel_unpadded = *n;
        continue;
      }
      StateTensors s;
      s.name = k->str();
      if (coalesced) {
        auto ref = tensors_.Ref(x);
        if (!ref) return Err(where, bname, ": ", k->str(), " is not a tensor: ", pickle::Repr(x, 60));
        s.tensors.push_back(std::move(*ref));
      } else {
        if (x == nullptr || x->kind != Kind::kList) {
          return Err(where, bname, ": ", k->str(), " is not a list of per-bucket tensors: ", pickle::Repr(x, 60));
        }
        for (size_t i = 0; i < x->items().size(); ++i) {
          auto ref = tensors_.Ref(x->items()[i]);
          if (!ref) {
            return Err(where, bname, ": ", k->str(), "[", i, "] is not a tensor: ", pickle::Repr(x->items()[i], 60));
          }
          s.tensors.push_back(std::move(*ref));
        }
      }
      b.states.push_back(std::move(s));
    }
    if (coalesced) {
      if (!b.numel_unpadded) return Err(where, bname, ": numel_unpadded is missing");
      for (const StateTensors& s : b.states) {
        const TensorRef& t = s.tensors[0];
        if (t.shape.size() != 1) {
          Problem(where, bname, ": ", s.name, " has shape ", fmt::format("[{}]", fmt::join(t.shape, ", ")),
                  ", not 1-D");
        } else if (t.numel != *b.numel_unpadded) {
          Problem(where, bname, ": ", s.name, " has ", t.numel, " elements, numel_unpadded says ", *b.numel_unpadded);
        }
      }
    }
    return b;
  }

  // per_bucket_numel[_unpadded]: [ {dtype_key: [ints]} per buffer ].
  Status ApplyPerBucket(const Value* v, const char* what, const std::string& where, DistribOptimState* st,
                        bool unpadded) {
    if (v == nullptr) return OkStatus();
    if (v->kind != Kind::kList || v->items().size() != st->buffers.size()) {
      return Err(where, what, " is not a list of one entry per buffer (", st->buffers.size(), "): ",
                 pickle::Repr(v, 60));
    }
    for (size_t i = 0; i < v->items().size(); ++i) {
      Buffer& b = st->buffers[i];
      const Value* e = v->items()[i];
      if (e == nullptr || e->kind != Kind::kDict || e->dict().size() != 1) {
        return Err(where, what, "[", i, "] is not a dict of one dtype key: ", pickle::Repr(e, 60));
      }
      const Value* key = e->dict()[0].first;
      std::string ks = key->kind == Kind::kTuple && key->items().size() == 2
                           ? StrCat("(", DTypeGlobal(key->items()[0]), ", ", DTypeGlobal(key->items()[1]), ")")
                           : DTypeGlobal(key);
      if (ks != b.dtype_key) {
        return Err(where, what, "[", i, "] is keyed ", pickle::Repr(key, 60), ", buffer ", i, " by ", b.dtype_key);
      }
      auto ints = IntList(e->dict()[0].second);
      if (!ints) return Err(where, what, "[", i, "] is not a list of ints >= 0: ", pickle::Repr(e->dict()[0].second, 60));
      (unpadded ? b.bucket_numel_unpadded : b.bucket_numel) = std::move(*ints);
    }
    return OkStatus();
  }

  void CheckBuckets(const std::string& where, const DistribOptimState& st) {
    for (const Buffer& b : st.buffers) {
      const std::string bname = BufferName(b);
      if (!b.bucket_numel.empty() && !b.bucket_numel_unpadded.empty()) {
        if (b.bucket_numel.size() != b.bucket_numel_unpadded.size()) {
          Problem(where, bname, ": per_bucket_numel has ", b.bucket_numel.size(),
                  " buckets, per_bucket_numel_unpadded ", b.bucket_numel_unpadded.size());
        } else {
          for (size_t i = 0; i < b.bucket_numel.size(); ++i) {
            if (b.bucket_numel_unpadded[i] > b.bucket_numel[i]) {
              Problem(where, bname, ": bucket ", i, ": numel_unpadded ", b.bucket_numel_unpadded[i],
                      " exceeds the padded numel ", b.bucket_numel[i]);
            }
          }
        }
      }
      // Each state key holds one tensor per bucket of the padded bucket length
      // (core 0.6 get_parameter_state_dp_zero concatenates each bucket's DP
      // shards, padding included); without per_bucket_numel all keys agree.
      const std::vector<int64_t>* want = b.bucket_numel.empty() ? nullptr : &b.bucket_numel;
      std::vector<int64_t> first;
      for (const StateTensors& s : b.states) {
        std::vector<int64_t> lens;
        for (const TensorRef& t : s.tensors) lens.push_back(t.numel);
        for (const TensorRef& t : s.tensors) {
          if (t.shape.size() != 1) Problem(where, bname, ": ", s.name, ": tensor ", t.key, " is not 1-D");
        }
        const std::vector<int64_t>& ref = want ? *want : (first.empty() ? lens : first);
        if (first.empty()) first = lens;
        if (lens.size() != ref.size()) {
          Problem(where, bname, ": ", s.name, " has ", lens.size(), " bucket tensors, ",
                  want ? "per_bucket_numel says " : "the first state key has ", ref.size());
          continue;
        }
        for (size_t i = 0; i < lens.size(); ++i) {
          if (lens[i] != ref[i]) {
            Problem(where, bname, ": ", s.name, " bucket ", i, " has ", lens[i], " elements, ",
                    want ? "per_bucket_numel says " : "the first state key's has ", ref[i]);
          }
        }
      }
    }
  }

  TensorIndex tensors_;
  std::string name_;
  DistribOptim* out_;
};

bool StartsWith(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

// "model" -> nullopt vpp; "model<digits>" -> v; anything else: not a chunk.
bool ModelChunkName(std::string_view k, std::optional<int64_t>* vpp) {
  if (k == "model") {
    *vpp = std::nullopt;
    return true;
  }
  if (!StartsWith(k, "model") || k.size() == 5 || k.size() > 5 + 9) return false;
  int64_t v = 0;
  for (char c : k.substr(5)) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  if (k.size() > 6 && k[5] == '0') return false;  // "model01" is not what f"model{i}" writes
  *vpp = v;
  return true;
}

}  // namespace

// ---------------------------------------------------------------------------

std::optional<RankFolderName> ParseRankFolderName(std::string_view name) {
  if (!StartsWith(name, kRankFolderPrefix)) return std::nullopt;
  std::string_view rest = name.substr(sizeof(kRankFolderPrefix) - 1);
  std::vector<std::string_view> parts;
  while (true) {
    size_t u = rest.find('_');
    parts.push_back(rest.substr(0, u));
    if (u == std::string_view::npos) break;
    rest = rest.substr(u + 1);
  }
  if (parts.size() > 3) return std::nullopt;
  RankFolderName out;
  auto tp = ParseWidthInt(parts[0], 2);
  if (!tp) return std::nullopt;
  out.tp = *tp;
  for (size_t i = 1; i < parts.size(); ++i) {
    auto v = ParseWidthInt(parts[i], 3);
    if (!v) return std::nullopt;
    out.suffixes.push_back(*v);
  }
  return out;
}

std::string RankFolder(const RankCoord& r, bool pipeline_parallel, bool expert_parallel) {
  std::string s = pipeline_parallel ? fmt::format("mp_rank_{:02d}_{:03d}", r.tp, r.pp)
                                    : fmt::format("mp_rank_{:02d}", r.tp);
  if (expert_parallel) s += fmt::format("_{:03d}", r.ep);
  return s;
}

std::optional<std::string> FindRank0Folder(const std::vector<std::string>& names) {
  // find_checkpoint_rank_0: none, EP only, PP only (same name), PP + EP.
  for (const char* c : {"mp_rank_00", "mp_rank_00_000", "mp_rank_00_000_000"}) {
    if (std::find(names.begin(), names.end(), c) != names.end()) return std::string(c);
  }
  return std::nullopt;
}

const RankEntry* RankGrid::Find(const RankCoord& r) const {
  if (r.tp < 0 || r.pp < 0 || r.ep < 0 || r.tp >= sizes.tp || r.pp >= sizes.pp || r.ep >= sizes.ep) return nullptr;
  size_t i = static_cast<size_t>(r.tp + sizes.tp * (r.ep + sizes.ep * r.pp));
  return i < ranks.size() ? &ranks[i] : nullptr;
}

Result<RankGrid> MapRankFolders(const std::vector<std::string>& names, const std::optional<GridSizes>& sizes,
                                std::string_view dir) {
  std::vector<std::string> candidates;
  for (const std::string& n : names) {
    if (StartsWith(n, kRankFolderPrefix)) candidates.push_back(n);
  }
  RankGrid g;
  if (sizes) {
    g.sizes = *sizes;
    g.sizes_source = "args";
    g.pipeline_parallel = sizes->pp > 1;
    g.expert_parallel = sizes->ep > 1;
  } else {
    // Infer: the naming scheme of rank 0 (find_checkpoint_rank_0), else the
    // most common one; sizes = largest index + 1 on each axis.
    std::map<size_t, int64_t> by_count;
    std::vector<RankFolderName> parsed;
    for (const std::string& n : candidates) {
      if (auto p = ParseRankFolderName(n)) {
        ++by_count[p->suffixes.size()];
        parsed.push_back(*p);
      }
    }
    if (parsed.empty()) {
      return NotFoundError(StrCat(dir, ": no rank folder (mp_rank_TT[_PPP][_EEE]) to infer the TP/PP/EP grid from"));
    }
    size_t scheme = 0;
    if (auto r0 = FindRank0Folder(candidates)) {
      scheme = ParseRankFolderName(*r0)->suffixes.size();
    } else {
      int64_t best = -1;
      for (const auto& [c, n] : by_count) {
        if (n > best) best = n, scheme = c;
      }
    }
    g.sizes_source = "folders";
    g.pipeline_parallel = scheme >= 1;
    g.expert_parallel = scheme == 2;
    g.suffix_ambiguous = scheme == 1;
    GridSizes s;
    for (const RankFolderName& p : parsed) {
      if (p.suffixes.size() != scheme) continue;
      s.tp = std::max(s.tp, p.tp + 1);
      if (scheme >= 1) s.pp = std::max(s.pp, p.suffixes[0] + 1);
      if (scheme == 2) s.ep = std::max(s.ep, p.suffixes[1] + 1);
    }
    g.sizes = s;
  }
  const GridSizes& s = g.sizes;
  if (s.tp < 1 || s.pp < 1 || s.ep < 1) {
    return InvalidArgumentError(StrCat(dir, ": parallel sizes must be >= 1, got TP ", s.tp, " PP ", s.pp, " EP ", s.ep));
  }
  if (s.tp > kMaxGridRanks || s.pp > kMaxGridRanks / s.tp || s.ep > kMaxGridRanks / (s.tp * s.pp)) {
    return InvalidArgumentError(StrCat(dir, ": TP ", s.tp, " x PP ", s.pp, " x EP ", s.ep, " is more than ",
                                       kMaxGridRanks, " rank folders"));
  }
  std::set<std::string> present(candidates.begin(), candidates.end());
  std::set<std::string> expected;
  for (int64_t pp = 0; pp < s.pp; ++pp) {
    for (int64_t ep = 0; ep < s.ep; ++ep) {
      for (int64_t tp = 0; tp < s.tp; ++tp) {
        RankEntry e;
        e.coord = {tp, pp, ep};
        e.folder = RankFolder(e.coord, g.pipeline_parallel, g.expert_parallel);
        e.present = present.count(e.folder) > 0;
        if (!e.present) g.missing.push_back(e.folder);
        expected.insert(e.folder);
        g.ranks.push_back(std::move(e));
      }
    }
  }
  for (const std::string& n : present) {
    if (!expected.count(n)) g.unexpected.push_back(n);
  }
  return g;
}

std::vector<std::string> GridProblems(const RankGrid& g, std::string_view dir) {
  std::vector<std::string> out;
  for (const RankEntry& e : g.ranks) {
    if (!e.present) {
      out.push_back(StrCat(dir, ": rank folder ", e.folder, " (", CoordString(e.coord), ") is missing"));
    }
  }
  for (const std::string& n : g.unexpected) {
    out.push_back(StrCat(dir, ": folder ", Quote(n), " is not a rank of the TP ", g.sizes.tp, " x PP ", g.sizes.pp,
                         " x EP ", g.sizes.ep, " grid (sizes from ", g.sizes_source, ")"));
  }
  return out;
}

// ---------------------------------------------------------------------------

std::string_view DistribOptimFormatName(DistribOptimFormat f) {
  switch (f) {
    case DistribOptimFormat::kCoalesced: return "C (buckets coalesced)";
    case DistribOptimFormat::kPerBucket: return "B (per bucket)";
    case DistribOptimFormat::kPerBucketLegacy: return "A (per bucket, single dtype key)";
  }
  return "unknown";
}

int64_t Buffer::numel() const {
  if (numel_unpadded) return *numel_unpadded;
  int64_t n = 0;
  if (!states.empty()) {
    for (const TensorRef& t : states[0].tensors) n += t.numel;
  }
  return n;
}

Result<DistribOptim> ParseDistribOptim(const torch::TorchFile& file, std::string_view name) {
  DistribOptim out;
  const Value* root = file.root();
  DistribOptimParser p(file, name, &out);
  if (root != nullptr && root->kind == Kind::kDict) {
    CKPT_ASSIGN_OR_RETURN(DistribOptimState st, p.ParseOne(root, ""));
    out.optimizers.push_back(std::move(st));
    return out;
  }
  if (root != nullptr && root->kind == Kind::kList) {
    // ChainedOptimizer.save_parameter_state: [state or None, ...].
    out.chained = true;
    for (size_t i = 0; i < root->items().size(); ++i) {
      const Value* v = root->items()[i];
      if (v == nullptr || v->kind == Kind::kNone) {
        out.optimizers.push_back(std::nullopt);
        continue;
      }
      if (v->kind != Kind::kDict) {
        return DataLossError(StrCat(name, ": optimizer ", i, ": not a dict or None: ", pickle::Repr(v, 60)));
      }
      CKPT_ASSIGN_OR_RETURN(DistribOptimState st, p.ParseOne(v, StrCat("optimizer ", i, ": ")));
      out.optimizers.push_back(std::move(st));
    }
    return out;
  }
  return DataLossError(StrCat(name, ": root is ", pickle::TypeName(root),
                              ", not a dict (DistributedOptimizer) or a list (ChainedOptimizer)"));
}

Status CheckDistribOptim(const DistribOptim& d) {
  if (d.problems.empty()) return OkStatus();
  if (d.problems.size() == 1) return DataLossError(d.problems[0]);
  return DataLossError(StrCat(d.problems[0], " (and ", d.problems.size() - 1, " more)"));
}

// ---------------------------------------------------------------------------

Result<ModelOptimRng> ParseModelOptimRng(const torch::TorchFile& file, std::string_view name) {
  const Value* root = file.root();
  if (root == nullptr || root->kind != Kind::kDict) {
    return DataLossError(StrCat(name, ": root is ", pickle::TypeName(root),
                                ", not the dict generate_state_dict writes"));
  }
  ModelOptimRng out;
  CKPT_ASSIGN_OR_RETURN(out.common, ExtractCommonState(root, name));
  TensorIndex index(file);
  const auto& ts = file.tensors();
  std::vector<bool> claimed(ts.size(), false);
  auto claim = [&](const std::string& prefix, std::vector<TensorRef>* refs) {
    for (size_t i = 0; i < ts.size(); ++i) {
      if (StartsWith(ts[i].key, prefix)) {
        claimed[i] = true;
        refs->push_back(index.RefAt(i));
      }
    }
  };
  bool plain = false;
  for (const auto& [k, v] : root->dict()) {
    if (k->kind != Kind::kString) continue;
    std::optional<int64_t> vpp;
    if (!ModelChunkName(k->str(), &vpp)) continue;
    ModelChunk c;
    c.name = k->str();
    c.vpp_rank = vpp;
    plain = plain || !vpp;
    if (v->kind != Kind::kDict) {
      out.problems.push_back(StrCat(name, ": ", c.name, " is ", pickle::TypeName(v), ", not a state dict"));
    }
    const std::string prefix = c.name + ".";
    claim(prefix, &c.tensors);
    for (const TensorRef& t : c.tensors) c.local_keys.push_back(t.key.substr(prefix.size()));
    for (const torch::ObjectRecord& o : file.objects()) {
      if (StartsWith(o.key, prefix)) ++c.other_entries;
    }
    out.chunks.push_back(std::move(c));
  }
  std::sort(out.chunks.begin(), out.chunks.end(), [](const ModelChunk& a, const ModelChunk& b) {
    return a.vpp_rank.value_or(-1) < b.vpp_rank.value_or(-1);
  });
  if (plain && out.chunks.size() > 1) {
    out.problems.push_back(StrCat(name, ": holds both `model` and `model<i>` chunks"));
  } else if (!plain) {
    for (size_t i = 0; i < out.chunks.size(); ++i) {
      if (*out.chunks[i].vpp_rank != static_cast<int64_t>(i)) {
        out.problems.push_back(StrCat(name, ": virtual pipeline chunks are not model0..model",
                                      out.chunks.size() - 1, ": ", out.chunks[i].name, " is chunk ", i));
        break;
      }
    }
  }

  auto parse_opt = [&](const Value* d, std::string prefix, const std::string& what) {
    OptimizerEntry e;
    e.value = d;
    e.key_prefix = std::move(prefix);
    if (d == nullptr || d->kind != Kind::kDict) {
      out.problems.push_back(StrCat(name, ": ", what, " is ", pickle::TypeName(d), ", not an optimizer state dict"));
      out.optimizers.push_back(std::move(e));
      return;
    }
    // Float16OptimizerWithFloat16Params / DistributedOptimizer: {optimizer: {...}, grad_scaler,
    // [fp32_from_fp16_params]}; FP32Optimizer: the torch optimizer's own {state, param_groups}.
    const Value* inner = d->Get("optimizer");
    if (inner == nullptr && d->Get("param_groups") != nullptr) inner = d;
    if (inner != nullptr && inner->kind == Kind::kDict) {
      const Value* pg = inner->Get("param_groups");
      if (pg != nullptr && pg->kind == Kind::kList) {
        e.param_groups = pg;
        e.param_group_count = static_cast<int64_t>(pg->items().size());
      } else {
        out.problems.push_back(StrCat(name, ": ", what, ": param_groups is missing or not a list"));
      }
      const Value* state = inner->Get("state");
      if (state != nullptr && state->kind == Kind::kDict) {
        e.state = state;
        e.state_entries = static_cast<int64_t>(state->dict().size());
      }
    } else {
      out.problems.push_back(StrCat(name, ": ", what, ": no optimizer dict (optimizer or param_groups)"));
    }
    const Value* gs = d->Get("grad_scaler");
    if (gs != nullptr && gs->kind != Kind::kNone) e.grad_scaler = gs;
    const Value* fp32 = d->Get("fp32_from_fp16_params");
    if (fp32 != nullptr && fp32->kind != Kind::kNone) e.fp32_from_fp16_params = fp32;
    e.distributed = inner != nullptr && e.state == nullptr && e.fp32_from_fp16_params == nullptr;
    claim(e.key_prefix, &e.tensors);
    out.optimizers.push_back(std::move(e));
  };
  if (const Value* opt = root->Get("optimizer"); opt != nullptr && opt->kind != Kind::kNone) {
    out.has_optimizer = true;
    if (opt->kind == Kind::kList) {
      out.chained_optimizer = true;  // ChainedOptimizer.state_dict with > 1 sub-optimizers
      for (size_t i = 0; i < opt->items().size(); ++i) {
        parse_opt(opt->items()[i], StrCat("optimizer.", i, "."), StrCat("optimizer[", i, "]"));
      }
    } else {
      parse_opt(opt, "optimizer.", "optimizer");
    }
  }
  for (bool c : claimed) out.other_tensors += c ? 0 : 1;
  return out;
}

}  // namespace ckpt::megatron::legacy
