#include "lib/diff.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cfloat>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <thread>

#include "ckpt/convert.h"
#include "lib/inspect.h"
#include "util/strings.h"

namespace ckpt::cli {

// ------------------------------------------------------- element decoding

double HalfToDouble(uint16_t bits) {
  const int sign = bits >> 15;
  const int exp = (bits >> 10) & 0x1f;
  const int man = bits & 0x3ff;
  double v;
  if (exp == 0) {
    v = std::ldexp(static_cast<double>(man), -24);
  } else if (exp == 31) {
    v = man ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  } else {
    v = std::ldexp(static_cast<double>(man | 0x400), exp - 25);
  }
  return sign ? -v : v;
}

double BFloat16ToDouble(uint16_t bits) {
  uint32_t f = static_cast<uint32_t>(bits) << 16;
  float out;
  std::memcpy(&out, &f, 4);
  return out;
}

namespace {

// A float with 1 sign bit, e exponent bits and m mantissa bits, bias b and
// no infinities (the caller handles NaN codes).
double SmallFloat(uint8_t bits, int e_bits, int m_bits, int bias) {
  const int sign = (bits >> (e_bits + m_bits)) & 1;
  const int exp = (bits >> m_bits) & ((1 << e_bits) - 1);
  const int man = bits & ((1 << m_bits) - 1);
  double v = exp == 0 ? std::ldexp(static_cast<double>(man), 1 - bias - m_bits)
                      : std::ldexp(static_cast<double>(man | (1 << m_bits)), exp - bias - m_bits);
  return sign ? -v : v;
}

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

}  // namespace

double Float8E4M3FnToDouble(uint8_t bits) {
  if ((bits & 0x7f) == 0x7f) return kNaN;
  return SmallFloat(bits, 4, 3, 7);
}
double Float8E5M2ToDouble(uint8_t bits) { return HalfToDouble(static_cast<uint16_t>(bits << 8)); }
double Float8E4M3FnuzToDouble(uint8_t bits) {
  if (bits == 0x80) return kNaN;
  return SmallFloat(bits, 4, 3, 8);
}
double Float8E5M2FnuzToDouble(uint8_t bits) {
  if (bits == 0x80) return kNaN;
  return SmallFloat(bits, 5, 2, 16);
}
double Float8E8M0FnuToDouble(uint8_t bits) {
  if (bits == 0xff) return kNaN;
  return std::ldexp(1.0, static_cast<int>(bits) - 127);
}
double Float4E2M1FnToDouble(uint8_t nibble) { return SmallFloat(nibble & 0x0f, 2, 1, 1); }

// ----------------------------------------------------------- comparator

ElementComparator::ElementComparator(DType dtype, double atol, double rtol)
    : dtype_(dtype), atol_(atol), rtol_(rtol) {}

namespace {

template <typename T>
T Load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));  // little-endian hosts only, as the rest of ckptkit
  return v;
}

double RelDiff(double abs_diff, double b_mag) {
  if (std::isinf(abs_diff)) return abs_diff;
  return abs_diff / std::max(b_mag, DBL_MIN);
}

}  // namespace

void ElementComparator::Float(double a, double b) {
  ++stats_.numel;
  if (a == b) return;  // also inf == inf (same sign) and -0 == 0
  const bool a_nan = std::isnan(a), b_nan = std::isnan(b);
  if (a_nan && b_nan) return;
  if (a_nan || b_nan) {
    ++stats_.mismatched;
    ++stats_.nan_mismatched;
    return;
  }
  const double abs_diff = std::fabs(a - b);  // inf when an infinity is involved
  const double b_mag = std::fabs(b);
  stats_.max_abs = std::max(stats_.max_abs, abs_diff);
  stats_.max_rel = std::max(stats_.max_rel, RelDiff(abs_diff, b_mag));
  if (std::isinf(a) || std::isinf(b) || !(abs_diff <= atol_ + rtol_ * b_mag)) ++stats_.mismatched;
}

