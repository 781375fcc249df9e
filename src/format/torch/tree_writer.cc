#include "format/torch/tree_writer.h"

#include <algorithm>

#include "format/pickle/pickler.h"
#include "format/pickle/unpickler.h"
#include "util/checked_math.h"
#include "util/strings.h"

namespace ckpt::torch {

using pickle::Kind;
using pickle::Value;

namespace {

// CPython keeps "" and one-character strings below U+0100 as singletons
// (unicode_latin1 / get_latin1_char); s is UTF-8.
bool IsSingletonStr(std::string_view s) {
  if (s.empty()) return true;
  const auto b0 = static_cast<unsigned char>(s[0]);
  if (s.size() == 1) return b0 < 0x80;
  return s.size() == 2 && (b0 == 0xC2 || b0 == 0xC3) && (static_cast<unsigned char>(s[1]) & 0xC0) == 0x80;
}

// str(b, 'latin1') as UTF-8.
std::string Utf8FromLatin1(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    const auto b = static_cast<unsigned char>(c);
    if (b < 0x80) {
      out += c;
    } else {
      out += static_cast<char>(0xC0 | (b >> 6));
      out += static_cast<char>(0x80 | (b & 0x3F));
    }
  }
  return out;
}

bool IsQuantized(DType d) {
  return d == DType::kQInt8 || d == DType::kQUInt8 || d == DType::kQInt32 || d == DType::kQUInt4x2 ||
         d == DType::kQUInt2x4;
}

}  // namespace

TorchTreeWriter::TorchTreeWriter() : arena_(std::make_unique<pickle::Arena>()) {
  storage_tag_ = arena_->String("storage");
}

Value* TorchTreeWriter::Str(std::string_view s) {
  if (!IsSingletonStr(s)) return arena_->String(std::string(s));
  auto it = single_str_.find(s);
  if (it == single_str_.end()) it = single_str_.emplace(std::string(s), arena_->String(std::string(s))).first;
  return it->second;
}

// _pickle.c save_bytes (protocol < 3) pickles b as
// _codecs.encode(b.decode('latin1'), 'latin1'): spelled out here as that
// call, so that the decoded str of a one-byte value is the latin-1 singleton
// (shared with every other such str in the stream, as in CPython's memo) and
// 'latin1' is one interned object for the whole tree.
Value* TorchTreeWriter::EncodedBytes(std::string_view s) {
  if (latin1_ == nullptr) latin1_ = arena_->String("latin1");
  std::string text = Utf8FromLatin1(s);
  Value* o = arena_->New(Kind::kObject);
  (*arena_).SetCallable(o, Global("_codecs", "encode"));
  (*arena_).SetArgs(o, arena_->Tuple({s.size() == 1 ? Str(text) : arena_->String(std::move(text)), latin1_}));
  return o;
}

Value* TorchTreeWriter::Bytes(std::string_view s) {
  if (s.size() > 1) return EncodedBytes(s);
  auto it = single_bytes_.find(s);
  if (it == single_bytes_.end()) {
    it = single_bytes_.emplace(std::string(s), s.empty() ? arena_->Bytes("") : EncodedBytes(s)).first;
  }
  return it->second;
}

Value* TorchTreeWriter::Global(std::string_view module, std::string_view name) {
  return arena_->Global(module, name);
}

// torch.serialization location_tag: "cpu", "mps", "meta" are constants (one
// object, memoized once); "cuda:0" and the like are built per call.
Value* TorchTreeWriter::Location(const std::string& loc) {
  if (loc.find(':') != std::string::npos) return arena_->String(loc);
  auto it = locations_.find(loc);
  if (it == locations_.end()) it = locations_.emplace(loc, arena_->String(loc)).first;
  return it->second;
}

Value* TorchTreeWriter::NewPid(size_t slot) {
  Value* placeholder = arena_->Tuple({});
  pid_slot_[placeholder] = slot;
  Value* pid = arena_->New(Kind::kPersistentId);
  (*arena_).Append(pid, placeholder);
  return pid;
}

