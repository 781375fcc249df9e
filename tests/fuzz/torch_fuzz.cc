// libFuzzer target: TorchFile::Open in both modes over arbitrary bytes, then
// ReadTensor/ReadStorage of everything it reports, then a rewrite of what
// opened, which must open again.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "format/torch/torch_file.h"
#include "format/torch/torch_writer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ckpt;
  using namespace ckpt::torch;
  auto src = std::make_shared<SpanSource>(data, size, "fuzz.pt");
  for (pickle::Mode mode : {pickle::Mode::kStrict, pickle::Mode::kInspect}) {
    TorchOpenOptions o;
    o.mode = mode;
    o.unpickle.max_values = 1u << 20;
    o.unpickle.max_stack = 1u << 16;
    auto f = TorchFile::Open(src, o);
    if (!f.ok()) continue;
    for (const TensorRecord& t : (*f)->tensors()) {
      CountingSink sink;
      Status st = (*f)->ReadTensor(t, &sink, 1 << 12);
      if (st.ok() && sink.Position() != t.nbytes) __builtin_trap();
    }
    for (const StorageRecord& s : (*f)->storages()) {
      CountingSink sink;
      (*f)->ReadStorage(s, &sink).IgnoreError();
    }
    StringSink out;
    if (RewriteTorchFile(**f, &out).ok()) {
      auto again = TorchFile::Open(std::make_shared<StringSource>(out.Release(), "rewritten.pt"),
                                   pickle::Mode::kInspect);
      if (!again.ok() && again.status().code() != Code::kResourceExhausted) __builtin_trap();
    }
  }
  return 0;
}
