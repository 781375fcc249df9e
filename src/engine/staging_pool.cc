// StagingPool: bounded, reused host memory that saves stage tensors into
// (include/ckpt/engine.h).
#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include "ckpt/engine.h"
#include "util/strings.h"

namespace ckpt::engine {
namespace {

uint64_t RoundUp(uint64_t n) { return (n + StagingPool::kAlignment - 1) / StagingPool::kAlignment * StagingPool::kAlignment; }

}  // namespace

Result<std::shared_ptr<StagingPool>> StagingPool::Create(uint64_t capacity) {
  if (capacity == 0) return InvalidArgumentError("staging pool: capacity must be positive");
  capacity = RoundUp(capacity);
  // Anonymous private memory: pages are faulted in on first use and stay (the
  // pool is reused), never written back anywhere.
  void* p = ::mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return ResourceExhaustedError(StrCat("staging pool: cannot map ", capacity, " bytes: ", std::strerror(errno)));
  }
  return std::shared_ptr<StagingPool>(new StagingPool(static_cast<uint8_t*>(p), capacity));
}

StagingPool::StagingPool(uint8_t* base, uint64_t capacity) : base_(base), capacity_(capacity) {
  free_[0] = capacity;
}

StagingPool::~StagingPool() { ::munmap(base_, capacity_); }

uint64_t StagingPool::Footprint(std::span<const uint64_t> sizes) {
  uint64_t total = 0;
  for (uint64_t s : sizes) total += RoundUp(s);
  return total;
}

bool StagingPool::TryPlace(std::span<const uint64_t> sizes, std::vector<uint64_t>* offsets) {
  std::map<uint64_t, uint64_t> trial = free_;
  offsets->clear();
  for (uint64_t s : sizes) {
    const uint64_t need = RoundUp(s);
    if (need == 0) {
      offsets->push_back(0);
      continue;
    }
    auto it = trial.begin();
    while (it != trial.end() && it->second < need) ++it;
    if (it == trial.end()) return false;
    const uint64_t off = it->first, len = it->second;
    trial.erase(it);
    if (len > need) trial[off + need] = len - need;
    offsets->push_back(off);
  }
  free_ = std::move(trial);
  return true;
}

Result<std::vector<std::unique_ptr<StagingPool::Region>>> StagingPool::Acquire(std::span<const uint64_t> sizes,
                                                                               std::chrono::milliseconds timeout) {
  const uint64_t need = Footprint(sizes);
  if (need > capacity_) {
    return InvalidArgumentError(StrCat("staging pool: ", sizes.size(), " tensors need ", need,
                                       " bytes staged, more than the pool's ", capacity_));
  }
  std::vector<uint64_t> offsets;
  {
    std::unique_lock<std::mutex> l(mu_);
    const bool placed = released_.wait_for(l, timeout, [&] { return TryPlace(sizes, &offsets); });
    if (!placed) {
      return ResourceExhaustedError(StrCat("staging pool: ", need, " bytes did not become free within ",
                                           timeout.count(), " ms (", in_use_, " of ", capacity_,
                                           " bytes still held by earlier saves that have not finished)"));
    }
    in_use_ += need;
    peak_ = std::max(peak_, in_use_);
  }
  std::vector<std::unique_ptr<Region>> out;
  out.reserve(sizes.size());
  std::shared_ptr<StagingPool> self = shared_from_this();
  for (size_t i = 0; i < sizes.size(); ++i) {
    out.push_back(std::unique_ptr<Region>(new Region(self, offsets[i], sizes[i], RoundUp(sizes[i]))));
  }
  return out;
}

void StagingPool::Release(uint64_t offset, uint64_t reserved) {
  if (reserved == 0) return;
  {
    std::lock_guard<std::mutex> l(mu_);
    in_use_ -= reserved;
    auto [it, inserted] = free_.emplace(offset, reserved);
    // Coalesce with the next and the previous free block.
    auto next = std::next(it);
    if (next != free_.end() && it->first + it->second == next->first) {
      it->second += next->second;
      free_.erase(next);
    }
    if (it != free_.begin()) {
      auto prev = std::prev(it);
      if (prev->first + prev->second == it->first) {
        prev->second += it->second;
        free_.erase(it);
      }
    }
  }
  released_.notify_all();
}

uint64_t StagingPool::in_use() const {
  std::lock_guard<std::mutex> l(mu_);
  return in_use_;
}

uint64_t StagingPool::peak() const {
  std::lock_guard<std::mutex> l(mu_);
  return peak_;
}

StagingPool::Region::Region(std::shared_ptr<StagingPool> pool, uint64_t offset, uint64_t size, uint64_t reserved)
    : pool_(std::move(pool)), offset_(offset), size_(size), reserved_(reserved), data_(pool_->base_ + offset) {}

StagingPool::Region::~Region() { pool_->Release(offset_, reserved_); }

}  // namespace ckpt::engine