void ElementComparator::Complex(double ar, double ai, double br, double bi) {
  ++stats_.numel;
  if (ar == br && ai == bi) return;
  const bool a_nan = std::isnan(ar) || std::isnan(ai), b_nan = std::isnan(br) || std::isnan(bi);
  if (a_nan && b_nan) return;
  if (a_nan || b_nan) {
    ++stats_.mismatched;
    ++stats_.nan_mismatched;
    return;
  }
  const bool any_inf = std::isinf(ar) || std::isinf(ai) || std::isinf(br) || std::isinf(bi);
  const double abs_diff =
      any_inf ? std::numeric_limits<double>::infinity() : std::hypot(ar - br, ai - bi);
  const double b_mag = std::hypot(br, bi);
  stats_.max_abs = std::max(stats_.max_abs, abs_diff);
  stats_.max_rel = std::max(stats_.max_rel, RelDiff(abs_diff, b_mag));
  if (any_inf || !(abs_diff <= atol_ + rtol_ * b_mag)) ++stats_.mismatched;
}

void ElementComparator::Exact(bool equal, double abs_diff, double b_magnitude) {
  ++stats_.numel;
  if (equal) return;
  ++stats_.mismatched;
  stats_.max_abs = std::max(stats_.max_abs, abs_diff);
  stats_.max_rel = std::max(stats_.max_rel, RelDiff(abs_diff, b_magnitude));
}

void ElementComparator::Compare(const char* a, const char* b, size_t n) {
  auto each_float = [&](size_t size, auto decode) {
    for (size_t i = 0; i < n; ++i) Float(decode(a + i * size), decode(b + i * size));
  };
  auto each_signed = [&]<typename T>(T*) {
    for (size_t i = 0; i < n; ++i) {
      int64_t x = Load<T>(a + i * sizeof(T)), y = Load<T>(b + i * sizeof(T));
      // |x - y| through unsigned arithmetic: no overflow for any int64 pair.
      uint64_t d = x >= y ? static_cast<uint64_t>(x) - static_cast<uint64_t>(y)
                          : static_cast<uint64_t>(y) - static_cast<uint64_t>(x);
      double ymag = y < 0 ? -static_cast<double>(y) : static_cast<double>(y);
      Exact(x == y, static_cast<double>(d), ymag);
    }
  };
  auto each_unsigned = [&]<typename T>(T*) {
    for (size_t i = 0; i < n; ++i) {
      uint64_t x = Load<T>(a + i * sizeof(T)), y = Load<T>(b + i * sizeof(T));
      Exact(x == y, static_cast<double>(x > y ? x - y : y - x), static_cast<double>(y));
    }
  };
  switch (dtype_) {
    case DType::kFloat16:
      return each_float(2, [](const char* p) { return HalfToDouble(Load<uint16_t>(p)); });
    case DType::kBFloat16:
      return each_float(2, [](const char* p) { return BFloat16ToDouble(Load<uint16_t>(p)); });
    case DType::kFloat32:
      return each_float(4, [](const char* p) { return static_cast<double>(Load<float>(p)); });
    case DType::kFloat64:
      return each_float(8, [](const char* p) { return Load<double>(p); });
    case DType::kFloat8_e4m3fn:
      return each_float(1, [](const char* p) { return Float8E4M3FnToDouble(Load<uint8_t>(p)); });
    case DType::kFloat8_e5m2:
      return each_float(1, [](const char* p) { return Float8E5M2ToDouble(Load<uint8_t>(p)); });
    case DType::kFloat8_e4m3fnuz:
      return each_float(1,
                        [](const char* p) { return Float8E4M3FnuzToDouble(Load<uint8_t>(p)); });
    case DType::kFloat8_e5m2fnuz:
      return each_float(1,
                        [](const char* p) { return Float8E5M2FnuzToDouble(Load<uint8_t>(p)); });
    case DType::kFloat8_e8m0fnu:
      return each_float(1, [](const char* p) { return Float8E8M0FnuToDouble(Load<uint8_t>(p)); });
    case DType::kFloat4_e2m1fn_x2:
      // Two values per element (low nibble first); the element fails if either does.
      for (size_t i = 0; i < n; ++i) {
        const uint8_t x = Load<uint8_t>(a + i), y = Load<uint8_t>(b + i);
        const uint64_t before = stats_.mismatched;
        for (int shift : {0, 4}) {
          Float(Float4E2M1FnToDouble(static_cast<uint8_t>(x >> shift)),
                Float4E2M1FnToDouble(static_cast<uint8_t>(y >> shift)));
        }
        stats_.numel -= 1;
        if (stats_.mismatched > before + 1) stats_.mismatched = before + 1;
      }
      return;
    case DType::kComplex32:
      for (size_t i = 0; i < n; ++i) {
        const char* pa = a + 4 * i;
        const char* pb = b + 4 * i;
        Complex(HalfToDouble(Load<uint16_t>(pa)), HalfToDouble(Load<uint16_t>(pa + 2)),
                HalfToDouble(Load<uint16_t>(pb)), HalfToDouble(Load<uint16_t>(pb + 2)));
      }
      return;
    case DType::kComplex64:
      for (size_t i = 0; i < n; ++i) {
        const char* pa = a + 8 * i;
        const char* pb = b + 8 * i;
        Complex(Load<float>(pa), Load<float>(pa + 4), Load<float>(pb), Load<float>(pb + 4));
      }
      return;
    case DType::kComplex128:
      for (size_t i = 0; i < n; ++i) {
        const char* pa = a + 16 * i;
        const char* pb = b + 16 * i;
        Complex(Load<double>(pa), Load<double>(pa + 8), Load<double>(pb), Load<double>(pb + 8));
      }
      return;
    case DType::kInt8:
    case DType::kQInt8:
      return each_signed(static_cast<int8_t*>(nullptr));
    case DType::kInt16:
      return each_signed(static_cast<int16_t*>(nullptr));
    case DType::kInt32:
    case DType::kQInt32:
      return each_signed(static_cast<int32_t*>(nullptr));
    case DType::kInt64:
      return each_signed(static_cast<int64_t*>(nullptr));
    case DType::kUInt16:
    case DType::kBits16:
      return each_unsigned(static_cast<uint16_t*>(nullptr));
    case DType::kUInt32:
      return each_unsigned(static_cast<uint32_t*>(nullptr));
    case DType::kUInt64:
      return each_unsigned(static_cast<uint64_t*>(nullptr));
    default:
      break;
  }
  // bool, uint8, quint8, quint4x2, quint2x4, bits8 and anything else: the
  // bytes of each element as an unsigned integer, compared exactly.
  const size_t size = static_cast<size_t>(DTypeSize(dtype_));
  if (size == 1) return each_unsigned(static_cast<uint8_t*>(nullptr));
  for (size_t i = 0; i < n; ++i) {
    const bool eq = std::memcmp(a + i * size, b + i * size, size) == 0;
    Exact(eq, eq ? 0.0 : 1.0, 1.0);
  }
}

