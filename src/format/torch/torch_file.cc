#include "format/torch/torch_file.h"

#include <fmt/format.h>
#include "util/crc32.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <new>
#include <optional>
#include <span>
#include <unordered_set>

#include "util/box.h"
#include "util/checked_math.h"
#include "util/strings.h"

namespace ckpt::torch {

using pickle::Kind;
using pickle::Value;

namespace {

bool StartsWith(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

// Parses an ASCII decimal record such as "3\n" or "64".
bool ParseDecimalRecord(std::string_view s, uint64_t* out) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.remove_suffix(1);
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size();
}

// Element size for byte swapping: complex numbers swap each half.
size_t SwapUnit(DType d) {
  switch (d) {
    case DType::kComplex32: return 2;
    case DType::kComplex64: return 4;
    case DType::kComplex128: return 8;
    default: return static_cast<size_t>(DTypeSize(d));
  }
}

void ByteSwapInPlace(char* p, size_t n, size_t unit) {
  if (unit <= 1) return;
  for (size_t i = 0; i + unit <= n; i += unit) std::reverse(p + i, p + i + unit);
}

bool IsTensorRebuild(const Value* v) {
  if (v == nullptr || v->kind != Kind::kObject || v->callable() == nullptr ||
      v->callable()->kind != Kind::kGlobal) {
    return false;
  }
  const std::string& m = std::string(v->callable()->str());
  const std::string& n = std::string(v->callable()->name());
  if (m == "torch._utils") {
    return n == "_rebuild_tensor_v2" || n == "_rebuild_tensor_v3" || n == "_rebuild_tensor" ||
           n == "_rebuild_parameter" || n == "_rebuild_parameter_with_state";
  }
  return m == "torch._tensor" && n == "_rebuild_from_type_v2";
}

std::optional<std::span<Value* const>> TupleItems(const Value* v) {
  if (v == nullptr || (v->kind != Kind::kTuple && v->kind != Kind::kList)) return std::nullopt;
  return v->items();
}

}  // namespace

// Builds a TorchFile: walks the tree, interprets rebuild calls, validates.
class TorchFileBuilder {
 public:
  explicit TorchFileBuilder(TorchFile* f) : f_(f) {}

  Status Walk(const Value* v, const std::string& key, size_t depth);

 private:
  Status Err(std::string_view key, std::string_view msg) const {
    return DataLossError(StrCat(f_->name(), ": data.pkl: tensor ", Quote(key), ": ", msg));
  }
  Status AddLeaf(const Value* v, const std::string& key) {
    if (++leaves_ > leaf_cap_) {
      return ResourceExhaustedError(StrCat(f_->name(), ": data.pkl: more than ", leaf_cap_,
                                           " leaves (shared subtrees multiply paths)"));
    }
    ObjectRecord o;
    o.key = key;
    o.type = pickle::TypeName(v);
    o.repr = pickle::Repr(v, 120);
    o.opaque = v != nullptr && v->kind == Kind::kObject && v->opaque;
    o.value = v;
    f_->objects_.push_back(std::move(o));
    return OkStatus();
  }
  Status AddTensor(const Value* v, const std::string& key);
  Status InterpretRebuild(const Value* v, const std::string& key, int nesting, TensorRecord* t);
  Result<size_t> StorageFor(const Value* pid, const std::string& key);
  Status WalkTensorsIn(const Value* v, const std::string& key, size_t depth);

  static std::string Join(const std::string& prefix, std::string_view part) {
    return prefix.empty() ? std::string(part) : StrCat(prefix, ".", part);
  }
  static std::string KeyPart(const Value* k) {
    if (k == nullptr) return "None";
    switch (k->kind) {
      case Kind::kString: return std::string(k->str());
      case Kind::kInt: return std::to_string(k->i);
      case Kind::kBool: return k->i ? "True" : "False";
      case Kind::kNone: return "None";
      default: return pickle::Repr(k, 60);
    }
  }

