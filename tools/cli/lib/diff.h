// `ckptkit diff`: compare two checkpoints of any formats, tensor by tensor.
//
// Keys, dtypes and shapes are compared from metadata. The values of each
// tensor present in both with the same dtype and shape are compared by
// streaming both in lockstep: A's ReadTensor runs on a helper thread into a
// bounded pipe, B's on the calling thread, and equal-sized pieces of both are
// compared as they arrive. Memory is bounded (pipe + two compare buffers,
// DiffOptions::pipe_bytes + 2 * compare_bytes, plus the readers' own copy
// buffers) whatever the tensor's size, and each tensor is read exactly once.
//
// Element semantics (ElementComparator):
// - floating types (float16, bfloat16, float8_*, float4 pairs, float32/64)
//   are decoded to double. An element passes if a == b (so -0.0 == 0.0 and
//   inf == inf of the same sign), if both are NaN (NaN at the same position
//   counts as equal), or, both finite, if |a-b| <= atol + rtol*|b| (numpy
//   allclose; atol = rtol = 0 means exact). A NaN against a number, or an
//   infinity against anything else, fails.
// - complex types compare by the magnitude of the difference |a-b| against
//   atol + rtol*|b|; a component NaN on one side only fails.
// - integers, bool, quantized and bits types compare exactly (tolerances do
//   not apply); the reported differences are of the integer values.
// max_abs = max |a-b| and max_rel = max |a-b| / max(|b|, DBL_MIN) over the
// elements where neither side is NaN (infinite when an infinity differs);
// nan_mismatched counts elements where exactly one side is NaN.
//
// Thread-safety: plain functions and single-owner objects.
#ifndef CKPT_TOOLS_CLI_LIB_DIFF_H_
#define CKPT_TOOLS_CLI_LIB_DIFF_H_

#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ckpt/checkpoint.h"
#include "ckpt/dtype.h"
#include "ckpt/env.h"
#include "ckpt/status.h"

namespace ckpt::cli {

// ------------------------------------------------------- element decoding

// Decoders of the narrow float formats to double (exact: every value of
// these formats is a double). Follow torch's / ml_dtypes' definitions:
// e4m3fn has no infinities and NaN = S.1111.111; the *fnuz formats have no
// infinities, no -0 and NaN = 0x80; e8m0fnu is 2^(e-127) with 0xFF = NaN.
double HalfToDouble(uint16_t bits);
double BFloat16ToDouble(uint16_t bits);
double Float8E4M3FnToDouble(uint8_t bits);
double Float8E5M2ToDouble(uint8_t bits);
double Float8E4M3FnuzToDouble(uint8_t bits);
double Float8E5M2FnuzToDouble(uint8_t bits);
double Float8E8M0FnuToDouble(uint8_t bits);
double Float4E2M1FnToDouble(uint8_t nibble);  // low 4 bits

// Running statistics of one tensor's comparison.
struct DiffStats {
  uint64_t numel = 0;
  uint64_t mismatched = 0;      // elements failing the test (includes nan_mismatched)
  uint64_t nan_mismatched = 0;  // elements where exactly one side is NaN
  double max_abs = 0;
  double max_rel = 0;
};

// Compares runs of little-endian elements of one dtype.
class ElementComparator {
 public:
  // REQUIRES: atol >= 0, rtol >= 0.
  ElementComparator(DType dtype, double atol, double rtol);
  // Compares n elements at a and b (n * DTypeSize(dtype) bytes each).
  void Compare(const char* a, const char* b, size_t n);
  const DiffStats& stats() const { return stats_; }

 private:
  void Float(double a, double b);
  void Complex(double ar, double ai, double br, double bi);
  void Exact(bool equal, double abs_diff, double b_magnitude);

  DType dtype_;
  double atol_, rtol_;
  DiffStats stats_;
};

// Streams two byte sequences of nbytes each in lockstep: read_a runs on a
// helper thread feeding a pipe of pipe_bytes; read_b runs on the caller's
// thread; compare(a, b, n_elements) is called on equal pieces of at most
// compare_bytes (rounded down to a multiple of element_size, at least one
// element). progress(done_bytes) is called after each piece if set.
// Errors: those of read_a (with context "A") or read_b ("B"); DataLoss if
// either produces a byte count other than nbytes. REQUIRES: element_size > 0.
Status CompareStreams(const std::function<Status(ByteSink*)>& read_a,
                      const std::function<Status(ByteSink*)>& read_b, uint64_t nbytes,
                      size_t element_size,
                      const std::function<void(const char*, const char*, size_t)>& compare,
                      size_t pipe_bytes, size_t compare_bytes,
                      const std::function<void(uint64_t)>& progress = nullptr);

// --------------------------------------------------------------- reports

struct TensorDiff {
  std::string key;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  DiffStats stats;
  bool equal() const { return stats.mismatched == 0; }
};

struct KeyChange {  // dtype_changed / shape_changed / objects_changed
  std::string key;
  std::string what;  // objects: "only_in_a", "only_in_b", "type", "repr"; tensors: "dtype"/"shape"
  std::string a;     // rendered value on each side ("" when absent)
  std::string b;
};

struct DiffReport {
  std::vector<std::string> only_in_a;  // tensor keys, sorted
  std::vector<std::string> only_in_b;
  std::vector<KeyChange> dtype_changed;
  std::vector<KeyChange> shape_changed;
  std::vector<TensorDiff> tensors;  // common tensors with equal dtype and shape, sorted by key
  std::vector<KeyChange> objects_changed;
  bool identical() const;
};

struct DiffOptions {
  std::string a;
  std::string b;
  double atol = 0;
  double rtol = 0;
  bool json = false;
  bool keys_only = false;      // compare keys, dtypes, shapes and objects; read no tensor data
  bool tensors_only = false;   // leave non-tensor objects out (e.g. DCP vs safetensors, which holds none)
  bool show_progress = false;  // progress line on err (set by the CLI when stderr is a terminal)
  size_t pipe_bytes = size_t{16} << 20;
  size_t compare_bytes = size_t{4} << 20;
  Env* env = nullptr;
};

// Compares two open checkpoints. progress(done, total) counts bytes of B.
// Errors: InvalidArgument for a negative or non-finite tolerance; read errors
// of either reader (naming the side and the tensor).
Result<DiffReport> DiffCheckpoints(const CheckpointReader& a, const CheckpointReader& b,
                                   const DiffOptions& options,
                                   const std::function<void(uint64_t, uint64_t)>& progress = nullptr);

// The --json document: {"a","b","atol","rtol","only_in_a","only_in_b",
// "dtype_changed":[{key,a,b}],"shape_changed":[{key,a,b}],"tensors":[{key,
// dtype,shape,max_abs,max_rel,mismatched,nan_mismatched,numel,equal}],
// "objects_changed":[{key,change,a,b}],"identical"}. Non-finite max_abs /
// max_rel are written as the strings "inf" / "nan" (JSON has no such numbers).
nlohmann::json DiffJson(const DiffReport& report, const DiffOptions& options);

// Opens both (inspect mode: opaque objects are compared by their rendering,
// never executed), compares, writes the table + summary (or JSON) to out and
// progress to err. Returns whether they are identical within tolerance.
// Errors: as OpenCheckpoint and DiffCheckpoints.
Result<bool> RunDiff(const DiffOptions& options, std::ostream& out, std::ostream& err);

}  // namespace ckpt::cli

#endif  // CKPT_TOOLS_CLI_LIB_DIFF_H_
