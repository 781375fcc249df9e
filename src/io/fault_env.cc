// FaultEnv (see ckpt/fault_env.h). One mutex guards rules, counters and the
// crash-simulation journal; namespace operations run under it so the journal
// order is the order the target saw. Appends and reads transfer data outside
// it, so concurrent writers (and concurrent WriteAt calls on one file) are
// not serialized.
#include "ckpt/fault_env.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "io/path_util.h"
#include "util/strings.h"

namespace ckpt {

std::string_view FaultOpName(FaultOp op) {
  static constexpr std::string_view kNames[] = {
      "open",   "create", "append", "fsync",  "close",
      "read",   "rename", "remove", "fsync dir", "mkdir",
      "write at",
  };
  static_assert(std::size(kNames) == kNumFaultOps);
  return kNames[static_cast<int>(op)];
}

namespace {

using internal_io::LexicallyNormal;

bool IsMutating(FaultOp op) {
  switch (op) {
    case FaultOp::kNewRandomAccessFile:
    case FaultOp::kReadAt:
      return false;
    default:
      return true;
  }
}

// Reads the first `len` bytes of path (the whole file if shorter).
Result<std::string> ReadPrefix(Env* env, const std::string& path, uint64_t len) {
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> f, env->NewRandomAccessFile(path));
  uint64_t n = std::min(len, f->Size());
  std::string out;
  try {
    out.resize(n);
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError(StrCat(path, ": cannot hold ", n, " bytes to simulate a crash"));
  }
  CKPT_RETURN_IF_ERROR(f->ReadAt(0, n, out.data()));
  return out;
}

// Reads [off, off + n) of path, clipped to the file's size.
Result<std::string> ReadRange(Env* env, const std::string& path, uint64_t off, uint64_t n) {
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> f, env->NewRandomAccessFile(path));
  if (off >= f->Size()) return std::string();
  n = std::min(n, f->Size() - off);
  std::string out;
  try {
    out.resize(n);
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError(StrCat(path, ": cannot hold ", n, " bytes to simulate a crash"));
  }
  CKPT_RETURN_IF_ERROR(f->ReadAt(off, n, out.data()));
  return out;
}

Status WriteWhole(Env* env, const std::string& path, std::string_view data) {
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> f, env->NewWritableFile(path));
  CKPT_RETURN_IF_ERROR(f->Append(data));
  CKPT_RETURN_IF_ERROR(f->Sync());
  return f->Close();
}

}  // namespace

namespace internal_io {
class FaultWritableFile;
}  // namespace internal_io
using internal_io::FaultWritableFile;

struct FaultEnv::State {
  struct RuleState {
    FaultRule rule;
    uint64_t seen = 0;
    uint64_t fired = 0;
  };
  // A file written through this Env since the last crash, keyed by its
  // current (normalized) path.
  struct Tracked {
    // The file's length at the last successful Sync: the larger of Position()
    // and the end of the furthest WriteAt.
    uint64_t synced = 0;
    // The synced content of byte ranges below `synced` overwritten since that
    // Sync, oldest first (a crash puts them back, newest first, so the
    // oldest, synced, bytes win).
    std::vector<std::pair<uint64_t, std::string>> undo;
  };
  // A namespace change not yet made durable by SyncDir.
  struct Pending {
    bool is_rename = false;
    bool is_exchange = false;  // path and from swapped (ExchangePaths)
    std::string path;  // created path, or rename target
    std::string from;  // rename source
    std::set<std::string> dirs;  // directories still to be synced
    std::optional<std::string> replaced;  // content of the file a rename replaced
  };
  // What Check decided.
  struct Verdict {
    bool fired = false;
    Status error;                  // when fired
    std::optional<uint64_t> cut;   // partial: bytes before the fault offset
  };

  explicit State(Env* t) : target(t) {}

  // REQUIRES: mu held. Re-keys the tracked files under `from` (a folder
  // path ending in '/') to `to`.
  void MovePrefix(const std::string& from, const std::string& to) {
    std::vector<std::string> keys;
    for (auto it = files.lower_bound(from); it != files.end() && it->first.compare(0, from.size(), from) == 0; ++it) {
      keys.push_back(it->first);
    }
    for (const std::string& k : keys) {
      auto node = std::move(files[k]);
      files.erase(k);
      files[to + k.substr(from.size())] = std::move(node);
    }
  }

