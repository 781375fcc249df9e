#include "format/pickle/pickler.h"

#include <cstring>
#include <unordered_map>

#include "format/pickle/allowlist.h"
#include "format/pickle/internal.h"
#include "util/coding.h"
#include "util/strings.h"

namespace ckpt::pickle {
namespace {

constexpr size_t kBatchSize = 1000;     // pickle.py _BATCHSIZE
constexpr size_t kFlushBytes = 1 << 16;

// The interned 'latin1' constant _pickle.c passes to _codecs.encode: one object
// for the whole stream, so memoized once.
constexpr char kLatin1Tag = 0;

class Pickler {
 public:
  Pickler(ByteSink* sink, const PickleOptions& opts) : sink_(sink), opts_(opts) {}

  Status Run(const Value* root) {
    if (root == nullptr) return InvalidArgumentError("pickle: null root value");
    out_ += "\x80\x02";
    CKPT_RETURN_IF_ERROR(Save(root));
    out_ += '.';
    return Flush();
  }

 private:
  Status Flush() {
    if (out_.empty()) return OkStatus();
    Status st = sink_->Append(out_);
    out_.clear();
    return st;
  }
  Status MaybeFlush() { return out_.size() >= kFlushBytes ? Flush() : OkStatus(); }

  void Op(char c) { out_ += c; }
  void U32(uint32_t v) { PutLE<uint32_t>(&out_, v); }

  // BINPUT / LONG_BINPUT of the next memo slot; key may be null (a fresh
  // temporary object nobody can refer to again).
  void Memoize(const void* key) {
    uint32_t idx = next_memo_++;
    if (idx < 256) {
      out_ += 'q';
      out_ += static_cast<char>(idx);
    } else {
      out_ += 'r';
      U32(idx);
    }
    if (key != nullptr) memo_[key] = idx;
  }
  void Get(uint32_t idx) {
    if (idx < 256) {
      out_ += 'h';
      out_ += static_cast<char>(idx);
    } else {
      out_ += 'j';
      U32(idx);
    }
  }
  bool MemoGet(const void* key) {
    auto it = memo_.find(key);
    if (it == memo_.end()) return false;
    Get(it->second);
    return true;
  }

  void SaveInt(int64_t x) {
    if (x >= 0 && x <= 0xFF) {
      out_ += 'K';
      out_ += static_cast<char>(x);
    } else if (x >= 0 && x <= 0xFFFF) {
      out_ += 'M';
      PutLE<uint16_t>(&out_, static_cast<uint16_t>(x));
    } else if (x >= INT32_MIN && x <= INT32_MAX) {
      out_ += 'J';
      PutLE<int32_t>(&out_, static_cast<int32_t>(x));
    } else {
      // encode_long: nbytes = bit_length(|x|) / 8 + 1, then drop a redundant
      // 0xff for negatives.
      uint64_t mag = x < 0 ? uint64_t{0} - static_cast<uint64_t>(x) : static_cast<uint64_t>(x);
      int nbits = 64 - __builtin_clzll(mag);
      int nbytes = nbits / 8 + 1;
      unsigned char b[9];
      uint64_t u = static_cast<uint64_t>(x);
      for (int k = 0; k < 9; ++k) b[k] = k < 8 ? static_cast<unsigned char>(u >> (8 * k)) : (x < 0 ? 0xFF : 0);
      if (x < 0 && nbytes > 1 && b[nbytes - 1] == 0xFF && (b[nbytes - 2] & 0x80)) --nbytes;
      out_ += '\x8a';
      out_ += static_cast<char>(nbytes);
      out_.append(reinterpret_cast<const char*>(b), nbytes);
    }
  }

  void SaveStrRaw(std::string_view s, const void* key) {
    out_ += 'X';
    U32(static_cast<uint32_t>(s.size()));
    out_ += s;
    Memoize(key);
  }

