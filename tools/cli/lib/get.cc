#include "lib/get.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <nlohmann/json.hpp>

#include "ckpt/convert.h"
#include "ckpt/writer.h"
#include "lib/inspect.h"
#include "util/strings.h"

namespace ckpt::cli {
namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// Python int literal (decimal, optional sign); nullopt when malformed or
// outside int64.
std::optional<int64_t> ParseInt(std::string_view s) {
  s = Trim(s);
  bool negative = false;
  if (!s.empty() && (s.front() == '-' || s.front() == '+')) {
    negative = s.front() == '-';
    s.remove_prefix(1);
  }
  if (s.empty()) return std::nullopt;
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  if (negative) {
    if (v > uint64_t{1} << 63) return std::nullopt;
    return static_cast<int64_t>(0 - v);
  }
  if (v > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
  return static_cast<int64_t>(v);
}

// Python's slice bound resolution for step 1 (PySlice_AdjustIndices).
int64_t ClampBound(int64_t v, int64_t n) {
  if (v < 0) {
    v = v < -n ? 0 : v + n;  // -n <= v < 0 here cannot overflow
  }
  return std::min(v, n);
}

std::vector<std::string_view> SplitItems(std::string_view spec) {
  std::vector<std::string_view> items;
  size_t begin = 0;
  for (size_t i = 0; i <= spec.size(); ++i) {
    if (i == spec.size() || spec[i] == ',') {
      items.push_back(spec.substr(begin, i - begin));
      begin = i + 1;
    }
  }
  return items;
}

}  // namespace

Result<Slice> ParseSlice(std::string_view spec, std::span<const int64_t> shape) {
  const size_t rank = shape.size();
  std::vector<std::string_view> items;
  if (!Trim(spec).empty()) {
    items = SplitItems(spec);
    // numpy allows one trailing comma ("1," is the tuple (1,)).
    if (items.size() > 1 && Trim(items.back()).empty()) items.pop_back();
  }
  size_t ellipses = 0;
  for (std::string_view it : items) ellipses += Trim(it) == "...";
  if (ellipses > 1) {
    return InvalidArgumentError(StrCat("slice ", Quote(spec), ": only one '...' is allowed"));
  }
  const size_t explicit_items = items.size() - ellipses;
  if (explicit_items > rank) {
    return InvalidArgumentError(StrCat("slice ", Quote(spec), ": ", explicit_items,
                                       " indices for a tensor of rank ", rank, " (shape ",
                                       ShapeString({shape.begin(), shape.end()}), ")"));
  }
  // Expand "..." (or the implicit trailing one) into ":" items.
  std::vector<std::string_view> full;
  for (std::string_view it : items) {
    if (Trim(it) == "...") {
      for (size_t k = 0; k < rank - explicit_items; ++k) full.push_back(":");
    } else {
      full.push_back(it);
    }
  }
  while (full.size() < rank) full.push_back(":");

  Slice out;
  out.box.start.resize(rank);
  out.box.count.resize(rank);
  std::vector<std::string> parts;
  for (size_t axis = 0; axis < rank; ++axis) {
    const int64_t n = shape[axis];
    std::string_view item = Trim(full[axis]);
    auto bad = [&](std::string_view why) {
      return InvalidArgumentError(StrCat("slice ", Quote(spec), ": item ", Quote(item),
                                         " (axis ", axis, ", size ", n, "): ", why));
    };
    if (item.empty()) return bad("empty index (write ':' for the whole axis)");
    size_t colon = item.find(':');
    if (colon == std::string_view::npos) {
      std::optional<int64_t> v = ParseInt(item);
      if (!v) return bad("not an integer");
      int64_t i = *v;
      if (i < -n || i >= n) return bad(StrCat("index ", i, " is out of bounds"));
      if (i < 0) i += n;
      out.box.start[axis] = i;
      out.box.count[axis] = 1;
      parts.push_back(std::to_string(i));
      continue;
    }
    std::string_view lo = Trim(item.substr(0, colon));
    std::string_view rest = item.substr(colon + 1);
    std::string_view hi = rest;
    size_t colon2 = rest.find(':');
    if (colon2 != std::string_view::npos) {
      hi = rest.substr(0, colon2);
      std::string_view step = Trim(rest.substr(colon2 + 1));
      if (step.find(':') != std::string_view::npos) return bad("too many ':'");
      if (!step.empty()) {
        std::optional<int64_t> s = ParseInt(step);
        if (!s) return bad("step is not an integer");
        if (*s != 1) return bad("steps other than 1 are not supported");
      }
    }
    hi = Trim(hi);
    int64_t a = 0, b = n;
    if (!lo.empty()) {
      std::optional<int64_t> v = ParseInt(lo);
      if (!v) return bad("start is not an integer");
      a = ClampBound(*v, n);
    }
    if (!hi.empty()) {
      std::optional<int64_t> v = ParseInt(hi);
      if (!v) return bad("stop is not an integer");
      b = ClampBound(*v, n);
    }
    out.box.start[axis] = a;
    out.box.count[axis] = std::max<int64_t>(0, b - a);
    out.out_shape.push_back(out.box.count[axis]);
    parts.push_back(fmt::format("{}:{}", a, a + out.box.count[axis]));
  }
  out.text = fmt::format("{}", fmt::join(parts, ", "));
  return out;
}

std::optional<std::string> NpyDescr(DType dtype) {
  switch (dtype) {
    case DType::kBool: return "|b1";
    case DType::kUInt8: return "|u1";
    case DType::kInt8: return "|i1";
    case DType::kInt16: return "<i2";
    case DType::kInt32: return "<i4";
    case DType::kInt64: return "<i8";
    case DType::kUInt16: return "<u2";
    case DType::kUInt32: return "<u4";
    case DType::kUInt64: return "<u8";
    case DType::kFloat16: return "<f2";
    case DType::kFloat32: return "<f4";
    case DType::kFloat64: return "<f8";
    case DType::kComplex64: return "<c8";
    case DType::kComplex128: return "<c16";
    default: return std::nullopt;
  }
}

std::string NpyHeader(std::string_view descr, std::span<const int64_t> shape) {
  // numpy/lib/_format_impl.py: _write_array_header, _wrap_header (numpy 2.x).
  std::string shape_repr = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) shape_repr += ", ";
    shape_repr += std::to_string(shape[i]);
  }
  if (shape.size() == 1) shape_repr += ",";
  shape_repr += ")";
  std::string dict =
      fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", descr, shape_repr);
  constexpr size_t kGrowthAxisMaxDigits = 21;
  if (!shape.empty()) {
    size_t digits = std::to_string(shape[0]).size();
    if (digits < kGrowthAxisMaxDigits) dict.append(kGrowthAxisMaxDigits - digits, ' ');
  }
  constexpr size_t kArrayAlign = 64;
  constexpr size_t kMagicLen = 8;  // "\x93NUMPY" + major + minor
  const size_t hlen = dict.size() + 1;  // + '\n'
  auto wrap = [&](int major, size_t len_bytes) {
    size_t padlen = kArrayAlign - ((kMagicLen + len_bytes + hlen) % kArrayAlign);
    uint64_t total = hlen + padlen;
    std::string h("\x93NUMPY", 6);
    h += static_cast<char>(major);
    h += '\0';
    for (size_t i = 0; i < len_bytes; ++i) h += static_cast<char>((total >> (8 * i)) & 0xff);
    h += dict;
    h.append(padlen, ' ');
    h += '\n';
    return std::pair(h, total);
  };
  auto [v1, total1] = wrap(1, 2);
  if (total1 <= 0xffff) return v1;
  return wrap(2, 4).first;
}

