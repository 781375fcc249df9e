// FolderCommit: a folder's new content built beside it and switched over in
// one step (include/ckpt/engine.h).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <set>
#include <cerrno>
#include <string>
#include <vector>

#include "ckpt/engine.h"
#include "io/path_util.h"
#include "util/mutex.h"
#include "util/strings.h"

namespace ckpt::engine {
namespace {

constexpr std::string_view kNewTag = ".ckptkit-new-";
constexpr std::string_view kOldTag = ".ckptkit-old-";
constexpr std::string_view kSharedTag = ".ckptkit-shared";

// The destination's normal form and its name; InvalidArgument when it names no folder.
Status CheckDestination(const std::string& dst_in, std::string* dst, std::string* name) {
  *dst = internal_io::LexicallyNormal(dst_in);
  *name = Basename(*dst);
  if (name->empty() || *name == "." || *name == ".." || *name == "/") {
    return InvalidArgumentError(StrCat("destination ", Quote(dst_in), " names no folder"));
  }
  return OkStatus();
}

std::atomic<uint64_t> next_id{0};

// The staging folders of this process's FolderCommits still in progress (a
// leftover named with this process's id is ours to clean only when it is
// not one of them).
Mutex active_mu;
std::set<std::string>& Active() CKPT_REQUIRES(active_mu) {
  static std::set<std::string>* const active = new std::set<std::string>();
  return *active;
}

// "<pid>-<n>": unique within the process and across live processes.
std::string Suffix() { return StrCat(::getpid(), "-", next_id.fetch_add(1)); }

// Whether the process that made a leftover `path` named ...-<pid>-<n> is
// still at work on it (then it is not ours to touch).
bool OwnerAlive(const std::string& path, std::string_view suffix) {
  const size_t dash = suffix.find('-');
  const std::string pid_text(suffix.substr(0, dash));
  if (pid_text.empty() || pid_text.size() > 10) return false;
  for (char c : pid_text) {
    if (c < '0' || c > '9') return false;
  }
  const long long pid = std::stoll(pid_text);
  if (pid <= 0 || pid > INT32_MAX) return false;
  if (pid == ::getpid()) {
    MutexLock l(&active_mu);
    return Active().count(path) > 0;
  }
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

}  // namespace

Status RemoveTree(Env* env, const std::string& path) {
  if (!env->FileExists(path)) return OkStatus();
  if (!env->IsDirectory(path)) return env->RemoveFile(path);
  CKPT_ASSIGN_OR_RETURN(std::vector<std::string> children, env->GetChildren(path));
  for (const std::string& c : children) CKPT_RETURN_IF_ERROR(RemoveTree(env, JoinPath(path, c)));
  return env->RemoveDir(path);
}

Result<std::string> SharedStagingPath(const std::string& dst_in) {
  std::string dst, name;
  CKPT_RETURN_IF_ERROR(CheckDestination(dst_in, &dst, &name));
  return JoinPath(Dirname(dst), StrCat(".", name, kSharedTag));
}

Status PruneFolder(Env* env, const std::string& dir, const std::function<bool(std::string_view name)>& keep) {
  CKPT_ASSIGN_OR_RETURN(std::vector<std::string> children, env->GetChildren(dir), StrCat("listing ", dir));
  for (const std::string& c : children) {
    if (keep(c)) continue;
    CKPT_RETURN_IF_ERROR(RemoveTree(env, JoinPath(dir, c)), StrCat("removing the leftover ", JoinPath(dir, c)));
  }
  return OkStatus();
}

Result<std::unique_ptr<FolderCommit>> FolderCommit::Adopt(Env* env, const std::string& dst_in,
                                                          const std::string& staging) {
  std::string dst, name;
  CKPT_RETURN_IF_ERROR(CheckDestination(dst_in, &dst, &name));
  if (env->FileExists(dst) && !env->IsDirectory(dst)) {
    return InvalidArgumentError(StrCat("destination ", dst, " exists and is not a folder"));
  }
  if (!env->IsDirectory(staging)) {
    return InvalidArgumentError(StrCat("staging folder ", staging, " of ", dst, " is not a folder"));
  }
  return std::unique_ptr<FolderCommit>(new FolderCommit(env, dst, staging));
}

Result<std::unique_ptr<FolderCommit>> FolderCommit::Begin(Env* env, const std::string& dst_in) {
  std::string dst, name;
  CKPT_RETURN_IF_ERROR(CheckDestination(dst_in, &dst, &name));
  if (env->FileExists(dst) && !env->IsDirectory(dst)) {
    return InvalidArgumentError(StrCat("destination ", dst, " exists and is not a folder"));
  }
  const std::string parent = Dirname(dst);
  CKPT_RETURN_IF_ERROR(env->CreateDirs(parent), StrCat("creating ", parent));
  // Leftovers of killed runs on this destination.
  CKPT_ASSIGN_OR_RETURN(std::vector<std::string> siblings, env->GetChildren(parent), StrCat("listing ", parent));
  const std::string new_prefix = StrCat(".", name, kNewTag);
  const std::string old_prefix = StrCat(".", name, kOldTag);
  for (const std::string& s : siblings) {
    const bool is_new = s.rfind(new_prefix, 0) == 0;
    const bool is_old = s.rfind(old_prefix, 0) == 0;
    if (!is_new && !is_old) continue;
    const std::string_view suffix = std::string_view(s).substr((is_new ? new_prefix : old_prefix).size());
    const std::string path = JoinPath(parent, s);
    if (OwnerAlive(path, suffix)) continue;
    if (is_old && !env->FileExists(dst)) {
      // A two-step switch killed between its renames: the old content back.
      CKPT_RETURN_IF_ERROR(env->RenameFile(path, dst), StrCat("restoring ", dst, " from ", path));
      CKPT_RETURN_IF_ERROR(env->SyncDir(parent), StrCat("restoring ", dst));
      continue;
    }
    CKPT_RETURN_IF_ERROR(RemoveTree(env, path), StrCat("removing the leftover ", path));
  }
  const std::string staging = JoinPath(parent, StrCat(new_prefix, Suffix()));
  {
    MutexLock l(&active_mu);
    Active().insert(staging);
  }
  auto commit = std::unique_ptr<FolderCommit>(new FolderCommit(env, dst, staging));
  CKPT_RETURN_IF_ERROR(env->CreateDirs(staging), StrCat("creating ", staging));
  return commit;
}

FolderCommit::~FolderCommit() {
  Abort();
  MutexLock l(&active_mu);
  Active().erase(staging_);
}

void FolderCommit::Abort() {
  if (done_) return;
  done_ = true;
  RemoveTree(env_, staging_).IgnoreError();
}

namespace {

// Copies `from` (a file, or a folder recursively) to `to`, within `*budget` bytes.
Status CopyTree(Env* env, const std::string& from, const std::string& to, uint64_t* budget, uint64_t max_bytes,
                const std::string& dst) {
  if (env->IsDirectory(from)) {
    CKPT_RETURN_IF_ERROR(env->CreateDirs(to));
    CKPT_ASSIGN_OR_RETURN(std::vector<std::string> children, env->GetChildren(from), StrCat("listing ", from));
    for (const std::string& c : children) {
      CKPT_RETURN_IF_ERROR(CopyTree(env, JoinPath(from, c), JoinPath(to, c), budget, max_bytes, dst));
    }
    return OkStatus();
  }
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> in, env->NewRandomAccessFile(from));
  const uint64_t size = in->Size();
  if (size > *budget) {
    return FailedPreconditionError(StrCat(dst, " holds more than ", max_bytes,
                                          " bytes of files that are not the checkpoint's (", from,
                                          ", ...): the new checkpoint would have to copy them; move them out or "
                                          "choose another destination"));
  }
  *budget -= size;
  return WriteFileAtomically(env, to, [&](WritableFile* out) -> Status {
    std::string buf;
    for (uint64_t at = 0; at < size;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(size - at, 1 << 20));
      buf.resize(n);
      CKPT_RETURN_IF_ERROR(in->ReadAt(at, n, buf.data()));
      CKPT_RETURN_IF_ERROR(out->Append(buf));
      at += n;
    }
    return OkStatus();
  });
}

}  // namespace