  Status SaveGlobal(std::string_view module, std::string_view name) {
    std::string key = StrCat(module, "\n", name);
    auto it = global_memo_.find(key);
    if (it != global_memo_.end()) {
      Get(it->second);
      return OkStatus();
    }
    auto [m, n] = Py2Global(module, name);
    if (m.find('\n') != std::string::npos || n.find('\n') != std::string::npos) {
      return InvalidArgumentError(StrCat("pickle: global name ", Quote(m + "." + n),
                                         " contains a newline"));
    }
    out_ += 'c';
    out_ += m;
    out_ += '\n';
    out_ += n;
    out_ += '\n';
    global_memo_.emplace(std::move(key), next_memo_);
    Memoize(nullptr);
    return OkStatus();
  }

  // Writes items of a fresh tuple (never referenced again) and memoizes it.
  Status SaveFreshTuple(std::span<Value* const> items) {
    if (items.empty()) {
      Op(')');
      return OkStatus();
    }
    if (items.size() > 3) Op('(');
    for (const Value* v : items) CKPT_RETURN_IF_ERROR(Save(v));
    Op(items.size() > 3 ? 't' : static_cast<char>(0x84 + items.size()));
    Memoize(nullptr);
    return OkStatus();
  }

  // _pickle.c batch_list_exact: one item -> APPEND; else MARK..APPENDS by 1000.
  Status AppendsExact(std::span<Value* const> items) {
    if (items.empty()) return OkStatus();
    if (items.size() == 1) {
      CKPT_RETURN_IF_ERROR(Save(items[0]));
      Op('a');
      return OkStatus();
    }
    size_t total = 0;
    do {
      Op('(');
      size_t batch = 0;
      while (total < items.size()) {
        CKPT_RETURN_IF_ERROR(Save(items[total]));
        ++total;
        if (++batch == kBatchSize) break;
      }
      Op('e');
    } while (total < items.size());
    return OkStatus();
  }

  // _pickle.c batch_list (from an iterator): per batch, a lone item -> APPEND.
  Status AppendsIter(std::span<Value* const> items) {
    size_t i = 0;
    while (i < items.size()) {
      size_t n = std::min(kBatchSize, items.size() - i);
      if (n == 1) {
        CKPT_RETURN_IF_ERROR(Save(items[i]));
        Op('a');
      } else {
        Op('(');
        for (size_t k = 0; k < n; ++k) CKPT_RETURN_IF_ERROR(Save(items[i + k]));
        Op('e');
      }
      i += n;
    }
    return OkStatus();
  }

  Status SavePair(const std::pair<Value*, Value*>& kv) {
    CKPT_RETURN_IF_ERROR(Save(kv.first));
    return Save(kv.second);
  }

  // _pickle.c batch_dict_exact: one item -> SETITEM; else MARK..SETITEMS by
  // 1000, with an empty trailing batch when the size is a multiple of 1000.
  Status SetItemsExact(std::span<const Pair> items) {
    if (items.empty()) return OkStatus();
    if (items.size() == 1) {
      CKPT_RETURN_IF_ERROR(SavePair(items[0]));
      Op('s');
      return OkStatus();
    }
    size_t pos = 0;
    size_t i;
    do {
      i = 0;
      Op('(');
      while (pos < items.size()) {
        CKPT_RETURN_IF_ERROR(SavePair(items[pos++]));
        if (++i == kBatchSize) break;
      }
      Op('u');
    } while (i == kBatchSize);
    return OkStatus();
  }

  // _pickle.c batch_dict (from an iterator): per batch, a lone item -> SETITEM.
  Status SetItemsIter(std::span<const Pair> items) {
    size_t i = 0;
    while (i < items.size()) {
      size_t n = std::min(kBatchSize, items.size() - i);
      if (n == 1) {
        CKPT_RETURN_IF_ERROR(SavePair(items[i]));
        Op('s');
      } else {
        Op('(');
        for (size_t k = 0; k < n; ++k) CKPT_RETURN_IF_ERROR(SavePair(items[i + k]));
        Op('u');
      }
      i += n;
    }
    return OkStatus();
  }

