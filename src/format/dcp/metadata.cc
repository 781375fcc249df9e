#include "format/dcp/metadata.h"

#include <algorithm>
#include <charconv>
#include <deque>
#include <set>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>

#include "format/pickle/unpickler.h"
#include "format/pickle/value.h"
#include "util/strings.h"

namespace ckpt::dcp {
namespace {

using pickle::Kind;
using pickle::Value;

// Megatron-Core's Metadata subclasses and plan classes (kept importable by
// current Megatron only so that old pickles load).
constexpr pickle::AllowedGlobal kExtraAllowed[] = {
    {"megatron.core.dist_checkpointing.strategies.torch", "MCoreMetadata"},
    {"megatron.core.dist_checkpointing.strategies.torch", "MCoreSavePlan"},
};

class Parser {
 public:
  Parser(const ByteSource& src, bool read_flat) : src_(src), read_flat_(read_flat) {}

  // A tuple or list of ints checked as IntTuple does, kept in the store.
  template <typename What>
  Result<std::span<const int64_t>> KeptInts(const Value* v, const What& what) const {
    CKPT_ASSIGN_OR_RETURN(std::vector<int64_t> ints, IntTuple(v, what));
    return store_->Keep(ints);
  }

  Status Fail(const Value* at, std::string_view what) const {
    return DataLossError(StrCat(src_.Name(), ": .metadata", at ? StrCat(" (pickle offset ", at->offset, ")") : "",
                                ": ", what));
  }

  // The attribute dict of a dataclass-like object: BUILD state as a dict, or
  // the dict half of a (dict-or-None, slots-dict) pair, merged. Empty when
  // the object had no BUILD.
  // A view of (at most two) attribute dicts; nothing is copied.
  struct Attrs {
    const Value* dicts[2] = {nullptr, nullptr};
    // The value of the last str key equal to name, as Python's setstate
    // leaves it (a repeated key's last value; the slots dict after the
    // other); nullptr if absent.
    const Value* Get(std::string_view name) const {
      const Value* found = nullptr;
      for (const Value* d : dicts) {
        if (d == nullptr) continue;
        for (const auto& [k, v] : d->dict()) {
          if (k->kind == Kind::kString && k->str() == name) found = v;
        }
      }
      return found;
    }
    template <typename F>
    void ForEach(F&& f) const {
      for (const Value* d : dicts) {
        if (d == nullptr) continue;
        for (const auto& [k, v] : d->dict()) {
          if (k->kind == Kind::kString) f(k->str(), v);
        }
      }
    }
  };
  Attrs Attributes(const Value* obj) const {
    Attrs out;
    auto dict_or_null = [](const Value* d) { return d != nullptr && d->kind == Kind::kDict ? d : nullptr; };
    if (obj == nullptr || obj->kind != Kind::kObject || obj->state() == nullptr) return out;
    const Value* st = obj->state();
    if (st->kind == Kind::kDict) {
      out.dicts[0] = st;
    } else if (st->kind == Kind::kTuple && st->items().size() == 2) {
      out.dicts[0] = dict_or_null(st->items()[0]);
      out.dicts[1] = dict_or_null(st->items()[1]);
    }
    return out;
  }

  static const Value* Attr(const Attrs& attrs, std::string_view name) { return attrs.Get(name); }

  // Error context, built only when an error is reported: a string, or a
  // callable returning one.
  template <typename What>
  static std::string Text(const What& what) {
    if constexpr (std::is_invocable_v<const What&>) {
      return what();
    } else {
      return std::string(what);
    }
  }

  static std::string ClassOf(const Value* v) {
    if (v && v->kind == Kind::kObject && v->callable() && v->callable()->kind == Kind::kGlobal) {
      return StrCat(v->callable()->str(), ".", v->callable()->name());
    }
    return v ? pickle::TypeName(v) : "None";
  }
  static bool IsClass(const Value* v, std::string_view name) {
    return v && v->kind == Kind::kObject && v->callable() && v->callable()->kind == Kind::kGlobal &&
           v->callable()->name() == name;
  }

  template <typename What>
  Result<std::vector<int64_t>> IntTuple(const Value* v, const What& what) const {
    if (v == nullptr || (v->kind != Kind::kTuple && v->kind != Kind::kList)) {
      return Fail(v, StrCat(Text(what), ": expected a torch.Size (tuple of ints), found ",
                            v ? pickle::TypeName(v) : "nothing"));
    }
    std::vector<int64_t> out;
    out.reserve(v->items().size());
    for (const Value* e : v->items()) {
      if (e->kind != Kind::kInt && e->kind != Kind::kBool) {
        return Fail(e, StrCat(Text(what), ": expected an int, found ", pickle::TypeName(e)));
      }
      if (e->i < 0) return Fail(e, StrCat(Text(what), ": negative value ", e->i));
      out.push_back(e->i);
    }
    return out;
  }

