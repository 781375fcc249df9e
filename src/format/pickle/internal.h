// Helpers shared by the unpickler, the pickler and their tests. Not a public API.
#ifndef CKPT_FORMAT_PICKLE_INTERNAL_H_
#define CKPT_FORMAT_PICKLE_INTERNAL_H_

#include <cstdint>
#include <string>
#include <string_view>

namespace ckpt::pickle::internal_pickle {

// Appends the UTF-8 encoding of code point cp.
void AppendUtf8(std::string* out, uint32_t cp);
// Decodes UTF-8 text whose code points are all < 256 into Latin-1 bytes
// (what _codecs.encode(s, 'latin1') does). False otherwise.
bool Latin1FromUtf8(std::string_view s, std::string* out);
// Latin-1 bytes -> UTF-8 text (str(b, 'latin1')).
std::string Utf8FromLatin1(std::string_view s);
// Decimal text (optional sign, '_' separators) -> minimal little-endian two's
// complement bytes as CPython's encode_long writes them ("" for 0).
bool DecimalToTwosComplement(std::string_view text, std::string* out);
// Little-endian two's complement -> int64 if it fits.
bool TwosComplementToInt64(std::string_view bytes, int64_t* out);

}  // namespace ckpt::pickle::internal_pickle

#endif  // CKPT_FORMAT_PICKLE_INTERNAL_H_
