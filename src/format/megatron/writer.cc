// metadata.json text, tracker text and the common state as megatron-core
// 0.16.1 / 0.19.2 write them.
#include "format/megatron/writer.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <unordered_map>

#include "format/pickle/value.h"
#include "util/strings.h"

namespace ckpt::megatron {
namespace {

using pickle::Kind;
using pickle::Value;

static_assert(kCoreVersionCount == 2, "add the new version to CoreVersionName and ParseCoreVersion");

constexpr size_t kMaxJsonDepth = 512;

// ---------------------------------------------------------------------------
// Python json.dumps

// float.__repr__: the shortest round-trip digits, fixed notation for decimal
// exponents in [-4, 16), else d[.ddd]e[+-]XX (at least two exponent digits).
std::string PyFloatRepr(double d) {
  if (std::isnan(d)) return "NaN";  // json.dumps writes NaN / Infinity (allow_nan=True)
  if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);  // "-1.2345e+02"
  bool neg = !sci.empty() && sci[0] == '-';
  if (neg) sci.erase(0, 1);
  size_t e = sci.find('e');
  std::string mant = sci.substr(0, e);
  int exp = std::atoi(sci.c_str() + e + 1);
  std::string digits;
  for (char c : mant) {
    if (c != '.') digits += c;
  }
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  std::string out = neg ? "-" : "";
  if (exp >= -4 && exp < 16) {
    if (exp < 0) {
      out += "0.";
      out.append(static_cast<size_t>(-exp - 1), '0');
      out += digits;
    } else if (static_cast<size_t>(exp) + 1 >= digits.size()) {
      out += digits;
      out.append(static_cast<size_t>(exp) + 1 - digits.size(), '0');
      out += ".0";
    } else {
      out += digits.substr(0, static_cast<size_t>(exp) + 1);
      out += '.';
      out += digits.substr(static_cast<size_t>(exp) + 1);
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) {
    out += '.';
    out += digits.substr(1);
  }
  char eb[16];
  std::snprintf(eb, sizeof(eb), "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
  out += eb;
  return out;
}

// json.encoder.py_encode_basestring_ascii.
Status AppendPyJsonString(std::string_view s, std::string* out) {
  *out += '"';
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    uint32_t cp = 0;
    size_t len = 0;
    if (c < 0x80) {
      cp = c;
      len = 1;
    } else if ((c & 0xE0) == 0xC0) {
      cp = c & 0x1F;
      len = 2;
    } else if ((c & 0xF0) == 0xE0) {
      cp = c & 0x0F;
      len = 3;
    } else if ((c & 0xF8) == 0xF0) {
      cp = c & 0x07;
      len = 4;
    } else {
      return InvalidArgumentError(StrCat("string ", Quote(s, 40), " is not UTF-8 (byte ", i, ")"));
    }
    if (i + len > s.size()) {
      return InvalidArgumentError(StrCat("string ", Quote(s, 40), " ends inside a UTF-8 sequence"));
    }
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) {
        return InvalidArgumentError(StrCat("string ", Quote(s, 40), " is not UTF-8 (byte ", i + k, ")"));
      }
      cp = (cp << 6) | (cc & 0x3F);
    }
    i += len;
    switch (cp) {
      case '"': *out += "\\\""; continue;
      case '\\': *out += "\\\\"; continue;
      case '\n': *out += "\\n"; continue;
      case '\r': *out += "\\r"; continue;
      case '\t': *out += "\\t"; continue;
      case '\b': *out += "\\b"; continue;
      case '\f': *out += "\\f"; continue;
      default: break;
    }
    char hex[16];
    if (cp >= 0x20 && cp < 0x7F) {
      *out += static_cast<char>(cp);
    } else if (cp == 0x7F) {
      *out += static_cast<char>(cp);  // ensure_ascii keeps DEL as is
    } else if (cp < 0x10000) {
      std::snprintf(hex, sizeof(hex), "\\u%04x", cp);
      *out += hex;
    } else {
      const uint32_t v = cp - 0x10000;
      std::snprintf(hex, sizeof(hex), "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
      *out += hex;
    }
  }
  *out += '"';
  return OkStatus();
}

Status AppendPyJson(const nlohmann::ordered_json& j, size_t depth, std::string* out) {
  if (depth > kMaxJsonDepth) return InvalidArgumentError(StrCat("JSON nested deeper than ", kMaxJsonDepth));
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: *out += "null"; return OkStatus();
    case nlohmann::ordered_json::value_t::boolean: *out += j.get<bool>() ? "true" : "false"; return OkStatus();
    case nlohmann::ordered_json::value_t::number_integer: *out += std::to_string(j.get<int64_t>()); return OkStatus();
    case nlohmann::ordered_json::value_t::number_unsigned: *out += std::to_string(j.get<uint64_t>()); return OkStatus();
    case nlohmann::ordered_json::value_t::number_float: *out += PyFloatRepr(j.get<double>()); return OkStatus();
    case nlohmann::ordered_json::value_t::string: return AppendPyJsonString(j.get_ref<const std::string&>(), out);
    case nlohmann::ordered_json::value_t::array: {
      *out += '[';
      bool first = true;
      for (const auto& e : j) {
        if (!first) *out += ", ";
        first = false;
        CKPT_RETURN_IF_ERROR(AppendPyJson(e, depth + 1, out));
      }
      *out += ']';
      return OkStatus();
    }
    case nlohmann::ordered_json::value_t::object: {
      *out += '{';
      bool first = true;
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (!first) *out += ", ";
        first = false;
        CKPT_RETURN_IF_ERROR(AppendPyJsonString(it.key(), out));
        *out += ": ";
        CKPT_RETURN_IF_ERROR(AppendPyJson(it.value(), depth + 1, out));
      }
      *out += '}';
      return OkStatus();
    }
    default:
      return InvalidArgumentError(StrCat("JSON value of type ", j.type_name(), " has no Python json form"));
  }
}