std::vector<std::string> ClosestKeys(std::string_view key, const std::vector<std::string>& keys,
                                     size_t max) {
  const size_t limit = std::max<size_t>(2, key.size() / 3);
  struct Cand {
    int group;  // 0: substring relation, 1: edit distance
    size_t dist;
    size_t index;
  };
  std::vector<Cand> cands;
  std::vector<size_t> prev, cur;
  for (size_t idx = 0; idx < keys.size(); ++idx) {
    std::string_view k = keys[idx];
    if (k == key) continue;
    const size_t len_diff = k.size() > key.size() ? k.size() - key.size() : key.size() - k.size();
    bool sub = !key.empty() && (k.find(key) != std::string_view::npos ||
                                key.find(k) != std::string_view::npos);
    if (sub) {
      cands.push_back({0, len_diff, idx});
      continue;
    }
    if (len_diff > limit) continue;  // the distance is at least the length difference
    // Levenshtein, two rows.
    prev.resize(k.size() + 1);
    cur.resize(k.size() + 1);
    for (size_t j = 0; j <= k.size(); ++j) prev[j] = j;
    for (size_t i = 1; i <= key.size(); ++i) {
      cur[0] = i;
      for (size_t j = 1; j <= k.size(); ++j) {
        size_t sub_cost = prev[j - 1] + (key[i - 1] == k[j - 1] ? 0 : 1);
        cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub_cost});
      }
      std::swap(prev, cur);
    }
    if (prev[k.size()] <= limit) cands.push_back({1, prev[k.size()], idx});
  }
  std::stable_sort(cands.begin(), cands.end(), [](const Cand& a, const Cand& b) {
    return std::tie(a.group, a.dist) < std::tie(b.group, b.dist);
  });
  std::vector<std::string> out;
  for (size_t i = 0; i < cands.size() && out.size() < max; ++i) out.push_back(keys[cands[i].index]);
  return out;
}

