// safetensors reader/writer. Rules follow huggingface/safetensors
// safetensors/src/tensor.rs (prepare, read_metadata, Metadata::validate) as
// shipped in safetensors 0.8.0; behaviour was checked against that release.
#include "format/safetensors/safetensors.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <new>
#include <set>

#include <fmt/ranges.h>

#include "util/checked_math.h"
#include "util/coding.h"
#include "util/strings.h"

namespace ckpt::safetensors {
namespace {

using nlohmann::json;

// The Rust Dtype enum, in declaration order: prepare() sorts by this order,
// descending. Checked against safetensors 0.8.0's "expected one of" list.
struct StDType {
  std::string_view name;
  uint32_t bits;
  std::optional<DType> dtype;
};
constexpr std::array<StDType, 22> kStDTypes = {{
    {"BOOL", 8, DType::kBool},
    {"F4", 4, DType::kFloat4_e2m1fn_x2},
    {"F6_E2M3", 6, std::nullopt},
    {"F6_E3M2", 6, std::nullopt},
    {"U8", 8, DType::kUInt8},
    {"I8", 8, DType::kInt8},
    {"F8_E5M2", 8, DType::kFloat8_e5m2},
    {"F8_E4M3", 8, DType::kFloat8_e4m3fn},
    {"F8_E8M0", 8, DType::kFloat8_e8m0fnu},
    {"F8_E4M3FNUZ", 8, DType::kFloat8_e4m3fnuz},
    {"F8_E5M2FNUZ", 8, DType::kFloat8_e5m2fnuz},
    {"I16", 16, DType::kInt16},
    {"U16", 16, DType::kUInt16},
    {"F16", 16, DType::kFloat16},
    {"BF16", 16, DType::kBFloat16},
    {"I32", 32, DType::kInt32},
    {"U32", 32, DType::kUInt32},
    {"F32", 32, DType::kFloat32},
    {"C64", 64, DType::kComplex64},
    {"F64", 64, DType::kFloat64},
    {"I64", 64, DType::kInt64},
    {"U64", 64, DType::kUInt64},
}};

int StIndexByName(std::string_view name) {
  for (size_t i = 0; i < kStDTypes.size(); ++i) {
    if (kStDTypes[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

int StIndexByDType(DType d) {
  for (size_t i = 0; i < kStDTypes.size(); ++i) {
    if (kStDTypes[i].dtype == d) return static_cast<int>(i);
  }
  return -1;
}

// Strict UTF-8 as Rust's core::str::from_utf8: no overlongs, no surrogates,
// nothing above U+10FFFF. Returns the offset of the first bad byte or npos.
size_t FindInvalidUtf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    if (n - i < len) return i;
    unsigned char c1 = static_cast<unsigned char>(s[i + 1]);
    if (c1 < lo || c1 > hi) return i;
    for (size_t k = 2; k < len; ++k) {
      unsigned char ck = static_cast<unsigned char>(s[i + k]);
      if (ck < 0x80 || ck > 0xBF) return i;
    }
    i += len;
  }
  return std::string_view::npos;
}

// Maximum nesting of [ and { outside strings; stops counting past `cap`.
// Bounds the depth before nlohmann builds (and recursively destroys) a DOM.
size_t JsonDepth(std::string_view s, size_t cap) {
  size_t depth = 0, max_depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) max_depth = depth;
      if (max_depth > cap) return max_depth;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return max_depth;
}

// Parses JSON without exceptions, reporting the first key repeated within one
// object (nlohmann, like serde's maps, would silently keep the last).
struct ParsedJson {
  json value;
  bool ok = false;
  std::string error;  // nlohmann's parse error, when !ok
  std::string duplicate_key;
  std::string duplicate_path;  // key of the enclosing object, "" at top level
};

ParsedJson ParseJsonChecked(std::string_view text) {
  ParsedJson out;
  std::vector<std::set<std::string>> keys;
  std::vector<std::string> object_keys;  // key that holds each open object
  std::string last_key;
  auto cb = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        keys.emplace_back();
        object_keys.push_back(last_key);
        break;
      case json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        if (!object_keys.empty()) object_keys.pop_back();
        break;
      case json::parse_event_t::key:
        if (parsed.is_string()) {
          last_key = parsed.get_ref<const std::string&>();
          if (!keys.empty() && !keys.back().insert(last_key).second &&
              out.duplicate_key.empty()) {
            out.duplicate_key = last_key;
            out.duplicate_path = object_keys.empty() ? "" : object_keys.back();
            if (keys.size() == 1) out.duplicate_path.clear();
          }
        }
        break;
      default:
        break;
    }
    return true;
  };
  // Exceptions are caught right here (style: none crosses the API); the
  // parse_error carries the byte position for the message.
  try {
    out.value = json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/true);
    out.ok = !out.value.is_discarded();
  } catch (const json::parse_error& e) {
    std::string_view what = e.what();
    if (size_t p = what.find("] "); p != std::string_view::npos) what.remove_prefix(p + 2);
    out.error = std::string(what.substr(0, 200));
  } catch (const std::exception& e) {
    out.error = e.what();
  }
  if (!out.ok && out.error.empty()) out.error = "rejected";
  return out;
}