  template <typename What>
  Result<int64_t> NonNegInt(const Value* v, const What& what) const {
    if (v == nullptr || v->kind != Kind::kInt || v->i < 0) {
      return Fail(v, StrCat(Text(what), ": expected a non-negative int, found ",
                            v ? pickle::Repr(v, 40) : "nothing"));
    }
    return v->i;
  }

  static std::string Text(const Value* v) {
    if (v == nullptr || v->kind == Kind::kNone) return "";
    if (v->kind == Kind::kString) return std::string(v->str());
    // pathlib.PosixPath('/', 'a', 'b') -> "/a/b"
    if (v->kind == Kind::kObject && v->args() && v->args()->kind == Kind::kTuple) {
      std::string out;
      for (const Value* part : v->args()->items()) {
        if (part->kind != Kind::kString) return pickle::Repr(v, 200);
        if (!out.empty() && out.back() != '/') out += '/';
        out += part->str();
      }
      return out;
    }
    return pickle::Repr(v, 200);
  }

  Status ParseProperties(const Value* props, Entry* e) const {
    const std::string what = StrCat("tensor ", Quote(e->key), " properties");
    if (props == nullptr || props->kind != Kind::kObject) {
      return Fail(props, StrCat(what, ": expected TensorProperties, found ",
                                props ? pickle::TypeName(props) : "nothing"));
    }
    const Value* dtype = nullptr;
    const Value* layout = nullptr;
    const Value* requires_grad = nullptr;
    const Value* memory_format = nullptr;
    const Value* pin_memory = nullptr;
    const Value* st = props->state();
    if (st && st->kind == Kind::kTuple) {
      if (st->items().size() < 1) return Fail(st, StrCat(what, ": empty state tuple"));
      dtype = st->items()[0];
      if (st->items().size() > 1) layout = st->items()[1];
      if (st->items().size() > 2) requires_grad = st->items()[2];
      if (st->items().size() > 3) memory_format = st->items()[3];
      if (st->items().size() > 4) pin_memory = st->items()[4];
    } else {
      auto attrs = Attributes(props);
      dtype = Attr(attrs, "dtype");
      layout = Attr(attrs, "layout");
      requires_grad = Attr(attrs, "requires_grad");
      memory_format = Attr(attrs, "memory_format");
      pin_memory = Attr(attrs, "pin_memory");
    }
    if (dtype == nullptr || dtype->kind != Kind::kGlobal || dtype->str() != "torch") {
      return Fail(dtype ? dtype : props,
                  StrCat(what, ": expected a torch dtype, found ", dtype ? pickle::Repr(dtype, 60) : "nothing"));
    }
    std::optional<DType> dt = DTypeFromName(dtype->name());
    if (!dt) {
      return UnimplementedError(StrCat(src_.Name(), ": .metadata: tensor ", Quote(e->key), " has dtype torch.",
                                       dtype->name(), ", which ckptkit does not know"));
    }
    e->dtype = *dt;
    if (layout) {
      if (layout->kind == Kind::kGlobal) {
        e->layout = layout->name();
      } else if (layout->kind == Kind::kObject && layout->args() && layout->args()->kind == Kind::kTuple &&
                 layout->args()->items().size() == 1 && layout->args()->items()[0]->kind == Kind::kString) {
        // torch.serialization._get_layout('torch.strided')
        std::string name(layout->args()->items()[0]->str());
        e->layout = name.rfind("torch.", 0) == 0 ? name.substr(6) : name;
      }
    }
    if (requires_grad && requires_grad->kind == Kind::kBool) e->requires_grad = requires_grad->i != 0;
    if (pin_memory && pin_memory->kind == Kind::kBool) e->pin_memory = pin_memory->i != 0;
    if (memory_format && memory_format->kind == Kind::kObject && memory_format->args() &&
        memory_format->args()->kind == Kind::kTuple && memory_format->args()->items().size() == 1 &&
        memory_format->args()->items()[0]->kind == Kind::kInt) {
      e->memory_format = static_cast<int>(memory_format->args()->items()[0]->i);
    }
    return OkStatus();
  }

