#include "util/by_address.h"

#include <gtest/gtest.h>

#include <string>
#include <string_view>

namespace ckpt {
namespace {

TEST(ByAddress, MakesAValueOncePerAddressAndSize) {
  const std::string a = "__0_0.distcp", b = "__1_0.distcp", a_again = "__0_0.distcp";
  int made = 0;
  auto make = [&](std::string_view name) {
    ++made;
    return std::string(name) + "!";
  };
  ByAddress<std::string> cache;
  EXPECT_EQ(cache.Get(a, make), "__0_0.distcp!");
  EXPECT_EQ(cache.Get(b, make), "__1_0.distcp!");
  EXPECT_EQ(made, 2);
  for (int i = 0; i < 3; ++i) {  // the same bytes: looked up by address, not made again
    EXPECT_EQ(cache.Get(std::string_view(a), make), "__0_0.distcp!");
    EXPECT_EQ(cache.Get(std::string_view(b), make), "__1_0.distcp!");
  }
  EXPECT_EQ(made, 2);
  // Equal bytes elsewhere (a name that was not interned): made for its own address, still right.
  EXPECT_EQ(cache.Get(a_again, make), "__0_0.distcp!");
  EXPECT_EQ(made, 3);
  // A prefix at the same address is another name: made each time, never the longer name's value.
  EXPECT_EQ(cache.Get(std::string_view(a).substr(0, 4), make), "__0_!");
  EXPECT_EQ(cache.Get(std::string_view(a).substr(0, 4), make), "__0_!");
  EXPECT_EQ(made, 5);
  EXPECT_EQ(cache.Get(a, make), "__0_0.distcp!");  // the full name's entry is untouched
  EXPECT_EQ(made, 5);
}

TEST(ByAddress, AnEmptyNameHasItsOwnValue) {
  ByAddress<int> cache;
  auto length = [](std::string_view name) { return static_cast<int>(name.size()) + 1; };
  EXPECT_EQ(cache.Get(std::string_view(), length), 1);
  const std::string x = "x";
  EXPECT_EQ(cache.Get(x, length), 2);
  EXPECT_EQ(cache.Get(std::string_view(), length), 1);
}

}  // namespace
}  // namespace ckpt
