// ckptkit's checksum manifest of a DCP folder (manifest.h).
#include "format/dcp/manifest.h"

#include <xxhash.h>

#include <map>
#include <new>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "util/strings.h"

namespace ckpt::dcp {
namespace {

constexpr std::string_view kPrefix = "ckptkit-manifest";
constexpr std::string_view kSuffix = ".json";
constexpr std::string_view kFormat = "ckptkit-manifest";
constexpr std::string_view kHash = "xxh3-64";

}  // namespace

std::string ManifestFileName(std::string_view prefix) { return StrCat(kPrefix, prefix, kSuffix); }

bool IsManifestFileName(std::string_view name) {
  return name.size() >= kPrefix.size() + kSuffix.size() && name.starts_with(kPrefix) && name.ends_with(kSuffix);
}

std::string_view ManifestPrefix(std::string_view name) {
  return name.substr(kPrefix.size(), name.size() - kPrefix.size() - kSuffix.size());
}

std::string DataFilePrefix(std::string_view data_file) {
  if (!data_file.ends_with(".distcp")) return "";
  std::string_view stem = data_file.substr(0, data_file.size() - 7);
  const size_t us = stem.rfind('_');
  if (us == std::string_view::npos || us + 1 == stem.size()) return "";
  for (char c : stem.substr(us + 1)) {
    if (c < '0' || c > '9') return "";
  }
  return std::string(stem.substr(0, us + 1));
}

std::string SerializeManifest(std::span<const ManifestItem> items) {
  std::map<std::string, std::vector<const ManifestItem*>> by_file;
  for (const ManifestItem& it : items) by_file[it.file].push_back(&it);
  nlohmann::ordered_json files = nlohmann::ordered_json::object();
  for (const auto& [file, list] : by_file) {
    nlohmann::ordered_json arr = nlohmann::ordered_json::array();
    for (const ManifestItem* it : list) arr.push_back({it->offset, it->length, fmt::format("{:016x}", it->xxh3)});
    files[file] = std::move(arr);
  }
  nlohmann::ordered_json j;
  j["format"] = kFormat;
  j["version"] = 1;
  j["hash"] = kHash;
  j["files"] = std::move(files);
  return j.dump() + "\n";
}

Result<std::vector<ManifestItem>> ParseManifest(std::string_view text, std::string_view name) {
  auto bad = [&](std::string_view why) { return DataLossError(StrCat(name, ": not a ckptkit manifest: ", why)); };
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  auto str = [&](const char* key) -> std::string {
    auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  if (str("format") != kFormat) return bad("\"format\" is not \"ckptkit-manifest\"");
  auto version = j.find("version");
  if (version == j.end() || !version->is_number_unsigned() || version->get<uint64_t>() != 1) {
    return bad("\"version\" is not 1");
  }
  if (str("hash") != kHash) return bad("\"hash\" is not \"xxh3-64\"");
  auto files = j.find("files");
  if (files == j.end() || !files->is_object()) return bad("\"files\" is not an object");
  std::vector<ManifestItem> out;
  for (auto f = files->begin(); f != files->end(); ++f) {
    if (!f->is_array()) return bad(StrCat("the items of ", Quote(f.key()), " are not a list"));
    for (const nlohmann::json& it : *f) {
      if (!it.is_array() || it.size() != 3 || !it[0].is_number_unsigned() || !it[1].is_number_unsigned() ||
          !it[2].is_string()) {
        return bad(StrCat("an item of ", Quote(f.key()), " is not [offset, length, \"hex\"]"));
      }
      const std::string hex = it[2].get<std::string>();
      ManifestItem m;
      m.file = f.key();
      m.offset = it[0].get<uint64_t>();
      m.length = it[1].get<uint64_t>();
      if (hex.size() != 16) return bad(StrCat("digest ", Quote(hex), " of ", Quote(f.key()), " is not 16 hex digits"));
      for (char c : hex) {
        const int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (v < 0) return bad(StrCat("digest ", Quote(hex), " of ", Quote(f.key()), " is not 16 hex digits"));
        m.xxh3 = (m.xxh3 << 4) | static_cast<uint64_t>(v);
      }
      out.push_back(std::move(m));
    }
  }
  return out;
}

uint64_t Xxh3(std::string_view data) { return XXH3_64bits(data.data(), data.size()); }

Xxh3Stream::Xxh3Stream() : state_(XXH3_createState()) {
  if (state_ == nullptr) throw std::bad_alloc();
  XXH3_64bits_reset(static_cast<XXH3_state_t*>(state_));
}
Xxh3Stream::~Xxh3Stream() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }
void Xxh3Stream::Update(std::string_view data) {
  XXH3_64bits_update(static_cast<XXH3_state_t*>(state_), data.data(), data.size());
}
uint64_t Xxh3Stream::Digest() const { return XXH3_64bits_digest(static_cast<const XXH3_state_t*>(state_)); }

}  // namespace ckpt::dcp