  Status ParseEntry(const std::string& key, const Value* v, Entry* e) {
    e->key = key;
    if (IsClass(v, "BytesStorageMetadata")) {
      e->type = EntryType::kBytes;
      return OkStatus();
    }
    if (!IsClass(v, "TensorStorageMetadata")) {
      return Fail(v, StrCat("entry ", Quote(key), ": expected TensorStorageMetadata or BytesStorageMetadata, found ",
                            ClassOf(v)));
    }
    e->type = EntryType::kTensor;
    auto attrs = Attributes(v);
    CKPT_RETURN_IF_ERROR(ParseProperties(Attr(attrs, "properties"), e));
    CKPT_ASSIGN_OR_RETURN(e->size, IntTuple(Attr(attrs, "size"), StrCat("tensor ", Quote(key), " size")));
    const Value* chunks = Attr(attrs, "chunks");
    if (chunks == nullptr || chunks->kind != Kind::kList) {
      return Fail(chunks ? chunks : v, StrCat("tensor ", Quote(key), ": expected a list of chunks"));
    }
    e->chunks.reserve(chunks->items().size());
    for (size_t c = 0; c < chunks->items().size(); ++c) {
      const Value* ch = chunks->items()[c];
      auto what = [&] { return StrCat("tensor ", Quote(key), " chunk ", c); };
      Chunk chunk;
      if (IsReduced(ch)) {
        CKPT_ASSIGN_OR_RETURN(ReducedChunk rc, Take(reduced_chunks_, ch));
        chunk.offsets = std::span<const int64_t>(rc.dims, rc.ndim);
        chunk.sizes = std::span<const int64_t>(rc.dims + rc.ndim, rc.nsizes);
      } else {
        if (!IsClass(ch, "ChunkStorageMetadata")) {
          return Fail(ch, StrCat(what(), ": expected ChunkStorageMetadata, found ", ClassOf(ch)));
        }
        CKPT_RETURN_IF_ERROR(ParseChunk(ch, what, &chunk));
      }
      if (chunk.offsets.size() != e->size.size() || chunk.sizes.size() != e->size.size()) {
        return Fail(ch, StrCat(what(), ": rank of offsets (", chunk.offsets.size(), ") / sizes (", chunk.sizes.size(),
                               ") differs from the tensor's rank ", e->size.size()));
      }
      e->chunks.push_back(std::move(chunk));
    }
    return OkStatus();
  }

  template <typename What>
  Status ParseChunk(const Value* ch, const What& what, Chunk* chunk) const {
    auto ca = Attributes(ch);
    CKPT_ASSIGN_OR_RETURN(chunk->offsets, KeptInts(Attr(ca, "offsets"), [&] { return StrCat(Text(what), " offsets"); }));
    CKPT_ASSIGN_OR_RETURN(chunk->sizes, KeptInts(Attr(ca, "sizes"), [&] { return StrCat(Text(what), " sizes"); }));
    return OkStatus();
  }

  // MetadataIndex(fqn, offset, index) -> the first fields of a StorageItem.
  Status ParseIndex(const Value* index, StorageItem* it) {
    if (!IsClass(index, "MetadataIndex")) {
      return Fail(index, StrCat("storage_data key: expected MetadataIndex, found ", ClassOf(index)));
    }
    auto ia = Attributes(index);
    const Value* fqn = Attr(ia, "fqn");
    if (fqn == nullptr || fqn->kind != Kind::kString) return Fail(index, "MetadataIndex without a str fqn");
    it->fqn = fqns_.Id(fqn->str());
    const Value* off = Attr(ia, "offset");
    if (off && off->kind != Kind::kNone) {
      it->has_offset = true;
      CKPT_ASSIGN_OR_RETURN(it->offset, KeptInts(off, [&] { return StrCat("MetadataIndex ", Quote(it->fqn), " offset"); }));
    }
    const Value* idx = Attr(ia, "index");
    if (idx && idx->kind == Kind::kInt) it->index = idx->i;
    return OkStatus();
  }

  // _StorageInfo(relative_path, offset, length[, transform_descriptors]) -> the rest.
  Status ParseInfo(const Value* info, StorageItem* it) {
    auto what = [&] { return StrCat("storage item ", Quote(it->fqn)); };
    if (!IsClass(info, "_StorageInfo")) {
      return Fail(info, StrCat(what(), ": expected _StorageInfo, found ", ClassOf(info)));
    }
    auto sa = Attributes(info);
    const Value* rel = Attr(sa, "relative_path");
    if (rel == nullptr || rel->kind != Kind::kString) return Fail(info, StrCat(what(), ": relative_path is not a str"));
    it->relative_path = paths_.Id(rel->str());
    CKPT_ASSIGN_OR_RETURN(int64_t o, NonNegInt(Attr(sa, "offset"), [&] { return StrCat(what(), " offset"); }));
    CKPT_ASSIGN_OR_RETURN(int64_t n, NonNegInt(Attr(sa, "length"), [&] { return StrCat(what(), " length"); }));
    it->offset_in_file = static_cast<uint64_t>(o);
    it->length = static_cast<uint64_t>(n);
    const Value* tds = Attr(sa, "transform_descriptors");
    if (tds && tds->kind != Kind::kNone) {
      if (tds->kind != Kind::kList && tds->kind != Kind::kTuple) {
        return Fail(tds, StrCat(what(), ": transform_descriptors is not a list"));
      }
      std::vector<std::string> list;
      for (const Value* d : tds->items()) {
        if (d->kind != Kind::kString) return Fail(d, StrCat(what(), ": transform descriptor is not a str"));
        list.emplace_back(d->str());
      }
      if (!list.empty()) it->transforms = store_->Keep(std::move(list));
    }
    return OkStatus();
  }

