// Verify: structural and (deep) byte-level checks over any checkpoint.
#include "ckpt/verify.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

#include "checkpoint/dcp_reader.h"
#include "checkpoint/legacy_reader.h"
#include "checkpoint/readers.h"
#include "ckpt/checkpoint.h"
#include "format/dcp/manifest.h"
#include "util/strings.h"

namespace ckpt {
namespace {

using internal_checkpoint::DcpReader;

bool IsDataProblem(const Status& s) {
  switch (s.code()) {
    case Code::kDataLoss:
    case Code::kOutOfRange:
    case Code::kUnimplemented:
    case Code::kFailedPrecondition:
      return true;
    default:
      return false;
  }
}

VerifyProblem FromDcp(const dcp::Problem& p) {
  return VerifyProblem{p.file, p.has_offset, p.offset, p.key, p.message};
}

VerifyProblem FromStatus(const Status& s, std::string file, std::string key, const dcp::StorageItem* it) {
  VerifyProblem p;
  p.file = std::move(file);
  p.key = std::move(key);
  if (it) {
    p.has_offset = true;
    p.offset = it->offset_in_file;
  }
  p.message = s.message();
  return p;
}

void VerifyDcp(const DcpReader& r, const VerifyOptions& o, VerifyReport* rep) {
  const dcp::Metadata& md = r.metadata();
  std::set<std::string> known;  // (key) already reported unreadable by the structure check
  for (const dcp::Problem& p : r.problems()) {
    rep->problems.push_back(FromDcp(p));
    if (!p.key.empty()) known.insert(p.key);
  }
  rep->files = r.data_files().size();
  uint64_t total = 0, done = 0;
  for (const dcp::Entry& e : md.entries) total += e.type == dcp::EntryType::kTensor ? e.chunks.size() : 1;
  for (const dcp::Entry& e : md.entries) {
    if (e.type == dcp::EntryType::kBytes) {
      ++rep->objects;
      ++done;
      if (e.item < 0 || known.count(e.key)) continue;
      const dcp::StorageItem& it = md.items[e.item];
      auto f = r.data_files().find(it.relative_path);
      if (f == r.data_files().end()) continue;  // reported as a missing file
      auto archive = r.OpenBytes(e, pickle::Mode::kInspect);
      if (!archive.ok()) {
        rep->problems.push_back(FromStatus(archive.status(), std::string(it.relative_path), e.key, &it));
        continue;
      }
      if (o.deep) {
        for (const torch::StorageRecord& s : (*archive)->storages()) {
          CountingSink sink;
          Status st = (*archive)->ReadStorage(s, &sink);
          if (!st.ok()) rep->problems.push_back(FromStatus(st, std::string(it.relative_path), e.key, &it));
          rep->bytes_read += sink.Position();
        }
      }
      if (o.progress) o.progress(done, total);
      continue;
    }
    ++rep->tensors;
    std::set<std::pair<std::vector<int64_t>, std::vector<int64_t>>> seen;
    for (const dcp::Chunk& c : e.chunks) {
      ++done;
      if (c.item < 0) continue;  // reported by the structure check
      ++rep->chunks;
      const dcp::StorageItem& it = md.items[c.item];
      auto f = r.data_files().find(it.relative_path);
      if (f == r.data_files().end() || it.offset_in_file > f->second ||
          it.length > f->second - it.offset_in_file) {
        continue;  // reported by the structure check
      }
      auto a = r.OpenChunk(e, c);
      if (!a.ok()) {
        rep->problems.push_back(FromStatus(a.status(), std::string(it.relative_path), e.key, &it));
        continue;
      }
      if (o.deep) {
        const torch::StorageRecord& s = a->archive->storages()[a->tensor->storage];
        CountingSink sink;
        Status st = a->archive->ReadStorage(s, &sink);
        if (st.ok()) {
          CountingSink tsink;
          st = a->archive->ReadTensor(*a->tensor, &tsink);
          rep->bytes_read += tsink.Position();
        }
        if (!st.ok()) rep->problems.push_back(FromStatus(st, std::string(it.relative_path), e.key, &it));
      }
      if (o.progress) o.progress(done, total);
    }
  }
}

// The checksum manifests beside the data files (format/dcp/manifest.h): each
// names items of `.metadata` (else it is another save's), lists every item of
// the files of its prefix, and, deep, the stored bytes hash to its digests.
void VerifyManifests(const DcpReader& r, const VerifyOptions& o, VerifyReport* rep) {
  Env* env = o.env != nullptr ? o.env : Env::Default();
  std::vector<std::string> names;
  for (const std::string& k : r.other_files()) {
    if (dcp::IsManifestFileName(k)) names.push_back(k);
  }
  if (names.empty()) return;
  std::sort(names.begin(), names.end());
  const dcp::Metadata& md = r.metadata();
  // (file, offset, length) -> key, for every stored item.
  std::map<std::tuple<std::string, uint64_t, uint64_t>, std::string> items;
  auto add = [&](int64_t item, const std::string& key) {
    if (item < 0) return;
    const dcp::StorageItem& it = md.items[static_cast<size_t>(item)];
    items[{std::string(it.relative_path), it.offset_in_file, it.length}] = key;
  };
  for (const dcp::Entry& e : md.entries) {
    if (e.type == dcp::EntryType::kBytes) {
      add(e.item, e.key);
    } else {
      for (const dcp::Chunk& c : e.chunks) add(c.item, e.key);
    }
  }
  std::set<std::tuple<std::string, uint64_t, uint64_t>> listed;
  std::set<std::string> prefixes;
  std::string buf;
  for (const std::string& name : names) {
    // About 40 bytes per item: 1 GiB is tens of millions of items.
    Result<std::string> text = internal_checkpoint::ReadSmall(env, JoinPath(r.folder(), name), uint64_t{1} << 30);
    Result<std::vector<dcp::ManifestItem>> m =
        text.ok() ? dcp::ParseManifest(*text, name) : Result<std::vector<dcp::ManifestItem>>(text.status());
    if (!m.ok()) {
      rep->problems.push_back({name, false, 0, "", m.status().message()});
      continue;
    }
    ++rep->manifests;
    prefixes.insert(std::string(dcp::ManifestPrefix(name)));
    for (const dcp::ManifestItem& mi : *m) {
      auto it = items.find({mi.file, mi.offset, mi.length});
      if (it == items.end()) {
        rep->problems.push_back({mi.file, true, mi.offset, "",
                                 StrCat("the checksum manifest ", name, " names an item of ", mi.length,
                                        " bytes here that .metadata does not (a manifest of another save?)")});
        continue;
      }
      listed.insert(it->first);
      if (!o.deep) continue;
      Result<std::shared_ptr<const ByteSource>> file = r.DataFile(mi.file);
      if (!file.ok() || mi.offset > (*file)->Size() || mi.length > (*file)->Size() - mi.offset) {
        continue;  // a missing or short file is reported by the structure check
      }
      dcp::Xxh3Stream h;
      Status st;
      for (uint64_t at = 0; at < mi.length && st.ok();) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(mi.length - at, 8u << 20));
        buf.resize(n);
        st = (*file)->ReadAt(mi.offset + at, n, buf.data());
        h.Update(buf);
        at += n;
      }
      ++rep->checksums;
      if (!st.ok()) {
        rep->problems.push_back({mi.file, true, mi.offset, it->second, st.message()});
      } else if (h.Digest() != mi.xxh3) {
        rep->problems.push_back(
            {mi.file, true, mi.offset, it->second,
             fmt::format("the {} stored bytes differ from what was saved (XXH3 {:016x}, {} recorded {:016x})", mi.length,
                         h.Digest(), name, mi.xxh3)});
      }
    }
  }
  // Every item of a file whose prefix has a manifest is in it.
  for (const auto& [where, key] : items) {
    const std::string prefix = dcp::DataFilePrefix(std::get<0>(where));
    if (prefixes.count(prefix) && !listed.count(where)) {
      rep->problems.push_back({std::get<0>(where), true, std::get<1>(where), key,
                               StrCat("not in the checksum manifest ", dcp::ManifestFileName(prefix),
                                      " (the manifest of another save?)")});
    }
  }
}