  // REQUIRES: mu held. `what` names the operation and path for the message;
  // off/n is the byte range for kAppend/kReadAt.
  Verdict Check(FaultOp op, std::string_view path, std::string_view path2, uint64_t off,
                uint64_t n, const std::string& what) {
    Verdict v;
    const bool mutating = IsMutating(op);
    if (mutating && (crashed || (crash_after && *crash_after == 0))) {
      crashed = true;
      ++counters.injected_faults;
      v.fired = true;
      v.error = UnavailableError(StrCat(what, ": simulated crash"));
      return v;
    }
    for (RuleState& rs : rules) {
      const FaultRule& r = rs.rule;
      if (r.op != op) continue;
      if (!r.path_contains.empty() && path.find(r.path_contains) == std::string_view::npos &&
          path2.find(r.path_contains) == std::string_view::npos) {
        continue;
      }
      if (r.at_offset && !(off <= *r.at_offset && *r.at_offset - off < n)) continue;
      ++rs.seen;
      if (v.fired || rs.seen <= r.skip || rs.fired >= r.times) continue;
      ++rs.fired;
      v.fired = true;
      if (r.at_offset && r.partial) v.cut = *r.at_offset - off;
      if (op == FaultOp::kReadAt && v.cut && r.error.ok()) {
        v.error = DataLossError(StrCat(path, ": short read at offset ", off, ": wanted ", n,
                                       " bytes, got ", *v.cut, " (injected)"));
      } else {
        Code code = r.error.ok() ? Code::kUnavailable : r.error.code();
        std::string msg = r.error.ok() ? "injected fault" : r.error.message();
        if (v.cut) msg += StrCat(" (", *v.cut, " bytes written)");
        v.error = Status(code, StrCat(what, ": ", msg));
      }
    }
    if (v.fired) {
      ++counters.injected_faults;
    } else if (mutating) {
      ++counters.mutating_ops;
      if (crash_after) --*crash_after;
    }
    return v;
  }

  Env* const target;
  std::mutex mu;
  std::vector<RuleState> rules;
  std::optional<uint64_t> space_left;
  std::optional<uint64_t> crash_after;
  bool crashed = false;
  FaultEnvCounters counters;
  uint64_t epoch = 0;  // bumped by each simulated crash
  std::map<std::string, std::shared_ptr<Tracked>> files;
  std::vector<Pending> pending;
  std::set<FaultWritableFile*> open_files;
};

namespace {

// What a crash leaves of path: its first tr.synced bytes, with the synced
// content of ranges overwritten since put back.
Result<std::string> CrashImage(Env* env, const std::string& path,
                               const FaultEnv::State::Tracked& tr) {
  CKPT_ASSIGN_OR_RETURN(std::string keep, ReadPrefix(env, path, tr.synced));
  for (auto it = tr.undo.rbegin(); it != tr.undo.rend(); ++it) {
    if (it->first >= keep.size()) continue;
    const size_t n = std::min<size_t>(it->second.size(), keep.size() - it->first);
    keep.replace(it->first, n, it->second.data(), n);
  }
  return keep;
}

}  // namespace

namespace internal_io {

using State = FaultEnv::State;

class FaultWritableFile final : public WritableFile {
 public:
  FaultWritableFile(std::shared_ptr<State> st, std::string path,
                    std::unique_ptr<WritableFile> f, std::shared_ptr<State::Tracked> tr)
      : st_(std::move(st)), path_(std::move(path)), f_(std::move(f)), tr_(std::move(tr)),
        epoch_(st_->epoch) {
    st_->open_files.insert(this);  // Constructed under st_->mu.
  }
  ~FaultWritableFile() override {
    std::lock_guard<std::mutex> l(st_->mu);
    st_->open_files.erase(this);
  }

  Status Append(std::string_view data) override {
    const uint64_t off = f_->Position();
    uint64_t allow = 0;
    Status fault;
    {
      std::lock_guard<std::mutex> l(st_->mu);
      ++st_->counters.appends;
      CKPT_RETURN_IF_ERROR(CheckAliveLocked());
      CKPT_ASSIGN_OR_RETURN(allow, AdmitWriteLocked(FaultOp::kAppend, "append", off, data, &fault));
      st_->counters.bytes_appended += allow;
    }
    if (allow > 0) CKPT_RETURN_IF_ERROR(f_->Append(data.substr(0, allow)));
    return fault;
  }