// serde_json's string escaping (compact writer): \" \\ \b \f \n \r \t, other
// controls as \u00xx, everything else (UTF-8, DEL, '/') raw.
void AppendJsonString(std::string* out, std::string_view s) {
  out->push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': out->append("\\\""); break;
      case '\\': out->append("\\\\"); break;
      case '\b': out->append("\\b"); break;
      case '\f': out->append("\\f"); break;
      case '\n': out->append("\\n"); break;
      case '\r': out->append("\\r"); break;
      case '\t': out->append("\\t"); break;
      default:
        if (c < 0x20) {
          out->append(fmt::format("\\u{:04x}", c));
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
  }
  out->push_back('"');
}

std::string Err(std::string_view src, std::string_view rust_name, std::string_view what) {
  return StrCat(src, ": ", rust_name, ": ", what);
}

// A forwarding sink that enforces a tensor's declared byte count.
class BoundedSink final : public ByteSink {
 public:
  BoundedSink(ByteSink* inner, uint64_t limit, std::string_view name)
      : inner_(inner), limit_(limit), name_(name) {}
  Status Append(std::string_view data) override {
    if (data.size() > limit_ - written_) {
      return InvalidArgumentError(StrCat("safetensors writer: tensor ", Quote(name_),
                                         ": callback wrote more than the declared ", limit_,
                                         " bytes"));
    }
    CKPT_RETURN_IF_ERROR(inner_->Append(data));
    written_ += data.size();
    return OkStatus();
  }
  uint64_t Position() const override { return written_; }

 private:
  ByteSink* inner_;
  uint64_t limit_;
  uint64_t written_ = 0;
  std::string_view name_;
};

// Python json.dumps(ensure_ascii=True) string escaping.
Status AppendPyJsonString(std::string* out, std::string_view s) {
  if (size_t bad = FindInvalidUtf8(s); bad != std::string_view::npos) {
    return InvalidArgumentError(StrCat("index: string ", Quote(s), " is not valid UTF-8 at byte ", bad));
  }
  out->push_back('"');
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    uint32_t cp;
    size_t len;
    if (c < 0x80) {
      cp = c;
      len = 1;
    } else if (c < 0xE0) {
      cp = c & 0x1F;
      len = 2;
    } else if (c < 0xF0) {
      cp = c & 0x0F;
      len = 3;
    } else {
      cp = c & 0x07;
      len = 4;
    }
    for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    i += len;
    switch (cp) {
      case '"': out->append("\\\""); continue;
      case '\\': out->append("\\\\"); continue;
      case '\b': out->append("\\b"); continue;
      case '\f': out->append("\\f"); continue;
      case '\n': out->append("\\n"); continue;
      case '\r': out->append("\\r"); continue;
      case '\t': out->append("\\t"); continue;
      default: break;
    }
    if (cp >= 0x20 && cp <= 0x7E) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x10000) {
      out->append(fmt::format("\\u{:04x}", cp));
    } else {
      uint32_t v = cp - 0x10000;
      out->append(fmt::format("\\u{:04x}\\u{:04x}", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF)));
    }
  }
  out->push_back('"');
  return OkStatus();
}

