// FaultEnv: an Env that fails on cue and simulates crashes, for tests of
// writers (after leveldb's SpecialEnv and fault_injection_test).
//
// A FaultEnv wraps a target Env (usually a MemEnv, or PosixEnv in a temp dir)
// and forwards every call to it, unless a fault fires:
// - rules (FaultRule): fail the Nth matching operation (append, WriteAt,
//   sync, close, rename, SyncDir, open, ReadAt, ...), optionally only for
//   paths containing a substring, or only the append/WriteAt/read that covers
//   a given file offset; appends and WriteAts can be cut short (the bytes
//   before the offset are written) and reads can be short (the bytes before
//   the offset are delivered);
// - a space limit: once the bytes written (Append and WriteAt) since
//   SetSpaceLimit would exceed it, the write puts what fits and fails
//   ResourceExhausted, as ENOSPC;
// - a crash point (CrashAfterOps): after N more mutating operations every
//   mutating operation fails Unavailable("simulated crash") and writes nothing;
// - DropUnsyncedData(): what a power cut would leave (see there).
//
// Injected errors name the path, the operation and, for appends and reads,
// the offset and byte counts: "<path>: append of 10 bytes at offset 20:
// injected fault", "<path>: write of 10 bytes at offset 20: injected fault"
// (WriteAt). Their code is the rule's error code (default Unavailable,
// which is also what PosixEnv gives for EIO).
//
// Thread-safety: all methods are thread-safe; counters and rules share one
// mutex. Lifetime: the target must outlive the FaultEnv, and the FaultEnv must
// outlive every file it opened.
#ifndef CKPT_FAULT_ENV_H_
#define CKPT_FAULT_ENV_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/env.h"
#include "ckpt/status.h"

namespace ckpt {

// The operations a FaultRule can target. Mutating ones (for CrashAfterOps):
// kNewWritableFile, kAppend, kSync, kClose, kRename, kRemoveFile, kSyncDir,
// kCreateDirs, kWriteAt.
enum class FaultOp : uint8_t {
  kNewRandomAccessFile,
  kNewWritableFile,
  kAppend,
  kSync,
  kClose,
  kReadAt,
  kRename,
  kRemoveFile,
  kSyncDir,
  kCreateDirs,
  kWriteAt,  // WritableFile::WriteAt
};
inline constexpr int kNumFaultOps = 11;

// "append", "sync", "rename", ... (for messages).
std::string_view FaultOpName(FaultOp op);

struct FaultRule {
  static constexpr uint64_t kForever = UINT64_MAX;

  FaultOp op = FaultOp::kAppend;
  // The rule matches calls whose path contains this ("" matches every path).
  // kRename matches if either path contains it; kSyncDir/kCreateDirs match
  // the directory.
  std::string path_contains;
  // kAppend, kWriteAt and kReadAt only: match only calls whose byte range
  // [offset, offset + n) contains this file offset.
  std::optional<uint64_t> at_offset;
  // Matching calls that succeed before the rule fires (FailNth: n - 1).
  uint64_t skip = 0;
  // Matching calls that fail once it fires (kForever: all later ones).
  uint64_t times = 1;
  // With at_offset: kAppend and kWriteAt write the bytes before at_offset,
  // then fail (a partial write); kReadAt delivers them and fails DataLoss "short read"
  // (as a file that ends at at_offset), unless `error` is set.
  bool partial = false;
  // The error's code and message (the message follows path and operation).
  // OK means Unavailable "injected fault".
  Status error;
};

// Counts of operations seen (attempted) since construction or ResetCounters.
struct FaultEnvCounters {
  uint64_t new_random_access_files = 0;
  uint64_t new_writable_files = 0;
  uint64_t appends = 0;
  uint64_t bytes_appended = 0;  // bytes that reached the target
  uint64_t write_ats = 0;
  uint64_t bytes_written_at = 0;  // WriteAt bytes that reached the target
  uint64_t syncs = 0;
  uint64_t closes = 0;
  uint64_t reads = 0;
  uint64_t bytes_read = 0;  // bytes requested by ReadAt
  uint64_t renames = 0;
  uint64_t removes = 0;
  uint64_t sync_dirs = 0;
  uint64_t create_dirs = 0;
  uint64_t mutating_ops = 0;     // mutating operations passed to the target (see FaultOp)
  uint64_t injected_faults = 0;  // calls failed by a rule, the space limit or a crash
};

class FaultEnv final : public EnvWrapper {
 public:
  // REQUIRES: target outlives *this.
  explicit FaultEnv(Env* target);
  ~FaultEnv() override;

