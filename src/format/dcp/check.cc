#include "format/dcp/check.h"

#include <algorithm>
#include <set>
#include <unordered_set>

#include "format/dcp/item.h"
#include "util/by_address.h"
#include "util/checked_math.h"
#include "util/strings.h"

namespace ckpt::dcp {
namespace {

// Grids with more cells than this fall back to a volume count.
constexpr uint64_t kMaxGridCells = uint64_t{1} << 22;
// Pairwise overlap checks above this many chunks are skipped in the fallback.
constexpr size_t kMaxPairwiseChunks = 4096;

std::string BoxString(std::span<const int64_t> start, std::span<const int64_t> count) {
  std::string s = "[";
  for (size_t d = 0; d < start.size(); ++d) s += StrCat(d ? ", " : "", start[d], ":", start[d] + count[d]);
  return s + "]";
}

std::string ChunkName(const Chunk& c) {
  return StrCat("chunk at ", OffsetsString(c.offsets), " sizes ", OffsetsString(c.sizes));
}

Problem KeyProblem(const Entry& e, std::string msg) {
  Problem p;
  p.key = e.key;
  p.message = std::move(msg);
  return p;
}

}  // namespace

std::string ToString(const Problem& p) {
  std::string s;
  if (!p.file.empty()) s += p.file;
  if (p.has_offset) s += StrCat(" @ ", p.offset);
  if (!s.empty()) s += ": ";
  if (!p.key.empty()) s += StrCat(Quote(p.key), ": ");
  return s + p.message;
}

size_t CheckCoverage(const Entry& e, std::vector<Problem>* out) {
  const size_t before = out->size();
  const size_t rank = e.size.size();
  auto numel = CheckedNumel(e.size);
  if (!numel) {
    out->push_back(KeyProblem(e, StrCat("global shape ", OffsetsString(e.size), " overflows")));
    return out->size() - before;
  }
  // Inside the tensor; drop exact repeats (replicas).
  std::vector<const Chunk*> chunks;
  // Chunks by their box (offsets and sizes), without copying them.
  struct BoxHash {
    size_t operator()(const Chunk* c) const {
      uint64_t h = 0x9e3779b97f4a7c15ULL;
      for (int64_t x : c->offsets) h = (h ^ static_cast<uint64_t>(x)) * 0x100000001b3ULL;
      for (int64_t x : c->sizes) h = (h ^ static_cast<uint64_t>(x)) * 0x100000001b3ULL;
      return static_cast<size_t>(h);
    }
  };
  struct BoxEq {
    bool operator()(const Chunk* a, const Chunk* b) const {
      return std::ranges::equal(a->offsets, b->offsets) && std::ranges::equal(a->sizes, b->sizes);
    }
  };
  std::unordered_set<const Chunk*, BoxHash, BoxEq> seen;
  seen.reserve(e.chunks.size());
  for (const Chunk& c : e.chunks) {
    bool inside = c.offsets.size() == rank && c.sizes.size() == rank;
    for (size_t d = 0; inside && d < rank; ++d) {
      auto end = CheckedAddSigned(c.offsets[d], c.sizes[d]);
      inside = c.offsets[d] >= 0 && c.sizes[d] >= 0 && end && *end <= e.size[d];
    }
    if (!inside) {
      out->push_back(KeyProblem(e, StrCat(ChunkName(c), " lies outside the tensor's shape ", OffsetsString(e.size))));
      continue;
    }
    if (!seen.insert(&c).second) continue;
    if (!CheckedNumel(c.sizes).value_or(0)) continue;  // an empty chunk covers nothing
    chunks.push_back(&c);
  }
  if (*numel == 0) return out->size() - before;
  if (rank == 0) {
    if (chunks.empty()) out->push_back(KeyProblem(e, "the scalar is in no chunk"));
    return out->size() - before;
  }
  // Grid of all chunk boundaries.
  std::vector<std::vector<int64_t>> bounds(rank);
  uint64_t cells = 1;
  for (size_t d = 0; d < rank; ++d) {
    std::vector<int64_t>& b = bounds[d];
    b.push_back(0);
    b.push_back(e.size[d]);
    for (const Chunk* c : chunks) {
      b.push_back(c->offsets[d]);
      b.push_back(c->offsets[d] + c->sizes[d]);
    }
    std::sort(b.begin(), b.end());
    b.erase(std::unique(b.begin(), b.end()), b.end());
    cells = CheckedMul(cells, b.size() - 1).value_or(kMaxGridCells + 1);
    if (cells > kMaxGridCells) cells = kMaxGridCells + 1;
  }
  if (cells <= kMaxGridCells) {
    std::vector<int32_t> owner(cells, -1);
    std::vector<size_t> lo(rank), hi(rank), idx(rank);
    bool reported_overlap = false;
    // An exact tiling visits each cell once. Nested overlapping chunks could
    // cost chunks x cells, so stop after 2 x cells visits: by then a cell was
    // visited twice and the overlap is reported (the gap count is skipped).
    const uint64_t max_visits = 2 * cells;
    uint64_t visits = 0;
    for (size_t ci = 0; ci < chunks.size() && visits <= max_visits; ++ci) {
      const Chunk* c = chunks[ci];
      for (size_t d = 0; d < rank; ++d) {
        const auto& b = bounds[d];
        lo[d] = std::lower_bound(b.begin(), b.end(), c->offsets[d]) - b.begin();
        hi[d] = std::lower_bound(b.begin(), b.end(), c->offsets[d] + c->sizes[d]) - b.begin();
        idx[d] = lo[d];
      }
      bool more = true;
      while (more && ++visits <= max_visits) {
        uint64_t cell = 0;
        for (size_t d = 0; d < rank; ++d) cell = cell * (bounds[d].size() - 1) + idx[d];
        if (owner[cell] >= 0 && !reported_overlap) {
          const Chunk* other = chunks[owner[cell]];
          out->push_back(KeyProblem(e, StrCat(ChunkName(*c), " overlaps ", ChunkName(*other))));
          reported_overlap = true;
        }
        owner[cell] = static_cast<int32_t>(ci);
        more = false;
        for (size_t d = rank; d-- > 0;) {
          if (++idx[d] < hi[d]) {
            more = true;
            break;
          }
          idx[d] = lo[d];
        }
      }
    }
    if (visits > max_visits) return out->size() - before;
    // Gaps: count missing elements, name the first missing cell.
    uint64_t missing = 0;
    std::string first;
    std::vector<int64_t> start(rank), count(rank);
    for (uint64_t cell = 0; cell < cells; ++cell) {
      if (owner[cell] >= 0) continue;
      uint64_t rem = cell, vol = 1;
      for (size_t d = rank; d-- > 0;) {
        uint64_t n = bounds[d].size() - 1;
        size_t i = rem % n;
        rem /= n;
        start[d] = bounds[d][i];
        count[d] = bounds[d][i + 1] - bounds[d][i];
        vol *= static_cast<uint64_t>(count[d]);
      }
      if (vol == 0) continue;
      missing += vol;
      if (first.empty()) first = BoxString(start, count);
    }
    if (missing) {
      out->push_back(KeyProblem(e, StrCat(missing, " of ", *numel, " elements are in no chunk (first: ", first,
                                          "): a chunk is missing")));
    }
    return out->size() - before;
  }
  // Fallback for very irregular layouts: volumes, and pairwise overlaps when affordable.
  uint64_t covered = 0;
  for (const Chunk* c : chunks) {
    // Each chunk lies inside the tensor, but their sum can wrap: saturate.
    covered = CheckedAdd(covered, static_cast<uint64_t>(*CheckedNumel(c->sizes))).value_or(UINT64_MAX);
  }
  if (chunks.size() <= kMaxPairwiseChunks) {
    for (size_t i = 0; i < chunks.size(); ++i) {
      for (size_t j = i + 1; j < chunks.size(); ++j) {
        bool overlap = true;
        for (size_t d = 0; overlap && d < rank; ++d) {
          overlap = chunks[i]->offsets[d] < chunks[j]->offsets[d] + chunks[j]->sizes[d] &&
                    chunks[j]->offsets[d] < chunks[i]->offsets[d] + chunks[i]->sizes[d];
        }
        if (overlap) {
          out->push_back(KeyProblem(e, StrCat(ChunkName(*chunks[i]), " overlaps ", ChunkName(*chunks[j]))));
          return out->size() - before;
        }
      }
    }
  }
  if (covered != static_cast<uint64_t>(*numel)) {
    out->push_back(KeyProblem(e, StrCat("chunks hold ", covered, " elements but the tensor has ", *numel)));
  }
  return out->size() - before;
}

std::vector<Problem> CheckStructure(const Metadata& md, const FileSizes& file_sizes) {
  std::vector<Problem> out;
  for (const Entry& e : md.entries) {
    if (e.type == EntryType::kBytes) {
      if (e.item < 0) out.push_back(KeyProblem(e, "bytes entry has no storage_data item (its data was not saved)"));
      continue;
    }
    CheckCoverage(e, &out);
    for (const Chunk& c : e.chunks) {
      if (c.item < 0) out.push_back(KeyProblem(e, StrCat(ChunkName(c), " has no storage_data item")));
    }
  }
  std::map<std::string_view, std::vector<const StorageItem*>> by_file;  // views into md
  struct Missing {
    size_t items = 0;
    std::vector<std::string> first;  // the first few keys
  };
  std::map<std::string, Missing, std::less<>> missing;
  struct FileState {  // map nodes do not move
    const uint64_t* size = nullptr;                   // nullptr: the file is missing
    std::vector<const StorageItem*>* items = nullptr;  // when present
    Missing* missing = nullptr;                        // when missing
  };
  ByAddress<FileState> states;
  auto state_of = [&](std::string_view name) {
    FileState s;
    if (auto f = file_sizes.find(name); f != file_sizes.end()) {
      s.size = &f->second;
      s.items = &by_file[name];
    } else {
      auto m = missing.find(name);
      if (m == missing.end()) m = missing.try_emplace(std::string(name)).first;
      s.missing = &m->second;
    }
    return s;
  };
  for (const StorageItem& it : md.items) {
    if (it.entry < 0) {
      Problem p;
      p.key = it.fqn;
      p.file = it.relative_path;
      p.has_offset = true;
      p.offset = it.offset_in_file;
      p.message = "storage item belongs to no entry of state_dict_metadata";
      out.push_back(std::move(p));
    }
    const FileState& f = states.Get(it.relative_path, state_of);
    if (f.size == nullptr) {
      ++f.missing->items;
      if (f.missing->first.size() < 5) f.missing->first.emplace_back(it.fqn);
      continue;
    }
    const uint64_t size = *f.size;
    if (it.offset_in_file > size || it.length > size - it.offset_in_file) {
      Problem p;
      p.key = it.fqn;
      p.file = it.relative_path;
      p.has_offset = true;
      p.offset = it.offset_in_file;
      p.message = StrCat("item of ", it.length, " bytes ends at ", it.offset_in_file + it.length,
                         " but the file has ", size, " bytes (truncated)");
      out.push_back(std::move(p));
      continue;
    }
    f.items->push_back(&it);
  }
  for (const auto& [file, m] : missing) {
    Problem p;
    p.file = file;
    std::string names;
    for (size_t i = 0; i < m.first.size(); ++i) names += StrCat(i ? ", " : "", Quote(m.first[i]));
    if (m.items > m.first.size()) names += StrCat(", ... ", m.items - m.first.size(), " more");
    p.message = StrCat("data file is missing (", m.items, " item", m.items == 1 ? "" : "s",
                       " of .metadata live in it: ", names, ")");
    out.push_back(std::move(p));
  }
  for (auto& [file, items] : by_file) {
    std::sort(items.begin(), items.end(), [](const StorageItem* a, const StorageItem* b) {
      return a->offset_in_file < b->offset_in_file;
    });
    // Compare each item with the one reaching furthest so far, not only its
    // neighbour: a large item can overlap several that follow it.
    const StorageItem* a = nullptr;
    for (const StorageItem* b : items) {
      if (b->length == 0) continue;
      if (a != nullptr && b->offset_in_file < a->offset_in_file + a->length) {
        Problem p;
        p.key = b->fqn;
        p.file = file;
        p.has_offset = true;
        p.offset = b->offset_in_file;
        p.message = StrCat("item overlaps the item of ", Quote(a->fqn), " at ", a->offset_in_file, " (",
                           a->length, " bytes)");
        out.push_back(std::move(p));
      }
      if (a == nullptr || b->offset_in_file + b->length > a->offset_in_file + a->length) a = b;
    }
  }
  return out;
}

}  // namespace ckpt::dcp
