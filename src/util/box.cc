#include "util/box.h"

#include <algorithm>
#include <cstring>

#include "util/checked_math.h"
#include "util/strings.h"

namespace ckpt {

Box Box::Whole(std::span<const int64_t> shape) {
  Box b;
  b.start.assign(shape.size(), 0);
  b.count.assign(shape.begin(), shape.end());
  return b;
}

uint64_t Box::numel() const {
  uint64_t n = 1;
  for (int64_t c : count) n *= static_cast<uint64_t>(c);
  return n;
}

bool Box::empty() const {
  return std::any_of(count.begin(), count.end(), [](int64_t c) { return c == 0; });
}

std::string Box::ToString() const {
  std::string s = "[";
  for (size_t d = 0; d < start.size(); ++d) {
    if (d) s += ", ";
    s += StrCat(start[d], ":", start[d] + count[d]);
  }
  return s + "]";
}

Status CheckBoxInside(const Box& box, std::span<const int64_t> shape, std::string_view what) {
  if (box.start.size() != shape.size() || box.count.size() != shape.size()) {
    return InvalidArgumentError(StrCat(what, ": rank ", box.start.size(), " does not match the tensor's rank ",
                                       shape.size()));
  }
  for (size_t d = 0; d < shape.size(); ++d) {
    auto end = CheckedAddSigned(box.start[d], box.count[d]);
    if (box.start[d] < 0 || box.count[d] < 0 || !end || *end > shape[d]) {
      return InvalidArgumentError(StrCat(what, ": axis ", d, " range [", box.start[d], ", +", box.count[d],
                                         ") is outside the tensor's size ", shape[d]));
    }
  }
  return OkStatus();
}

Box Intersect(const Box& a, const Box& b) {
  Box r;
  const size_t n = a.rank();
  r.start.resize(n);
  r.count.resize(n);
  for (size_t d = 0; d < n; ++d) {
    int64_t lo = std::max(a.start[d], b.start[d]);
    int64_t hi = std::min(a.start[d] + a.count[d], b.start[d] + b.count[d]);
    r.start[d] = lo;
    r.count[d] = hi > lo ? hi - lo : 0;
  }
  return r;
}

bool Overlaps(const Box& a, const Box& b) { return !Intersect(a, b).empty(); }

BoxScatter::BoxScatter(const Box& src, const Box& dst, uint64_t element_size) {
  isect_ = Intersect(src, dst);
  const size_t n = isect_.rank();
  if (isect_.empty()) return;
  src_stride_.assign(n, 0);
  dst_stride_.assign(n, 0);
  int64_t ss = static_cast<int64_t>(element_size), ds = ss;
  for (size_t d = n; d-- > 0;) {
    src_stride_[d] = ss;
    dst_stride_[d] = ds;
    ss *= src.count[d];
    ds *= dst.count[d];
  }
  src_origin_ = src.start;
  dst_origin_ = dst.start;
  // Axes k..n-1 form one run when every axis after k is whole in all three boxes.
  size_t k = n;
  if (n > 0) {
    k = n - 1;
    while (k > 0 && isect_.count[k] == src.count[k] && isect_.count[k] == dst.count[k]) --k;
  }
  outer_rank_ = k;
  run_len_ = element_size;
  for (size_t d = k; d < n; ++d) run_len_ *= static_cast<uint64_t>(isect_.count[d]);
  total_ = isect_.numel() * element_size;
  index_.assign(outer_rank_, 0);
  done_ = false;
  Compute();
}

void BoxScatter::Compute() {
  int64_t s = 0, t = 0;
  for (size_t d = 0; d < isect_.rank(); ++d) {
    int64_t pos = isect_.start[d] + (d < outer_rank_ ? index_[d] : 0);
    s += (pos - src_origin_[d]) * src_stride_[d];
    t += (pos - dst_origin_[d]) * dst_stride_[d];
  }
  run_ = BoxRun{static_cast<uint64_t>(s), static_cast<uint64_t>(t), run_len_};
}

void BoxScatter::Next() {
  if (done_) return;
  size_t d = outer_rank_;
  while (d > 0) {
    --d;
    if (++index_[d] < isect_.count[d]) {
      Compute();
      return;
    }
    index_[d] = 0;
  }
  done_ = true;
}

namespace {

// Feeds the stream piece [pos, pos+data.size()) through the scatter's runs,
// calling emit(dst_offset, bytes) for each overlapping part.
template <typename Emit>
Status Feed(BoxScatter& sc, uint64_t pos, std::string_view data, Emit&& emit) {
  const uint64_t end = pos + data.size();
  while (sc.has_runs()) {
    BoxRun r = sc.run();
    if (r.src >= end) break;
    uint64_t lo = std::max(r.src, pos);
    uint64_t hi = std::min(r.src + r.len, end);
    if (hi > lo) {
      CKPT_RETURN_IF_ERROR(emit(r.dst + (lo - r.src), data.substr(lo - pos, hi - lo)));
    }
    if (r.src + r.len <= end) {
      sc.Next();
    } else {
      break;
    }
  }
  return OkStatus();
}

Status CheckCount(uint64_t received, uint64_t expected) {
  if (received != expected) {
    return DataLossError(StrCat("stream delivered ", received, " bytes, expected ", expected));
  }
  return OkStatus();
}

}  // namespace

RegionSink::RegionSink(const Box& src, const Box& region, uint64_t element_size, ByteSink* out)
    : scatter_(src, region, element_size), out_(out), expected_(src.numel() * element_size) {}

Status RegionSink::Append(std::string_view data) {
  if (data.size() > expected_ - std::min(expected_, received_)) {
    return DataLossError(StrCat("stream delivered more than the expected ", expected_, " bytes"));
  }
  Status s = Feed(scatter_, received_, data,
                  [&](uint64_t, std::string_view bytes) { return out_->Append(bytes); });
  received_ += data.size();
  return s;
}

Status RegionSink::Finish() const { return CheckCount(received_, expected_); }

ScatterSink::ScatterSink(const Box& src, const Box& dst, uint64_t element_size, char* buffer)
    : scatter_(src, dst, element_size), buffer_(buffer), expected_(src.numel() * element_size) {}

Status ScatterSink::Append(std::string_view data) {
  if (data.size() > expected_ - std::min(expected_, received_)) {
    return DataLossError(StrCat("stream delivered more than the expected ", expected_, " bytes"));
  }
  Status s = Feed(scatter_, received_, data, [&](uint64_t dst, std::string_view bytes) {
    std::memcpy(buffer_ + dst, bytes.data(), bytes.size());
    return OkStatus();
  });
  received_ += data.size();
  return s;
}

Status ScatterSink::Finish() const { return CheckCount(received_, expected_); }

}  // namespace ckpt
