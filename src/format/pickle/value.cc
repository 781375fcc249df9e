#include "format/pickle/value.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <new>
#include <stdexcept>

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
  for (const auto& [k, v] : dict()) {
    if (k != nullptr && k->kind == Kind::kString && k->str() == key) return v;
  }
  return nullptr;
}

// --- Arena ---

using internal_value::DictRec;
using internal_value::GlobalRec;
using internal_value::ObjectRec;
using internal_value::Run;

Arena::Arena(size_t block_values, size_t first_payload_bytes)
    : block_values_(block_values == 0 ? 1 : block_values),
      first_payload_(std::make_unique<std::byte[]>(first_payload_bytes == 0 ? 1 : first_payload_bytes)),
      payloads_(first_payload_.get(), first_payload_bytes == 0 ? 1 : first_payload_bytes) {}
Arena::~Arena() = default;

uint64_t Arena::bytes() const {
  uint64_t b = blocks_.size() * block_values_ * sizeof(Value) + payload_bytes_;
  for (const auto& a : adopted_) b += a->bytes();
  return b;
}

void Arena::Reset() {
  count_ = 0;
  next_ = end_ = nullptr;
  payload_bytes_ = 0;
  payloads_.release();
  big_runs_.clear();
  adopted_.clear();
}

bool Arena::Owns(const Value* v) const {
  for (const auto& block : blocks_) {
    if (v >= block.get() && v < block.get() + block_values_) return true;
  }
  return false;
}

void Arena::Adopt(std::unique_ptr<Arena> other) { adopted_.push_back(std::move(other)); }

template <typename T>
T* Arena::AllocArray(size_t n) {
  if (n == 0) return nullptr;
  payload_bytes_ += n * sizeof(T);
  return static_cast<T*>(payloads_.allocate(n * sizeof(T), alignof(T)));
}

template <typename T>
void Arena::Grow(Run<T>* run, size_t extra) {
  size_t need = size_t{run->size} + extra;
  if (need <= run->cap) return;
  if (need > UINT32_MAX) throw std::length_error("pickle container larger than 2^32 entries");
  // The first allocation fits exactly (a pickle fills most containers in
  // one APPENDS / SETITEMS); later ones double.
  size_t cap = run->cap == 0 ? need : size_t{run->cap} * 2;
  if (cap < need) cap = need;
  if (cap > UINT32_MAX) cap = UINT32_MAX;
  T* data;
  if (cap * sizeof(T) >= kBigRun) {
    auto block = std::make_unique_for_overwrite<std::byte[]>(cap * sizeof(T));
    data = reinterpret_cast<T*>(block.get());
    big_runs_.emplace(data, std::move(block));
    payload_bytes_ += cap * sizeof(T);
  } else {
    data = AllocArray<T>(cap);
  }
  if (run->size > 0) std::memcpy(static_cast<void*>(data), run->data, run->size * sizeof(T));
  if (auto old = big_runs_.find(run->data); run->data != nullptr && old != big_runs_.end()) {
    payload_bytes_ -= size_t{run->cap} * sizeof(T);
    big_runs_.erase(old);
  }
  run->data = data;
  run->cap = static_cast<uint32_t>(cap);
}

void Arena::NextBlock() {
  const size_t b = count_ / block_values_;  // blocks fill whole: count_ is where block b starts
  if (b == blocks_.size()) blocks_.push_back(std::make_unique<Value[]>(block_values_));
  next_ = blocks_[b].get();
  end_ = next_ + block_values_;
}

Value* Arena::New(Kind kind) {
  if (next_ == end_) [[unlikely]] NextBlock();
  Value* v = next_++;
  ++count_;
  *v = Value();  // a block is reused after Reset
  v->kind = kind;
  if (kind == Kind::kGlobal) {
    v->global_ = new (AllocArray<GlobalRec>(1)) GlobalRec();
  } else if (kind == Kind::kObject) {
    v->object_ = new (AllocArray<ObjectRec>(1)) ObjectRec();
  } else if (kind == Kind::kDict) {
    v->dict_ = nullptr;
  } else if (kind == Kind::kString || kind == Kind::kBytes || kind == Kind::kBigInt) {
    v->chars_ = "";
  } else if (kind == Kind::kTuple || kind == Kind::kList || kind == Kind::kSet || kind == Kind::kPersistentId) {
    v->seq_ = nullptr;
  }
  return v;
}

std::string_view Arena::Intern(std::string_view s) {
  if (s.empty()) return {};
  char* p = AllocArray<char>(s.size());
  std::memcpy(p, s.data(), s.size());
  return {p, s.size()};
}