  // Like Append, at `off`; the transfer runs outside the mutex, so calls on
  // disjoint ranges from several threads overlap.
  Status WriteAt(uint64_t off, std::string_view data) override {
    uint64_t allow = 0;
    Status fault;
    {
      std::lock_guard<std::mutex> l(st_->mu);
      ++st_->counters.write_ats;
      CKPT_RETURN_IF_ERROR(CheckAliveLocked());
      CKPT_ASSIGN_OR_RETURN(allow, AdmitWriteLocked(FaultOp::kWriteAt, "write", off, data, &fault));
      st_->counters.bytes_written_at += allow;
      if (allow > 0) write_at_end_ = std::max(write_at_end_, off + allow);
    }
    if (allow > 0) CKPT_RETURN_IF_ERROR(f_->WriteAt(off, data.substr(0, allow)));
    return fault;
  }

  uint64_t Position() const override { return f_->Position(); }

  Status Sync() override {
    {
      std::lock_guard<std::mutex> l(st_->mu);
      ++st_->counters.syncs;
      CKPT_RETURN_IF_ERROR(CheckAliveLocked());
      State::Verdict v = st_->Check(FaultOp::kSync, path_, "", 0, 0, StrCat(path_, ": fsync"));
      if (v.fired) return v.error;
    }
    CKPT_RETURN_IF_ERROR(f_->Sync());
    std::lock_guard<std::mutex> l(st_->mu);
    if (epoch_ == st_->epoch) {
      tr_->synced = std::max(f_->Position(), write_at_end_);
      tr_->undo.clear();
    }
    return OkStatus();
  }

  Status Close() override {
    {
      std::lock_guard<std::mutex> l(st_->mu);
      ++st_->counters.closes;
      CKPT_RETURN_IF_ERROR(CheckAliveLocked());
      State::Verdict v = st_->Check(FaultOp::kClose, path_, "", 0, 0, StrCat(path_, ": close"));
      if (v.fired) {
        // close(2) releases the descriptor even when it fails.
        f_->Close().IgnoreError();
        return v.error;
      }
    }
    return f_->Close();
  }
  bool direct_io() const override { return f_->direct_io();
  }

  // REQUIRES: st_->mu held. Used by DropUnsyncedData.
  void KillLocked() { f_->Close().IgnoreError(); }

 private:
  // REQUIRES: st_->mu held. Applies the rules, the crash point and the space
  // limit to a write of data at file offset off (`verb` is "append" or
  // "write", for messages). Returns how many leading bytes to pass to the
  // target and sets *fault to the error to return after passing them (OK if
  // none). Saves the synced content those bytes will overwrite (for
  // DropUnsyncedData). Errors: the target's, while saving that content.
  Result<uint64_t> AdmitWriteLocked(FaultOp op, std::string_view verb, uint64_t off,
                                    std::string_view data, Status* fault) {
    uint64_t allow = data.size();
    const std::string what =
        StrCat(path_, ": ", verb, " of ", data.size(), " bytes at offset ", off);
    State::Verdict v = st_->Check(op, path_, "", off, data.size(), what);
    if (v.fired) {
      allow = std::min<uint64_t>(v.cut.value_or(0), data.size());
      *fault = v.error;
    } else if (st_->space_left && data.size() > *st_->space_left) {
      allow = *st_->space_left;
      ++st_->counters.injected_faults;
      *fault = ResourceExhaustedError(StrCat(what, ": no space left on device (", allow,
                                             " bytes written, failed at offset ", off + allow,
                                             "; injected space limit)"));
    }
    if (allow > 0 && off < tr_->synced) {
      // Read from where the file is now (RenameFile moves its Tracked); a
      // removed file is no longer tracked, so a crash will not restore it.
      const std::string* now = nullptr;
      for (const auto& [p, tr] : st_->files) {
        if (tr == tr_) now = &p;
      }
      if (now != nullptr) {
        CKPT_ASSIGN_OR_RETURN(
            std::string old, ReadRange(st_->target, *now, off, std::min(allow, tr_->synced - off)),
            StrCat(what, ": saving synced bytes for crash simulation"));
        tr_->undo.emplace_back(off, std::move(old));
      }
    }
    if (st_->space_left) *st_->space_left -= std::min<uint64_t>(allow, *st_->space_left);
    return allow;
  }

  Status CheckAliveLocked() const {
    if (epoch_ != st_->epoch) {
      return FailedPreconditionError(
          StrCat(path_, ": file opened before a simulated crash is no longer usable"));
    }
    return OkStatus();
  }