// ---------------------------------------------------------------------------
// Common state

bool IsContainer(const Value* v) { return v != nullptr && (v->kind == Kind::kDict || v->kind == Kind::kList); }

bool IsEmptyContainer(const Value* v) {
  return v->kind == Kind::kDict ? v->dict().empty() : v->items().empty();
}

// Walks the dict/list skeleton from the root: the values Megatron's
// extract_matching_values visits as leaves.
class Skeleton {
 public:
  // Calls leaf(v) for every non-container value reached through dicts and
  // lists (each container once).
  template <typename F>
  Status Walk(const Value* v, size_t depth, F&& leaf) {
    if (depth > pickle::kDefaultMaxDepth) {
      return ResourceExhaustedError(StrCat("state dict nested deeper than ", pickle::kDefaultMaxDepth));
    }
    if (!IsContainer(v)) {
      leaf(v);
      return OkStatus();
    }
    if (!seen_.insert(v).second) return OkStatus();
    if (v->kind == Kind::kDict) {
      for (const auto& [k, child] : v->dict()) CKPT_RETURN_IF_ERROR(Walk(child, depth + 1, leaf));
    } else {
      for (const Value* child : v->items()) CKPT_RETURN_IF_ERROR(Walk(child, depth + 1, leaf));
    }
    return OkStatus();
  }

 private:
  std::set<const Value*> seen_;
};

// extract_matching_values(x, is_tensor)[1] applied to `copy`, the deep copy
// TorchTreeWriter::Import made of `src` (same shape, item for item): drops the
// pairs and items whose source value is in `tensors`, and containers left
// empty by that. Returns whether the parent keeps `copy`.
class Stripper {
 public:
  Stripper(pickle::Arena* arena, const std::set<const Value*>& tensors) : a(*arena), tensors_(tensors) {}