  TorchFile* f_;
  std::unordered_set<const Value*> on_path_;
  // Nodes visited while flattening. A graph that shares containers (the memo
  // allows it) expands exponentially into keys; the budget stops that.
  uint64_t steps_ = 0;
  Status CountStep() {
    if (++steps_ > kMaxFlattenSteps) {
      return ResourceExhaustedError(StrCat(f_->name(), ": data.pkl: flattening the object graph "
                                           "visits more than ", kMaxFlattenSteps,
                                           " nodes (containers shared many times over)"));
    }
    return OkStatus();
  }
  size_t leaves_ = 0;

 public:
  size_t leaf_cap_ = 0;
};

Result<size_t> TorchFileBuilder::StorageFor(const Value* pid_v, const std::string& key) {
  if (pid_v == nullptr || pid_v->kind != Kind::kPersistentId || pid_v->items().empty()) {
    return Err(key, "storage argument is not a persistent id");
  }
  const Value* pid = pid_v->items()[0];
  const auto items = TupleItems(pid);
  if (!items || items->size() < 5) {
    return Err(key, StrCat("persistent id is not a 5-tuple: ", pickle::Repr(pid, 80)));
  }
  const Value* tag = (*items)[0];
  const Value* cls = (*items)[1];
  const Value* skey = (*items)[2];
  const Value* loc = (*items)[3];
  const Value* numel_v = (*items)[4];
  if ((tag->kind != Kind::kString && tag->kind != Kind::kBytes) || tag->str() != "storage") {
    return Err(key, StrCat("persistent id tag is ", pickle::Repr(tag, 40), ", not 'storage'"));
  }
  if (cls->kind != Kind::kGlobal || (cls->str() != "torch" && cls->str() != "torch.storage")) {
    return Err(key, StrCat("storage type is ", pickle::Repr(cls, 60), ", not a torch storage class"));
  }
  if (skey->kind != Kind::kString || loc->kind != Kind::kString) {
    return Err(key, "storage key and location must be str");
  }
  if (numel_v->kind != Kind::kInt || numel_v->i < 0) {
    return Err(key, StrCat("storage numel is ", pickle::Repr(numel_v, 40)));
  }
  DType sdtype;
  if (cls->name() == "UntypedStorage") {
    sdtype = DType::kUInt8;
  } else if (auto d = DTypeFromLegacyStorage(cls->name())) {
    sdtype = *d;
  } else {
    return UnimplementedError(StrCat(f_->name(), ": data.pkl: tensor ", Quote(key),
                                     ": unknown storage class torch.", cls->name()));
  }
  auto it = f_->storage_index_.find(std::string(skey->str()));
  if (it != f_->storage_index_.end()) {
    const StorageRecord& s = f_->storages_[it->second];
    if (s.storage_class != cls->name() || s.numel != static_cast<uint64_t>(numel_v->i)) {
      return Err(key, StrCat("storage ", Quote(skey->str()), " is used as torch.", s.storage_class,
                             " of ", s.numel, " and as torch.", cls->name(), " of ", numel_v->i));
    }
    return it->second;
  }
  StorageRecord s;
  s.key = skey->str();
  s.storage_class = cls->name();
  s.dtype = sdtype;
  s.numel = static_cast<uint64_t>(numel_v->i);
  auto nbytes = CheckedMul(s.numel, static_cast<uint64_t>(DTypeSize(sdtype)));
  if (!nbytes) return Err(key, StrCat("storage ", Quote(s.key), " size overflows"));
  s.nbytes = *nbytes;
  s.location = loc->str();
  s.entry_name = StrCat(f_->archive_name_, "/data/", s.key);
  s.entry = f_->zip_.Find(s.entry_name);
  if (s.entry == nullptr) {
    return Err(key, StrCat("storage record ", Quote(s.entry_name), " is missing"));
  }
  if (s.entry->size != s.nbytes) {
    return Err(key, StrCat("storage record ", Quote(s.entry_name), " holds ", s.entry->size,
                           " bytes; the persistent id says ", s.numel, " x ",
                           DTypeSize(sdtype), " = ", s.nbytes));
  }
  size_t idx = f_->storages_.size();
  f_->storage_index_.emplace(s.key, idx);
  f_->storages_.push_back(std::move(s));
  return idx;
}

Status TorchFileBuilder::InterpretRebuild(const Value* v, const std::string& key, int nesting,
                                          TensorRecord* t) {
  if (nesting > 4) return Err(key, "tensor rebuild calls nested too deeply");
  const std::string& fn = std::string(v->callable()->name());
  const auto args = TupleItems(v->args());
  if (!args) return Err(key, StrCat(fn, ": arguments are not a tuple"));
  const auto& a = *args;
  if (fn == "_rebuild_parameter" || fn == "_rebuild_parameter_with_state") {
    if (a.size() < 3 || !IsTensorRebuild(a[0])) {
      return Err(key, StrCat(fn, ": expected (tensor, requires_grad, hooks)"));
    }
    CKPT_RETURN_IF_ERROR(InterpretRebuild(a[0], key, nesting + 1, t));
    t->is_parameter = true;
    t->requires_grad = a[1]->kind == Kind::kBool && a[1]->i != 0;
    return OkStatus();
  }
  if (fn == "_rebuild_from_type_v2") {
    // (func, type, args, state): func(*args) is the tensor.
    if (a.size() < 3 || a[0]->kind != Kind::kGlobal || !TupleItems(a[2])) {
      return Err(key, "_rebuild_from_type_v2: expected (func, type, args, state)");
    }
    pickle::Arena scratch;
    Value& call = *scratch.Object(a[0], a[2]);
    if (!IsTensorRebuild(&call)) {
      return Err(key, StrCat("_rebuild_from_type_v2 of ", a[0]->str(), ".", a[0]->name(),
                             " is not a tensor rebuild"));
    }
    CKPT_RETURN_IF_ERROR(InterpretRebuild(&call, key, nesting + 1, t));
    if (a[1]->is_global("torch.nn.parameter", "Parameter")) t->is_parameter = true;
    return OkStatus();
  }
  // _rebuild_tensor(storage, offset, size, stride)
  // _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])
  // _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype[, metadata])
  size_t need = fn == "_rebuild_tensor" ? 4 : fn == "_rebuild_tensor_v2" ? 6 : 7;
  if (a.size() < need) {
    return Err(key, StrCat(fn, ": ", a.size(), " arguments, expected ", need));
  }
  CKPT_ASSIGN_OR_RETURN(size_t sidx, StorageFor(a[0], key));
  const StorageRecord& s = f_->storages_[sidx];
  t->storage = sidx;
  t->dtype = s.dtype;
  if (fn == "_rebuild_tensor_v3") {
    const Value* dt = a[6];
    std::optional<DType> d;
    if (dt->kind == Kind::kGlobal && dt->str() == "torch") d = DTypeFromName(dt->name());
    if (!d) return Err(key, StrCat("_rebuild_tensor_v3: dtype ", pickle::Repr(dt, 40), " is unknown"));
    t->dtype = *d;
  }
  if (a[1]->kind != Kind::kInt || a[1]->i < 0) {
    return Err(key, StrCat("storage_offset ", pickle::Repr(a[1], 40), " is not an int >= 0"));
  }
  t->storage_offset = a[1]->i;
  const auto size = TupleItems(a[2]);
  const auto stride = TupleItems(a[3]);
  if (!size || !stride || size->size() != stride->size()) {
    return Err(key, StrCat("size ", pickle::Repr(a[2], 60), " and stride ", pickle::Repr(a[3], 60),
                           " must be tuples of equal length"));
  }
  t->shape.clear();
  t->stride.clear();
  for (size_t i = 0; i < size->size(); ++i) {
    const Value* d = (*size)[i];
    const Value* st = (*stride)[i];
    if (d->kind != Kind::kInt || d->i < 0 || st->kind != Kind::kInt || st->i < 0) {
      return Err(key, StrCat("size ", pickle::Repr(a[2], 60), " / stride ", pickle::Repr(a[3], 60),
                             ": dimension ", i, " is not a non-negative int"));
    }
    t->shape.push_back(d->i);
    t->stride.push_back(st->i);
  }
  if (fn != "_rebuild_tensor") t->requires_grad = a[4]->kind == Kind::kBool && a[4]->i != 0;
  auto numel = CheckedNumel(t->shape);
  if (!numel) return Err(key, "shape overflows");
  t->numel = *numel;
  const uint64_t es = static_cast<uint64_t>(DTypeSize(t->dtype));
  auto nbytes = CheckedMul(static_cast<uint64_t>(t->numel), es);
  if (!nbytes) return Err(key, "byte size overflows");
  t->nbytes = *nbytes;
  // Extent: offset + sum((size-1)*stride) + 1 elements must fit the storage.
  if (t->numel > 0) {
    std::optional<int64_t> last = t->storage_offset;
    for (size_t i = 0; i < t->shape.size() && last; ++i) {
      auto step = CheckedMulSigned(t->shape[i] - 1, t->stride[i]);
      last = step ? CheckedAddSigned(*last, *step) : std::nullopt;
    }
    std::optional<uint64_t> end_bytes;
    if (last) end_bytes = CheckedMul(static_cast<uint64_t>(*last) + 1, es);
    if (!end_bytes || *end_bytes > s.nbytes) {
      return Err(key, StrCat("view (offset ", t->storage_offset, ", shape ", pickle::Repr(a[2], 60),
                             ", stride ", pickle::Repr(a[3], 60), ") of ", DTypeName(t->dtype),
                             " reaches past the ", s.nbytes, " bytes of storage ", Quote(s.key)));
    }
  }
  // Row-major dense?
  t->contiguous = true;
  int64_t expected = 1;
  for (size_t i = t->shape.size(); i-- > 0;) {
    if (t->shape[i] != 1 && t->stride[i] != expected) t->contiguous = false;
    expected *= t->shape[i];
  }
  if (t->numel <= 1) t->contiguous = true;
  return OkStatus();
}

Status TorchFileBuilder::AddTensor(const Value* v, const std::string& key) {
  if (++leaves_ > leaf_cap_) {
    return ResourceExhaustedError(StrCat(f_->name(), ": data.pkl: more than ", leaf_cap_,
                                         " leaves (shared subtrees multiply paths)"));
  }
  TensorRecord t;
  t.key = key;
  CKPT_RETURN_IF_ERROR(InterpretRebuild(v, key, 0, &t));
  t.value = v;
  size_t idx = f_->tensors_.size();
  f_->storages_[t.storage].tensors.push_back(idx);
  f_->tensor_index_.emplace(t.key, idx);
  f_->tensors_.push_back(std::move(t));
  return OkStatus();
}

// Inside a non-tensor object: only tensors are recorded.
Status TorchFileBuilder::WalkTensorsIn(const Value* v, const std::string& key, size_t depth) {
  if (v == nullptr || depth > kMaxKeyDepth || on_path_.count(v)) return OkStatus();
  CKPT_RETURN_IF_ERROR(CountStep());
  if (IsTensorRebuild(v)) return AddTensor(v, key);
  on_path_.insert(v);
  Status st;
  if (v->kind == Kind::kDict || v->kind == Kind::kObject) {
    for (const auto& [k, x] : v->dict()) {
      st = WalkTensorsIn(x, Join(key, KeyPart(k)), depth + 1);
      if (!st.ok()) break;
    }
  }
  if (st.ok() && (v->kind == Kind::kList || v->kind == Kind::kTuple || v->kind == Kind::kObject)) {
    for (size_t i = 0; i < v->items().size() && st.ok(); ++i) {
      st = WalkTensorsIn(v->items()[i], Join(key, std::to_string(i)), depth + 1);
    }
  }
  if (st.ok() && v->kind == Kind::kObject && v->state() != nullptr) {
    st = WalkTensorsIn(v->state(), key, depth + 1);
  }
  on_path_.erase(v);
  return st;
}

Status TorchFileBuilder::Walk(const Value* v, const std::string& key, size_t depth) {
  CKPT_RETURN_IF_ERROR(CountStep());
  if (v == nullptr) return AddLeaf(v, key);
  if (depth > kMaxKeyDepth) {
    return ResourceExhaustedError(StrCat(f_->name(), ": data.pkl: ", Quote(key),
                                         ": containers nested deeper than ", kMaxKeyDepth));
  }
  if (IsTensorRebuild(v)) return AddTensor(v, key);
  if (on_path_.count(v)) return AddLeaf(v, key);  // a cycle: report, do not follow
  bool container = (v->kind == Kind::kDict && !v->dict().empty()) ||
                   ((v->kind == Kind::kList || (v->kind == Kind::kTuple && !v->torch_size)) &&
                    !v->items().empty());
  if (!container) {
    CKPT_RETURN_IF_ERROR(AddLeaf(v, key));
    if (v->kind == Kind::kObject) return WalkTensorsIn(v, key, depth);
    return OkStatus();
  }
  on_path_.insert(v);
  Status st;
  if (v->kind == Kind::kDict) {
    for (const auto& [k, x] : v->dict()) {
      st = Walk(x, Join(key, KeyPart(k)), depth + 1);
      if (!st.ok()) break;
    }
  } else {
    for (size_t i = 0; i < v->items().size() && st.ok(); ++i) {
      st = Walk(v->items()[i], Join(key, std::to_string(i)), depth + 1);
    }
  }
  on_path_.erase(v);
  return st;
}

TorchFormat DetectTorchFormat(const ByteSource& src) {
  char head[8] = {};
  uint64_t n = std::min<uint64_t>(8, src.Size());
  if (!src.ReadAt(0, n, head).ok()) return TorchFormat::kUnknown;
  std::string_view h(head, n);
  if (h == "PYTORCH1") return TorchFormat::kTorchScriptV1;
  if (StartsWith(h, "PK\x03\x04") || StartsWith(h, "PK\x05\x06")) return TorchFormat::kZip;
  // tar: "ustar" at 257.
  if (src.Size() >= 262) {
    char magic[5];
    if (src.ReadAt(257, 5, magic).ok() && std::string_view(magic, 5) == "ustar") {
      return TorchFormat::kLegacyTar;
    }
  }
  // _legacy_save: PROTO 2, LONG1 0x1950a86a20f9469cfc6c (MAGIC_NUMBER).
  static constexpr char kLegacyMagic[] = "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
  if (src.Size() >= 14) {
    char b[14];
    if (src.ReadAt(0, 14, b).ok() && std::memcmp(b, kLegacyMagic, 14) == 0) {
      return TorchFormat::kLegacyPickle;
    }
  }
  return TorchFormat::kUnknown;
}

Result<std::unique_ptr<TorchFile>> TorchFile::Open(std::shared_ptr<const ByteSource> src,
                                                   pickle::Mode mode) {
  TorchOpenOptions o;
  o.mode = mode;
  return Open(std::move(src), o);
}

Result<std::unique_ptr<TorchFile>> TorchFile::Open(std::shared_ptr<const ByteSource> src,
                                                   const TorchOpenOptions& options) {
  if (src == nullptr) return InvalidArgumentError("torch: null source");
  const std::string name(src->Name());
  switch (DetectTorchFormat(*src)) {
    case TorchFormat::kLegacyPickle:
      return UnimplementedError(StrCat(name, ": legacy (pre-1.6, non-zip) torch.save format; "
                                             "re-save it with torch >= 1.6 (torch.save(torch.load(f)))"));
    case TorchFormat::kLegacyTar:
      return UnimplementedError(StrCat(name, ": legacy tar torch.save format (torch < 0.4); "
                                             "re-save it with torch >= 1.6"));
    case TorchFormat::kTorchScriptV1:
      return UnimplementedError(StrCat(name, ": legacy TorchScript (PYTORCH1) format"));
    case TorchFormat::kUnknown:
      return DataLossError(StrCat(name, ": not a torch.save file (no zip signature at offset 0)"));
    case TorchFormat::kZip:
      break;
  }
  CKPT_ASSIGN_OR_RETURN(zip::ZipReader zr, zip::ZipReader::Open(src));
  std::unique_ptr<TorchFile> f(new TorchFile(std::move(zr)));
  const auto& entries = f->zip_.entries();
  if (entries.empty()) return DataLossError(StrCat(name, ": archive has no records"));
  // PyTorchStreamReader::init: the folder of the first entry.
  size_t slash = entries[0].name.find('/');
  if (slash == std::string::npos || slash == 0) {
    return DataLossError(StrCat(name, ": first record ", Quote(entries[0].name),
                                " is not in a subdirectory (torch needs <archive>/...)"));
  }
  f->archive_name_ = entries[0].name.substr(0, slash);
  const std::string prefix = f->archive_name_ + "/";
  auto read_small = [&](std::string_view rec, std::string* out) -> Result<bool> {
    const zip::Entry* e = f->zip_.Find(prefix + std::string(rec));
    if (e == nullptr) return false;
    CKPT_ASSIGN_OR_RETURN(*out, f->zip_.ReadEntry(*e, 4096));
    return true;
  };
  std::string text;
  CKPT_ASSIGN_OR_RETURN(bool has_version, read_small("version", &text));
  if (!has_version) {
    CKPT_ASSIGN_OR_RETURN(has_version, read_small(".data/version", &text));
  }
  if (!has_version) {
    return DataLossError(StrCat(name, ": record ", Quote(prefix + "version"), " is missing"));
  }
  if (!ParseDecimalRecord(text, &f->version_)) {
    return DataLossError(StrCat(name, ": record ", Quote(prefix + "version"), " holds ",
                                Quote(text), ", not a number"));
  }
  if (f->version_ < 1 || f->version_ > kMaxTorchFileVersion) {
    return UnimplementedError(StrCat(name, ": file format version ", f->version_,
                                     " is outside the supported 1..", kMaxTorchFileVersion));
  }
  CKPT_ASSIGN_OR_RETURN(bool has_bo, read_small("byteorder", &text));
  f->has_byteorder_ = has_bo;
  if (has_bo) {
    if (text == "big") {
      f->big_endian_ = true;
    } else if (text != "little") {
      return DataLossError(StrCat(name, ": record ", Quote(prefix + "byteorder"), " holds ",
                                  Quote(text), ", not 'little' or 'big'"));
    }
  }
  CKPT_ASSIGN_OR_RETURN(bool has_fv, read_small(".format_version", &text));
  if (has_fv && !ParseDecimalRecord(text, &f->format_version_)) {
    return DataLossError(StrCat(name, ": record ", Quote(prefix + ".format_version"), " holds ",
                                Quote(text)));
  }
  CKPT_ASSIGN_OR_RETURN(bool has_al, read_small(".storage_alignment", &text));
  if (has_al && (!ParseDecimalRecord(text, &f->storage_alignment_) || f->storage_alignment_ == 0)) {
    return DataLossError(StrCat(name, ": record ", Quote(prefix + ".storage_alignment"),
                                " holds ", Quote(text)));
  }
  const zip::Entry* pkl = f->zip_.Find(prefix + "data.pkl");
  if (pkl == nullptr) {
    return DataLossError(StrCat(name, ": record ", Quote(prefix + "data.pkl"), " is missing"));
  }
  if (pkl->size > kMaxDataPklBytes) {
    return ResourceExhaustedError(StrCat(name, ": record ", Quote(pkl->name), " is ", pkl->size,
                                         " bytes, over the ", kMaxDataPklBytes, " limit"));
  }
  // data.pkl is read whole, its CRC-32 checked (as miniz's getRecord does),
  // and parsed under a name that makes pickle errors read
  // "model.pt/data.pkl: offset N: ...".
  CKPT_ASSIGN_OR_RETURN(std::string pkl_bytes, f->zip_.ReadEntry(*pkl, kMaxDataPklBytes));
  auto pkl_src = std::make_shared<StringSource>(std::move(pkl_bytes),
                                                StrCat(name, "/", pkl->name.substr(prefix.size())));
  pickle::UnpickleOptions uo = options.unpickle;
  uo.mode = options.mode;
  CKPT_ASSIGN_OR_RETURN(pickle::Unpickled u, pickle::Unpickle(*pkl_src, 0, uo));
  f->arena_ = std::move(u.arena);
  f->root_ = u.root;
  TorchFileBuilder b(f.get());
  b.leaf_cap_ = std::max<size_t>(1 << 20, 4 * f->arena_->size());
  CKPT_RETURN_IF_ERROR(b.Walk(f->root_, "", 0));
  return f;
}

const TensorRecord* TorchFile::FindTensor(std::string_view key) const {
  auto it = tensor_index_.find(std::string(key));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const StorageRecord* TorchFile::FindStorage(std::string_view key) const {
  auto it = storage_index_.find(std::string(key));
  return it == storage_index_.end() ? nullptr : &storages_[it->second];
}

Status TorchFile::ReadStorage(const StorageRecord& s, ByteSink* sink) const {
  if (s.entry == nullptr) return InternalError("torch: storage without a record");
  return zip_.CopyEntry(*s.entry, sink);
}

Status TorchFile::ReadTensorElements(const TensorRecord& t, uint64_t first, uint64_t count, ByteSink* sink) const {
  const uint64_t numel = static_cast<uint64_t>(t.numel);
  if (first > numel || count > numel - first) {
    return InvalidArgumentError(StrCat(name(), ": tensor ", Quote(t.key), ": elements [", first, ", ", first + count,
                                       ") outside its ", numel));
  }
  if (t.storage >= storages_.size()) return InternalError("torch: tensor without a storage");
  const StorageRecord& s = storages_[t.storage];
  const uint64_t es = static_cast<uint64_t>(DTypeSize(t.dtype));
  if (!t.contiguous || s.entry == nullptr || s.entry->method != 0 || big_endian_) {
    const std::vector<int64_t> whole{t.numel};
    Box all = Box::Whole(whole);
    Box part{{static_cast<int64_t>(first)}, {static_cast<int64_t>(count)}};
    RegionSink region(all, part, es, sink);
    CKPT_RETURN_IF_ERROR(ReadTensor(t, &region));
    return region.Finish();
  }
  const uint64_t base = static_cast<uint64_t>(t.storage_offset) * es + first * es;
  const uint64_t total = count * es;
  const size_t piece = static_cast<size_t>(std::min<uint64_t>(kReadChunkBytes, std::max<uint64_t>(total, 1)));
  std::unique_ptr<char[]> buf(new char[piece]);
  for (uint64_t off = 0; off < total;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(piece, total - off));
    CKPT_RETURN_IF_ERROR(zip_.ReadRange(*s.entry, base + off, n, buf.get()),
                         StrCat(name(), ": tensor ", Quote(t.key)));
    CKPT_RETURN_IF_ERROR(sink->Append(std::string_view(buf.get(), n)));
    off += n;
  }
  return OkStatus();
}

Status TorchFile::ReadTensor(const TensorRecord& t, ByteSink* sink, size_t chunk_bytes) const {
  if (t.storage >= storages_.size()) return InternalError("torch: tensor without a storage");
  if (chunk_bytes == 0) chunk_bytes = kReadChunkBytes;
  const StorageRecord& s = storages_[t.storage];
  const std::string ctx = StrCat(name(), ": tensor ", Quote(t.key));
  if (t.numel == 0) return OkStatus();
  const uint64_t es = static_cast<uint64_t>(DTypeSize(t.dtype));
  const size_t unit = big_endian_ ? SwapUnit(t.dtype) : 1;
  // Whole-record bytes for deflated storages (rare: recompressed archives).
  std::string inflated;
  if (s.entry->method != 0) {
    CKPT_ASSIGN_OR_RETURN(inflated, zip_.ReadEntry(*s.entry, s.nbytes), ctx);
  }
  auto read_range = [&](uint64_t off, size_t n, char* dst) -> Status {
    if (s.entry->method != 0) {
      if (!RangeInside(off, n, inflated.size())) return InternalError("torch: range outside storage");
      std::memcpy(dst, inflated.data() + off, n);
      return OkStatus();
    }
    return zip_.ReadRange(*s.entry, off, n, dst);
  };
  const uint64_t start = static_cast<uint64_t>(t.storage_offset) * es;  // validated at Open
  if (t.contiguous) {
    // Keep pieces whole elements so byte swapping never splits one. The
    // buffer is left uninitialized: every byte is read before it is used.
    size_t piece = static_cast<size_t>(std::min<uint64_t>(chunk_bytes, t.nbytes));
    piece -= piece % es;
    if (piece == 0) piece = static_cast<size_t>(es);
    std::unique_ptr<char[]> storage;
    try {
      storage.reset(new char[piece]);
    } catch (const std::bad_alloc&) {
      return ResourceExhaustedError(StrCat(ctx, ": cannot allocate a read buffer"));
    }
    char* const buf = storage.get();
    // A tensor that is its whole stored record (the usual case) is checked
    // against the record's CRC-32 as it streams, as torch's loader does.
    const bool check_crc = s.entry->method == 0 && start == 0 && t.nbytes == s.entry->size;
    uint32_t crc = 0;
    for (uint64_t off = 0; off < t.nbytes;) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(piece, t.nbytes - off));
      CKPT_RETURN_IF_ERROR(read_range(start + off, n, buf), ctx);
      if (check_crc) crc = Crc32(crc, buf, n);
      ByteSwapInPlace(buf, n, unit);
      CKPT_RETURN_IF_ERROR(sink->Append(std::string_view(buf, n)), ctx);
      off += n;
    }
    if (check_crc && static_cast<uint32_t>(crc) != s.entry->crc32) {
      return DataLossError(StrCat(ctx, ": record ", Quote(s.entry_name), " at offset ",
                                  s.entry->data_offset, ": CRC-32 mismatch: central directory says ",
                                  fmt::format("{:08x}", s.entry->crc32), ", data gives ",
                                  fmt::format("{:08x}", static_cast<uint32_t>(crc))));
    }
    return OkStatus();
  }
  // Strided: read the extent once, gather row-major.
  uint64_t last = static_cast<uint64_t>(t.storage_offset);
  for (size_t i = 0; i < t.shape.size(); ++i) {
    last += static_cast<uint64_t>(t.shape[i] - 1) * static_cast<uint64_t>(t.stride[i]);
  }
  const uint64_t extent = (last + 1) * es - start;
  std::string src_bytes, out;
  try {
    src_bytes.resize(static_cast<size_t>(extent));
    out.reserve(static_cast<size_t>(std::min<uint64_t>(chunk_bytes, t.nbytes)) + es);
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError(StrCat(ctx, ": cannot allocate ", extent,
                                         " bytes to gather a strided view"));
  }
  CKPT_RETURN_IF_ERROR(read_range(start, static_cast<size_t>(extent), src_bytes.data()), ctx);
  const size_t rank = t.shape.size();  // >= 1: numel > 1 and not contiguous
  const size_t inner = rank - 1;
  std::vector<int64_t> idx(rank, 0);
  const int64_t inner_n = t.shape[inner];
  const uint64_t inner_stride = static_cast<uint64_t>(t.stride[inner]) * es;
  for (;;) {
    uint64_t base = 0;
    for (size_t d = 0; d < inner; ++d) {
      base += static_cast<uint64_t>(idx[d]) * static_cast<uint64_t>(t.stride[d]) * es;
    }
    const char* p = src_bytes.data() + base;
    for (int64_t k = 0; k < inner_n; ++k) {
      out.append(p + static_cast<uint64_t>(k) * inner_stride, es);
      if (out.size() >= chunk_bytes) {
        ByteSwapInPlace(out.data(), out.size(), unit);
        CKPT_RETURN_IF_ERROR(sink->Append(out), ctx);
        out.clear();
      }
    }
    // Advance the outer dimensions like an odometer.
    ptrdiff_t d = static_cast<ptrdiff_t>(inner) - 1;
    while (d >= 0) {
      if (++idx[d] < t.shape[d]) break;
      idx[d] = 0;
      --d;
    }
    if (d < 0) break;
  }
  if (!out.empty()) {
    ByteSwapInPlace(out.data(), out.size(), unit);
    CKPT_RETURN_IF_ERROR(sink->Append(out), ctx);
  }
  return OkStatus();
}

}  // namespace ckpt::torch
