// Runs every case in tests/corrupt/megatron_args/ (see make_cases.py there):
// a common-state pickle whose `args` the model layer must refuse at the
// stage named (LayoutFromArgs or ConfigFromArgs) with the code and message
// expected.json gives, or, for the valid twin, accept.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "format/megatron/megatron.h"
#include "format/pickle/unpickler.h"
#include "model/args.h"
#include "testing/testutil.h"

namespace ckpt::model {
namespace {

TEST(ArgsCorruptCases, EachFailsWithItsExpectedCodeAndMessage) {
  testing::ExpectEveryCorruptFileListed("megatron_args", "make_cases.py");
  testing::ForEachCorruptCase("megatron_args", 6, [](const std::string& file, nlohmann::json& want,
                                                     const std::string& bytes) {
    ASSERT_FALSE(bytes.empty());
    SpanSource src(bytes.data(), bytes.size(), file);
    pickle::UnpickleOptions o;
    o.mode = pickle::Mode::kInspect;
    auto u = pickle::Unpickle(src, 0, o);
    ASSERT_TRUE(u.ok()) << u.status().ToString();
    auto common = megatron::ExtractCommonState(u->root, file);
    ASSERT_TRUE(common.ok()) << common.status().ToString();
    Result<ParallelLayout> layout = LayoutFromArgs(*common);
    Result<ModelConfig> config = ConfigFromArgs(&*common, nullptr);
    (void)DistOptFromArgs(*common, std::nullopt);
    if (want["code"] == "ok") {
      EXPECT_TRUE(layout.ok()) << layout.status().ToString();
      EXPECT_TRUE(config.ok()) << config.status().ToString();
      return;
    }
    const Status st = want["stage"] == "layout" ? layout.status() : config.status();
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(CodeName(st.code()), want["code"].get<std::string>()) << st.ToString();
    EXPECT_NE(st.message().find(want["message"].get<std::string>()), std::string::npos) << st.ToString();
  });
}

}  // namespace
}  // namespace ckpt::model
