// A cache of values computed once per distinct string, looked up by the
// string's address and size.
#ifndef CKPT_UTIL_BY_ADDRESS_H_
#define CKPT_UTIL_BY_ADDRESS_H_

#include <cstddef>
#include <string_view>
#include <unordered_map>
#include <utility>

namespace ckpt {

// For names a parser interned (equal names share their bytes, as a
// dcp::Metadata's file names and keys do): a million storage items naming a
// few hundred files cost a few hundred lookups by content, the rest a pointer
// hash. Names that were not interned still get the right value, computed
// once per distinct address. REQUIRES: every name given to one cache stays
// alive and unchanged while the cache is used (an address seen before must
// still hold the same bytes). Get's reference is valid until the next Get.
template <typename V>
class ByAddress {
 public:
  // The value for `name`, made by make(name) the first time its address is seen.
  template <typename Make>
  V& Get(std::string_view name, Make&& make) {
    auto [it, fresh] = map_.try_emplace(name.data(), name.size(), V{});
    if (fresh) {
      it->second.second = make(name);
    } else if (it->second.first != name.size()) {  // a prefix of a name seen before
      other_ = make(name);
      return other_;
    }
    return it->second.second;
  }

 private:
  std::unordered_map<const char*, std::pair<size_t, V>> map_;
  V other_{};
};

}  // namespace ckpt

#endif  // CKPT_UTIL_BY_ADDRESS_H_