// json.dumps(obj, indent=2, sort_keys=True).
Status DumpPy(const json& v, int indent, std::string* out) {
  const std::string pad(static_cast<size_t>(indent + 2), ' ');
  const std::string close_pad(static_cast<size_t>(indent), ' ');
  switch (v.type()) {
    case json::value_t::object: {
      if (v.empty()) {
        out->append("{}");
        return OkStatus();
      }
      // nlohmann's object is a std::map: keys already sorted bytewise, which
      // for UTF-8 is code point order, as Python's sort_keys.
      out->append("{\n");
      bool first = true;
      for (auto it = v.begin(); it != v.end(); ++it) {
        if (!first) out->append(",\n");
        first = false;
        out->append(pad);
        CKPT_RETURN_IF_ERROR(AppendPyJsonString(out, it.key()));
        out->append(": ");
        CKPT_RETURN_IF_ERROR(DumpPy(it.value(), indent + 2, out));
      }
      out->append("\n");
      out->append(close_pad);
      out->append("}");
      return OkStatus();
    }
    case json::value_t::array: {
      if (v.empty()) {
        out->append("[]");
        return OkStatus();
      }
      out->append("[\n");
      for (size_t i = 0; i < v.size(); ++i) {
        if (i) out->append(",\n");
        out->append(pad);
        CKPT_RETURN_IF_ERROR(DumpPy(v[i], indent + 2, out));
      }
      out->append("\n");
      out->append(close_pad);
      out->append("]");
      return OkStatus();
    }
    case json::value_t::string:
      return AppendPyJsonString(out, v.get_ref<const std::string&>());
    case json::value_t::boolean:
      out->append(v.get<bool>() ? "true" : "false");
      return OkStatus();
    case json::value_t::null:
      out->append("null");
      return OkStatus();
    case json::value_t::number_integer:
      out->append(std::to_string(v.get<int64_t>()));
      return OkStatus();
    case json::value_t::number_unsigned:
      out->append(std::to_string(v.get<uint64_t>()));
      return OkStatus();
    case json::value_t::number_float: {
      double d = v.get<double>();
      if (std::isnan(d)) {
        out->append("NaN");
      } else if (std::isinf(d)) {
        out->append(d > 0 ? "Infinity" : "-Infinity");
      } else {
        out->append(v.dump());
      }
      return OkStatus();
    }
    default:
      return InvalidArgumentError("index: cannot serialize a binary or discarded JSON value");
  }
}

bool IsPlainFileName(std::string_view f) {
  if (f.empty() || f == "." || f == "..") return false;
  for (char c : f) {
    if (c == '/' || c == '\\' || c == '\0') return false;
  }
  return true;
}

}  // namespace

// ------------------------------------------------------------------ reading