  // save_reduce's tail: memoize obj (or, if args referred back to it, POP and
  // fetch it, as pickle.py does for recursive reductions).
  void MemoizeReduced(const Value* v) {
    auto it = memo_.find(v);
    if (it != memo_.end()) {
      Op('0');
      Get(it->second);
    } else {
      Memoize(v);
    }
  }

  Status SaveBytes(const Value* v) {
    if (v->bytearray) {
      CKPT_RETURN_IF_ERROR(SaveGlobal("builtins", "bytearray"));
      if (v->str().empty()) {
        Op(')');
      } else {
        CKPT_RETURN_IF_ERROR(SaveBytesBody(v->str(), nullptr));  // bytes(obj): fresh
        Op('\x85');
        Memoize(nullptr);
      }
      Op('R');
      MemoizeReduced(v);
      return OkStatus();
    }
    return SaveBytesBody(v->str(), v);
  }

  // _pickle.c save_bytes for protocol < 3.
  Status SaveBytesBody(std::string_view bytes, const Value* key) {
    if (bytes.empty()) {
      CKPT_RETURN_IF_ERROR(SaveGlobal("builtins", "bytes"));
      Op(')');
    } else {
      CKPT_RETURN_IF_ERROR(SaveGlobal("_codecs", "encode"));
      SaveStrRaw(internal_pickle::Utf8FromLatin1(bytes), nullptr);
      if (!MemoGet(&kLatin1Tag)) SaveStrRaw("latin1", &kLatin1Tag);
      Op('\x86');
      Memoize(nullptr);
    }
    Op('R');
    if (key != nullptr) {
      MemoizeReduced(key);
    } else {
      Memoize(nullptr);
    }
    return OkStatus();
  }

  Status SaveTuple(const Value* v) {
    const auto& items = v->items();
    if (items.empty()) {
      Op(')');
      return OkStatus();
    }
    if (items.size() > 3) Op('(');
    for (const Value* x : items) CKPT_RETURN_IF_ERROR(Save(x));
    auto it = memo_.find(v);
    if (it != memo_.end()) {
      // The tuple was pickled while saving its own items (a cycle through a
      // mutable): drop the items and fetch it.
      if (items.size() > 3) {
        Op('1');
      } else {
        for (size_t k = 0; k < items.size(); ++k) Op('0');
      }
      Get(it->second);
      return OkStatus();
    }
    Op(items.size() > 3 ? 't' : static_cast<char>(0x84 + items.size()));
    Memoize(v);
    return OkStatus();
  }

  Status SaveObject(const Value* v) {
    if (v->callable() == nullptr) return InvalidArgumentError("pickle: object without a callable");
    if (v->kwargs() != nullptr) {
      CKPT_RETURN_IF_ERROR(SaveGlobal("copyreg", "__newobj_ex__"));
      CKPT_RETURN_IF_ERROR(Save(v->callable()));
      if (v->args() != nullptr) {
        CKPT_RETURN_IF_ERROR(Save(v->args()));
      } else {
        Op(')');
      }
      CKPT_RETURN_IF_ERROR(Save(v->kwargs()));
      Op('\x87');
      Memoize(nullptr);
      Op('R');
    } else {
      CKPT_RETURN_IF_ERROR(Save(v->callable()));
      if (v->args() != nullptr) {
        CKPT_RETURN_IF_ERROR(Save(v->args()));
      } else {
        Op(')');
      }
      Op(v->newobj ? '\x81' : 'R');
    }
    MemoizeReduced(v);
    CKPT_RETURN_IF_ERROR(AppendsIter(v->items()));
    CKPT_RETURN_IF_ERROR(SetItemsIter(v->dict()));
    if (v->state() != nullptr) {
      CKPT_RETURN_IF_ERROR(Save(v->state()));
      Op('b');
    }
    return OkStatus();
  }

  Status Save(const Value* v) {
    if (v == nullptr) return InvalidArgumentError("pickle: null value in the graph");
    if (depth_ >= opts_.max_depth) {
      return ResourceExhaustedError(
          StrCat("pickle: values nested deeper than ", opts_.max_depth));
    }
    ++depth_;
    Status st = SaveInner(v);
    --depth_;
    if (!st.ok()) return st;
    return MaybeFlush();
  }

