// StagingPool: bounded, reused staging memory with backpressure.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "ckpt/engine.h"

namespace ckpt::engine {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;

constexpr uint64_t kPage = StagingPool::kAlignment;

TEST(StagingPool, RegionsArePageAlignedDisjointAndReturned) {
  auto pool = StagingPool::Create(10 * kPage);
  ASSERT_TRUE(pool.ok());
  std::vector<uint64_t> sizes = {1, kPage, kPage + 1, 0, 100};
  EXPECT_EQ(StagingPool::Footprint(sizes), 5 * kPage);  // 1 + 1 + 2 + 0 + 1 pages
  auto r = (*pool)->Acquire(sizes, 0ms);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*pool)->in_use(), 5 * kPage);
  for (size_t i = 0; i < r->size(); ++i) {
    EXPECT_EQ((*r)[i]->size(), sizes[i]);
    EXPECT_EQ(reinterpret_cast<uintptr_t>((*r)[i]->data()) % kPage, 0u) << i;
    std::memset((*r)[i]->data(), static_cast<int>(i + 1), (*r)[i]->size());
  }
  for (size_t i = 0; i < r->size(); ++i) {  // no region overwrote another
    for (uint64_t j = 0; j < (*r)[i]->size(); ++j) ASSERT_EQ((*r)[i]->data()[j], i + 1) << i << " " << j;
  }
  // Released out of order, the free space coalesces back to one whole arena.
  (*r)[2].reset();
  (*r)[0].reset();
  (*r)[4].reset();
  (*r)[1].reset();
  r->clear();
  EXPECT_EQ((*pool)->in_use(), 0u);
  EXPECT_EQ((*pool)->peak(), 5 * kPage);
  auto whole = (*pool)->Acquire(std::vector<uint64_t>{10 * kPage}, 0ms);
  EXPECT_TRUE(whole.ok()) << whole.status().ToString();
}

TEST(StagingPool, TooLargeIsRefusedAtOnceAndAFullPoolTimesOut) {
  auto pool = StagingPool::Create(4 * kPage);
  ASSERT_TRUE(pool.ok());
  auto big = (*pool)->Acquire(std::vector<uint64_t>{3 * kPage, 2 * kPage}, 10s);
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(big.status().message(), HasSubstr("more than the pool's 16384"));
  auto held = (*pool)->Acquire(std::vector<uint64_t>{3 * kPage}, 0ms);
  ASSERT_TRUE(held.ok());
  auto t0 = std::chrono::steady_clock::now();
  auto more = (*pool)->Acquire(std::vector<uint64_t>{2 * kPage}, 50ms);
  ASSERT_FALSE(more.ok());
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 50ms);
  EXPECT_EQ(more.status().code(), Code::kResourceExhausted);
  EXPECT_THAT(more.status().message(), HasSubstr("12288 of 16384 bytes still held"));
  // All or none: nothing of the failed request is held.
  EXPECT_EQ((*pool)->in_use(), 3 * kPage);
}

// A second save waits until the first releases its regions (backpressure),
// then gets the same (warm) memory.
TEST(StagingPool, ASecondSaveWaitsForTheFirst) {
  auto pool = StagingPool::Create(4 * kPage);
  ASSERT_TRUE(pool.ok());
  auto first = (*pool)->Acquire(std::vector<uint64_t>{4 * kPage}, 0ms);
  ASSERT_TRUE(first.ok());
  uint8_t* where = (*first)[0]->data();
  std::atomic<bool> got{false};
  std::thread second([&] {
    auto r = (*pool)->Acquire(std::vector<uint64_t>{kPage, kPage}, 10s);
    EXPECT_TRUE(r.ok());
    if (r.ok()) {
      EXPECT_EQ((*r)[0]->data(), where);
    }
    got = true;
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(got.load());
  first->clear();
  second.join();
  EXPECT_TRUE(got.load());
  EXPECT_EQ((*pool)->in_use(), 0u);
  EXPECT_EQ((*pool)->peak(), 4 * kPage);
}

TEST(StagingPool, RegionsKeepThePoolAlive) {
  std::vector<std::unique_ptr<StagingPool::Region>> regions;
  {
    auto pool = StagingPool::Create(kPage);
    ASSERT_TRUE(pool.ok());
    auto r = (*pool)->Acquire(std::vector<uint64_t>{100}, 0ms);
    ASSERT_TRUE(r.ok());
    regions = std::move(*r);
  }
  std::memset(regions[0]->data(), 7, 100);  // the arena is still mapped (ASan would tell)
  EXPECT_EQ(regions[0]->data()[99], 7);
  EXPECT_EQ(StagingPool::Create(0).status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace ckpt::engine