  std::shared_ptr<State> st_;
  std::string path_;
  std::unique_ptr<WritableFile> f_;
  std::shared_ptr<State::Tracked> tr_;
  uint64_t epoch_;
  uint64_t write_at_end_ = 0;  // GUARDED_BY(st_->mu): end of the furthest WriteAt
};

class FaultRandomAccessFile final : public RandomAccessFile {
 public:
  FaultRandomAccessFile(std::shared_ptr<State> st, std::unique_ptr<RandomAccessFile> f)
      : st_(std::move(st)), f_(std::move(f)) {}
  uint64_t Size() const override { return f_->Size(); }
  std::string_view Name() const override { return f_->Name(); }
  // nullptr so every read goes through ReadAt, where faults fire.
  const char* Data() const override { return nullptr; }

  Status ReadAt(uint64_t offset, size_t n, void* dst) const override {
    State::Verdict v;
    {
      std::lock_guard<std::mutex> l(st_->mu);
      ++st_->counters.reads;
      st_->counters.bytes_read += n;
      v = st_->Check(FaultOp::kReadAt, f_->Name(), "", offset, n,
                     StrCat(f_->Name(), ": read of ", n, " bytes at offset ", offset));
    }
    if (!v.fired) return f_->ReadAt(offset, n, dst);
    if (v.cut && *v.cut > 0) CKPT_RETURN_IF_ERROR(f_->ReadAt(offset, *v.cut, dst));
    return v.error;
  }

 private:
  std::shared_ptr<State> st_;
  std::unique_ptr<RandomAccessFile> f_;
};

}  // namespace internal_io

using internal_io::FaultRandomAccessFile;
using State = FaultEnv::State;

FaultEnv::FaultEnv(Env* target) : EnvWrapper(target), state_(std::make_shared<State>(target)) {}

FaultEnv::~FaultEnv() = default;

void FaultEnv::AddRule(FaultRule rule) {
  std::lock_guard<std::mutex> l(state_->mu);
  state_->rules.push_back(State::RuleState{std::move(rule)});
}

void FaultEnv::ClearFaults() {
  std::lock_guard<std::mutex> l(state_->mu);
  state_->rules.clear();
  state_->space_left.reset();
  state_->crash_after.reset();
  state_->crashed = false;
}

void FaultEnv::FailNthAppend(uint64_t n, std::string path_contains, Status error) {
  FaultRule r;
  r.op = FaultOp::kAppend;
  r.path_contains = std::move(path_contains);
  r.skip = n == 0 ? 0 : n - 1;
  r.error = std::move(error);
  AddRule(std::move(r));
}

void FaultEnv::FailNthWriteAt(uint64_t n, std::string path_contains, Status error) {
  FaultRule r;
  r.op = FaultOp::kWriteAt;
  r.path_contains = std::move(path_contains);
  r.skip = n == 0 ? 0 : n - 1;
  r.error = std::move(error);
  AddRule(std::move(r));
}

static FaultRule SimpleRule(FaultOp op, std::string path_contains, uint64_t times) {
  FaultRule r;
  r.op = op;
  r.path_contains = std::move(path_contains);
  r.times = times;
  return r;
}

void FaultEnv::FailSync(std::string p, uint64_t times) {
  AddRule(SimpleRule(FaultOp::kSync, std::move(p), times));
}
void FaultEnv::FailClose(std::string p, uint64_t times) {
  AddRule(SimpleRule(FaultOp::kClose, std::move(p), times));
}
void FaultEnv::FailRename(std::string p, uint64_t times) {
  AddRule(SimpleRule(FaultOp::kRename, std::move(p), times));
}
void FaultEnv::FailSyncDir(std::string p, uint64_t times) {
  AddRule(SimpleRule(FaultOp::kSyncDir, std::move(p), times));
}
void FaultEnv::FailNewWritableFile(std::string p, uint64_t times) {
  AddRule(SimpleRule(FaultOp::kNewWritableFile, std::move(p), times));
}
void FaultEnv::FailReadAt(std::string p, uint64_t offset, bool short_read, uint64_t times) {
  FaultRule r = SimpleRule(FaultOp::kReadAt, std::move(p), times);
  r.at_offset = offset;
  r.partial = short_read;
  AddRule(std::move(r));
}

void FaultEnv::SetSpaceLimit(uint64_t bytes) {
  std::lock_guard<std::mutex> l(state_->mu);
  state_->space_left = bytes;
}
void FaultEnv::ClearSpaceLimit() {
  std::lock_guard<std::mutex> l(state_->mu);
  state_->space_left.reset();
}