  Status ParseItem(const Value* index, const Value* info, StorageItem* it) {
    if (IsReduced(index)) {
      CKPT_ASSIGN_OR_RETURN(ReducedIndex ri, Take(reduced_indexes_, index));
      it->fqn = std::string_view(ri.fqn, ri.fqn_size);
      it->has_offset = ri.has_offset;
      it->offset = std::span<const int64_t>(ri.offset, ri.ndim);
      if (ri.has_index) it->index = ri.index;
    } else {
      CKPT_RETURN_IF_ERROR(ParseIndex(index, it));
    }
    return ParseInfoOf(info, it);
  }
  Status ParseInfoOf(const Value* info, StorageItem* it) {
    if (IsReduced(info)) {
      const ReducedInfo& ri = reduced_infos_[static_cast<size_t>(info->i)];
      it->relative_path = std::string_view(ri.path, ri.path_size);
      it->offset_in_file = ri.offset;
      it->length = ri.length;
      it->transforms = std::span<const std::string>(ri.transforms, ri.n_transforms);
      return OkStatus();
    }
    return ParseInfo(info, it);
  }

  // --- objects consumed while unpickling (pickle::Reducer) ---
  // A .metadata of a million chunks is ~30 million pickle values; the three
  // classes below make up nearly all of them. Each is parsed as soon as it is
  // read, what Parse needs is kept here, and the unpickler reuses the memory
  // of its values. An object that does not parse is kept as read and the
  // walk reports the error with its context.
  static constexpr std::string_view kReducedClasses[] = {"ChunkStorageMetadata", "MetadataIndex", "_StorageInfo"};
  // A million of each are pending at the end of unpickling: views into the
  // store, packed (32 and 40 bytes).
  struct ReducedChunk {  // a ChunkStorageMetadata: ndim offsets, then nsizes sizes
    const int64_t* dims = nullptr;
    uint32_t ndim = 0;
    uint32_t nsizes = 0;
  };
  struct ReducedIndex {  // a MetadataIndex
    const char* fqn = nullptr;
    const int64_t* offset = nullptr;
    int64_t index = 0;
    uint32_t fqn_size = 0;
    uint16_t ndim = 0;
    bool has_offset = false;
    bool has_index = false;
  };
  struct ReducedInfo {  // a _StorageInfo
    const char* path = nullptr;
    const std::string* transforms = nullptr;
    uint64_t offset = 0;
    uint64_t length = 0;
    uint32_t path_size = 0;
    uint32_t n_transforms = 0;
  };

  static bool IsReduced(const Value* v) { return v != nullptr && v->kind == Kind::kInt && v->reduced; }

  // What was kept of reduced objects of one class, in the order they were
  // read; the walk takes them in that same order, so each is moved out and
  // its memory released as it goes. An object taken out of order is copied; a
  // stand-in met again after it was taken (a crafted stream can DUP one) is an
  // error.
  template <typename T>
  struct Pending {
    std::deque<T> items;
    int64_t front = 0;  // the index of items.front()
    int64_t Add(T t) {
      items.push_back(std::move(t));
      return front + static_cast<int64_t>(items.size()) - 1;
    }
  };
  template <typename T>
  Result<T> Take(Pending<T>& p, const Value* stand_in) const {
    int64_t i = stand_in->i;
    if (i == p.front && !p.items.empty()) {
      T t = std::move(p.items.front());
      p.items.pop_front();
      ++p.front;
      return t;
    }
    if (i > p.front && i - p.front < static_cast<int64_t>(p.items.size())) return p.items[static_cast<size_t>(i - p.front)];
    return Fail(stand_in, "an object of storage_data or a chunk list appears twice");
  }

  using Field = pickle::Field;
  static const Field* Named(std::span<const Field> fields, std::string_view name) {
    for (const Field& f : fields) {
      if (f.name == name) return &f;
    }
    return nullptr;
  }
  // A tuple or list of non-negative ints (IntTuple's rule, without its errors).
  static bool NonNegInts(const Field* f) {
    if (f == nullptr || f->type != Field::Type::kInts) return false;
    for (int64_t i : f->ints) {
      if (i < 0) return false;
    }
    return true;
  }
  // A MetadataIndex's offsets: torch writes storage_data after every chunk,
  // the n-th item with offsets naming the n-th chunk, so the offsets are
  // usually that chunk's, already in the store (a million chunks: 16 MB).
  const int64_t* SharedOffsets(std::span<const int64_t> off) {
    const int64_t n = indexes_with_offsets_++;
    const auto& pending = reduced_chunks_;
    if (n >= pending.front && n - pending.front < static_cast<int64_t>(pending.items.size())) {
      const ReducedChunk& c = pending.items[static_cast<size_t>(n - pending.front)];
      if (std::equal(off.begin(), off.end(), c.dims, c.dims + c.ndim)) return c.dims;
    }
    std::span<int64_t> kept = store_->NewInts(off.size());
    std::copy(off.begin(), off.end(), kept.begin());
    return kept.data();
  }

  // A string kept once in the store, remembering the last one (consecutive
  // objects usually share it: the chunks of one tensor, the items of one file).
  struct Strings {
    explicit Strings(MetadataStore* s) : store(s) {}
    MetadataStore* store;
    std::unordered_set<std::string_view> kept;
    std::string_view last;
    bool has_last = false;
    std::string_view Id(std::string_view s) {
      if (!has_last || last != s) {
        auto f = kept.find(s);
        if (f == kept.end()) f = kept.insert(store->Keep(s)).first;
        last = *f;
        has_last = true;
      }
      return last;
    }
  };