// ---------------------------------------------------- lockstep streaming

namespace {

// A bounded single-producer single-consumer byte pipe.
class BytePipe {
 public:
  explicit BytePipe(size_t capacity) : ring_(std::max<size_t>(capacity, 1)) {}

  // Producer side. Errors: Cancelled once the consumer gave up.
  Status Write(std::string_view data) {
    std::unique_lock lock(mu_);
    while (!data.empty()) {
      cv_.wait(lock, [&] { return cancelled_ || size_ < ring_.size(); });
      if (cancelled_) return CancelledError("the other side of the comparison stopped");
      size_t tail = (head_ + size_) % ring_.size();
      size_t n = std::min({data.size(), ring_.size() - size_, ring_.size() - tail});
      std::memcpy(ring_.data() + tail, data.data(), n);
      size_ += n;
      data.remove_prefix(n);
      cv_.notify_all();
    }
    return OkStatus();
  }

  void CloseWriter(Status status) {
    std::lock_guard lock(mu_);
    writer_done_ = true;
    writer_status_ = std::move(status);
    cv_.notify_all();
  }

  // Consumer side: exactly n bytes. Errors: Cancelled when the producer
  // failed (its own status is reported by the caller); DataLoss when it ended
  // early.
  Status ReadExactly(char* dst, size_t n, uint64_t position) {
    std::unique_lock lock(mu_);
    while (n > 0) {
      cv_.wait(lock, [&] { return size_ > 0 || writer_done_; });
      if (size_ == 0) {
        if (!writer_status_.ok()) return CancelledError("A failed");
        return DataLossError(StrCat("A ended after ", position, " bytes, before B did"));
      }
      size_t k = std::min({n, size_, ring_.size() - head_});
      std::memcpy(dst, ring_.data() + head_, k);
      head_ = (head_ + k) % ring_.size();
      size_ -= k;
      dst += k;
      n -= k;
      position += k;
      cv_.notify_all();
    }
    return OkStatus();
  }

