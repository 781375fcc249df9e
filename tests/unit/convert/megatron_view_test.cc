// The model-space view (OpenModelSpace) over the real megatron-core goldens of
// tests/golden/legacy: one training run saved by megatron itself in several
// formats reads back as the same tensors, byte for byte, whichever format it
// came from (the legacy rank files, dp_reshardable / dp_zero_gather_scatter
// buckets, core 0.15's N-D flattened fully_sharded_model_space pieces).
#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <vector>

#include "ckpt/checkpoint.h"
#include "ckpt/convert.h"
#include "unit/checkpoint/checkpoint_testutil.h"
#include "unit/convert/model_space_testutil.h"

using ::testing::ElementsAre;

namespace ckpt {
namespace {

using ::ckpt::testing_model_space::Bytes;
using ::ckpt::testing_model_space::Golden;
using ::ckpt::testing_model_space::Open;

class SameTrainingState : public ::testing::TestWithParam<std::tuple<const char*, const char*>> {};

// Every model-space tensor of the legacy save (model and optimizer states)
// is in the other format under the same key, shape and dtype, with the same
// bytes; a region read (one row block, crossing TP shards and DP slices)
// matches the whole tensor's bytes too.
TEST_P(SameTrainingState, AsTheLegacySave) {
  const auto [name, format] = GetParam();
  std::unique_ptr<CheckpointReader> legacy = Open(Golden(name, "legacy"));
  std::unique_ptr<CheckpointReader> other = Open(Golden(name, format));
  ASSERT_TRUE(legacy && other);
  size_t optimizer = 0;
  for (size_t i = 0; i < legacy->tensors().size(); ++i) {
    const TensorInfo& t = legacy->tensors()[i];
    Result<size_t> j = other->Find(t.key);
    ASSERT_TRUE(j.ok()) << format << " lacks " << t.key;
    const TensorInfo& u = other->tensors()[*j];
    ASSERT_EQ(u.shape, t.shape) << t.key;
    ASSERT_EQ(u.dtype, t.dtype) << t.key;
    const std::string whole = Bytes(*legacy, i);
    ASSERT_EQ(Bytes(*other, *j), whole) << t.key;
    if (t.key.rfind("optimizer.state.", 0) == 0) ++optimizer;
    // Rows [1, n-1) of the first axis, every other axis whole.
    if (t.shape.empty() || t.shape[0] < 3) continue;
    std::vector<int64_t> start(t.shape.size(), 0), count(t.shape);
    start[0] = 1;
    count[0] = t.shape[0] - 2;
    StringSink part;
    ASSERT_TRUE(other->ReadTensorRegion(*j, start, count, &part).ok()) << t.key;
    const size_t row = whole.size() / static_cast<size_t>(t.shape[0]);
    EXPECT_EQ(part.str(), whole.substr(row, row * static_cast<size_t>(count[0]))) << t.key;
  }
  // Three states (param, exp_avg, exp_avg_sq) of every parameter.
  EXPECT_GE(optimizer, 3u * 9u);
  EXPECT_EQ(optimizer % 3, 0u);
}

INSTANTIATE_TEST_SUITE_P(
    RealMegatron, SameTrainingState,
    ::testing::Values(std::make_tuple("mc015_llama_tp2dp2", "fully_sharded_model_space"),
                      std::make_tuple("mc016_llama_dp2", "dp_reshardable"),
                      std::make_tuple("mc016_llama_dp2", "dp_zero_gather_scatter"),
                      std::make_tuple("mc016_mixtral_ep2", "dp_reshardable"),
                      std::make_tuple("mc016_mixtral_ep2", "dp_zero_gather_scatter")),
    [](const auto& info) {
      return std::string(std::get<0>(info.param)) + "_" + std::string(std::get<1>(info.param));
    });

// fully_sharded_model_space names the main params fp32_param and stores N-D
// tensors as grid + [local numel]: the view shows param, in the parameter's
// shape, one chunk per TP shard (gate and up halves of a gated fc1 apart).
TEST(FlattenedModelSpace, RenamedAndReshaped) {
  std::unique_ptr<CheckpointReader> r = Open(Golden("mc015_llama_tp2dp2", "fully_sharded_model_space"));
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->Find("optimizer.state.fp32_param.output_layer.weight").ok());
  Result<size_t> out = r->Find("optimizer.state.param.output_layer.weight");
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(r->tensors()[*out].shape, (std::vector<int64_t>{32, 8}));
  ASSERT_EQ(r->tensors()[*out].chunks.size(), 2u);  // vocab split over TP2
  EXPECT_THAT(r->tensors()[*out].chunks[1].offsets, ElementsAre(16, 0));
  Result<size_t> fc1 = r->Find("optimizer.state.exp_avg.decoder.layers.mlp.linear_fc1.weight");
  ASSERT_TRUE(fc1.ok());
  EXPECT_EQ(r->tensors()[*fc1].shape, (std::vector<int64_t>{2, 32, 8}));
  EXPECT_EQ(r->tensors()[*fc1].chunks.size(), 2u * 4u);  // 2 layers x (gate, up) x TP2
  Result<size_t> norm = r->Find("optimizer.state.exp_avg_sq.decoder.final_layernorm.weight");
  ASSERT_TRUE(norm.ok());
  EXPECT_EQ(r->tensors()[*norm].shape, (std::vector<int64_t>{8}));
}

// Box [start, start + count) of a row-major tensor's bytes.
std::string Cut(const std::string& whole, const std::vector<int64_t>& shape, const std::vector<int64_t>& start,
                const std::vector<int64_t>& count, size_t esize) {
  std::string out;
  int64_t n = 1;
  for (int64_t c : count) n *= c;
  for (int64_t e = 0; e < n; ++e) {
    int64_t rem = e, off = 0, stride = 1;
    for (size_t d = shape.size(); d-- > 0;) {
      off += (start[d] + rem % count[d]) * stride;
      rem /= count[d];
      stride *= shape[d];
    }
    out.append(whole, static_cast<size_t>(off) * esize, esize);
  }
  return out;
}

// Regions inside one rank's shard (a target TP shard cut from a source
// shard: streamed through without buffers) and regions across shards (the
// buffered path) read the same bytes as the whole tensor holds there, for
// every assembled tensor of a TP2 x PP2 legacy save.
TEST(AssembledRegions, InsideAndAcrossShardsMatchTheWholeTensor) {
  std::unique_ptr<CheckpointReader> r = Open(Golden("mc016_llama_tp2pp2dp2", "legacy"));
  ASSERT_TRUE(r != nullptr);
  size_t checked = 0;
  for (size_t i = 0; i < r->tensors().size(); ++i) {
    const TensorInfo& t = r->tensors()[i];
    if (t.shape.size() < 2) continue;
    const std::string whole = Bytes(*r, i);
    // Halves, quarters and the middle half of the last-but-one axis (for a
    // stacked [layer, out, in] tensor: of the last layer).
    const size_t ax = t.shape.size() - 2;
    const int64_t len = t.shape[ax];
    if (len % 4 != 0) continue;
    std::vector<std::pair<int64_t, int64_t>> cuts = {{0, len / 2}, {len / 2, len / 2}, {len / 4, len / 2}};
    for (int64_t q = 0; q < 4; ++q) cuts.push_back({q * len / 4, len / 4});
    for (auto [from, n] : cuts) {
      std::vector<int64_t> start(t.shape.size(), 0), count = t.shape;
      start[ax] = from;
      count[ax] = n;
      if (ax > 0) {
        start[0] = t.shape[0] - 1;
        count[0] = 1;
      }
      StringSink got;
      Status st = r->ReadTensorRegion(i, start, count, &got);
      ASSERT_TRUE(st.ok()) << t.key << ": " << st.ToString();
      EXPECT_EQ(got.str(), Cut(whole, t.shape, start, count, DTypeSize(t.dtype))) << t.key << " rows " << from << "+" << n;
      ++checked;
    }
  }
  EXPECT_GE(checked, 40u);
}

}  // namespace
}  // namespace ckpt
