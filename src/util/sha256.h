// SHA-256 (OpenSSL) as a ByteSink, for integrity manifests and tests.
// Thread-safety: one Sha256Sink per thread.
#ifndef CKPT_UTIL_SHA256_H_
#define CKPT_UTIL_SHA256_H_

#include <memory>
#include <string>
#include <string_view>

#include "ckpt/byte_source.h"

namespace ckpt {

class Sha256Sink final : public ByteSink {
 public:
  Sha256Sink();
  ~Sha256Sink() override;
  Status Append(std::string_view data) override;
  uint64_t Position() const override { return n_; }
  // Lowercase hex digest of everything appended. Call once.
  std::string HexDigest();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
  uint64_t n_ = 0;
};

std::string Sha256Hex(std::string_view data);

}  // namespace ckpt

#endif  // CKPT_UTIL_SHA256_H_