  Result<bool> Strip(const Value* src, Value* copy, size_t depth) {
    if (depth > pickle::kDefaultMaxDepth) {
      return ResourceExhaustedError(StrCat("state dict nested deeper than ", pickle::kDefaultMaxDepth));
    }
    if (copy == nullptr || copy->kind != src->kind) {
      return InternalError("the imported common dict does not mirror its source");
    }
    // A container met again (shared, or a cycle) was already stripped in place.
    if (auto it = done_.find(src); it != done_.end()) return it->second;
    done_[src] = true;  // a cycle back to an ancestor keeps it
    const bool was_empty = IsEmptyContainer(src);
    if (src->kind == Kind::kDict) {
      // Megatron rebuilds each dict as a plain `{}`.
      copy->ordered = false;
      a.SetState(copy, nullptr);
      if (copy->dict().size() != src->dict().size()) {
        return InternalError("the imported common dict does not mirror its source");
      }
      std::vector<std::pair<Value*, Value*>> kept;
      for (size_t i = 0; i < src->dict().size(); ++i) {
        CKPT_ASSIGN_OR_RETURN(bool keep, KeepChild(src->dict()[i].second, copy->dict()[i].second, depth));
        if (keep) kept.push_back(copy->dict()[i]);
      }
      a.SetPairs(copy, kept);
    } else {
      if (copy->items().size() != src->items().size()) {
        return InternalError("the imported common dict does not mirror its source");
      }
      std::vector<Value*> kept;
      for (size_t i = 0; i < src->items().size(); ++i) {
        CKPT_ASSIGN_OR_RETURN(bool keep, KeepChild(src->items()[i], copy->items()[i], depth));
        if (keep) kept.push_back(copy->items()[i]);
      }
      a.SetItems(copy, kept);
    }
    const bool keep = was_empty || !IsEmptyContainer(copy);
    done_[src] = keep;
    return keep;
  }

 private:
  Result<bool> KeepChild(const Value* src, Value* copy, size_t depth) {
    if (IsContainer(src) && !IsEmptyContainer(src)) return Strip(src, copy, depth + 1);
    if (IsContainer(src)) {
      if (src->kind == Kind::kDict && copy != nullptr) {
        copy->ordered = false;
        a.SetState(copy, nullptr);
      }
      return true;  // an originally empty container stays
    }
    return tensors_.count(src) == 0;
  }

  pickle::Arena& a;
  const std::set<const Value*>& tensors_;
  std::unordered_map<const Value*, bool> done_;
};

}  // namespace

std::string_view CoreVersionName(CoreVersion v) {
  switch (v) {
    case CoreVersion::k0_16: return "0.16";
    case CoreVersion::k0_19: return "0.19";
  }
  return "?";
}

Result<CoreVersion> ParseCoreVersion(std::string_view text) {
  for (CoreVersion v : {CoreVersion::k0_16, CoreVersion::k0_19}) {
    std::string_view name = CoreVersionName(v);
    if (text == name) return v;
    // "0.16.1": a patch release of the same layout.
    if (text.size() > name.size() + 1 && text.substr(0, name.size()) == name && text[name.size()] == '.') {
      std::string_view patch = text.substr(name.size() + 1);
      bool digits = !patch.empty();
      for (char c : patch) digits = digits && c >= '0' && c <= '9';
      if (digits) return v;
    }
  }
  return InvalidArgumentError(StrCat("megatron-core version ", Quote(text),
                                     ": expected 0.16 (the layout of core <= 0.18: common.pt) or 0.19 "
                                     "(core >= 0.19: the common_state entry)"));
}

bool CommonStateInDcp(CoreVersion v) { return v == CoreVersion::k0_19; }

bool IsConfigField(std::string_view key) {
  return key == "sharded_backend" || key == "sharded_backend_version" || key == "common_backend" ||
         key == "common_backend_version";
}

Result<std::string> PythonJsonDumps(const nlohmann::ordered_json& value) {
  std::string out;
  CKPT_RETURN_IF_ERROR(AppendPyJson(value, 0, &out));
  return out;
}

Result<std::string> SerializeConfig(CoreVersion v, const nlohmann::ordered_json& carried) {
  if (!carried.is_object()) {
    return InvalidArgumentError(StrCat("metadata.json: carried fields must be an object, got ", carried.type_name()));
  }
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  // dataclasses.asdict(CheckpointingConfig('torch_dist', 1)): fields in declaration order.
  j["sharded_backend"] = "torch_dist";
  j["sharded_backend_version"] = 1;
  if (v == CoreVersion::k0_16) {
    j["common_backend"] = "torch";
    j["common_backend_version"] = 1;
    if (!carried.empty()) {
      return InvalidArgumentError(StrCat("metadata.json for megatron-core 0.16 cannot carry ",
                                         Quote(carried.begin().key()),
                                         ": 0.16.1 raises on a field CheckpointingConfig does not declare"));
    }
  }
  for (auto it = carried.begin(); it != carried.end(); ++it) {
    if (IsConfigField(it.key())) {
      return InvalidArgumentError(StrCat("metadata.json: carried field ", Quote(it.key()),
                                         " is a CheckpointingConfig field (written from the version)"));
    }
    j[it.key()] = it.value();
  }
  return PythonJsonDumps(j);
}