void FaultEnv::CrashAfterOps(uint64_t n) {
  std::lock_guard<std::mutex> l(state_->mu);
  state_->crash_after = n;
  state_->crashed = false;
}
bool FaultEnv::crashed() const {
  std::lock_guard<std::mutex> l(state_->mu);
  return state_->crashed;
}

FaultEnvCounters FaultEnv::counters() const {
  std::lock_guard<std::mutex> l(state_->mu);
  return state_->counters;
}
void FaultEnv::ResetCounters() {
  std::lock_guard<std::mutex> l(state_->mu);
  state_->counters = FaultEnvCounters();
}

Result<std::unique_ptr<RandomAccessFile>> FaultEnv::NewRandomAccessFile(const std::string& path) {
  {
    std::lock_guard<std::mutex> l(state_->mu);
    ++state_->counters.new_random_access_files;
    State::Verdict v =
        state_->Check(FaultOp::kNewRandomAccessFile, path, "", 0, 0, StrCat("open ", path));
    if (v.fired) return v.error;
  }
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> f, target()->NewRandomAccessFile(path));
  return std::unique_ptr<RandomAccessFile>(new FaultRandomAccessFile(state_, std::move(f)));
}

Result<std::unique_ptr<WritableFile>> FaultEnv::NewWritableFile(const std::string& path) {
  return NewWritable(path, false);
}

Result<std::unique_ptr<WritableFile>> FaultEnv::NewDirectWritableFile(const std::string& path) {
  return NewWritable(path, true);
}

Result<std::unique_ptr<WritableFile>> FaultEnv::NewWritable(const std::string& path, bool direct_io) {
  std::lock_guard<std::mutex> l(state_->mu);
  ++state_->counters.new_writable_files;
  State::Verdict v =
      state_->Check(FaultOp::kNewWritableFile, path, "", 0, 0, StrCat("create ", path));
  if (v.fired) return v.error;
  const std::string p = LexicallyNormal(path);
  const bool existed = target()->FileExists(path);
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> f,
                        direct_io ? target()->NewDirectWritableFile(path) : target()->NewWritableFile(path));
  if (!existed) {
    State::Pending c;
    c.path = p;
    c.dirs.insert(Dirname(p));
    state_->pending.push_back(std::move(c));
  }
  auto tr = std::make_shared<State::Tracked>();
  state_->files[p] = tr;
  return std::unique_ptr<WritableFile>(new FaultWritableFile(state_, path, std::move(f), tr));
}

Status FaultEnv::CreateDirs(const std::string& dir) {
  std::lock_guard<std::mutex> l(state_->mu);
  State::Verdict v = state_->Check(FaultOp::kCreateDirs, dir, "", 0, 0, StrCat("mkdir ", dir));
  ++state_->counters.create_dirs;
  if (v.fired) return v.error;
  return target()->CreateDirs(dir);
}

Status FaultEnv::RemoveFile(const std::string& path) {
  std::lock_guard<std::mutex> l(state_->mu);
  ++state_->counters.removes;
  State::Verdict v = state_->Check(FaultOp::kRemoveFile, path, "", 0, 0, StrCat("remove ", path));
  if (v.fired) return v.error;
  CKPT_RETURN_IF_ERROR(target()->RemoveFile(path));
  state_->files.erase(LexicallyNormal(path));
  return OkStatus();
}

Status FaultEnv::RenameFile(const std::string& from, const std::string& to) {
  std::lock_guard<std::mutex> l(state_->mu);
  ++state_->counters.renames;
  const std::string what = StrCat("rename ", from, " -> ", to);
  State::Verdict v = state_->Check(FaultOp::kRename, from, to, 0, 0, what);
  if (v.fired) return v.error;
  const std::string f = LexicallyNormal(from);
  const std::string t = LexicallyNormal(to);
  if (f == t) return target()->RenameFile(from, to);
  // Keep what a crash would leave of the file being replaced, to restore it
  // if the rename is undone.
  std::optional<std::string> replaced;
  if (target()->FileExists(to) && !target()->IsDirectory(to)) {
    auto it = state_->files.find(t);
    CKPT_ASSIGN_OR_RETURN(replaced,
                          it == state_->files.end() ? ReadPrefix(target(), to, UINT64_MAX)
                                                    : CrashImage(target(), to, *it->second),
                          StrCat(what, ": saving the replaced file for crash simulation"));
  }
  CKPT_RETURN_IF_ERROR(target()->RenameFile(from, to));
  State::Pending r;
  r.is_rename = true;
  r.from = f;
  r.path = t;
  r.dirs = {Dirname(f), Dirname(t)};
  r.replaced = std::move(replaced);
  state_->pending.push_back(std::move(r));
  state_->files.erase(t);
  auto it = state_->files.find(f);
  if (it != state_->files.end()) {
    state_->files[t] = std::move(it->second);
    state_->files.erase(f);
  }
  state_->MovePrefix(f + "/", t + "/");  // a folder: the files under it
  return OkStatus();
}

