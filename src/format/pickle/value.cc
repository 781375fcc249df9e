#include "format/pickle/value.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>

#include "util/strings.h"

namespace ckpt::pickle {

std::string_view KindName(Kind k) {
  switch (k) {
    case Kind::kNone: return "none";
    case Kind::kBool: return "bool";
    case Kind::kInt: return "int";
    case Kind::kBigInt: return "bigint";
    case Kind::kFloat: return "float";
    case Kind::kString: return "str";
    case Kind::kBytes: return "bytes";
    case Kind::kTuple: return "tuple";
    case Kind::kList: return "list";
    case Kind::kDict: return "dict";
    case Kind::kSet: return "set";
    case Kind::kGlobal: return "global";
    case Kind::kObject: return "object";
    case Kind::kPersistentId: return "persistent_id";
  }
  return "unknown";
}

const Value* Value::Get(std::string_view key) const {
  if (kind != Kind::kDict) return nullptr;
  for (const auto& [k, v] : dict) {
    if (k != nullptr && k->kind == Kind::kString && k->str == key) return v;
  }
  return nullptr;
}

std::string TypeName(const Value* v) {
  if (v == nullptr) return "null";
  switch (v->kind) {
    case Kind::kNone: return "NoneType";
    case Kind::kBigInt: return "int";
    case Kind::kBytes: return v->bytearray ? "bytearray" : "bytes";
    case Kind::kTuple: return v->torch_size ? "torch.Size" : "tuple";
    case Kind::kDict: return v->ordered ? "collections.OrderedDict" : "dict";
    case Kind::kSet: return v->frozen ? "frozenset" : "set";
    case Kind::kObject:
      if (v->callable != nullptr && v->callable->kind == Kind::kGlobal) {
        const Value* c = v->callable;
        // Reconstructors whose first argument is the real class:
        // copyreg._reconstructor(cls, base, state), numpy _reconstruct(cls, shape, dtype).
        if ((c->is_global("copyreg", "_reconstructor") ||
             c->is_global("numpy.core.multiarray", "_reconstruct") ||
             c->is_global("numpy._core.multiarray", "_reconstruct")) &&
            v->args != nullptr && v->args->kind == Kind::kTuple && !v->args->items.empty() &&
            v->args->items[0]->kind == Kind::kGlobal) {
          c = v->args->items[0];
        }
        return c->str + "." + c->name;
      }
      return "object";
    default: return std::string(KindName(v->kind));
  }
}

namespace {

constexpr int kReprMaxDepth = 6;
constexpr size_t kReprMaxItems = 8;

// Appends to out until it exceeds budget; stops descending when over.
class Reprer {
 public:
  explicit Reprer(size_t max_len) : max_len_(max_len) {}