Status FolderCommit::CarryOver(const std::function<bool(std::string_view name)>& replaced, uint64_t max_bytes) {
  if (done_) return FailedPreconditionError(StrCat(dst_, ": already committed or aborted"));
  if (!env_->IsDirectory(dst_)) return OkStatus();
  CKPT_ASSIGN_OR_RETURN(std::vector<std::string> children, env_->GetChildren(dst_), StrCat("listing ", dst_));
  uint64_t budget = max_bytes;
  for (const std::string& c : children) {
    if (replaced(c)) continue;
    if (c.size() > 12 && c.compare(c.size() - 12, 12, ".ckptkit-tmp") == 0) continue;
    const std::string to = JoinPath(staging_, c);
    if (env_->FileExists(to)) continue;
    CKPT_RETURN_IF_ERROR(CopyTree(env_, JoinPath(dst_, c), to, &budget, max_bytes, dst_),
                         StrCat("carrying ", c, " of ", dst_, " over"));
  }
  return OkStatus();
}

Status FolderCommit::Commit() {
  if (done_) return FailedPreconditionError(StrCat(dst_, ": already committed or aborted"));
  const std::string parent = Dirname(dst_);
  auto fail = [&](Status s) {
    Abort();
    return s;
  };
  if (Status s = env_->SyncDir(staging_); !s.ok()) return fail(s.WithContext(StrCat("publishing ", dst_)));
  if (!env_->FileExists(dst_)) {
    if (Status s = env_->RenameFile(staging_, dst_); !s.ok()) return fail(s.WithContext(StrCat("publishing ", dst_)));
    done_ = true;
  } else {
    Status x = env_->ExchangePaths(staging_, dst_);
    if (x.ok()) {
      done_ = true;  // staging_ now holds the old content
    } else if (x.code() == Code::kUnimplemented) {
      // Two renames; a crash between them leaves the old folder aside (Begin restores it).
      const std::string old = JoinPath(parent, StrCat(".", Basename(dst_), kOldTag, Suffix()));
      if (Status s = env_->RenameFile(dst_, old); !s.ok()) return fail(s.WithContext(StrCat("publishing ", dst_)));
      if (Status s = env_->RenameFile(staging_, dst_); !s.ok()) {
        env_->RenameFile(old, dst_).IgnoreError();  // the old content back
        return fail(s.WithContext(StrCat("publishing ", dst_)));
      }
      done_ = true;
      {
        MutexLock l(&active_mu);
        Active().erase(staging_);
        Active().insert(old);
      }
      staging_ = old;
    } else {
      return fail(x.WithContext(StrCat("publishing ", dst_)));
    }
  }
  CKPT_RETURN_IF_ERROR(env_->SyncDir(parent), StrCat("publishing ", dst_, ": published, but not durable"));
  // The old content (or nothing) under the staging name; a failure here
  // leaves a hidden leftover that the next Begin removes.
  RemoveTree(env_, staging_).IgnoreError();
  return OkStatus();
}

}  // namespace ckpt::engine