  // Waits for the producer to finish. Errors: Cancelled if it failed;
  // DataLoss if it produced bytes beyond those read.
  Status ExpectEnd(uint64_t position) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return size_ > 0 || writer_done_; });
    if (size_ > 0) return DataLossError(StrCat("A holds more than the ", position, " bytes of B"));
    if (!writer_status_.ok()) return CancelledError("A failed");
    return OkStatus();
  }

  void Cancel() {
    std::lock_guard lock(mu_);
    cancelled_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<char> ring_;
  size_t head_ = 0;
  size_t size_ = 0;
  bool writer_done_ = false;
  bool cancelled_ = false;
  Status writer_status_;
};

class PipeSink final : public ByteSink {
 public:
  PipeSink(BytePipe* pipe, uint64_t limit) : pipe_(pipe), limit_(limit) {}
  Status Append(std::string_view d) override {
    if (d.size() > limit_ - n_) {
      return DataLossError(StrCat("delivered more than the expected ", limit_, " bytes"));
    }
    n_ += d.size();
    return pipe_->Write(d);
  }
  uint64_t Position() const override { return n_; }

 private:
  BytePipe* pipe_;
  uint64_t limit_;
  uint64_t n_ = 0;
};

// Receives B's bytes, pairs them with as many of A's from the pipe, and
// compares whole elements.
class LockstepSink final : public ByteSink {
 public:
  LockstepSink(BytePipe* pipe, uint64_t nbytes, size_t piece, size_t element_size,
               const std::function<void(const char*, const char*, size_t)>& compare,
               const std::function<void(uint64_t)>& progress)
      : pipe_(pipe),
        nbytes_(nbytes),
        element_size_(element_size),
        a_(piece),
        b_(piece),
        compare_(compare),
        progress_(progress) {}

  Status Append(std::string_view d) override {
    if (d.size() > nbytes_ - received_) {
      return DataLossError(StrCat("delivered more than the expected ", nbytes_, " bytes"));
    }
    received_ += d.size();
    while (!d.empty()) {
      size_t k = std::min(d.size(), b_.size() - fill_);
      std::memcpy(b_.data() + fill_, d.data(), k);
      fill_ += k;
      d.remove_prefix(k);
      if (fill_ == b_.size()) CKPT_RETURN_IF_ERROR(Flush());
    }
    return OkStatus();
  }
  uint64_t Position() const override { return received_; }

  Status Finish() {
    if (received_ != nbytes_) {
      return DataLossError(StrCat("delivered ", received_, " bytes, expected ", nbytes_));
    }
    CKPT_RETURN_IF_ERROR(Flush());
    return pipe_->ExpectEnd(compared_);
  }

 private:
  Status Flush() {
    if (fill_ == 0) return OkStatus();
    // b_.size() is a multiple of element_size_, and so is nbytes_, so a
    // partial element only remains before the final flush, never at it.
    CKPT_RETURN_IF_ERROR(pipe_->ReadExactly(a_.data(), fill_, compared_));
    compare_(a_.data(), b_.data(), fill_ / element_size_);
    compared_ += fill_;
    fill_ = 0;
    if (progress_) progress_(compared_);
    return OkStatus();
  }

  BytePipe* pipe_;
  uint64_t nbytes_;
  size_t element_size_;
  std::vector<char> a_, b_;
  size_t fill_ = 0;
  uint64_t received_ = 0;
  uint64_t compared_ = 0;
  const std::function<void(const char*, const char*, size_t)>& compare_;
  const std::function<void(uint64_t)>& progress_;
};

}  // namespace

Status CompareStreams(const std::function<Status(ByteSink*)>& read_a,
                      const std::function<Status(ByteSink*)>& read_b, uint64_t nbytes,
                      size_t element_size,
                      const std::function<void(const char*, const char*, size_t)>& compare,
                      size_t pipe_bytes, size_t compare_bytes,
                      const std::function<void(uint64_t)>& progress) {
  if (element_size == 0) return InternalError("CompareStreams: element_size 0");
  if (nbytes % element_size != 0) {
    return InvalidArgumentError(
        StrCat(nbytes, " bytes is not a whole number of ", element_size, "-byte elements"));
  }
  size_t piece = std::max(compare_bytes / element_size, size_t{1}) * element_size;
  BytePipe pipe(pipe_bytes);
  LockstepSink sink_b(&pipe, nbytes, piece, element_size, compare, progress);
  Status status_a;
  std::thread thread_a([&] {
    PipeSink sink_a(&pipe, nbytes);
    Status s = read_a(&sink_a);
    if (s.ok() && sink_a.Position() != nbytes) {
      s = DataLossError(StrCat("delivered ", sink_a.Position(), " bytes, expected ", nbytes));
    }
    status_a = s;
    pipe.CloseWriter(std::move(s));
  });
  Status status_b = read_b(&sink_b);
  if (status_b.ok()) status_b = sink_b.Finish();
  if (!status_b.ok()) pipe.Cancel();
  thread_a.join();
  // A's own error first: B only saw "A failed" through the pipe.
  if (!status_a.ok() && status_a.code() != Code::kCancelled) return status_a.WithContext("A");
  if (!status_b.ok()) {
    if (status_b.code() == Code::kCancelled && !status_a.ok()) return status_a.WithContext("A");
    return status_b.WithContext("B");
  }
  return OkStatus();
}