// Legacy (--ckpt-format torch): the problems found at open (grid, missing
// files, distrib_optim sizes), then, deep, every storage of every rank file
// read (CRC-32 checked) and every tensor decoded.
void VerifyLegacy(const internal_checkpoint::LegacyReader& r, const VerifyOptions& o, VerifyReport* rep) {
  using FileKind = internal_checkpoint::LegacyReader::FileKind;
  for (const auto& p : r.problems()) rep->problems.push_back(VerifyProblem{p.file, false, 0, "", p.message});
  rep->objects = r.objects().size();
  rep->tensors = rep->chunks = r.tensors().size();
  rep->layout = r.SummaryText();
  uint64_t total = 0, done = 0;
  for (const auto& rank : r.ranks()) {
    for (const auto* f : {&rank.model, &rank.distrib_optim}) {
      if (f->present) ++rep->files;
      if (f->opened) total += f->tensor_count;
    }
  }
  if (!o.deep) return;
  for (const auto& rank : r.ranks()) {
    for (FileKind kind : {FileKind::kModel, FileKind::kDistribOptim}) {
      const auto& f = kind == FileKind::kModel ? rank.model : rank.distrib_optim;
      if (!f.opened) continue;  // absent or reported at open
      const std::string rel = internal_checkpoint::LegacyReader::RelativePath(rank, kind);
      auto tf = r.OpenRankFile(rank.coord, kind);
      if (!tf.ok()) {
        rep->problems.push_back(VerifyProblem{rel, false, 0, "", tf.status().message()});
        continue;
      }
      for (const torch::StorageRecord& s : (*tf)->storages()) {
        CountingSink sink;
        Status st = (*tf)->ReadStorage(s, &sink);
        if (!st.ok()) {
          rep->problems.push_back(VerifyProblem{rel, s.entry != nullptr, s.entry ? s.entry->data_offset : 0,
                                                s.entry_name, st.message()});
        }
      }
      for (size_t i = f.first_tensor; i < f.first_tensor + f.tensor_count; ++i) {
        const TensorInfo& t = r.tensors()[i];
        CountingSink sink;
        Status st = r.ReadTensor(i, &sink);
        rep->bytes_read += sink.Position();
        if (!st.ok()) rep->problems.push_back(VerifyProblem{rel, true, t.data_offset, t.key, st.message()});
        if (o.progress) o.progress(++done, total);
      }
    }
  }
}