Value* Arena::Chars(Kind kind, std::string_view s) {
  Value* v = New(kind);
  std::string_view kept = Intern(s);
  v->chars_ = kept.empty() ? "" : kept.data();
  v->n_ = static_cast<uint32_t>(kept.size());
  v->cap_ = static_cast<uint32_t>(static_cast<uint64_t>(kept.size()) >> 32);
  return v;
}

Value* Arena::Seq(Kind kind, std::span<Value* const> items) {
  Value* v = New(kind);
  SetItems(v, items);
  return v;
}

Value* Arena::Global(std::string_view module, std::string_view name) {
  Value* v = New(Kind::kGlobal);
  v->global_->module = Intern(module);
  v->global_->name = Intern(name);
  return v;
}

Value* Arena::Object(Value* callable, Value* args, bool newobj) {
  Value* v = New(Kind::kObject);
  v->object_->callable = callable;
  v->object_->args = args;
  v->newobj = newobj;
  return v;
}

Run<Value*> Arena::SeqRun(Value* v) const {
  if (v->kind == Kind::kObject) return v->object_->items;
  return Run<Value*>{v->seq_, v->n_, v->cap_};
}

void Arena::StoreSeqRun(Value* v, const Run<Value*>& run) {
  if (v->kind == Kind::kObject) {
    v->object_->items = run;
    return;
  }
  v->seq_ = run.data;
  v->n_ = run.size;
  v->cap_ = run.cap;
}

static bool IsSeq(Kind k) {
  return k == Kind::kTuple || k == Kind::kList || k == Kind::kSet || k == Kind::kPersistentId ||
         k == Kind::kObject;
}

void Arena::Append(Value* v, Value* item) { Append(v, std::span<Value* const>(&item, 1)); }

void Arena::Append(Value* v, std::span<Value* const> items) {
  if (!IsSeq(v->kind)) throw std::logic_error("pickle::Arena::Append on a value that holds no items");
  Run<Value*> run = SeqRun(v);
  Grow(&run, items.size());
  if (!items.empty()) std::memcpy(static_cast<void*>(run.data + run.size), items.data(), items.size() * sizeof(Value*));
  run.size += static_cast<uint32_t>(items.size());
  StoreSeqRun(v, run);
}

void Arena::SetItems(Value* v, std::span<Value* const> items) {
  if (!IsSeq(v->kind)) throw std::logic_error("pickle::Arena::SetItems on a value that holds no items");
  StoreSeqRun(v, Run<Value*>{});
  Append(v, items);
}

void Arena::ShareItems(Value* v, const Value* from) {
  std::span<Value* const> items = from->items();
  Run<Value*> run{const_cast<Value**>(items.data()), static_cast<uint32_t>(items.size()),
                  static_cast<uint32_t>(items.size())};
  if (!IsSeq(v->kind)) throw std::logic_error("pickle::Arena::ShareItems on a value that holds no items");
  StoreSeqRun(v, run);
}

std::span<Value*> Arena::MutableItems(Value* v) {
  if (!IsSeq(v->kind)) return {};
  return SeqRun(v).span();
}

void Arena::SetItem(Value* v, Value* key, Value* value) {
  Run<Pair>* run = nullptr;
  if (v->kind == Kind::kDict) {
    if (v->dict_ == nullptr) v->dict_ = new (AllocArray<DictRec>(1)) DictRec();
    run = &v->dict_->pairs;
  } else if (v->kind == Kind::kObject) {
    run = &v->object_->pairs;
  } else {
    throw std::logic_error("pickle::Arena::SetItem on a value that is not a dict or an object");
  }
  Grow(run, 1);
  run->data[run->size++] = Pair(key, value);
}

std::span<Pair> Arena::MutablePairs(Value* v) {
  if (v->kind == Kind::kDict) return v->dict_ != nullptr ? v->dict_->pairs.span() : std::span<Pair>();
  if (v->kind == Kind::kObject) return v->object_->pairs.span();
  return {};
}

void Arena::SetPairs(Value* v, std::span<const Pair> pairs) {
  if (v->kind == Kind::kDict) {
    if (v->dict_ == nullptr) v->dict_ = new (AllocArray<DictRec>(1)) DictRec();
    v->dict_->pairs = {};
  } else if (v->kind == Kind::kObject) {
    v->object_->pairs = {};
  }
  for (const Pair& p : pairs) SetItem(v, p.first, p.second);
}

ObjectRec* Arena::ObjectOf(Value* v) {
  if (v->kind != Kind::kObject) throw std::logic_error("pickle::Arena: object field set on a value that is not an object");
  return v->object_;
}

