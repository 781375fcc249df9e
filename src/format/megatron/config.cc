// metadata.json and latest_checkpointed_iteration.txt.
#include <charconv>
#include <string>

#include "format/megatron/megatron.h"
#include "util/strings.h"

namespace ckpt::megatron {
namespace {

// Reads an optional integer field; DataLoss when present with another type
// (JSON booleans are refused although Python's bool is an int).
Status OptionalInt(const nlohmann::json& obj, std::string_view name, std::string_view field,
                   std::optional<int64_t>* out) {
  auto it = obj.find(std::string(field));
  if (it == obj.end()) return OkStatus();
  if (it->is_number_integer() && !it->is_boolean()) {
    if (it->is_number_unsigned() && it->get<uint64_t>() > uint64_t{INT64_MAX}) {
      return DataLossError(StrCat(name, ": field \"", field, "\" is out of range: ", it->dump()));
    }
    *out = it->get<int64_t>();
    return OkStatus();
  }
  return DataLossError(StrCat(name, ": field \"", field, "\" should be an integer, got ",
                              it->type_name(), " ", Quote(it->dump(), 40)));
}

Status OptionalString(const nlohmann::json& obj, std::string_view name, std::string_view field,
                      std::optional<std::string>* out) {
  auto it = obj.find(std::string(field));
  if (it == obj.end()) return OkStatus();
  if (!it->is_string()) {
    return DataLossError(StrCat(name, ": field \"", field, "\" should be a string, got ",
                                it->type_name(), " ", Quote(it->dump(), 40)));
  }
  *out = it->get<std::string>();
  return OkStatus();
}

bool IsPySpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

}  // namespace

Result<Config> ParseConfig(std::string_view text, std::string_view name) {
  if (text.size() > kMaxConfigBytes) {
    return ResourceExhaustedError(StrCat(name, ": ", text.size(), " bytes, more than the ",
                                         kMaxConfigBytes, " accepted for a Megatron metadata.json"));
  }
  nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), nullptr,
                                           /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return DataLossError(StrCat(name, ": not valid JSON (expected the Megatron-Core "
                                      "CheckpointingConfig object), starts with ",
                                Quote(text.substr(0, 40))));
  }
  if (!j.is_object()) {
    return DataLossError(StrCat(name, ": expected a JSON object with \"sharded_backend\", got ",
                                j.type_name()));
  }
  Config c;
  std::optional<std::string> backend;
  CKPT_RETURN_IF_ERROR(OptionalString(j, name, "sharded_backend", &backend));
  if (!backend.has_value()) {
    return DataLossError(StrCat(name, ": missing \"sharded_backend\" (not a Megatron-Core "
                                      "distributed checkpoint config)"));
  }
  c.sharded_backend = *backend;
  std::optional<int64_t> version;
  CKPT_RETURN_IF_ERROR(OptionalInt(j, name, "sharded_backend_version", &version));
  c.sharded_backend_version = version.value_or(1);  // dataclass default
  CKPT_RETURN_IF_ERROR(OptionalString(j, name, "common_backend", &c.common_backend));
  CKPT_RETURN_IF_ERROR(OptionalInt(j, name, "common_backend_version", &c.common_backend_version));
  c.raw = std::move(j);

  if (c.sharded_backend == "zarr") {
    return UnimplementedError(StrCat(
        name, ": sharded_backend \"zarr\": a zarr distributed checkpoint (Megatron-Core <= 0.15; "
              "zarr support was removed in 0.16) is not supported; convert it to torch_dist with "
              "Megatron-Core 0.15 (load with --ckpt-format zarr, save with --ckpt-format torch_dist)"));
  }
  if (c.sharded_backend != "torch_dist") {
    return UnimplementedError(StrCat(name, ": unknown sharded_backend ", Quote(c.sharded_backend),
                                     " (only \"torch_dist\" is supported)"));
  }
  if (c.sharded_backend_version != 1) {
    return UnimplementedError(StrCat(name, ": torch_dist sharded_backend_version ",
                                     c.sharded_backend_version, " (only version 1 is known)"));
  }
  if (c.common_backend.has_value() && *c.common_backend != "torch") {
    return UnimplementedError(StrCat(name, ": unknown common_backend ", Quote(*c.common_backend),
                                     " (only \"torch\", i.e. common.pt, is known)"));
  }
  if (c.common_backend_version.has_value() && *c.common_backend_version != 1) {
    return UnimplementedError(StrCat(name, ": common_backend_version ", *c.common_backend_version,
                                     " (only version 1 is known)"));
  }
  return c;
}

Result<Tracker> ParseTracker(std::string_view text, std::string_view name) {
  size_t b = 0, e = text.size();
  while (b < e && IsPySpace(text[b])) ++b;
  while (e > b && IsPySpace(text[e - 1])) --e;
  std::string_view s = text.substr(b, e - b);
  if (s == "release") return Tracker{true, 0};
  auto bad = [&](std::string_view why) {
    return DataLossError(StrCat(name, ": ", why, ": expected a decimal iteration or \"release\", got ",
                                Quote(s, 40)));
  };
  if (s.empty()) return bad("empty tracker");
  // Python int(): optional sign, digits with single underscores between them.
  bool negative = false;
  size_t i = 0;
  if (s[0] == '+' || s[0] == '-') {
    negative = s[0] == '-';
    i = 1;
  }
  std::string digits;
  bool prev_digit = false;
  for (; i < s.size(); ++i) {
    char ch = s[i];
    if (ch >= '0' && ch <= '9') {
      digits.push_back(ch);
      prev_digit = true;
    } else if (ch == '_' && prev_digit && i + 1 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '9') {
      prev_digit = false;
    } else {
      return bad("not a number");
    }
  }
  if (digits.empty()) return bad("not a number");
  int64_t v = 0;
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  if (ec != std::errc() || p != digits.data() + digits.size()) return bad("iteration out of range");
  if (negative && v != 0) return bad("negative iteration");
  return Tracker{false, v};
}

std::string IterationDirName(const Tracker& t) {
  if (t.release) return "release";
  return fmt::format("iter_{:07d}", t.iteration);
}

}  // namespace ckpt::megatron