const TensorEntry* Header::Find(std::string_view name) const {
  for (const TensorEntry& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

Result<Header> ReadHeader(const ByteSource& src) {
  const std::string_view name = src.Name();
  const uint64_t file_size = src.Size();
  if (file_size < 8) {
    return DataLossError(Err(name, "HeaderTooSmall",
                             StrCat("file is ", file_size, " bytes, shorter than the 8-byte header length")));
  }
  char len_buf[8];
  CKPT_RETURN_IF_ERROR(src.ReadAt(0, 8, len_buf));
  const uint64_t n = DecodeLE<uint64_t>(len_buf);
  if (n > kMaxHeaderBytes) {
    return DataLossError(Err(name, "HeaderTooLarge",
                             StrCat("header length ", n, " exceeds the limit of ", kMaxHeaderBytes)));
  }
  if (n > file_size - 8) {
    return DataLossError(Err(name, "InvalidHeaderLength",
                             StrCat("header length ", n, " runs past the end of the file (",
                                    file_size, " bytes, ", file_size - 8, " after the length)")));
  }
  CKPT_ASSIGN_OR_RETURN(std::string text, ReadString(src, 8, static_cast<size_t>(n)), name);
  if (size_t bad = FindInvalidUtf8(text); bad != std::string_view::npos) {
    return DataLossError(Err(name, "InvalidHeader",
                             StrCat("header is not valid UTF-8 at file offset ", 8 + bad)));
  }
  // nlohmann's lexer takes a NUL byte as end of input and would ignore what
  // follows; JSON allows no raw NUL anywhere, so reject it up front.
  if (size_t nul = text.find('\0'); nul != std::string::npos) {
    return DataLossError(Err(name, "InvalidHeaderDeserialization",
                             StrCat("header is not valid JSON: NUL byte at file offset ", 8 + nul)));
  }
  if (JsonDepth(text, kMaxJsonDepth) > kMaxJsonDepth) {
    return DataLossError(Err(name, "InvalidHeaderDeserialization",
                             StrCat("JSON nests deeper than ", kMaxJsonDepth, " levels")));
  }
  ParsedJson parsed = ParseJsonChecked(text);
  if (!parsed.ok) {
    return DataLossError(Err(name, "InvalidHeaderDeserialization",
                             StrCat("header is not valid JSON: ", parsed.error)));
  }
  if (!parsed.duplicate_key.empty()) {
    return DataLossError(Err(name, "InvalidHeaderDeserialization",
                             parsed.duplicate_path.empty()
                                 ? StrCat("duplicate key ", Quote(parsed.duplicate_key))
                                 : StrCat("duplicate key ", Quote(parsed.duplicate_key), " in ",
                                          Quote(parsed.duplicate_path))));
  }
  const json& root = parsed.value;
  if (!root.is_object()) {
    return DataLossError(Err(name, "InvalidHeaderDeserialization",
                             StrCat("header is a JSON ", root.type_name(), ", expected an object")));
  }

  Header h;
  h.header_size = n;
  h.data_start = 8 + n;
  struct Pending {
    TensorEntry entry;
    size_t json_index;
  };
  std::vector<Pending> pending;
  size_t json_index = 0;
  for (auto it = root.begin(); it != root.end(); ++it, ++json_index) {
    const std::string& key = it.key();
    const json& v = it.value();
    if (key == "__metadata__") {
      if (v.is_null()) continue;  // Option<HashMap<..>>: null is None
      if (!v.is_object()) {
        return DataLossError(Err(name, "InvalidHeaderDeserialization",
                                 StrCat("__metadata__ is a JSON ", v.type_name(),
                                        ", expected an object of strings")));
      }
      h.has_metadata = true;
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          return DataLossError(Err(name, "InvalidHeaderDeserialization",
                                   StrCat("__metadata__ value of ", Quote(m.key()), " is a JSON ",
                                          m.value().type_name(), ", expected a string")));
        }
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad = [&](std::string_view what) {
      return DataLossError(
          Err(name, "InvalidHeaderDeserialization", StrCat("tensor ", Quote(key), ": ", what)));
    };
    if (!v.is_object()) return bad(StrCat("entry is a JSON ", v.type_name(), ", expected an object"));
    for (auto f = v.begin(); f != v.end(); ++f) {
      if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets") {
        return bad(StrCat("unknown field ", Quote(f.key()),
                          " (expected exactly dtype, shape, data_offsets)"));
      }
    }
    for (const char* field : {"dtype", "shape", "data_offsets"}) {
      if (!v.contains(field)) return bad(StrCat("missing field '", field, "'"));
    }
    const json& jd = v["dtype"];
    const json& js = v["shape"];
    const json& jo = v["data_offsets"];
    if (!jd.is_string()) return bad("dtype is not a string");
    TensorEntry e;
    e.name = key;
    e.dtype_name = jd.get<std::string>();
    int st = StIndexByName(e.dtype_name);
    if (st < 0) {
      return UnimplementedError(Err(name, "InvalidHeaderDeserialization",
                                    StrCat("tensor ", Quote(key), ": unknown dtype ",
                                           Quote(e.dtype_name))));
    }
    if (!kStDTypes[st].dtype) {
      return UnimplementedError(Err(name, "InvalidHeaderDeserialization",
                                    StrCat("tensor ", Quote(key), ": dtype ", e.dtype_name,
                                           " is valid safetensors but has no torch dtype")));
    }
    e.dtype = *kStDTypes[st].dtype;
    if (!js.is_array()) return bad("shape is not an array");
    try {
      e.shape.reserve(js.size());
    } catch (const std::bad_alloc&) {
      return ResourceExhaustedError(StrCat(name, ": tensor ", Quote(key), ": shape too long"));
    }
    for (const json& d : js) {
      if (!d.is_number_unsigned()) {
        return bad(StrCat("shape holds ", d.dump(), ", expected a non-negative integer"));
      }
      uint64_t u = d.get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) {
        return DataLossError(Err(name, "ValidationOverflow",
                                 StrCat("tensor ", Quote(key), ": dimension ", u, " overflows int64")));
      }
      e.shape.push_back(static_cast<int64_t>(u));
    }
    if (!jo.is_array() || jo.size() != 2 || !jo[0].is_number_unsigned() ||
        !jo[1].is_number_unsigned()) {
      return bad(StrCat("data_offsets is ", jo.dump().substr(0, 80),
                        ", expected [begin, end] of non-negative integers"));
    }
    e.begin = jo[0].get<uint64_t>();
    e.end = jo[1].get<uint64_t>();
    try {
      pending.push_back({std::move(e), json_index});
    } catch (const std::bad_alloc&) {
      return ResourceExhaustedError(StrCat(name, ": too many tensors"));
    }
  }
  // nlohmann's object iterates sorted by key, so zero-size tensors sharing an
  // offset end up ordered by name (any order is valid there).
  std::stable_sort(pending.begin(), pending.end(), [](const Pending& a, const Pending& b) {
    return std::pair(a.entry.begin, a.entry.end) < std::pair(b.entry.begin, b.entry.end);
  });
  // Metadata::validate.
  uint64_t start = 0;
  for (const Pending& p : pending) {
    const TensorEntry& e = p.entry;
    if (e.begin != start || e.end < e.begin) {
      return DataLossError(Err(name, "InvalidOffset",
                               StrCat("tensor ", Quote(e.name), ": data_offsets [", e.begin, ", ",
                                      e.end, "] ",
                                      e.end < e.begin ? "end before begin"
                                      : e.begin < start
                                          ? StrCat("overlap the previous tensor, which ends at ", start)
                                          : StrCat("leave a gap after the previous tensor, which ends at ",
                                                   start))));
    }
    start = e.end;
    uint64_t numel = 1;
    for (int64_t d : e.shape) {
      auto m = CheckedMul(numel, static_cast<uint64_t>(d));
      if (!m) {
        return DataLossError(Err(name, "ValidationOverflow",
                                 StrCat("tensor ", Quote(e.name), ": shape overflows")));
      }
      numel = *m;
    }
    int st = StIndexByName(e.dtype_name);
    auto bits = CheckedMul(numel, kStDTypes[st].bits);
    if (!bits) {
      return DataLossError(Err(name, "ValidationOverflow",
                               StrCat("tensor ", Quote(e.name), ": shape x dtype size overflows")));
    }
    if (*bits % 8 != 0) {
      return DataLossError(Err(name, "MisalignedSlice",
                               StrCat("tensor ", Quote(e.name), ": ", numel, " ", e.dtype_name,
                                      " values do not fill whole bytes")));
    }
    if (e.end - e.begin != *bits / 8) {
      return DataLossError(Err(name, "TensorInvalidInfo",
                               StrCat("tensor ", Quote(e.name), ": data_offsets [", e.begin, ", ",
                                      e.end, "] hold ", e.end - e.begin, " bytes, but ",
                                      e.dtype_name, " shape [",
                                      fmt::format("{}", fmt::join(e.shape, ", ")), "] needs ",
                                      *bits / 8)));
    }
  }
  if (start != file_size - h.data_start) {
    return DataLossError(Err(name, "MetadataIncompleteBuffer",
                             StrCat("tensors cover ", start, " bytes of data but the data section is ",
                                    file_size - h.data_start, " bytes (file size ", file_size,
                                    ", data starts at ", h.data_start, ")")));
  }
  h.tensors.reserve(pending.size());
  for (Pending& p : pending) h.tensors.push_back(std::move(p.entry));
  return h;
}