void Arena::SetCallable(Value* v, Value* callable) { ObjectOf(v)->callable = callable; }
void Arena::SetArgs(Value* v, Value* args) { ObjectOf(v)->args = args; }
void Arena::SetKwargs(Value* v, Value* kwargs) { ObjectOf(v)->kwargs = kwargs; }
void Arena::SetState(Value* v, Value* state) {
  if (v->kind == Kind::kDict) {
    if (v->dict_ == nullptr) v->dict_ = new (AllocArray<DictRec>(1)) DictRec();
    v->dict_->state = state;
    return;
  }
  ObjectOf(v)->state = state;
}

void CopySpelling(Value* to, const Value* from) {
  to->newobj = from->newobj;
  to->opaque = from->opaque;
  to->ordered = from->ordered;
  to->torch_size = from->torch_size;
  to->frozen = from->frozen;
  to->bytearray = from->bytearray;
  to->depth = from->depth;
  to->offset = from->offset;
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
      if (v->callable() != nullptr && v->callable()->kind == Kind::kGlobal) {
        const Value* c = v->callable();
        // Reconstructors whose first argument is the real class:
        // copyreg._reconstructor(cls, base, state), numpy _reconstruct(cls, shape, dtype).
        if ((c->is_global("copyreg", "_reconstructor") ||
             c->is_global("numpy.core.multiarray", "_reconstruct") ||
             c->is_global("numpy._core.multiarray", "_reconstruct")) &&
            v->args() != nullptr && v->args()->kind == Kind::kTuple && !v->args()->items().empty() &&
            v->args()->items()[0]->kind == Kind::kGlobal) {
          c = v->args()->items()[0];
        }
        return StrCat(c->str(), ".", c->name());
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
      case Kind::kBigInt: out_ += fmt::format("<int of {} bytes>", v->str().size()); return;
      case Kind::kFloat: out_ += FloatRepr(v->f); return;
      case Kind::kString: out_ += Quote(v->str(), 48); return;
      case Kind::kBytes:
        out_ += v->bytearray ? "bytearray(b" : "b";
        out_ += Quote(v->str(), 32);
        if (v->bytearray) out_ += ")";
        return;
      case Kind::kGlobal: out_ += v->str(); out_ += "."; out_ += v->name(); return;
      default: break;
    }
    active_.push_back(v);
    switch (v->kind) {
      case Kind::kTuple:
        if (v->torch_size) out_ += "torch.Size(";
        Seq("(", v->items(), v->items().size() == 1 ? ",)" : ")", depth);
        if (v->torch_size) out_ += ")";
        break;
      case Kind::kList: Seq("[", v->items(), "]", depth); break;
      case Kind::kSet:
        if (v->items().empty()) {
          out_ += v->frozen ? "frozenset()" : "set()";
        } else {
          if (v->frozen) out_ += "frozenset(";
          Seq("{", v->items(), "}", depth);
          if (v->frozen) out_ += ")";
        }
        break;
      case Kind::kDict: Map(v->dict(), depth); break;
      case Kind::kPersistentId:
        out_ += "persistent_id(";
        if (!v->items().empty()) Put(v->items()[0], depth + 1);
        out_ += ")";
        break;
      case Kind::kObject:
        out_ += TypeName(v);
        if (v->args() != nullptr && v->args()->kind == Kind::kTuple && v->args()->items().empty() &&
            v->state() != nullptr && v->state()->kind == Kind::kDict && StringKeys(v->state()->dict())) {
          // An object rebuilt from its __dict__ (argparse.Namespace, dataclasses):
          // shown as Python shows it, Name(field=value, ...).
          Fields(v->state()->dict(), depth);
          break;
        }
        if (v->args() != nullptr && v->args()->kind == Kind::kTuple) {
          Seq("(", v->args()->items(), ")", depth);
        } else {
          out_ += "(...)";
        }
        if (v->state() != nullptr && out_.size() <= max_len_) {
          out_ += " state=";
          Put(v->state(), depth + 1);
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

  void Seq(const char* open, std::span<Value* const> items, const char* close, int depth) {
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

  static bool StringKeys(std::span<const Pair> items) {
    for (const auto& kv : items) {
      if (kv.first == nullptr || kv.first->kind != Kind::kString) return false;
    }
    return true;
  }

  void Fields(std::span<const Pair> items, int depth) {
    out_ += "(";
    for (size_t i = 0; i < items.size(); ++i) {
      if (out_.size() > max_len_) return;
      if (i > 0) out_ += ", ";
      out_ += items[i].first->str();
      out_ += "=";
      Put(items[i].second, depth + 1);
    }
    out_ += ")";
  }

  void Map(std::span<const Pair> items, int depth) {
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