Result<std::string> ResolveGetFormat(const GetOptions& options) {
  if (!options.format.empty()) {
    if (options.format == "safetensors" || options.format == "npy") return options.format;
    if (options.format == "pt" || options.format == "torch") return std::string("pt");
    return InvalidArgumentError(
        StrCat("--format ", Quote(options.format), ": expected safetensors, pt or npy"));
  }
  std::string base = Basename(options.output);
  size_t dot = base.rfind('.');
  std::string ext = dot == std::string::npos ? "" : base.substr(dot);
  for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (ext == ".safetensors") return std::string("safetensors");
  if (ext == ".pt" || ext == ".pth" || ext == ".bin") return std::string("pt");
  if (ext == ".npy") return std::string("npy");
  return InvalidArgumentError(StrCat(
      "cannot tell the output format from ", Quote(options.output),
      ": use an extension .safetensors, .pt/.pth/.bin or .npy, or pass --format"));
}

namespace {

// Forwards to a file and counts, so a reader that delivers the wrong number
// of bytes is caught before the file is published.
class CountingForward final : public ByteSink {
 public:
  explicit CountingForward(ByteSink* out) : out_(out) {}
  Status Append(std::string_view d) override {
    n_ += d.size();
    return out_->Append(d);
  }
  uint64_t Position() const override { return n_; }

 private:
  ByteSink* out_;
  uint64_t n_ = 0;
};

Status NotFoundWithSuggestions(const CheckpointReader& reader, const std::string& key) {
  for (const ObjectInfo& o : reader.objects()) {
    if (o.key == key) {
      return InvalidArgumentError(
          StrCat(Quote(key), " is not a tensor but a ", o.type, " object: ", o.repr));
    }
  }
  std::vector<std::string> keys;
  keys.reserve(reader.tensors().size());
  for (const TensorInfo& t : reader.tensors()) keys.push_back(t.key);
  std::vector<std::string> close = ClosestKeys(key, keys);
  std::string msg = StrCat("no tensor named ", Quote(key));
  if (!close.empty()) {
    std::vector<std::string> quoted;
    for (const std::string& c : close) quoted.push_back(Quote(c));
    msg += StrCat("; did you mean ", fmt::format("{}", fmt::join(quoted, ", ")), "?");
  } else if (keys.empty()) {
    msg += " (the checkpoint holds no tensors)";
  }
  return NotFoundError(std::move(msg));
}

}  // namespace