  void Put(const Value* v, int depth) {
    if (out_.size() > max_len_) return;
    if (v == nullptr) { out_ += "<null>"; return; }
    if (depth > kReprMaxDepth) { out_ += "..."; return; }
    for (const Value* a : active_) {
      if (a == v) { out_ += "<cycle>"; return; }
    }
    switch (v->kind) {
      case Kind::kNone: out_ += "None"; return;
      case Kind::kBool: out_ += v->i ? "True" : "False"; return;
      case Kind::kInt: out_ += fmt::format("{}", v->i); return;
      case Kind::kBigInt: out_ += fmt::format("<int of {} bytes>", v->str.size()); return;
      case Kind::kFloat: out_ += FloatRepr(v->f); return;
      case Kind::kString: out_ += Quote(v->str, 48); return;
      case Kind::kBytes:
        out_ += v->bytearray ? "bytearray(b" : "b";
        out_ += Quote(v->str, 32);
        if (v->bytearray) out_ += ")";
        return;
      case Kind::kGlobal: out_ += v->str + "." + v->name; return;
      default: break;
    }
    active_.push_back(v);
    switch (v->kind) {
      case Kind::kTuple:
        if (v->torch_size) out_ += "torch.Size(";
        Seq("(", v->items, v->items.size() == 1 ? ",)" : ")", depth);
        if (v->torch_size) out_ += ")";
        break;
      case Kind::kList: Seq("[", v->items, "]", depth); break;
      case Kind::kSet:
        if (v->items.empty()) {
          out_ += v->frozen ? "frozenset()" : "set()";
        } else {
          if (v->frozen) out_ += "frozenset(";
          Seq("{", v->items, "}", depth);
          if (v->frozen) out_ += ")";
        }
        break;
      case Kind::kDict: Map(v->dict, depth); break;
      case Kind::kPersistentId:
        out_ += "persistent_id(";
        if (!v->items.empty()) Put(v->items[0], depth + 1);
        out_ += ")";
        break;
      case Kind::kObject:
        out_ += TypeName(v);
        if (v->args != nullptr && v->args->kind == Kind::kTuple && v->args->items.empty() &&
            v->state != nullptr && v->state->kind == Kind::kDict && StringKeys(v->state->dict)) {
          // An object rebuilt from its __dict__ (argparse.Namespace, dataclasses):
          // shown as Python shows it, Name(field=value, ...).
          Fields(v->state->dict, depth);
          break;
        }
        if (v->args != nullptr && v->args->kind == Kind::kTuple) {
          Seq("(", v->args->items, ")", depth);
        } else {
          out_ += "(...)";
        }
        if (v->state != nullptr && out_.size() <= max_len_) {
          out_ += " state=";
          Put(v->state, depth + 1);
        }
        break;
      default: break;
    }
    active_.pop_back();
  }

  std::string Take() {
    if (out_.size() > max_len_) {
      out_.resize(max_len_);
      out_ += "...";
    }
    return std::move(out_);
  }

 private:
  static std::string FloatRepr(double f) {
    if (std::isnan(f)) return "nan";
    if (std::isinf(f)) return f > 0 ? "inf" : "-inf";
    std::string s = fmt::format("{}", f);
    if (s.find_first_of(".e") == std::string::npos) s += ".0";
    return s;
  }

  void Seq(const char* open, const std::vector<Value*>& items, const char* close, int depth) {
    out_ += open;
    for (size_t i = 0; i < items.size(); ++i) {
      if (out_.size() > max_len_) return;
      if (i > 0) out_ += ", ";
      if (i == kReprMaxItems) {
        out_ += fmt::format("... ({} items)", items.size());
        break;
      }
      Put(items[i], depth + 1);
    }
    out_ += close;
  }

  static bool StringKeys(const std::vector<std::pair<Value*, Value*>>& items) {
    for (const auto& kv : items) {
      if (kv.first == nullptr || kv.first->kind != Kind::kString) return false;
    }
    return true;
  }

  void Fields(const std::vector<std::pair<Value*, Value*>>& items, int depth) {
    out_ += "(";
    for (size_t i = 0; i < items.size(); ++i) {
      if (out_.size() > max_len_) return;
      if (i > 0) out_ += ", ";
      out_ += items[i].first->str;
      out_ += "=";
      Put(items[i].second, depth + 1);
    }
    out_ += ")";
  }

  void Map(const std::vector<std::pair<Value*, Value*>>& items, int depth) {
    out_ += "{";
    for (size_t i = 0; i < items.size(); ++i) {
      if (out_.size() > max_len_) return;
      if (i > 0) out_ += ", ";
      if (i == kReprMaxItems) {
        out_ += fmt::format("... ({} items)", items.size());
        break;
      }
      Put(items[i].first, depth + 1);
      out_ += ": ";
      Put(items[i].second, depth + 1);
    }
    out_ += "}";
  }

  size_t max_len_;
  std::string out_;
  std::vector<const Value*> active_;
};

}  // namespace

std::string Repr(const Value* v, size_t max_len) {
  Reprer r(max_len);
  r.Put(v, 0);
  return r.Take();
}

}  // namespace ckpt::pickle