Result<std::vector<int64_t>> TorchShape(const TensorEntry& entry) {
  if (entry.dtype_name != "F4") return entry.shape;
  if (entry.shape.empty() || entry.shape.back() % 2 != 0) {
    return DataLossError(StrCat("tensor ", Quote(entry.name),
                                ": F4 shape needs an even last dimension to map to "
                                "float4_e2m1fn_x2 (two values per element)"));
  }
  std::vector<int64_t> s = entry.shape;
  s.back() /= 2;
  return s;
}

// ------------------------------------------------------------------ writing

Result<Plan> PlanFile(std::span<const TensorSpec> specs,
                      const std::optional<std::map<std::string, std::string>>& metadata) {
  struct Item {
    size_t index;
    int st;
    std::vector<int64_t> file_shape;
    uint64_t nbytes;
  };
  std::vector<Item> items;
  items.reserve(specs.size());
  std::set<std::string_view> names;
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& s = specs[i];
    auto bad = [&](std::string_view what) {
      return InvalidArgumentError(StrCat("safetensors writer: tensor ", Quote(s.name), ": ", what));
    };
    if (s.name.empty()) return bad("empty name");
    if (s.name == "__metadata__") return bad("name is reserved for the metadata map");
    if (FindInvalidUtf8(s.name) != std::string_view::npos) return bad("name is not valid UTF-8");
    if (!names.insert(s.name).second) return bad("duplicate name");
    int st = StIndexByDType(s.dtype);
    if (st < 0) {
      return bad(StrCat("dtype ", DTypeName(s.dtype), " cannot be stored in safetensors"));
    }
    Item it{i, st, s.shape, 0};
    if (kStDTypes[st].name == "F4") {
      // safetensors.torch counts 4-bit values: last dim doubled.
      if (it.file_shape.empty()) return bad("float4_e2m1fn_x2 tensor needs at least one dim");
      auto d = CheckedMulSigned(it.file_shape.back(), 2);
      if (!d) return bad("shape overflows");
      it.file_shape.back() = *d;
    }
    auto numel = CheckedNumel(it.file_shape);
    if (!numel) return bad("negative or overflowing shape");
    auto bits = CheckedMul(static_cast<uint64_t>(*numel), kStDTypes[st].bits);
    if (!bits || *bits % 8) return bad("shape x dtype size overflows or is not whole bytes");
    it.nbytes = *bits / 8;
    items.push_back(std::move(it));
  }
  if (metadata) {
    for (const auto& [k, v] : *metadata) {
      if (FindInvalidUtf8(k) != std::string_view::npos ||
          FindInvalidUtf8(v) != std::string_view::npos) {
        return InvalidArgumentError(StrCat("safetensors writer: metadata entry ", Quote(k),
                                           " is not valid UTF-8"));
      }
    }
  }
  // prepare(): dtype descending (enum order), then name ascending (bytewise).
  std::stable_sort(items.begin(), items.end(), [&](const Item& a, const Item& b) {
    if (a.st != b.st) return a.st > b.st;
    return specs[a.index].name < specs[b.index].name;
  });

  Plan plan;
  std::string js = "{";
  bool first = true;
  if (metadata) {
    js.append("\"__metadata__\":{");
    bool mfirst = true;
    for (const auto& [k, v] : *metadata) {
      if (!mfirst) js.push_back(',');
      mfirst = false;
      AppendJsonString(&js, k);
      js.push_back(':');
      AppendJsonString(&js, v);
    }
    js.push_back('}');
    first = false;
    plan.header.has_metadata = true;
    plan.header.metadata = *metadata;
  }
  uint64_t offset = 0;
  for (const Item& it : items) {
    const TensorSpec& s = specs[it.index];
    if (!first) js.push_back(',');
    first = false;
    AppendJsonString(&js, s.name);
    js.append(":{\"dtype\":\"");
    js.append(kStDTypes[it.st].name);
    js.append("\",\"shape\":[");
    for (size_t d = 0; d < it.file_shape.size(); ++d) {
      if (d) js.push_back(',');
      js.append(std::to_string(it.file_shape[d]));
    }
    auto end = CheckedAdd(offset, it.nbytes);
    if (!end) return InvalidArgumentError("safetensors writer: total size overflows");
    js.append(fmt::format("],\"data_offsets\":[{},{}]}}", offset, *end));
    TensorEntry e;
    e.name = s.name;
    e.dtype = s.dtype;
    e.dtype_name = std::string(kStDTypes[it.st].name);
    e.shape = it.file_shape;
    e.begin = offset;
    e.end = *end;
    plan.header.tensors.push_back(std::move(e));
    plan.order.push_back(it.index);
    offset = *end;
  }
  js.push_back('}');
  js.append((8 - js.size() % 8) % 8, ' ');
  if (js.size() > kMaxHeaderBytes) {
    return InvalidArgumentError(StrCat("safetensors writer: header of ", js.size(),
                                       " bytes exceeds the limit of ", kMaxHeaderBytes));
  }
  PutLE<uint64_t>(&plan.header_bytes, js.size());
  plan.header_bytes.append(js);
  plan.header.header_size = js.size();
  plan.header.data_start = 8 + js.size();
  plan.file_size = plan.header.data_start + offset;
  return plan;
}