  // What Parse needs of an object of kReducedClasses, read without copying
  // anything but numbers; nullopt when it does not parse (then it is kept and
  // the walk reports why).
  std::optional<int64_t> Reduce(std::string_view cls, std::span<const Field> fields) {
    if (cls == "ChunkStorageMetadata") {
      const Field* offsets = Named(fields, "offsets");
      const Field* sizes = Named(fields, "sizes");
      if (!NonNegInts(offsets) || !NonNegInts(sizes)) return std::nullopt;
      const size_t no = offsets->ints.size(), ns = sizes->ints.size();
      if (no > UINT32_MAX || ns > UINT32_MAX) return std::nullopt;
      std::span<int64_t> dims = store_->NewInts(no + ns);  // offsets, then sizes
      std::copy(offsets->ints.begin(), offsets->ints.end(), dims.begin());
      std::copy(sizes->ints.begin(), sizes->ints.end(), dims.begin() + static_cast<ptrdiff_t>(no));
      return reduced_chunks_.Add(ReducedChunk{dims.data(), static_cast<uint32_t>(no), static_cast<uint32_t>(ns)});
    }
    if (cls == "MetadataIndex") {
      const Field* fqn = Named(fields, "fqn");
      const Field* off = Named(fields, "offset");
      const Field* idx = Named(fields, "index");
      if (fqn == nullptr || fqn->type != Field::Type::kString) return std::nullopt;
      bool has_offset = off != nullptr && off->type != Field::Type::kNone;
      if (has_offset && (!NonNegInts(off) || off->ints.size() > UINT16_MAX)) return std::nullopt;
      const std::string_view name = fqns_.Id(fqn->str);
      if (name.size() > UINT32_MAX) return std::nullopt;
      ReducedIndex ri;
      ri.fqn = name.data();
      ri.fqn_size = static_cast<uint32_t>(name.size());
      ri.has_offset = has_offset;
      if (has_offset) {
        ri.offset = SharedOffsets(off->ints);
        ri.ndim = static_cast<uint16_t>(off->ints.size());
      }
      ri.has_index = idx != nullptr && idx->type == Field::Type::kInt;
      ri.index = ri.has_index ? idx->i : 0;
      return reduced_indexes_.Add(ri);
    }
    if (cls == "_StorageInfo") {
      const Field* rel = Named(fields, "relative_path");
      const Field* offset = Named(fields, "offset");
      const Field* length = Named(fields, "length");
      const Field* tds = Named(fields, "transform_descriptors");
      if (rel == nullptr || rel->type != Field::Type::kString) return std::nullopt;
      if (offset == nullptr || offset->type != Field::Type::kInt || offset->i < 0) return std::nullopt;
      if (length == nullptr || length->type != Field::Type::kInt || length->i < 0) return std::nullopt;
      ReducedInfo ri;
      if (tds != nullptr && tds->type != Field::Type::kNone) {
        // A list of str; the empty sequence reads as ints.
        if (tds->type == Field::Type::kStrings) {
          if (tds->strs.size() > UINT32_MAX) return std::nullopt;
          std::span<const std::string> kept =
              store_->Keep(std::vector<std::string>(tds->strs.begin(), tds->strs.end()));
          ri.transforms = kept.data();
          ri.n_transforms = static_cast<uint32_t>(kept.size());
        } else if (tds->type != Field::Type::kInts || !tds->ints.empty()) {
          return std::nullopt;
        }
      }
      const std::string_view path = paths_.Id(rel->str);
      if (path.size() > UINT32_MAX) return std::nullopt;
      ri.path = path.data();
      ri.path_size = static_cast<uint32_t>(path.size());
      ri.offset = static_cast<uint64_t>(offset->i);
      ri.length = static_cast<uint64_t>(length->i);
      reduced_infos_.push_back(ri);
      return static_cast<int64_t>(reduced_infos_.size() - 1);
    }
    return std::nullopt;
  }

