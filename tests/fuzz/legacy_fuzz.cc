// libFuzzer target: a torch.save byte buffer through the Megatron legacy
// extractors — ParseDistribOptim (formats A/B/C, chained lists) and
// ParseModelOptimRng — plus the rank folder name rules over the same bytes as
// text. Invariants: every TensorRef points at the file's tensor of that key;
// a C buffer's state tensors are numel_unpadded long unless a problem says so;
// a parsed folder name formats back to itself.
// Seeds: tests/golden/legacy (real Megatron) and tests/golden/legacy_synthetic
// (make_synthetic.py), which scripts/fuzz.sh adds for this target.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "format/megatron/legacy.h"

namespace {

void CheckRef(const ckpt::torch::TorchFile& f, const ckpt::megatron::legacy::TensorRef& t) {
  if (t.index >= f.tensors().size() || f.tensors()[t.index].key != t.key ||
      f.tensors()[t.index].numel != t.numel) {
    __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ckpt;
  namespace lg = ckpt::megatron::legacy;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  if (auto n = lg::ParseRankFolderName(text)) {
    bool pp = !n->suffixes.empty(), ep = n->suffixes.size() == 2;
    lg::RankCoord c{n->tp, pp ? n->suffixes[0] : 0, ep ? n->suffixes[1] : 0};
    if (lg::RankFolder(c, pp, ep) != text) __builtin_trap();
  }
  auto src = std::make_shared<SpanSource>(data, size, "fuzz/distrib_optim.pt");
  torch::TorchOpenOptions o;
  o.mode = pickle::Mode::kInspect;
  o.unpickle.max_values = 1u << 20;
  o.unpickle.max_stack = 1u << 16;
  auto f = torch::TorchFile::Open(src, o);
  if (!f.ok()) return 0;
  auto d = lg::ParseDistribOptim(**f, "distrib_optim.pt");
  if (d.ok()) {
    for (const auto& opt : d->optimizers) {
      if (!opt) continue;
      for (const lg::Buffer& b : opt->buffers) {
        (void)b.numel();
        for (const lg::StateTensors& s : b.states) {
          for (const lg::TensorRef& t : s.tensors) {
            CheckRef(**f, t);
            if (b.numel_unpadded && t.numel != *b.numel_unpadded && d->problems.empty()) __builtin_trap();
          }
        }
      }
    }
    (void)lg::CheckDistribOptim(*d);
  }
  auto m = lg::ParseModelOptimRng(**f, "model_optim_rng.pt");
  if (m.ok()) {
    for (const lg::ModelChunk& c : m->chunks) {
      if (c.local_keys.size() != c.tensors.size()) __builtin_trap();
      for (const lg::TensorRef& t : c.tensors) CheckRef(**f, t);
    }
    for (const lg::OptimizerEntry& e : m->optimizers) {
      for (const lg::TensorRef& t : e.tensors) CheckRef(**f, t);
    }
  }
  return 0;
}