Status WriteFile(std::span<const WriteEntry> entries,
                 const std::optional<std::map<std::string, std::string>>& metadata,
                 ByteSink* sink) {
  std::vector<TensorSpec> specs;
  specs.reserve(entries.size());
  for (const WriteEntry& e : entries) specs.push_back(e.spec);
  CKPT_ASSIGN_OR_RETURN(Plan plan, PlanFile(specs, metadata));
  CKPT_RETURN_IF_ERROR(sink->Append(plan.header_bytes));
  for (size_t k = 0; k < plan.order.size(); ++k) {
    const WriteEntry& e = entries[plan.order[k]];
    const TensorEntry& t = plan.header.tensors[k];
    if (!e.write) {
      return InvalidArgumentError(StrCat("safetensors writer: tensor ", Quote(t.name),
                                         ": no write callback"));
    }
    BoundedSink bounded(sink, t.nbytes(), t.name);
    CKPT_RETURN_IF_ERROR(e.write(&bounded), StrCat("tensor ", Quote(t.name)));
    if (bounded.Position() != t.nbytes()) {
      return InvalidArgumentError(StrCat("safetensors writer: tensor ", Quote(t.name),
                                         ": callback wrote ", bounded.Position(),
                                         " bytes, declared ", t.nbytes()));
    }
  }
  return OkStatus();
}

