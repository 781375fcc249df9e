// Lexical path helpers shared by MemEnv and FaultEnv (private to src/io).
//
// Thread-safety: pure functions.
#ifndef CKPT_IO_PATH_UTIL_H_
#define CKPT_IO_PATH_UTIL_H_

#include <string>
#include <string_view>

namespace ckpt {
namespace internal_io {

// Normalizes a path without touching any file system: collapses repeated '/',
// drops "." components and a trailing '/', and resolves ".." against the
// component before it. "" and "." give "."; "/.." gives "/"; a leading ".."
// of a relative path is kept ("../a" stays "../a"). Symlinks are not
// resolved, so "a/../b" may differ from what the kernel would open.
std::string LexicallyNormal(std::string_view path);

}  // namespace internal_io
}  // namespace ckpt

#endif  // CKPT_IO_PATH_UTIL_H_
