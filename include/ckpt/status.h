// ckpt::Status and ckpt::Result<T>: errors as values that gain context.
//
// A Status is either OK or carries a Code and a message. The message reads as a
// trail of context, outermost first, e.g.
//   "convert: reading model.pt: tensor 'layer.0.weight': short read at offset
//    1048576: wanted 4194304 bytes, got 12288"
// Each layer adds its prefix with Status::WithContext (or the CKPT_RETURN_IF_ERROR
// / CKPT_ASSIGN_OR_RETURN macros with a context argument). No exception crosses the
// public API; nothing read from a file may reach an assert.
//
// Thread-safety: Status and Result are values; const methods may be called
// concurrently.
#ifndef CKPT_STATUS_H_
#define CKPT_STATUS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace ckpt {

// Pick the most specific code, by what the caller should do next.
enum class Code : int {
  kOk = 0,
  kInvalidArgument,     // bad flag or API argument
  kNotFound,            // file, key or tensor missing
  kDataLoss,            // corrupt or truncated input
  kOutOfRange,          // offset/slice outside an object
  kUnimplemented,       // unsupported version, dtype, pickle global
  kResourceExhausted,   // disk full, limit hit
  kFailedPrecondition,  // state does not allow the operation
  kCancelled,
  kUnavailable,         // transient, retry may help
  kInternal,            // a bug in ckptkit
  kPermissionDenied,
  kAlreadyExists,
};

// The lowercase name of a code, e.g. "data loss".
std::string_view CodeName(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(Code code, std::string message);

  static Status Ok() { return Status(); }

  bool ok() const { return rep_ == nullptr; }
  Code code() const { return rep_ ? rep_->code : Code::kOk; }
  // The message without the code name; empty when OK.
  const std::string& message() const;
  // "<code name>: <message>", or "ok".
  std::string ToString() const;

  // Returns a copy whose message is "<context>: <old message>". OK stays OK.
  Status WithContext(std::string_view context) const&;
  Status WithContext(std::string_view context) &&;

  // Explicitly drops the status (documents that ignoring it is intended).
  void IgnoreError() const {}

 private:
  struct Rep {
    Code code;
    std::string message;
  };
  std::shared_ptr<const Rep> rep_;
};

inline Status OkStatus() { return Status(); }

// Factories, one per code.
Status InvalidArgumentError(std::string message);
Status NotFoundError(std::string message);
Status DataLossError(std::string message);
Status OutOfRangeError(std::string message);
Status UnimplementedError(std::string message);
Status ResourceExhaustedError(std::string message);
Status FailedPreconditionError(std::string message);
Status CancelledError(std::string message);
Status UnavailableError(std::string message);
Status InternalError(std::string message);
Status PermissionDeniedError(std::string message);
Status AlreadyExistsError(std::string message);

// Result<T>: a T or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT
    if (std::get<Status>(v_).ok()) {
      v_ = Status(Code::kInternal, "Result constructed from an OK status");
    }
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  Status status() const { return ok() ? Status() : std::get<Status>(v_); }

  // REQUIRES: ok().
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace ckpt

#define CKPT_CONCAT_INNER_(a, b) a##b
#define CKPT_CONCAT_(a, b) CKPT_CONCAT_INNER_(a, b)

// CKPT_RETURN_IF_ERROR(expr) or CKPT_RETURN_IF_ERROR(expr, context_string)
#define CKPT_RETURN_IF_ERROR(...) \
  CKPT_RIE_SELECT_(__VA_ARGS__, CKPT_RIE2_, CKPT_RIE1_)(__VA_ARGS__)
#define CKPT_RIE_SELECT_(_1, _2, NAME, ...) NAME
#define CKPT_RIE1_(expr)                                       \
  do {                                                         \
    ::ckpt::Status ckpt_status_ = (expr);                      \
    if (!ckpt_status_.ok()) return ckpt_status_;               \
  } while (0)
#define CKPT_RIE2_(expr, context)                                   \
  do {                                                              \
    ::ckpt::Status ckpt_status_ = (expr);                           \
    if (!ckpt_status_.ok()) return ckpt_status_.WithContext(context); \
  } while (0)

// CKPT_ASSIGN_OR_RETURN(lhs, expr) or CKPT_ASSIGN_OR_RETURN(lhs, expr, context)
#define CKPT_ASSIGN_OR_RETURN(...) \
  CKPT_AOR_SELECT_(__VA_ARGS__, CKPT_AOR3_, CKPT_AOR2_)(__VA_ARGS__)
#define CKPT_AOR_SELECT_(_1, _2, _3, NAME, ...) NAME
#define CKPT_AOR2_(lhs, expr) \
  CKPT_AOR_IMPL_(CKPT_CONCAT_(ckpt_result_, __LINE__), lhs, expr, )
#define CKPT_AOR3_(lhs, expr, context)                                  \
  CKPT_AOR_IMPL_(CKPT_CONCAT_(ckpt_result_, __LINE__), lhs, expr,      \
                 .WithContext(context))
#define CKPT_AOR_IMPL_(tmp, lhs, expr, ctx)                    \
  auto tmp = (expr);                                           \
  if (!tmp.ok()) return tmp.status() ctx;                      \
  lhs = std::move(tmp).value()

#endif  // CKPT_STATUS_H_