// ------------------------------------------------------------ sharded sets

std::optional<uint64_t> ShardIndex::total_size() const {
  if (!metadata.is_object()) return std::nullopt;
  auto it = metadata.find("total_size");
  if (it == metadata.end() || !it->is_number_unsigned()) return std::nullopt;
  return it->get<uint64_t>();
}

std::vector<std::string> ShardIndex::Files() const {
  std::set<std::string> s;
  for (const auto& [t, f] : weight_map) s.insert(f);
  return {s.begin(), s.end()};
}

const std::string* ShardIndex::FileOf(std::string_view tensor) const {
  auto it = std::lower_bound(
      weight_map.begin(), weight_map.end(), tensor,
      [](const std::pair<std::string, std::string>& p, std::string_view t) { return p.first < t; });
  if (it == weight_map.end() || it->first != tensor) return nullptr;
  return &it->second;
}

Result<ShardIndex> ParseIndex(std::string_view json_text, std::string_view source_name) {
  if (size_t bad = FindInvalidUtf8(json_text); bad != std::string_view::npos) {
    return DataLossError(StrCat(source_name, ": index is not valid UTF-8 at byte ", bad));
  }
  if (size_t nul = json_text.find('\0'); nul != std::string_view::npos) {
    return DataLossError(StrCat(source_name, ": index is not valid JSON: NUL byte at ", nul));
  }
  if (JsonDepth(json_text, kMaxJsonDepth) > kMaxJsonDepth) {
    return DataLossError(StrCat(source_name, ": index JSON nests deeper than ", kMaxJsonDepth));
  }
  ParsedJson parsed = ParseJsonChecked(json_text);
  if (!parsed.ok) {
    return DataLossError(StrCat(source_name, ": index is not valid JSON: ", parsed.error));
  }
  const json& root = parsed.value;
  if (!root.is_object()) {
    return DataLossError(StrCat(source_name, ": index is a JSON ", root.type_name(),
                                ", expected an object"));
  }
  auto wm = root.find("weight_map");
  if (wm == root.end() || !wm->is_object()) {
    return DataLossError(StrCat(source_name, ": index has no \"weight_map\" object"));
  }
  if (!parsed.duplicate_key.empty()) {
    return DataLossError(StrCat(source_name, ": duplicate key ", Quote(parsed.duplicate_key),
                                parsed.duplicate_path.empty()
                                    ? std::string()
                                    : StrCat(" in ", Quote(parsed.duplicate_path))));
  }
  ShardIndex index;
  if (auto md = root.find("metadata"); md != root.end() && md->is_object()) {
    index.metadata = *md;
  }
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string()) {
      return DataLossError(StrCat(source_name, ": weight_map entry ", Quote(it.key()),
                                  " is a JSON ", it.value().type_name(), ", expected a file name"));
    }
    const std::string& file = it.value().get_ref<const std::string&>();
    if (!IsPlainFileName(file)) {
      return DataLossError(StrCat(source_name, ": weight_map entry ", Quote(it.key()),
                                  " names file ", Quote(file),
                                  ", which is not a plain file name in the index's folder"));
    }
    index.weight_map.emplace_back(it.key(), file);
  }
  // nlohmann's object iterates in key order: weight_map is already sorted.
  return index;
}

