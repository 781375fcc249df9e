#include "util/sha256.h"

#include <openssl/evp.h>

namespace ckpt {

struct Sha256Sink::Ctx {
  EVP_MD_CTX* md = nullptr;
  ~Ctx() { EVP_MD_CTX_free(md); }
};

Sha256Sink::Sha256Sink() : ctx_(new Ctx) {
  ctx_->md = EVP_MD_CTX_new();
  if (ctx_->md) EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr);
}

Sha256Sink::~Sha256Sink() = default;

Status Sha256Sink::Append(std::string_view data) {
  if (!ctx_->md || EVP_DigestUpdate(ctx_->md, data.data(), data.size()) != 1) {
    return InternalError("SHA-256 update failed");
  }
  n_ += data.size();
  return OkStatus();
}

std::string Sha256Sink::HexDigest() {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!ctx_->md || EVP_DigestFinal_ex(ctx_->md, out, &len) != 1) return "";
  static const char kHex[] = "0123456789abcdef";
  std::string s;
  for (unsigned int i = 0; i < len; ++i) {
    s.push_back(kHex[out[i] >> 4]);
    s.push_back(kHex[out[i] & 15]);
  }
  return s;
}

std::string Sha256Hex(std::string_view data) {
  Sha256Sink s;
  (void)s.Append(data);
  return s.HexDigest();
}

}  // namespace ckpt