Status FaultEnv::ExchangePaths(const std::string& a, const std::string& b) {
  std::lock_guard<std::mutex> l(state_->mu);
  ++state_->counters.renames;
  const std::string what = StrCat("exchange ", a, " <-> ", b);
  State::Verdict v = state_->Check(FaultOp::kRename, a, b, 0, 0, what);
  if (v.fired) return v.error;
  CKPT_RETURN_IF_ERROR(target()->ExchangePaths(a, b));
  const std::string x = LexicallyNormal(a);
  const std::string y = LexicallyNormal(b);
  State::Pending r;
  r.is_exchange = true;
  r.from = x;
  r.path = y;
  r.dirs = {Dirname(x), Dirname(y)};
  state_->pending.push_back(std::move(r));
  // The tracked files swap places with their folders (or themselves).
  const std::string tmp = x + "\x01exchange";
  for (auto [from, to] : {std::pair{x, tmp}, std::pair{y, x}, std::pair{tmp, y}}) {
    if (auto f = state_->files.find(from); f != state_->files.end()) {
      auto node = std::move(f->second);
      state_->files.erase(f);
      state_->files[to] = std::move(node);
    }
    state_->MovePrefix(from + "/", to + "/");
  }
  return OkStatus();
}

Status FaultEnv::SyncDir(const std::string& dir) {
  std::lock_guard<std::mutex> l(state_->mu);
  ++state_->counters.sync_dirs;
  State::Verdict v = state_->Check(FaultOp::kSyncDir, dir, "", 0, 0, StrCat("fsync dir ", dir));
  if (v.fired) return v.error;
  CKPT_RETURN_IF_ERROR(target()->SyncDir(dir));
  const std::string d = LexicallyNormal(dir);
  std::vector<State::Pending> still;
  for (State::Pending& p : state_->pending) {
    p.dirs.erase(d);
    if (!p.dirs.empty()) still.push_back(std::move(p));
  }
  state_->pending = std::move(still);
  return OkStatus();
}

Status FaultEnv::DropUnsyncedData() {
  std::lock_guard<std::mutex> l(state_->mu);
  Status first;
  auto note = [&first](Status s) {
    if (first.ok() && !s.ok()) first = std::move(s);
  };
  // 0. The process dies: its open files are closed (any bytes they had
  //    buffered reach the target here and are cut off in step 1).
  for (FaultWritableFile* f : state_->open_files) f->KillLocked();
  ++state_->epoch;
  // 1. Unsynced data is lost.
  for (const auto& [path, tr] : state_->files) {
    if (!target()->FileExists(path) || target()->IsDirectory(path)) continue;
    Result<uint64_t> size = target()->GetFileSize(path);
    if (!size.ok()) {
      note(size.status());
      continue;
    }
    if (*size <= tr->synced && tr->undo.empty()) continue;
    Result<std::string> keep = CrashImage(target(), path, *tr);
    note(keep.ok() ? WriteWhole(target(), path, *keep) : keep.status());
  }
  // 2. Namespace changes without SyncDir are undone, newest first.
  for (auto it = state_->pending.rbegin(); it != state_->pending.rend(); ++it) {
    if (!target()->FileExists(it->path)) continue;
    if (it->is_exchange) {
      note(target()->ExchangePaths(it->path, it->from));
      continue;
    }
    if (!it->is_rename) {
      note(target()->RemoveFile(it->path));
      continue;
    }
    Status s = target()->RenameFile(it->path, it->from);
    note(s);
    if (s.ok() && it->replaced) note(WriteWhole(target(), it->path, *it->replaced));
  }
  state_->files.clear();
  state_->pending.clear();
  state_->crash_after.reset();
  state_->crashed = false;
  return first.WithContext("simulating a crash");
}

}  // namespace ckpt