void VerifyGeneric(const CheckpointReader& r, const VerifyOptions& o, VerifyReport* rep) {
  const auto& ts = r.tensors();
  rep->objects = r.objects().size();
  for (size_t i = 0; i < ts.size(); ++i) {
    ++rep->tensors;
    ++rep->chunks;
    if (!o.deep) continue;
    CountingSink sink;
    Status s = r.ReadTensor(i, &sink);
    rep->bytes_read += sink.Position();
    if (!s.ok()) {
      VerifyProblem p;
      p.file = ts[i].file;
      p.key = ts[i].key;
      p.has_offset = true;
      p.offset = ts[i].data_offset;
      p.message = s.message();
      rep->problems.push_back(std::move(p));
    }
    if (o.progress) o.progress(i + 1, ts.size());
  }
}

}  // namespace

std::string ToString(const VerifyProblem& p) {
  return dcp::ToString(dcp::Problem{p.key, p.file, p.has_offset, p.offset, p.message});
}

Result<VerifyReport> Verify(const std::string& path, const VerifyOptions& options) {
  VerifyReport rep;
  rep.deep = options.deep;
  OpenOptions open;
  open.env = options.env;
  open.pickle_mode = PickleMode::kInspect;
  auto reader = OpenCheckpoint(path, open);
  if (!reader.ok()) {
    if (!IsDataProblem(reader.status())) return reader.status();
    rep.format = "unreadable";
    VerifyProblem p;
    p.file = path;
    p.message = reader.status().message();
    rep.problems.push_back(std::move(p));
    return rep;
  }
  rep.format = std::string((*reader)->format());
  if (const DcpReader* dcp = (*reader)->dcp_view()) {
    VerifyDcp(*dcp, options, &rep);
    VerifyManifests(*dcp, options, &rep);
  } else if (const internal_checkpoint::LegacyReader* legacy = (*reader)->legacy_view()) {
    VerifyLegacy(*legacy, options, &rep);
  } else {
    VerifyGeneric(**reader, options, &rep);
  }
  return rep;
}

}  // namespace ckpt
