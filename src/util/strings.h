// String helpers: StrCat over fmt, quoting for messages, UTF-8 repair for JSON.
#ifndef CKPT_UTIL_STRINGS_H_
#define CKPT_UTIL_STRINGS_H_

#include <fmt/format.h>

#include <string>
#include <string_view>

namespace ckpt {

// Concatenates the fmt-formatted forms of args.
template <typename... Args>
std::string StrCat(const Args&... args) {
  std::string out;
  (fmt::format_to(std::back_inserter(out), "{}", args), ...);
  return out;
}

// Quotes s for an error message: printable ASCII kept, the rest \xNN, capped
// at max_len bytes with "..." appended.
std::string Quote(std::string_view s, size_t max_len = 80);

// s with every byte that does not begin a valid UTF-8 sequence (overlong
// forms and surrogates included) replaced by U+FFFD. Strings from a checkpoint
// go through it before nlohmann::json, whose dump() throws on invalid UTF-8.
std::string ValidUtf8(std::string_view s);

// True when a and b are the same bytes in memory (not merely equal; never for
// a null view): a cheap test for "the same interned name as last time".
inline bool SameBytes(std::string_view a, std::string_view b) {
  return a.data() == b.data() && a.size() == b.size() && a.data() != nullptr;
}

}  // namespace ckpt

#endif  // CKPT_UTIL_STRINGS_H_