Result<Value*> TorchTreeWriter::NewTensor(const TensorToSave& t) {
  if (IsQuantized(t.dtype)) {
    return UnimplementedError(StrCat("torch tree writer: quantized dtype ", DTypeName(t.dtype),
                                     " cannot be written"));
  }
  auto numel = CheckedNumel(t.shape);
  std::optional<uint64_t> nbytes;
  if (numel) nbytes = CheckedMul(static_cast<uint64_t>(*numel), DTypeSize(t.dtype));
  if (!nbytes || *nbytes != t.nbytes) {
    return InvalidArgumentError(StrCat("torch tree writer: tensor of shape with ", t.shape.size(),
                                       " dims: nbytes ", t.nbytes, " does not match its shape and dtype ",
                                       DTypeName(t.dtype)));
  }
  if (!t.write) return InvalidArgumentError("torch tree writer: tensor without a write callback");
  // torch/_tensor.py _reduce_ex_internal + torch/serialization.py persistent_id.
  const std::string_view legacy = DTypeLegacyStorage(t.dtype);
  const uint64_t es = static_cast<uint64_t>(DTypeSize(t.dtype));
  Slot s;
  s.nbytes = t.nbytes;
  s.storage_class = legacy.empty() ? Global("torch.storage", "UntypedStorage") : Global("torch", std::string(legacy));
  s.numel = arena_->Int(static_cast<int64_t>(legacy.empty() ? t.nbytes : t.nbytes / es));
  s.location = "cpu";
  s.write = t.write;
  slots_.push_back(std::move(s));
  Value* pid = NewPid(slots_.size() - 1);
  std::vector<Value*> size, stride;
  int64_t acc = 1;
  for (size_t i = t.shape.size(); i-- > 0;) {
    stride.push_back(arena_->Int(acc));
    acc *= std::max<int64_t>(t.shape[i], 1);  // contiguous strides skip 0-size dims
  }
  std::reverse(stride.begin(), stride.end());
  for (int64_t d : t.shape) size.push_back(arena_->Int(d));
  Value* hooks = arena_->Dict();  // a fresh OrderedDict() per tensor
  hooks->ordered = true;
  std::vector<Value*> args = {pid, arena_->Int(0), arena_->Tuple(std::move(size)), arena_->Tuple(std::move(stride)),
                              arena_->Bool(t.requires_grad), hooks};
  if (legacy.empty()) args.push_back(Global("torch", std::string(DTypeName(t.dtype))));
  Value* o = arena_->New(Kind::kObject);
  (*arena_).SetCallable(o, Global("torch._utils", legacy.empty() ? "_rebuild_tensor_v3" : "_rebuild_tensor_v2"));
  (*arena_).SetArgs(o, arena_->Tuple(std::move(args)));
  return o;
}

Result<Value*> TorchTreeWriter::Import(const TorchFile& file, Reopener reopen) {
  if (file.big_endian()) {
    return UnimplementedError(StrCat(file.name(), ": a big-endian torch.save archive cannot be grafted as stored"));
  }
  ImportState st;
  st.file = &file;
  st.reopen = std::make_shared<Reopener>(std::move(reopen));
  cur_ = &st;
  Result<Value*> r = Copy(file.root(), 0);
  cur_ = nullptr;
  if (!r.ok()) return r.status().WithContext(StrCat(file.name(), ": copying data.pkl"));
  return r;
}