Result<std::string> SerializeIndex(const ShardIndex& index) {
  json root = json::object();
  root["metadata"] = index.metadata.is_object() ? index.metadata : json::object();
  json wm = json::object();
  for (const auto& [t, f] : index.weight_map) wm[t] = f;
  root["weight_map"] = std::move(wm);
  std::string out;
  CKPT_RETURN_IF_ERROR(DumpPy(root, 0, &out));
  out.push_back('\n');
  return out;
}

ShardIndex ShardPlan::Index(std::span<const ShardTensor> tensors) const {
  ShardIndex index;
  index.metadata["total_size"] = total_size;
  for (const auto& [file, members] : shards) {
    for (size_t i : members) {
      if (i < tensors.size()) index.weight_map.emplace_back(tensors[i].name, file);
    }
  }
  std::sort(index.weight_map.begin(), index.weight_map.end());
  return index;
}

Result<ShardPlan> PlanShards(std::span<const ShardTensor> tensors, const ShardPlanOptions& options) {
  if (options.prefix.empty()) return InvalidArgumentError("shard planner: empty file prefix");
  std::set<std::string_view> names;
  for (const ShardTensor& t : tensors) {
    if (!names.insert(t.name).second) {
      return InvalidArgumentError(StrCat("shard planner: duplicate tensor name ", Quote(t.name)));
    }
  }
  // split_state_dict_into_shards_factory.
  std::vector<std::vector<size_t>> shard_list;
  std::vector<size_t> current;
  uint64_t current_size = 0, total = 0;
  std::map<int64_t, std::vector<size_t>> groups;  // storage group -> members
  std::vector<int64_t> group_order;                // first-seen order
  for (size_t i = 0; i < tensors.size(); ++i) {
    const ShardTensor& t = tensors[i];
    if (t.storage_group >= 0) {
      auto [it, inserted] = groups.try_emplace(t.storage_group);
      it->second.push_back(i);
      if (!inserted) continue;
      group_order.push_back(t.storage_group);
    }
    if (t.nbytes > options.max_shard_size) {
      total += t.nbytes;
      shard_list.push_back({i});
      continue;
    }
    if (current_size + t.nbytes > options.max_shard_size) {
      shard_list.push_back(std::move(current));
      current.clear();
      current_size = 0;
    }
    current.push_back(i);
    current_size += t.nbytes;
    total += t.nbytes;
  }
  if (!current.empty()) shard_list.push_back(std::move(current));
  for (int64_t g : group_order) {
    const std::vector<size_t>& members = groups[g];
    for (auto& shard : shard_list) {
      if (std::find(shard.begin(), shard.end(), members[0]) != shard.end()) {
        shard.insert(shard.end(), members.begin() + 1, members.end());
        break;
      }
    }
  }
  ShardPlan plan;
  plan.total_size = total;
  const size_t nb = shard_list.size();
  for (size_t k = 0; k < nb; ++k) {
    std::string file = nb == 1 ? StrCat(options.prefix, options.extension)
                               : fmt::format("{}-{:05d}-of-{:05d}{}", options.prefix, k + 1, nb,
                                             options.extension);
    plan.shards.emplace_back(std::move(file), std::move(shard_list[k]));
  }
  return plan;
}

}  // namespace ckpt::safetensors