// ----------------------------------------------------------------- diff

bool DiffReport::identical() const {
  if (!only_in_a.empty() || !only_in_b.empty() || !dtype_changed.empty() ||
      !shape_changed.empty() || !objects_changed.empty()) {
    return false;
  }
  for (const TensorDiff& t : tensors) {
    if (!t.equal()) return false;
  }
  return true;
}

Result<DiffReport> DiffCheckpoints(const CheckpointReader& a, const CheckpointReader& b,
                                   const DiffOptions& options,
                                   const std::function<void(uint64_t, uint64_t)>& progress) {
  if (!(options.atol >= 0) || !std::isfinite(options.atol)) {
    return InvalidArgumentError(StrCat("--atol ", options.atol, ": must be finite and >= 0"));
  }
  if (!(options.rtol >= 0) || !std::isfinite(options.rtol)) {
    return InvalidArgumentError(StrCat("--rtol ", options.rtol, ": must be finite and >= 0"));
  }
  DiffReport report;
  std::map<std::string, size_t> in_a, in_b;
  for (size_t i = 0; i < a.tensors().size(); ++i) in_a.emplace(a.tensors()[i].key, i);
  for (size_t i = 0; i < b.tensors().size(); ++i) in_b.emplace(b.tensors()[i].key, i);
  std::vector<std::pair<size_t, size_t>> to_compare;
  uint64_t total = 0;
  for (const auto& [key, ia] : in_a) {
    auto it = in_b.find(key);
    if (it == in_b.end()) {
      report.only_in_a.push_back(key);
      continue;
    }
    const TensorInfo& ta = a.tensors()[ia];
    const TensorInfo& tb = b.tensors()[it->second];
    if (ta.dtype != tb.dtype) {
      report.dtype_changed.push_back(
          {key, "dtype", std::string(DTypeName(ta.dtype)), std::string(DTypeName(tb.dtype))});
    } else if (ta.shape != tb.shape) {
      report.shape_changed.push_back({key, "shape", ShapeString(ta.shape), ShapeString(tb.shape)});
    } else {
      to_compare.emplace_back(ia, it->second);
      total += tb.nbytes;
    }
  }
  for (const auto& [key, ib] : in_b) {
    if (!in_a.count(key)) report.only_in_b.push_back(key);
  }
  // A tensor whose dtype and shape also changed is listed under dtype only.
  for (KeyChange& c : report.dtype_changed) {
    const TensorInfo& ta = a.tensors()[in_a[c.key]];
    const TensorInfo& tb = b.tensors()[in_b[c.key]];
    if (ta.shape != tb.shape) {
      report.shape_changed.push_back(
          {c.key, "shape", ShapeString(ta.shape), ShapeString(tb.shape)});
    }
  }
  std::sort(report.shape_changed.begin(), report.shape_changed.end(),
            [](const KeyChange& x, const KeyChange& y) { return x.key < y.key; });

  std::map<std::string, const ObjectInfo*> oa, ob;
  if (!options.tensors_only) {
    for (const ObjectInfo& o : a.objects()) oa.emplace(o.key, &o);
    for (const ObjectInfo& o : b.objects()) ob.emplace(o.key, &o);
  }
  for (const auto& [key, x] : oa) {
    auto it = ob.find(key);
    if (it == ob.end()) {
      report.objects_changed.push_back({key, "only_in_a", x->type + " " + x->repr, ""});
    } else if (x->type != it->second->type) {
      report.objects_changed.push_back({key, "type", x->type, it->second->type});
    } else if (x->repr != it->second->repr) {
      report.objects_changed.push_back({key, "repr", x->repr, it->second->repr});
    }
  }
  for (const auto& [key, y] : ob) {
    if (!oa.count(key)) {
      report.objects_changed.push_back({key, "only_in_b", "", y->type + " " + y->repr});
    }
  }
  std::sort(report.objects_changed.begin(), report.objects_changed.end(),
            [](const KeyChange& x, const KeyChange& y) { return x.key < y.key; });

  if (options.keys_only) return report;
  uint64_t done_before = 0;
  for (const auto& pair : to_compare) {
    const size_t ia = pair.first, ib = pair.second;  // lambdas cannot capture bindings (C++20)
    const TensorInfo& ta = a.tensors()[ia];
    const TensorInfo& tb = b.tensors()[ib];
    TensorDiff td;
    td.key = ta.key;
    td.dtype = ta.dtype;
    td.shape = ta.shape;
    if (ta.nbytes != tb.nbytes) {
      return DataLossError(StrCat("tensor ", Quote(ta.key), ": ", ta.nbytes, " bytes in A but ",
                                  tb.nbytes, " in B for the same dtype and shape"));
    }
    ElementComparator cmp(ta.dtype, options.atol, options.rtol);
    std::function<void(uint64_t)> piece_progress;
    if (progress) {
      piece_progress = [&](uint64_t done) { progress(done_before + done, total); };
    }
    Status s = CompareStreams([&](ByteSink* sink) { return a.ReadTensor(ia, sink); },
                              [&](ByteSink* sink) { return b.ReadTensor(ib, sink); }, ta.nbytes,
                              static_cast<size_t>(DTypeSize(ta.dtype)),
                              [&](const char* x, const char* y, size_t n) { cmp.Compare(x, y, n); },
                              options.pipe_bytes, options.compare_bytes, piece_progress);
    CKPT_RETURN_IF_ERROR(s, StrCat("comparing tensor ", Quote(ta.key)));
    done_before += tb.nbytes;
    td.stats = cmp.stats();
    report.tensors.push_back(std::move(td));
  }
  return report;
}