Result<std::string> SerializeTracker(const Tracker& t) {
  if (t.release) return std::string("release");
  if (t.iteration < 0) {
    return InvalidArgumentError(StrCat("iteration ", t.iteration, " is negative"));
  }
  return std::to_string(t.iteration);
}

Result<std::vector<size_t>> ExtractedTensors(const torch::TorchFile& file) {
  const Value* root = file.root();
  if (root == nullptr || root->kind != Kind::kDict) {
    return FailedPreconditionError(StrCat(file.name(), ": the root is ", pickle::TypeName(root), ", not a dict"));
  }
  std::set<const Value*> reached;
  Skeleton sk;
  CKPT_RETURN_IF_ERROR(sk.Walk(root, 0, [&reached](const Value* v) { reached.insert(v); }), file.name());
  std::vector<size_t> out;
  for (size_t i = 0; i < file.tensors().size(); ++i) {
    if (reached.count(file.tensors()[i].value)) out.push_back(i);
  }
  return out;
}

Status WriteCommonTree(CoreVersion v, torch::TorchTreeWriter* w, pickle::Value* dict, ByteSink* sink) {
  torch::TorchWriteOptions wo;
  if (CommonStateInDcp(v)) {
    // _mcore_to_torch_sharded_object: torch.save([sh_obj.data], io.BytesIO()).
    wo.archive_name = "archive";
    return w->Write(w->arena().List({dict}), sink, wo);
  }
  // TorchCommonSaveStrategy.save_common: torch.save(common_state_dict, "<dir>/common.pt").
  wo.archive_name = "common";
  return w->Write(dict, sink, wo);
}

pickle::Value* DistOptContentMetadata(torch::TorchTreeWriter* w, std::string_view sharding_type) {
  pickle::Arena& a = w->arena();
  pickle::Value* cm = a.Dict();
  a.SetItem(cm, w->Str("distrib_optim_sharding_type"), w->Str(sharding_type));
  if (sharding_type == "fully_reshardable") {
    a.SetItem(cm, w->Str("distrib_optim_fully_reshardable_mem_efficient"), a.Bool(false));
  }
  a.SetItem(cm, w->Str("singleton_local_shards"), a.Bool(false));
  a.SetItem(cm, w->Str("chained_optim_avoid_prefix"), a.Bool(true));
  return cm;
}

Status WriteCommonState(CoreVersion v, const torch::TorchFile* file, CommonSource source,
                        torch::TorchTreeWriter::Reopener reopen, ByteSink* sink) {
  torch::TorchTreeWriter w;
  Value* dict = nullptr;
  if (file == nullptr) {
    dict = w.arena().Dict();
  } else {
    const Value* root = file->root();
    const bool root_is_dict = root != nullptr && root->kind == Kind::kDict;
    const bool root_is_wrapped = root != nullptr && (root->kind == Kind::kList || root->kind == Kind::kTuple) &&
                                 root->items().size() == 1 && root->items()[0] != nullptr &&
                                 root->items()[0]->kind == Kind::kDict;
    if (source == CommonSource::kWrappedDict ? !root_is_wrapped : !root_is_dict) {
      return DataLossError(StrCat(file->name(), ": the common state should be ",
                                  source == CommonSource::kWrappedDict ? "a one-element list holding a dict"
                                                                       : "a dict",
                                  ", got ", pickle::TypeName(root)));
    }
    CKPT_ASSIGN_OR_RETURN(Value * copy, w.Import(*file, std::move(reopen)));
    if (source == CommonSource::kWrappedDict) {
      dict = copy->items()[0];
    } else {
      dict = copy;
    }
    if (source == CommonSource::kStateDict) {
      CKPT_ASSIGN_OR_RETURN(std::vector<size_t> extracted, ExtractedTensors(*file));
      std::set<const Value*> tensors;
      for (size_t i : extracted) tensors.insert(file->tensors()[i].value);
      Stripper s(&w.arena(), tensors);
      CKPT_RETURN_IF_ERROR(s.Strip(root, dict, 0).status(), file->name());
    }
  }
  return WriteCommonTree(v, &w, dict, sink);
}

}  // namespace ckpt::megatron