Result<Value*> TorchTreeWriter::Copy(const Value* v, size_t depth) {
  if (v == nullptr) return static_cast<Value*>(nullptr);
  if (depth > pickle::kDefaultMaxDepth) {
    return ResourceExhaustedError(StrCat("object nesting deeper than ", pickle::kDefaultMaxDepth));
  }
  if (auto it = cur_->memo.find(v); it != cur_->memo.end()) return it->second;
  Value* out = nullptr;
  switch (v->kind) {
    case Kind::kString:
      out = IsSingletonStr(v->str()) ? Str(v->str()) : arena_->String(v->str());
      cur_->memo[v] = out;
      return out;
    case Kind::kBytes:
      if (v->bytearray) {  // bytearray(b) / bytearray(), b spelled as above
        out = arena_->New(Kind::kObject);
        (*arena_).SetCallable(out, Global("builtins", "bytearray"));
        (*arena_).SetArgs(out, v->str().empty() ? arena_->Tuple({}) : arena_->Tuple({Bytes(v->str())}));
      } else {
        out = Bytes(v->str());
      }
      cur_->memo[v] = out;
      return out;
    case Kind::kPersistentId: {
      const Value* pid = v->items().empty() ? nullptr : v->items()[0];
      const std::span<Value* const>* items = nullptr;
      std::span<Value* const> pid_items;
      if (pid && (pid->kind == Kind::kTuple || pid->kind == Kind::kList)) {
        pid_items = pid->items();
        items = &pid_items;
      }
      if (items == nullptr || items->size() < 5 || (*items)[2] == nullptr || (*items)[2]->kind != Kind::kString ||
          (*items)[1] == nullptr || (*items)[1]->kind != Kind::kGlobal || (*items)[4] == nullptr) {
        return FailedPreconditionError(StrCat("persistent id ", pickle::Repr(pid, 80),
                                              " at byte ", v->offset, " is not a storage reference"));
      }
      const std::string key((*items)[2]->str());
      auto it = cur_->slot_of_key.find(key);
      if (it == cur_->slot_of_key.end()) {
        const StorageRecord* rec = cur_->file->FindStorage(key);
        if (rec == nullptr) {
          return FailedPreconditionError(StrCat("persistent id at byte ", v->offset, " names storage ",
                                                Quote(key), ", which the archive does not hold"));
        }
        Slot s;
        s.nbytes = rec->nbytes;
        s.storage_class = Global((*items)[1]->str(), (*items)[1]->name());
        CKPT_ASSIGN_OR_RETURN(s.numel, Copy((*items)[4], depth + 1));
        s.location = rec->location;
        for (size_t i = 5; i < items->size(); ++i) {
          CKPT_ASSIGN_OR_RETURN(Value * x, Copy((*items)[i], depth + 1));
          s.extra.push_back(x);
        }
        std::shared_ptr<Reopener> reopen = cur_->reopen;
        const uint64_t nbytes = rec->nbytes;
        s.write = [reopen, key, nbytes](ByteSink* sink) -> Status {
          CKPT_ASSIGN_OR_RETURN(std::shared_ptr<const TorchFile> f, (*reopen)());
          const StorageRecord* r = f->FindStorage(key);
          if (r == nullptr || r->nbytes != nbytes) {
            return FailedPreconditionError(StrCat(f->name(), ": storage ", Quote(key),
                                                  " changed since the tree was built"));
          }
          return f->ReadStorage(*r, sink);
        };
        slots_.push_back(std::move(s));
        it = cur_->slot_of_key.emplace(key, slots_.size() - 1).first;
      }
      out = NewPid(it->second);  // persistent ids are never memoized
      return out;
    }
    default:
      break;
  }
  if (v->kind == Kind::kString || v->kind == Kind::kBytes || v->kind == Kind::kBigInt) {
    out = arena_->Chars(v->kind, v->str());
  } else if (v->kind == Kind::kGlobal) {
    out = arena_->Global(v->str(), v->name());
  } else {
    out = arena_->New(v->kind);
    if (v->kind == Kind::kFloat) {
      out->f = v->f;
    } else if (v->kind == Kind::kInt || v->kind == Kind::kBool) {
      out->i = v->i;
    }
  }
  cur_->memo[v] = out;  // before the children: cycles come back here
  pickle::CopySpelling(out, v);
  for (const Value* c : v->items()) {
    CKPT_ASSIGN_OR_RETURN(Value * x, Copy(c, depth + 1));
    (*arena_).Append(out, x);
  }
  for (const auto& [k, val] : v->dict()) {
    CKPT_ASSIGN_OR_RETURN(Value * ck, Copy(k, depth + 1));
    CKPT_ASSIGN_OR_RETURN(Value * cv, Copy(val, depth + 1));
    (*arena_).SetItem(out, ck, cv);
  }
  if (v->kind == Kind::kObject) {
    CKPT_ASSIGN_OR_RETURN(Value * callable, Copy(v->callable(), depth + 1));
    CKPT_ASSIGN_OR_RETURN(Value * args, Copy(v->args(), depth + 1));
    CKPT_ASSIGN_OR_RETURN(Value * kwargs, Copy(v->kwargs(), depth + 1));
    arena_->SetCallable(out, callable);
    arena_->SetArgs(out, args);
    arena_->SetKwargs(out, kwargs);
  }
  // _pickle.c load_build sets a plain dict state into the instance __dict__
  // with interned keys; pickling the object again writes those keys. The
  // interned one-character names are not the latin-1 singletons (CPython
  // 3.11 keeps both), so they get their own table.
  const Value* state = v->state();
  if (v->kind == Kind::kObject && v->newobj && state != nullptr && state->kind == Kind::kDict &&
      cur_->memo.find(state) == cur_->memo.end()) {
    Value* cs = arena_->Dict();
    cur_->memo[state] = cs;
    for (const auto& [k, val] : state->dict()) {
      Value* ck = nullptr;
      if (k != nullptr && k->kind == Kind::kString) {
        auto it = interned_.find(k->str());
        if (it == interned_.end()) it = interned_.emplace(k->str(), arena_->String(k->str())).first;
        ck = it->second;
      } else {
        CKPT_ASSIGN_OR_RETURN(ck, Copy(k, depth + 2));
      }
      CKPT_ASSIGN_OR_RETURN(Value * cv, Copy(val, depth + 2));
      (*arena_).SetItem(cs, ck, cv);
    }
    (*arena_).SetState(out, cs);
  } else {
    CKPT_ASSIGN_OR_RETURN(Value * cs, Copy(state, depth + 1));
    if (cs != nullptr) arena_->SetState(out, cs);
  }
  return out;
}