namespace {

nlohmann::json Number(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return v;
}

std::string NumberText(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return fmt::format("{:.6g}", v);
}

nlohmann::json Changes(const std::vector<KeyChange>& v, bool with_what) {
  nlohmann::json out = nlohmann::json::array();
  for (const KeyChange& c : v) {
    nlohmann::json j = {{"key", c.key}, {"a", c.a}, {"b", c.b}};
    if (with_what) j["change"] = c.what;
    out.push_back(std::move(j));
  }
  return out;
}

}  // namespace

nlohmann::json DiffJson(const DiffReport& report, const DiffOptions& options) {
  nlohmann::json j;
  j["a"] = options.a;
  j["b"] = options.b;
  j["atol"] = options.atol;
  j["rtol"] = options.rtol;
  j["keys_only"] = options.keys_only;
  j["tensors_only"] = options.tensors_only;
  j["only_in_a"] = report.only_in_a;
  j["only_in_b"] = report.only_in_b;
  j["dtype_changed"] = Changes(report.dtype_changed, false);
  j["shape_changed"] = Changes(report.shape_changed, false);
  nlohmann::json ts = nlohmann::json::array();
  for (const TensorDiff& t : report.tensors) {
    ts.push_back({{"key", t.key},
                  {"dtype", std::string(DTypeName(t.dtype))},
                  {"shape", t.shape},
                  {"max_abs", Number(t.stats.max_abs)},
                  {"max_rel", Number(t.stats.max_rel)},
                  {"mismatched", t.stats.mismatched},
                  {"nan_mismatched", t.stats.nan_mismatched},
                  {"numel", t.stats.numel},
                  {"equal", t.equal()}});
  }
  j["tensors"] = std::move(ts);
  j["objects_changed"] = Changes(report.objects_changed, true);
  j["identical"] = report.identical();
  return j;
}