  Result<Metadata> Parse() {
    if (src_.Size() > kMaxMetadataBytes) {
      return ResourceExhaustedError(StrCat(src_.Name(), ": .metadata is ", src_.Size(), " bytes, over the limit of ",
                                           kMaxMetadataBytes));
    }
    pickle::UnpickleOptions opts;
    opts.mode = pickle::Mode::kInspect;
    opts.extra_allowed = kExtraAllowed;
    pickle::Reducer reducer;
    reducer.class_names = kReducedClasses;
    reducer.reduce = [this](std::string_view cls, std::span<const Field> fields) { return Reduce(cls, fields); };
    opts.reducer = &reducer;
    opts.read_flat = read_flat_;
    CKPT_ASSIGN_OR_RETURN(pickle::Unpickled u, pickle::Unpickle(src_, 0, opts),
                          StrCat(src_.Name(), ": .metadata"));
    Metadata md;
    std::set<std::string> opaque;
    u.arena->ForEach([&](const Value& v) {
      if (v.kind == Kind::kObject && v.opaque && v.callable() && v.callable()->kind == Kind::kGlobal) {
        opaque.insert(StrCat(v.callable()->str(), ".", v.callable()->name()));
      }
    });
    md.opaque_globals.assign(opaque.begin(), opaque.end());
    if (src_.Size() > 1) {
      char head[2];
      if (src_.ReadAt(0, 2, head).ok() && static_cast<uint8_t>(head[0]) == 0x80) {
        md.pickle_protocol = static_cast<uint8_t>(head[1]);
      }
    }
    const Value* root = u.root;
    if (root == nullptr || root->kind != Kind::kObject) {
      return Fail(root, StrCat("expected a pickled torch.distributed.checkpoint.metadata.Metadata, found ",
                               root ? pickle::TypeName(root) : "nothing"));
    }
    md.class_name = ClassOf(root);
    auto attrs = Attributes(root);
    const Value* sdm = Attr(attrs, "state_dict_metadata");
    if (sdm == nullptr || sdm->kind != Kind::kDict) {
      return Fail(root, StrCat("expected a Metadata object with a state_dict_metadata dict, found ", md.class_name));
    }
    static const std::set<std::string, std::less<>> kKnown = {"state_dict_metadata", "planner_data",
                                                              "storage_data", "storage_meta", "version"};
    attrs.ForEach([&](std::string_view name, const Value*) {
      if (!kKnown.count(name)) md.extra_attributes.emplace_back(name);
    });
    md.entries.reserve(sdm->dict().size());
    for (const auto& [k, v] : sdm->dict()) {
      if (k->kind != Kind::kString) return Fail(k, "state_dict_metadata key is not a str");
      if (md.entry_index.count(k->str())) return Fail(k, StrCat("duplicate key ", Quote(k->str())));
      Entry e;
      CKPT_RETURN_IF_ERROR(ParseEntry(std::string(k->str()), v, &e));
      md.entry_index.emplace(e.key, static_cast<int64_t>(md.entries.size()));
      md.entries.push_back(std::move(e));
    }
    reduced_chunks_ = {};  // moved into the entries
    const Value* pd = Attr(attrs, "planner_data");
    md.has_planner_data = pd && pd->kind != Kind::kNone;
    if (pd && pd->kind == Kind::kDict) {
      for (const auto& [k, v] : pd->dict()) {
        if (k->kind != Kind::kString || (v->kind != Kind::kTuple && v->kind != Kind::kList)) continue;
        std::vector<Metadata::PathElem> path;
        bool ok = true;
        for (const Value* e : v->items()) {
          Metadata::PathElem pe;
          if (e->kind == Kind::kString) {
            pe.key = e->str();
          } else if (e->kind == Kind::kInt) {
            pe.is_index = true;
            pe.index = e->i;
          } else {
            ok = false;
          }
          path.push_back(std::move(pe));
        }
        if (ok) md.planner_paths[std::string(k->str())] = std::move(path);
      }
    }
    const Value* ver = Attr(attrs, "version");
    if (ver && ver->kind == Kind::kString) md.version = ver->str();
    const Value* sm = Attr(attrs, "storage_meta");
    if (sm && sm->kind == Kind::kObject) {
      auto sa = Attributes(sm);
      StorageMeta meta;
      meta.checkpoint_id = Text(Attr(sa, "checkpoint_id"));
      meta.save_id = Text(Attr(sa, "save_id"));
      meta.load_id = Text(Attr(sa, "load_id"));
      if (const Value* mods = Attr(sa, "modules"); mods && mods->kind == Kind::kList) {
        for (const Value* m : mods->items()) meta.modules.push_back(Text(m));
      }
      md.storage_meta = std::move(meta);
    }
    // MCoreMetadata.mcore_data: {key: {'nd_reformulated_orig_global_shape': (...)}}
    if (const Value* mc = Attr(attrs, "mcore_data"); mc && mc->kind == Kind::kDict) {
      for (const auto& [k, v] : mc->dict()) {
        if (k->kind != Kind::kString || v->kind != Kind::kDict) continue;
        if (const Value* shape = v->Get("nd_reformulated_orig_global_shape")) {
          auto s = IntTuple(shape, "nd_reformulated_orig_global_shape");
          if (s.ok()) md.nd_reformulated_shapes[std::string(k->str())] = *s;
        }
      }
    }
    // storage_data last. The items view only the store, never the graph:
    // the few pairs that were not reduced while unpickling are parsed first,
    // the graph is freed, and the items are made from the stand-ins' numbers
    // (at a million chunks, graph and items would otherwise peak together).
    const Value* sd = Attr(attrs, "storage_data");
    if (sd && sd->kind != Kind::kNone) {
      if (sd->kind != Kind::kDict) return Fail(sd, "storage_data is not a dict");
      const size_t n = sd->dict().size();
      struct StandIns {  // what the stand-ins of one pair hold: numbers and stream offsets
        int64_t k, v;
        uint64_t k_at, v_at;
      };
      std::vector<StandIns> pairs;
      pairs.reserve(n);
      std::vector<std::pair<size_t, StorageItem>> parsed;  // (position, item) of pairs not reduced
      for (const auto& [k, v] : sd->dict()) {
        if (IsReduced(k) && IsReduced(v)) {
          pairs.push_back({k->i, v->i, k->offset, v->offset});
        } else {
          StorageItem it;
          CKPT_RETURN_IF_ERROR(ParseItem(k, v, &it));
          parsed.emplace_back(pairs.size(), it);
          pairs.push_back({-1, -1, 0, 0});
        }
      }
      u = {};
      md.items.resize(n);
      for (const auto& [i, it] : parsed) md.items[i] = it;
      Value k, v;
      k.kind = v.kind = Kind::kInt;
      k.reduced = v.reduced = true;
      for (size_t i = 0; i < n; ++i) {
        if (pairs[i].k < 0) continue;
        k.i = pairs[i].k, k.offset = pairs[i].k_at;
        v.i = pairs[i].v, v.offset = pairs[i].v_at;
        CKPT_RETURN_IF_ERROR(ParseItem(&k, &v, &md.items[i]));
      }
    }
    reduced_indexes_ = {};
    reduced_infos_ = {};
    u = {};  // the graph is not needed by Link: free it first
    md.store = store_;
    Link(md);
    return md;
  }

