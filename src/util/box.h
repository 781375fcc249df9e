// N-dimensional boxes of a row-major tensor, and moving the bytes of one box
// into another.
//
// A Box is [start, start+count) per axis. Stored chunks (DCP), requested
// slices (`get --slice`) and whole tensors are all boxes; copying the part of
// a chunk that falls inside a request is a walk over the "runs" of their
// intersection: maximal spans that are contiguous in both the source box's
// and the destination box's row-major layout.
//
// Thread-safety: plain values and functions; a BoxScatter or RegionSink is
// used by one thread at a time.
#ifndef CKPT_UTIL_BOX_H_
#define CKPT_UTIL_BOX_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "ckpt/byte_source.h"
#include "ckpt/status.h"

namespace ckpt {

struct Box {
  std::vector<int64_t> start;
  std::vector<int64_t> count;

  static Box Whole(std::span<const int64_t> shape);
  size_t rank() const { return start.size(); }
  // Product of count (1 for rank 0). REQUIRES: the box passed CheckBoxInside
  // or is otherwise known not to overflow.
  uint64_t numel() const;
  bool empty() const;  // some count is 0
  // "[0:2, 4:8]"
  std::string ToString() const;
};

// OK if start.size() == count.size() == shape.size(), every start/count is
// >= 0 and start + count <= shape on every axis (checked math).
// Errors: InvalidArgument naming `what` and the offending axis.
Status CheckBoxInside(const Box& box, std::span<const int64_t> shape, std::string_view what);

// The intersection of two boxes of equal rank; count 0 on some axis when they
// do not meet. REQUIRES: equal rank.
Box Intersect(const Box& a, const Box& b);
bool Overlaps(const Box& a, const Box& b);  // non-empty intersection

// A Box of copies of start and count.
inline Box MakeBox(std::span<const int64_t> start, std::span<const int64_t> count) {
  return Box{{start.begin(), start.end()}, {count.begin(), count.end()}};
}

// One contiguous span of the intersection: bytes [src, src+len) of the source
// box's row-major layout go to [dst, dst+len) of the destination box's.
struct BoxRun {
  uint64_t src = 0;
  uint64_t dst = 0;
  uint64_t len = 0;
};

// Enumerates the runs of Intersect(src, dst) in increasing `src` order (which
// is also increasing `dst` order). REQUIRES: equal rank, both boxes valid.
class BoxScatter {
 public:
  BoxScatter(const Box& src, const Box& dst, uint64_t element_size);

  // False when the boxes do not meet.
  bool has_runs() const { return !done_; }
  // The current run. REQUIRES: has_runs().
  BoxRun run() const { return run_; }
  void Next();
  // Bytes of the intersection.
  uint64_t total_bytes() const { return total_; }

 private:
  void Compute();

  Box isect_;
  std::vector<int64_t> src_stride_;  // bytes, per axis (outer axes only used)
  std::vector<int64_t> dst_stride_;
  std::vector<int64_t> src_origin_, dst_origin_;
  size_t outer_rank_ = 0;       // axes iterated over; the rest form one run
  std::vector<int64_t> index_;  // position within isect_ over the outer axes
  uint64_t run_len_ = 0;
  uint64_t total_ = 0;
  BoxRun run_;
  bool done_ = true;
};

// A ByteSink that receives the row-major bytes of box `src` in order (any
// piece sizes) and forwards to `out` only those inside box `region`, in
// row-major order of the region. Position() counts bytes received. Finish()
// checks that exactly src.numel()*element_size bytes arrived.
class RegionSink final : public ByteSink {
 public:
  RegionSink(const Box& src, const Box& region, uint64_t element_size, ByteSink* out);
  Status Append(std::string_view data) override;
  uint64_t Position() const override { return received_; }
  // Errors: DataLoss if the source delivered a different number of bytes.
  Status Finish() const;

 private:
  BoxScatter scatter_;
  ByteSink* out_;
  uint64_t expected_ = 0;
  uint64_t received_ = 0;
};

// A ByteSink that receives the row-major bytes of box `src` in order and
// copies the part inside box `dst` into `buffer`, laid out row-major as `dst`.
// REQUIRES: buffer holds dst.numel()*element_size bytes.
class ScatterSink final : public ByteSink {
 public:
  ScatterSink(const Box& src, const Box& dst, uint64_t element_size, char* buffer);
  Status Append(std::string_view data) override;
  uint64_t Position() const override { return received_; }
  Status Finish() const;

 private:
  BoxScatter scatter_;
  char* buffer_;
  uint64_t expected_ = 0;
  uint64_t received_ = 0;
};

}  // namespace ckpt

#endif  // CKPT_UTIL_BOX_H_