namespace {

// A progress line on a terminal, redrawn at most every 100 ms.
class ProgressLine {
 public:
  explicit ProgressLine(std::ostream& err) : err_(err) {}
  void Update(uint64_t done, uint64_t total) {
    auto now = std::chrono::steady_clock::now();
    if (done != total && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    int pct = total ? static_cast<int>(100.0 * static_cast<double>(done) /
                                       static_cast<double>(total))
                    : 100;
    err_ << fmt::format("\rcomparing: {:3d}%  {} / {}   ", pct, HumanBytes(done),
                        HumanBytes(total))
         << std::flush;
    drawn_ = true;
  }
  void End() {
    if (drawn_) err_ << "\n" << std::flush;
  }

 private:
  std::ostream& err_;
  std::chrono::steady_clock::time_point last_{};
  bool drawn_ = false;
};

void PrintText(const DiffReport& r, std::ostream& out) {
  std::vector<std::array<std::string, 3>> rows;  // change, key, detail
  for (const std::string& k : r.only_in_a) rows.push_back({"only in A", k, ""});
  for (const std::string& k : r.only_in_b) rows.push_back({"only in B", k, ""});
  for (const KeyChange& c : r.dtype_changed) rows.push_back({"dtype", c.key, c.a + " -> " + c.b});
  for (const KeyChange& c : r.shape_changed) rows.push_back({"shape", c.key, c.a + " -> " + c.b});
  size_t differing = 0;
  for (const TensorDiff& t : r.tensors) {
    if (t.equal()) continue;
    ++differing;
    std::string detail = fmt::format("{} {}: {} of {} differ, max_abs {}, max_rel {}",
                                     DTypeName(t.dtype), ShapeString(t.shape), t.stats.mismatched,
                                     t.stats.numel, NumberText(t.stats.max_abs),
                                     NumberText(t.stats.max_rel));
    if (t.stats.nan_mismatched) detail += fmt::format(" ({} NaN on one side)", t.stats.nan_mismatched);
    rows.push_back({"values", t.key, detail});
  }
  for (const KeyChange& c : r.objects_changed) {
    std::string detail = c.what == "only_in_a"   ? "only in A: " + c.a
                         : c.what == "only_in_b" ? "only in B: " + c.b
                                                 : c.what + ": " + c.a + " -> " + c.b;
    rows.push_back({"object", c.key, detail});
  }
  size_t w0 = 0, w1 = 0;
  for (const auto& row : rows) {
    w0 = std::max(w0, row[0].size());
    w1 = std::max(w1, row[1].size());
  }
  for (const auto& row : rows) {
    std::string line = fmt::format("{:<{}}  {:<{}}  {}", row[0], w0, row[1], w1, row[2]);
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out << line << "\n";
  }
  out << fmt::format(
      "{}: {} tensors compared, {} differ; {} only in A, {} only in B, {} dtype and {} shape "
      "changes, {} objects changed\n",
      r.identical() ? "identical" : "different", r.tensors.size(), differing, r.only_in_a.size(),
      r.only_in_b.size(), r.dtype_changed.size(), r.shape_changed.size(),
      r.objects_changed.size());
}

}  // namespace

Result<bool> RunDiff(const DiffOptions& options, std::ostream& out, std::ostream& err) {
  OpenOptions open;
  open.env = options.env;
  open.pickle_mode = PickleMode::kInspect;
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> a, OpenCheckpoint(options.a, open),
                        StrCat("A ", Quote(options.a)));
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> b, OpenCheckpoint(options.b, open),
                        StrCat("B ", Quote(options.b)));
  // A legacy Megatron checkpoint compares in model space (global tensors and
  // per-parameter optimizer state), and so does a torch_dist one beside it.
  const bool legacy = a->kind() == SourceKind::kLegacy || b->kind() == SourceKind::kLegacy;
  auto model_space = [&](std::unique_ptr<CheckpointReader>* r, const std::string& path, const char* which) -> Status {
    if (!legacy || ((*r)->kind() != SourceKind::kLegacy && (*r)->kind() != SourceKind::kTorchDist)) return OkStatus();
    r->reset();
    CKPT_ASSIGN_OR_RETURN(*r, OpenModelSpace(path, open), StrCat(which, " ", Quote(path)));
    return OkStatus();
  };
  CKPT_RETURN_IF_ERROR(model_space(&a, options.a, "A"));
  CKPT_RETURN_IF_ERROR(model_space(&b, options.b, "B"));
  ProgressLine line(err);
  std::function<void(uint64_t, uint64_t)> progress;
  if (options.show_progress) progress = [&](uint64_t d, uint64_t t) { line.Update(d, t); };
  Result<DiffReport> report = DiffCheckpoints(*a, *b, options, progress);
  line.End();
  if (!report.ok()) return report.status();
  if (options.json) {
    out << DiffJson(*report, options).dump(2) << "\n";
  } else {
    PrintText(*report, out);
  }
  return report->identical();
}

}  // namespace ckpt::cli
