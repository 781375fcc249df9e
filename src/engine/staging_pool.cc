// StagingPool: bounded, reused host memory that saves stage tensors into
// (include/ckpt/engine.h).
#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include <map>

#include "ckpt/engine.h"
#include "util/mutex.h"
#include "util/strings.h"

namespace ckpt::engine {

struct StagingPool::State {
  explicit State(uint64_t capacity) { free[0] = capacity; }
  // First-fit placement of `sizes` in the free list, or false (nothing changed).
  bool TryPlace(std::span<const uint64_t> sizes, std::vector<uint64_t>* offsets) CKPT_REQUIRES(mu);

  Mutex mu;
  CondVar released;                                      // signalled when regions return
  std::map<uint64_t, uint64_t> free CKPT_GUARDED_BY(mu);  // offset -> length, coalesced
  uint64_t in_use CKPT_GUARDED_BY(mu) = 0;
  uint64_t peak CKPT_GUARDED_BY(mu) = 0;
};

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
  // Huge pages where the kernel has them (transparent_hugepage "madvise",
  // the common default, backs only ranges that ask): staging copies stream
  // through gigabytes, and 4 KiB pages cost a TLB miss every 4 KiB. Advice
  // only: an error changes nothing.
  ::madvise(p, capacity, MADV_HUGEPAGE);
  return std::shared_ptr<StagingPool>(new StagingPool(static_cast<uint8_t*>(p), capacity));
}

StagingPool::StagingPool(uint8_t* base, uint64_t capacity)
    : base_(base), capacity_(capacity), state_(std::make_unique<State>(capacity)) {}

StagingPool::~StagingPool() { ::munmap(base_, capacity_); }

uint64_t StagingPool::Footprint(std::span<const uint64_t> sizes) {
  uint64_t total = 0;
  for (uint64_t s : sizes) total += RoundUp(s);
  return total;
}

bool StagingPool::State::TryPlace(std::span<const uint64_t> sizes, std::vector<uint64_t>* offsets) {
  std::map<uint64_t, uint64_t> trial = free;
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
  free = std::move(trial);
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
    State& st = *state_;
    MutexLock l(&st.mu);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!st.TryPlace(sizes, &offsets)) {
      if (!st.released.WaitUntil(&st.mu, deadline) && !st.TryPlace(sizes, &offsets)) {
        return ResourceExhaustedError(StrCat("staging pool: ", need, " bytes did not become free within ",
                                             timeout.count(), " ms (", st.in_use, " of ", capacity_,
                                             " bytes still held by earlier saves that have not finished)"));
      }
    }
    st.in_use += need;
    st.peak = std::max(st.peak, st.in_use);
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
  State& st = *state_;
  {
    MutexLock l(&st.mu);
    st.in_use -= reserved;
    auto it = st.free.emplace(offset, reserved).first;
    // Coalesce with the next and the previous free block.
    auto next = std::next(it);
    if (next != st.free.end() && it->first + it->second == next->first) {
      it->second += next->second;
      st.free.erase(next);
    }
    if (it != st.free.begin()) {
      auto prev = std::prev(it);
      if (prev->first + prev->second == it->first) {
        prev->second += it->second;
        st.free.erase(it);
      }
    }
  }
  st.released.SignalAll();
}

uint64_t StagingPool::in_use() const {
  MutexLock l(&state_->mu);
  return state_->in_use;
}

uint64_t StagingPool::peak() const {
  MutexLock l(&state_->mu);
  return state_->peak;
}

StagingPool::Region::Region(std::shared_ptr<StagingPool> pool, uint64_t offset, uint64_t size, uint64_t reserved)
    : pool_(std::move(pool)), offset_(offset), size_(size), reserved_(reserved), data_(pool_->base_ + offset) {}

StagingPool::Region::~Region() { pool_->Release(offset_, reserved_); }

}  // namespace ckpt::engine