Status TorchTreeWriter::Write(const Value* root, ByteSink* sink, const TorchWriteOptions& options) {
  std::vector<size_t> order;
  for (Slot& s : slots_) s.key = nullptr;
  pickle::PickleOptions po;
  po.persistent_id = [&](const Value& pid) -> Result<const Value*> {
    auto it = pid_slot_.find(&pid);
    if (it == pid_slot_.end()) {
      return InternalError("torch tree writer: a persistent id not made by this writer");
    }
    Slot& s = slots_[it->second];
    if (s.key == nullptr) {
      s.key = arena_->String(std::to_string(order.size()));
      order.push_back(it->second);
    }
    std::vector<Value*> items = {storage_tag_, s.storage_class, s.key, Location(s.location), s.numel};
    items.insert(items.end(), s.extra.begin(), s.extra.end());
    return static_cast<const Value*>(arena_->Tuple(std::move(items)));
  };
  CKPT_ASSIGN_OR_RETURN(std::string pkl, pickle::PickleToString(root, po), "torch tree writer: data.pkl");
  std::vector<StorageToWrite> storages;
  storages.reserve(order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    const Slot& s = slots_[order[i]];
    storages.push_back({s.nbytes, [&s, i](ByteSink* out) -> Status {
                          return s.write(out).WithContext(StrCat("storage ", i));
                        }});
  }
  return WriteTorchArchive(pkl, storages, sink, options);
}

}  // namespace ckpt::torch