  Status SaveInner(const Value* v) {
    switch (v->kind) {
      case Kind::kNone: Op('N'); return OkStatus();
      case Kind::kBool: Op(v->i ? '\x88' : '\x89'); return OkStatus();
      case Kind::kInt: SaveInt(v->i); return OkStatus();
      case Kind::kBigInt:
        if (v->str().size() < 256) {
          Op('\x8a');
          out_ += static_cast<char>(v->str().size());
        } else {
          Op('\x8b');
          PutLE<int32_t>(&out_, static_cast<int32_t>(v->str().size()));
        }
        out_ += v->str();
        return OkStatus();
      case Kind::kFloat: {
        uint64_t bits;
        std::memcpy(&bits, &v->f, 8);
        Op('G');
        PutBE64(&out_, bits);
        return OkStatus();
      }
      case Kind::kGlobal: return SaveGlobal(v->str(), v->name());
      case Kind::kPersistentId: {
        if (v->items().empty()) return InvalidArgumentError("pickle: persistent id without a value");
        const Value* pid = v->items()[0];
        if (opts_.persistent_id) {
          CKPT_ASSIGN_OR_RETURN(pid, opts_.persistent_id(*pid));
        }
        CKPT_RETURN_IF_ERROR(Save(pid));
        Op('Q');
        return OkStatus();
      }
      default: break;
    }
    if (MemoGet(v)) return OkStatus();
    switch (v->kind) {
      case Kind::kString: SaveStrRaw(v->str(), v); return OkStatus();
      case Kind::kBytes: return SaveBytes(v);
      case Kind::kTuple:
        if (v->torch_size) {
          CKPT_RETURN_IF_ERROR(SaveGlobal("torch", "Size"));
          CKPT_RETURN_IF_ERROR(SaveFreshTuple(v->items()));
          Op('\x85');
          Memoize(nullptr);
          Op('R');
          MemoizeReduced(v);
          return OkStatus();
        }
        return SaveTuple(v);
      case Kind::kList:
        Op(']');
        Memoize(v);
        return AppendsExact(v->items());
      case Kind::kDict:
        if (v->ordered) {
          CKPT_RETURN_IF_ERROR(SaveGlobal("collections", "OrderedDict"));
          Op(')');
          Op('R');
          MemoizeReduced(v);
          CKPT_RETURN_IF_ERROR(SetItemsIter(v->dict()));
          if (v->state() != nullptr) {
            CKPT_RETURN_IF_ERROR(Save(v->state()));
            Op('b');
          }
          return OkStatus();
        }
        Op('}');
        Memoize(v);
        return SetItemsExact(v->dict());
      case Kind::kSet:
        CKPT_RETURN_IF_ERROR(SaveGlobal("builtins", v->frozen ? "frozenset" : "set"));
        Op(']');
        Memoize(nullptr);
        CKPT_RETURN_IF_ERROR(AppendsExact(v->items()));
        Op('\x85');
        Memoize(nullptr);
        Op('R');
        MemoizeReduced(v);
        return OkStatus();
      case Kind::kObject: return SaveObject(v);
      default:
        return InternalError(StrCat("pickle: unhandled kind ", KindName(v->kind)));
    }
  }

  ByteSink* sink_;
  const PickleOptions& opts_;
  std::string out_;
  std::unordered_map<const void*, uint32_t> memo_;
  std::unordered_map<std::string, uint32_t> global_memo_;
  uint32_t next_memo_ = 0;
  size_t depth_ = 0;
};

}  // namespace

Status Pickle(const Value* root, ByteSink* sink, const PickleOptions& options) {
  Pickler p(sink, options);
  return p.Run(root);
}

Result<std::string> PickleToString(const Value* root, const PickleOptions& options) {
  StringSink sink;
  CKPT_RETURN_IF_ERROR(Pickle(root, &sink, options));
  return sink.Release();
}

}  // namespace ckpt::pickle
