// libFuzzer target: the safe unpickler in both modes, then the pickler on
// whatever parsed (it must not crash on any graph the unpickler builds, cycles
// included), then the unpickler again on the pickler's output.
#include <cstddef>
#include <cstdint>
#include <string>

#include "format/pickle/pickler.h"
#include "format/pickle/unpickler.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ckpt;
  using namespace ckpt::pickle;
  SpanSource src(data, size, "fuzz.pkl");
  for (Mode mode : {Mode::kStrict, Mode::kInspect}) {
    UnpickleOptions o;
    o.mode = mode;
    o.max_values = 1u << 20;  // keep the fuzzer's RSS bounded
    o.max_stack = 1u << 16;
    auto r = Unpickle(src, 0, o);
    if (!r.ok()) continue;
    (void)Repr(r->root, 200);
    (void)TypeName(r->root);
    auto bytes = PickleToString(r->root);
    if (!bytes.ok()) continue;
    SpanSource again(bytes->data(), bytes->size(), "repickled.pkl");
    UnpickleOptions o2 = o;
    o2.mode = Mode::kInspect;
    auto r2 = Unpickle(again, 0, o2);
    // What we write must read back (globals are kept in inspect mode).
    if (!r2.ok() && r2.status().code() != Code::kResourceExhausted) __builtin_trap();
  }
  return 0;
}