  // Chunk / bytes entry -> storage item, by (fqn, offset).
  static void Link(Metadata& md) {
    // Keyed by a hash of (fqn, offsets); equal hashes are told apart by
    // comparing the item itself, so nothing is copied per chunk.
    auto hash_of = [](std::string_view fqn, const std::span<const int64_t>* off) {
      uint64_t h = std::hash<std::string_view>()(fqn);
      auto mix = [&h](uint64_t x) { h ^= x + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2); };
      if (off == nullptr) {
        mix(0x2d);
      } else {
        mix(off->size());
        for (int64_t o : *off) mix(static_cast<uint64_t>(o));
      }
      return h;
    };
    // Every item's hash, and the items sorted by (hash, position).
    const size_t n = md.items.size();
    std::vector<uint64_t> hashes(n);
    std::vector<std::pair<uint64_t, int64_t>> sorted(n);
    for (size_t i = 0; i < n; ++i) {
      const StorageItem& it = md.items[i];
      hashes[i] = hash_of(it.fqn, it.has_offset ? &it.offset : nullptr);
      sorted[i] = {hashes[i], static_cast<int64_t>(i)};
    }
    std::sort(sorted.begin(), sorted.end());
    // Items whose hash no other item has: found by position alone.
    std::vector<bool> alone(n, false);
    for (size_t k = 0; k < n; ++k) {
      alone[static_cast<size_t>(sorted[k].second)] = (k == 0 || sorted[k - 1].first != sorted[k].first) &&
                                                      (k + 1 == n || sorted[k + 1].first != sorted[k].first);
    }
    auto matches = [&](const StorageItem& it, std::string_view key, const std::span<const int64_t>* off) {
      return it.fqn == key && it.has_offset == (off != nullptr) && (off == nullptr || std::ranges::equal(it.offset, *off));
    };
    size_t next = 0;  // items usually follow the chunks' order: try the one after the last match first
    for (size_t ei = 0; ei < md.entries.size(); ++ei) {
      Entry& e = md.entries[ei];
      // The first item (in .metadata order) with this fqn and offsets, as a
      // dict keyed by MetadataIndex would resolve it.
      auto bind = [&](const std::span<const int64_t>* off) -> int64_t {
        const uint64_t h = hash_of(e.key, off);
        int64_t found = -1;
        if (next < n && hashes[next] == h && alone[next] && matches(md.items[next], e.key, off)) {
          found = static_cast<int64_t>(next);
        } else {
          auto lo = std::lower_bound(sorted.begin(), sorted.end(), std::pair<uint64_t, int64_t>{h, INT64_MIN});
          for (auto f = lo; f != sorted.end() && f->first == h; ++f) {
            if (matches(md.items[static_cast<size_t>(f->second)], e.key, off)) {
              found = f->second;  // sorted by position within a hash: the first
              break;
            }
          }
        }
        if (found >= 0) {
          md.items[static_cast<size_t>(found)].entry = static_cast<int64_t>(ei);
          next = static_cast<size_t>(found) + 1;
        }
        return found;
      };
      if (e.type == EntryType::kBytes) {
        e.item = bind(nullptr);
      } else {
        for (Chunk& c : e.chunks) c.item = bind(&c.offsets);
      }
    }
  }

 private:
  const ByteSource& src_;
  const bool read_flat_;
  Pending<ReducedChunk> reduced_chunks_;
  int64_t indexes_with_offsets_ = 0;  // MetadataIndex objects with offsets reduced so far
  Pending<ReducedIndex> reduced_indexes_;
  std::shared_ptr<MetadataStore> store_ = std::make_shared<MetadataStore>();
  Strings fqns_{store_.get()};
  std::deque<ReducedInfo> reduced_infos_;
  Strings paths_{store_.get()};
};

}  // namespace

