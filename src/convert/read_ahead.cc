#include "convert/read_ahead.h"

#include <tbb/concurrent_queue.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>

namespace ckpt::internal_convert {
namespace {

constexpr int kEnd = -1;  // in the full queue: the producer has returned

// Full and free block indices. Every block is in exactly one place: the free
// queue, the producer's hands, the full queue or the consumer's hands; so
// neither push ever waits and memory is kBlocks blocks.
struct Queues {
  tbb::concurrent_bounded_queue<int> full, free;
  std::atomic<bool> cancelled{false};
};

// The producer's sink: fills free blocks, hands full ones over.
class BlockSink final : public ByteSink {
 public:
  BlockSink(std::vector<std::string>* blocks, Queues* q) : blocks_(blocks), q_(q) {}

  Status Append(std::string_view data) override {
    while (!data.empty()) {
      if (q_->cancelled.load(std::memory_order_relaxed)) return CancelledError("the write of this tensor failed");
      if (cur_ < 0) {
        q_->free.pop(cur_);
        (*blocks_)[cur_].clear();
      }
      std::string& b = (*blocks_)[cur_];
      const size_t n = std::min(data.size(), ReadAhead::kBlockBytes - b.size());
      b.append(data.data(), n);
      data.remove_prefix(n);
      position_ += n;
      if (b.size() == ReadAhead::kBlockBytes) Flush();
    }
    return OkStatus();
  }
  uint64_t Position() const override { return position_; }

  void Flush() {
    if (cur_ >= 0) q_->full.push(cur_);
    cur_ = -1;
  }

 private:
  std::vector<std::string>* blocks_;
  Queues* q_;
  int cur_ = -1;
  uint64_t position_ = 0;
};

}  // namespace

ReadAhead::ReadAhead() : blocks_(kBlocks) {
  for (std::string& b : blocks_) b.reserve(kBlockBytes);
}

Status ReadAhead::Run(const std::function<Status(ByteSink*)>& produce, ByteSink* sink) {
  Queues q;
  for (int i = 0; i < static_cast<int>(blocks_.size()); ++i) q.free.push(i);
  Status produced;
  std::thread producer([&] {
    BlockSink out(&blocks_, &q);
    produced = produce(&out);
    if (produced.ok()) out.Flush();
    q.full.push(kEnd);  // publishes `produced` to the consumer
  });
  Status written;
  for (;;) {
    int b = 0;
    q.full.pop(b);
    if (b == kEnd) break;
    if (written.ok()) {
      written = sink->Append(blocks_[b]);
      if (!written.ok()) q.cancelled.store(true, std::memory_order_relaxed);
    }
    q.free.push(b);
  }
  producer.join();
  if (!written.ok()) return written;
  return produced;
}

}  // namespace ckpt::internal_convert