  // Adds a rule. Rules are checked in the order added; the first that fires
  // decides the error. A call that matches a rule counts toward its `skip`
  // whether or not an earlier rule fired.
  void AddRule(FaultRule rule);
  // Removes all rules, the space limit and the crash point.
  void ClearFaults();

  // Shorthands for AddRule. n is 1-based, counted from now.
  // The nth Append on a path containing path_contains fails (writing nothing).
  void FailNthAppend(uint64_t n, std::string path_contains = "", Status error = Status());
  // The nth WriteAt on a path containing path_contains fails (writing nothing).
  void FailNthWriteAt(uint64_t n, std::string path_contains = "", Status error = Status());
  // Every Sync (kForever) or the next `times` ones on matching paths fail.
  void FailSync(std::string path_contains = "", uint64_t times = FaultRule::kForever);
  void FailClose(std::string path_contains = "", uint64_t times = FaultRule::kForever);
  void FailRename(std::string path_contains = "", uint64_t times = FaultRule::kForever);
  void FailSyncDir(std::string dir_contains = "", uint64_t times = FaultRule::kForever);
  void FailNewWritableFile(std::string path_contains = "",
                           uint64_t times = FaultRule::kForever);
  // ReadAt calls covering `offset` on matching paths fail: with short_read,
  // as a file ending at offset (DataLoss, bytes before it delivered); else
  // with an I/O error (Unavailable).
  void FailReadAt(std::string path_contains, uint64_t offset, bool short_read,
                  uint64_t times = FaultRule::kForever);

  // Appends and WriteAts may write `bytes` more bytes in total, over all
  // files (an overwrite counts too); the call that crosses the limit writes
  // what fits and fails ResourceExhausted "<path>: append of N bytes at
  // offset X: no space left on device (K bytes written, failed at offset Y;
  // injected space limit)" ("write of" for WriteAt).
  void SetSpaceLimit(uint64_t bytes);
  void ClearSpaceLimit();

  // After `n` more mutating operations have passed to the target, every one
  // fails Unavailable "simulated crash" and does nothing, until
  // DropUnsyncedData or ClearFaults. Reads still work. With counters():
  // run a save once to learn mutating_ops, then crash at each step.
  void CrashAfterOps(uint64_t n);
  bool crashed() const;

  FaultEnvCounters counters() const;
  void ResetCounters();

  // Simulates a power cut, then a reboot, on the target:
  // 1. every file written through this Env since the last DropUnsyncedData
  //    is truncated to its length at its last successful Sync (0 if never
  //    synced; NewWritableFile on an existing file truncates it to 0 too),
  //    and bytes inside that length overwritten since that Sync (by WriteAt,
  //    or an Append below it) get their synced content back: a WriteAt is
  //    unsynced until the next Sync of its file, wherever it wrote;
  // 2. namespace changes not yet made durable by SyncDir are undone, newest
  //    first: a file created by NewWritableFile is removed; a RenameFile is
  //    moved back, and the file it replaced is restored (with the content it
  //    would have after a crash). A create is durable once its directory is
  //    synced; a rename once both directories are.
  // Not simulated: RemoveFile and CreateDirs are durable at once; the Close
  // or destructor of a target file may still write buffered bytes, which step
  // 1 cuts off; torn or reordered writes inside the synced prefix.
  // Files still open for writing are closed on the target first (the process
  // died) and are dead afterwards: their operations fail FailedPrecondition.
  // Clears the crash point; keeps rules and counters.
  // REQUIRES: no operation on this Env or its files runs concurrently.
  // Errors: the first error of the target while truncating or restoring (the
  // rest is still attempted).
  Status DropUnsyncedData();

  // Env.
  Result<std::unique_ptr<RandomAccessFile>> NewRandomAccessFile(const std::string& path) override;
  Result<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) override;
  // The target's direct file, with the same fault rules (kNewWritableFile).
  Result<std::unique_ptr<WritableFile>> NewDirectWritableFile(const std::string& path) override;
  Status CreateDirs(const std::string& dir) override;
  Status RemoveFile(const std::string& path) override;
  Status RenameFile(const std::string& from, const std::string& to) override;
  // Fault rules as RenameFile (kRename: either path); undone by a crash
  // until both parent folders are synced.
  Status ExchangePaths(const std::string& a, const std::string& b) override;
  Status SyncDir(const std::string& dir) override;

  // Private state shared with the file wrappers.
  struct State;

 private:
  Result<std::unique_ptr<WritableFile>> NewWritable(const std::string& path, bool direct_io);
  std::shared_ptr<State> state_;
};

}  // namespace ckpt

#endif  // CKPT_FAULT_ENV_H_