void* MetadataStore::Allocate(size_t n, size_t align) {
  if (n > kBlock / 4) {
    auto own = std::make_unique_for_overwrite<std::byte[]>(n);
    void* p = own.get();
    blocks_.insert(blocks_.empty() ? blocks_.end() : blocks_.end() - 1, std::move(own));
    return p;
  }
  size_t at = (used_ + align - 1) / align * align;
  if (blocks_.empty() || at + n > kBlock) {
    blocks_.push_back(std::make_unique_for_overwrite<std::byte[]>(kBlock));
    at = 0;
  }
  used_ = at + n;
  return blocks_.back().get() + at;
}

std::span<int64_t> MetadataStore::NewInts(size_t n) {
  if (n == 0) return {};
  if (n > SIZE_MAX / sizeof(int64_t)) throw std::bad_alloc();
  return {static_cast<int64_t*>(Allocate(n * sizeof(int64_t), alignof(int64_t))), n};
}

std::span<const int64_t> MetadataStore::Keep(std::span<const int64_t> v) {
  std::span<int64_t> out = NewInts(v.size());
  std::copy(v.begin(), v.end(), out.begin());
  return out;
}

std::string_view MetadataStore::Keep(std::string_view s) {
  if (s.empty()) return {};
  auto* p = static_cast<char*>(Allocate(s.size(), 1));
  std::copy(s.begin(), s.end(), p);
  return {p, s.size()};
}

std::span<const std::string> MetadataStore::Keep(std::vector<std::string> list) {
  lists_.push_back(std::move(list));
  return lists_.back();
}

int64_t Metadata::FindEntry(std::string_view key) const {
  auto it = entry_index.find(key);
  return it == entry_index.end() ? -1 : it->second;
}

Result<Metadata> ParseMetadata(const ByteSource& src) { return Parser(src, true).Parse(); }

namespace internal_dcp {
Result<Metadata> ParseMetadataThroughTheVm(const ByteSource& src) { return Parser(src, false).Parse(); }

std::string DebugString(const Metadata& md) {
  auto ints = [](std::span<const int64_t> v) {
    std::string out = "(";
    for (int64_t x : v) out += StrCat(x, ",");
    return out + ")";
  };
  std::string out = StrCat("class ", md.class_name, " protocol ", md.pickle_protocol, " version ",
                           md.version.value_or("-"), " planner ", md.has_planner_data, "\n");
  for (const Entry& e : md.entries) {
    out += StrCat("entry ", e.key, " ", static_cast<int>(e.type), " ", DTypeName(e.dtype), " ", e.layout, " ",
                  e.requires_grad, e.memory_format, e.pin_memory, " ", ints(e.size), " item ", e.item, "\n");
    for (const Chunk& c : e.chunks) out += StrCat(" chunk ", ints(c.offsets), ints(c.sizes), " item ", c.item, "\n");
  }
  for (const StorageItem& it : md.items) {
    out += StrCat("item ", it.fqn, " ", it.has_offset, ints(it.offset), " ", it.index ? StrCat(*it.index) : "-", " ",
                  it.relative_path, " ", it.offset_in_file, " ", it.length, " entry ", it.entry);
    for (const std::string& t : it.transforms) out += StrCat(" ", t);
    out += "\n";
  }
  if (md.storage_meta) {
    out += StrCat("storage_meta ", md.storage_meta->checkpoint_id, " ", md.storage_meta->save_id, " ",
                  md.storage_meta->load_id);
    for (const std::string& m : md.storage_meta->modules) out += StrCat(" ", m);
    out += "\n";
  }
  for (const auto& [k, path] : md.planner_paths) {
    out += StrCat("planner ", k);
    for (const Metadata::PathElem& e : path) out += e.is_index ? StrCat(" [", e.index, "]") : StrCat(" .", e.key);
    out += "\n";
  }
  for (const std::string& a : md.extra_attributes) out += StrCat("attribute ", a, "\n");
  for (const auto& [k, shape] : md.nd_reformulated_shapes) out += StrCat("nd ", k, " ", ints(shape), "\n");
  for (const std::string& g : md.opaque_globals) out += StrCat("opaque ", g, "\n");
  return out;
}
}  // namespace internal_dcp

bool ParseDataFileName(std::string_view name, int64_t* rank, int64_t* file) {
  if (name.size() < 2 || name.substr(0, 2) != "__") return false;
  std::string_view suffix = kDataFileSuffix;
  if (name.size() <= suffix.size() || name.substr(name.size() - suffix.size()) != suffix) return false;
  std::string_view mid = name.substr(2, name.size() - 2 - suffix.size());
  size_t us = mid.find('_');
  if (us == std::string_view::npos) return false;
  auto parse = [](std::string_view s, int64_t* out) {
    if (s.empty()) return false;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
    return ec == std::errc() && p == s.data() + s.size() && *out >= 0;
  };
  return parse(mid.substr(0, us), rank) && parse(mid.substr(us + 1), file);
}

}  // namespace ckpt::dcp
