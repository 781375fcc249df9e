// ReadAhead: a tensor's reads overlap its writes.
//
// A converter's output tensor is produced by a callback that reads source
// chunks (file reads, CRC checks, casts, row scatter) and appends the result
// to a sink (the output file). Run() calls the producer on a second thread and
// appends what it produced to the sink on the calling thread, at most
// kBlocks x kBlockBytes ahead, so a converter costs about max(read, write)
// instead of their sum. The blocks are allocated once per ReadAhead and reused
// for every tensor.
//
// Thread-safety: one Run() at a time per object. The producer runs on another
// thread; it must not touch what the calling thread uses meanwhile (the sink).
// Whatever it reads (a CheckpointReader) is used by one thread at a time,
// and each Run() happens-before the next (the producer thread is joined).
#ifndef CKPT_CONVERT_READ_AHEAD_H_
#define CKPT_CONVERT_READ_AHEAD_H_

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "ckpt/byte_source.h"
#include "ckpt/status.h"

namespace ckpt::internal_convert {

class ReadAhead {
 public:
  static constexpr size_t kBlocks = 6;
  static constexpr size_t kBlockBytes = size_t{2} << 20;

  ReadAhead();
  ReadAhead(const ReadAhead&) = delete;
  ReadAhead& operator=(const ReadAhead&) = delete;

  // Runs produce(block sink) on a second thread and appends its bytes, in
  // order, to sink. Returns the producer's error if it failed, else the
  // sink's first error (after which the producer is told to stop: its
  // appends fail with Cancelled and what it still produces is dropped).
  Status Run(const std::function<Status(ByteSink*)>& produce, ByteSink* sink);

 private:
  std::vector<std::string> blocks_;
};

}  // namespace ckpt::internal_convert

#endif  // CKPT_CONVERT_READ_AHEAD_H_