Status RunGet(const GetOptions& options, std::ostream& out) {
  CKPT_ASSIGN_OR_RETURN(std::string format, ResolveGetFormat(options));
  Env* env = options.env ? options.env : Env::Default();
  OpenOptions open;
  open.env = env;
  const std::string key =
      options.optimizer.empty() ? options.key : OptimizerStateKey(options.optimizer, options.key);
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader,
                        OpenCheckpoint(options.path, open));
  Result<size_t> found = reader->Find(key);
  if ((!found.ok() && reader->kind() == SourceKind::kLegacy) ||
      (key.rfind("optimizer.state.", 0) == 0 && reader->kind() == SourceKind::kTorchDist)) {
    // Optimizer state in model space, whatever the sharding type stored
    // (fully_sharded_model_space keeps a key of this name under another
    // shape), and what a legacy checkpoint keeps per rank: assembled.
    reader.reset();
    CKPT_ASSIGN_OR_RETURN(reader, OpenModelSpace(options.path, open));
    found = reader->Find(key);
  }
  if (!found.ok()) return NotFoundWithSuggestions(*reader, key);
  const size_t index = *found;
  const TensorInfo& info = reader->tensors()[index];

  Slice slice;
  if (options.has_slice) {
    CKPT_ASSIGN_OR_RETURN(slice, ParseSlice(options.slice, info.shape),
                          StrCat("tensor ", Quote(info.key), " of shape ", ShapeString(info.shape)));
  } else {
    slice.box = Box::Whole(info.shape);
    slice.out_shape = info.shape;
  }
  CKPT_RETURN_IF_ERROR(CheckBoxInside(slice.box, info.shape, StrCat("tensor ", Quote(info.key))));
  const uint64_t nbytes = slice.box.numel() * static_cast<uint64_t>(DTypeSize(info.dtype));
  auto stream = [&](ByteSink* sink) -> Status {
    CountingForward counted(sink);
    CKPT_RETURN_IF_ERROR(
        reader->ReadTensorRegion(index, slice.box.start, slice.box.count, &counted));
    if (counted.Position() != nbytes) {
      return DataLossError(StrCat("tensor ", Quote(info.key), ": the reader delivered ",
                                  counted.Position(), " bytes, expected ", nbytes));
    }
    return OkStatus();
  };

  if (format == "npy") {
    std::optional<std::string> descr = NpyDescr(info.dtype);
    if (!descr) {
      return InvalidArgumentError(StrCat(
          "tensor ", Quote(info.key), " has dtype ", DTypeName(info.dtype),
          ", which numpy has no type for; write .safetensors or .pt instead (-o x.safetensors "
          "or --format pt)"));
    }
    std::string header = NpyHeader(*descr, slice.out_shape);
    CKPT_RETURN_IF_ERROR(WriteFileAtomically(env, options.output, [&](WritableFile* f) -> Status {
      CKPT_RETURN_IF_ERROR(f->Append(header));
      return stream(f);
    }));
  } else {
    TensorToWrite t;
    t.key = info.key;
    t.dtype = info.dtype;
    t.shape = slice.out_shape;
    t.write = stream;
    std::span<const TensorToWrite> one(&t, 1);
    if (format == "safetensors") {
      CKPT_RETURN_IF_ERROR(WriteSafetensorsFile(options.output, one, std::nullopt, env));
    } else {
      CKPT_RETURN_IF_ERROR(WriteTorchFile(options.output, one, env));
    }
  }

  if (options.json) {
    nlohmann::json j;
    j["key"] = info.key;
    j["dtype"] = std::string(DTypeName(info.dtype));
    j["shape"] = slice.out_shape;
    j["slice"] = options.has_slice ? nlohmann::json(slice.text) : nlohmann::json(nullptr);
    j["nbytes"] = nbytes;
    j["output"] = options.output;
    j["format"] = format;
    out << j.dump(2) << "\n";
  } else {
    out << fmt::format("wrote {}{} ({} {}, {}) to {} ({})\n", info.key,
                       options.has_slice ? "[" + slice.text + "]" : "", DTypeName(info.dtype),
                       ShapeString(slice.out_shape), HumanBytes(nbytes), options.output, format);
  }
  return OkStatus();
}

}  // namespace ckpt::cli
