#include "ckpt/status.h"

namespace ckpt {

std::string_view CodeName(Code code) {
  switch (code) {
    case Code::kOk: return "ok";
    case Code::kInvalidArgument: return "invalid argument";
    case Code::kNotFound: return "not found";
    case Code::kDataLoss: return "data loss";
    case Code::kOutOfRange: return "out of range";
    case Code::kUnimplemented: return "unimplemented";
    case Code::kResourceExhausted: return "resource exhausted";
    case Code::kFailedPrecondition: return "failed precondition";
    case Code::kCancelled: return "cancelled";
    case Code::kUnavailable: return "unavailable";
    case Code::kInternal: return "internal";
    case Code::kPermissionDenied: return "permission denied";
    case Code::kAlreadyExists: return "already exists";
  }
  return "unknown";
}

Status::Status(Code code, std::string message) {
  if (code != Code::kOk) {
    rep_ = std::make_shared<const Rep>(Rep{code, std::move(message)});
  }
}

const std::string& Status::message() const {
  static const std::string* const kEmpty = new std::string();
  return rep_ ? rep_->message : *kEmpty;
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  std::string s(CodeName(rep_->code));
  s += ": ";
  s += rep_->message;
  return s;
}

Status Status::WithContext(std::string_view context) const& {
  if (ok() || context.empty()) return *this;
  std::string m(context);
  m += ": ";
  m += rep_->message;
  return Status(rep_->code, std::move(m));
}

Status Status::WithContext(std::string_view context) && {
  return static_cast<const Status&>(*this).WithContext(context);
}

#define CKPT_FACTORY_(Name, CodeValue) \
  Status Name(std::string message) { return Status(Code::CodeValue, std::move(message)); }
CKPT_FACTORY_(InvalidArgumentError, kInvalidArgument)
CKPT_FACTORY_(NotFoundError, kNotFound)
CKPT_FACTORY_(DataLossError, kDataLoss)
CKPT_FACTORY_(OutOfRangeError, kOutOfRange)
CKPT_FACTORY_(UnimplementedError, kUnimplemented)
CKPT_FACTORY_(ResourceExhaustedError, kResourceExhausted)
CKPT_FACTORY_(FailedPreconditionError, kFailedPrecondition)
CKPT_FACTORY_(CancelledError, kCancelled)
CKPT_FACTORY_(UnavailableError, kUnavailable)
CKPT_FACTORY_(InternalError, kInternal)
CKPT_FACTORY_(PermissionDeniedError, kPermissionDenied)
CKPT_FACTORY_(AlreadyExistsError, kAlreadyExists)
#undef CKPT_FACTORY_

}  // namespace ckpt
