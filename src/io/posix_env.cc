// PosixEnv: Env over POSIX file descriptors. Every error names the path and,
// for reads and writes, the offset and byte counts (leveldb env_posix.cc style).
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>  // renameat2, RENAME_EXCHANGE (_GNU_SOURCE)
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <system_error>
#include <thread>
#include <tuple>
#include <vector>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <mutex>

#include "ckpt/env.h"
#include "util/mutex.h"
#include "util/strings.h"

namespace ckpt {
namespace {

// Maps errno to the code that says what the caller should do next
// (absl ErrnoToStatusCode, narrowed to file errors).
Status PosixError(const std::string& context, int err) {
  std::string msg = StrCat(context, ": ", std::strerror(err));
  switch (err) {
    case ENOENT: return NotFoundError(std::move(msg));
    case EACCES:
    case EPERM:
    case EROFS: return PermissionDeniedError(std::move(msg));
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
    case EMFILE:
    case ENFILE:
    case ENOMEM: return ResourceExhaustedError(std::move(msg));
    case EEXIST: return AlreadyExistsError(std::move(msg));
    case EISDIR:
    case ENOTDIR:
    case ENAMETOOLONG:
    case ELOOP:
    case EINVAL: return InvalidArgumentError(std::move(msg));
    case ENOTEMPTY:
    case EXDEV:
    case EBADF:
    case EBUSY:
    case ETXTBSY: return FailedPreconditionError(std::move(msg));
    case EOVERFLOW: return OutOfRangeError(std::move(msg));
    // EIO, EINTR (where not retried), EAGAIN, ESTALE and the rest: the
    // device or remote said no; a retry may help.
    default: return UnavailableError(std::move(msg));
  }
}

// open(2) can fail with EINTR on slow file systems (NFS, FUSE) when a signal
// arrives; it is safe to retry.
int OpenRetryingEintr(const char* path, int flags, mode_t mode = 0) {
  int fd;
  do {
    fd = ::open(path, flags, mode);
  } while (fd < 0 && errno == EINTR);
  return fd;
}

class PosixRandomAccessFile final : public RandomAccessFile {
 public:
  PosixRandomAccessFile(std::string path, int fd, uint64_t size)
      : path_(std::move(path)), fd_(fd), size_(size) {}
  ~PosixRandomAccessFile() override { ::close(fd_); }

  uint64_t Size() const override { return size_; }
  std::string_view Name() const override { return path_; }

  Status ReadAt(uint64_t offset, size_t n, void* dst) const override {
    CKPT_RETURN_IF_ERROR(CheckReadRange(path_, size_, offset, n, "file size"));
    char* p = static_cast<char*>(dst);
    size_t done = 0;
    while (done < n) {
      size_t want = std::min<size_t>(n - done, size_t{1} << 30);
      ssize_t r = ::pread(fd_, p + done, want, static_cast<off_t>(offset + done));
      if (r < 0) {
        if (errno == EINTR) continue;
        return PosixError(StrCat(path_, ": read at offset ", offset + done), errno);
      }
      if (r == 0) {
        return DataLossError(StrCat(path_, ": short read at offset ", offset, ": wanted ", n,
                                    " bytes, got ", done, " (file shrank?)"));
      }
      done += static_cast<size_t>(r);
    }
    return OkStatus();
  }

 private:
  std::string path_;
  int fd_;
  uint64_t size_;
};

class PosixWritableFile final : public WritableFile {
 public:
  PosixWritableFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  // Like leveldb: an unclosed file still gets its buffered bytes (best effort).
  ~PosixWritableFile() override { Close().IgnoreError(); }

  // After a failed write or fsync the file's content is unknown (a partial
  // write, or pages the kernel dropped after a failed fsync), so the first
  // error is sticky: every later Append/WriteAt/Sync/Close returns it.
  Status Append(std::string_view data) override {
    CKPT_RETURN_IF_ERROR(CheckUsable("append"));
    // Small writes are buffered; big ones go straight through.
    if (buf_.size() + data.size() > kBufSize) {
      CKPT_RETURN_IF_ERROR(Flush());
      if (data.size() >= kBufSize) return WriteRaw(data);
    }
    buf_.append(data);
    pos_ += data.size();
    return OkStatus();
  }
  // Bytes accepted by Append (written or buffered).
  uint64_t Position() const override { return pos_; }

  // Unbuffered pwrite(2): touches neither buf_ nor pos_, so concurrent calls
  // on disjoint ranges need no lock beyond the one for the sticky error.
  Status WriteAt(uint64_t offset, std::string_view data) override {
    CKPT_RETURN_IF_ERROR(CheckUsable("write"));
    if (offset > static_cast<uint64_t>(INT64_MAX) - data.size()) {
      return InvalidArgumentError(StrCat(path_, ": write of ", data.size(), " bytes at offset ",
                                         offset, ": end is past the largest file offset"));
    }
    return PwriteAll(offset, data);
  }

  Status Sync() override {
    CKPT_RETURN_IF_ERROR(CheckUsable("sync"));
    CKPT_RETURN_IF_ERROR(Flush());
    // No retry on failure: after a failed fsync the dirty pages may be gone,
    // so a second fsync would report success for lost data.
    if (::fsync(fd_) != 0) return Fail(PosixError(StrCat(path_, ": fsync"), errno));
    return OkStatus();
  }
  Status Close() override {
    if (fd_ < 0) return StickyError();
    Status s = Flush();
    // Linux releases the descriptor even when close fails (EINTR included),
    // so never retry it.
    if (::close(fd_) != 0 && s.ok()) s = PosixError(StrCat(path_, ": close"), errno);
    fd_ = -1;
    return s.ok() ? s : Fail(s);
  }

 private:
  static constexpr size_t kBufSize = 1 << 20;

  Status StickyError() const {
    std::lock_guard<std::mutex> l(mu_);
    return error_;
  }
  Status CheckUsable(std::string_view op) const {
    CKPT_RETURN_IF_ERROR(StickyError());
    if (fd_ < 0) return FailedPreconditionError(StrCat(path_, ": ", op, " after close"));
    return OkStatus();
  }
  // Records s as the sticky error unless one is already there; returns s.
  Status Fail(Status s) {
    std::lock_guard<std::mutex> l(mu_);
    if (error_.ok()) error_ = s;
    return s;
  }
  Status Flush() {
    CKPT_RETURN_IF_ERROR(StickyError());
    if (buf_.empty()) return OkStatus();
    uint64_t start = pos_ - buf_.size();
    Status s = PwriteAll(start, buf_);
    buf_.clear();
    return s;
  }
  Status WriteRaw(std::string_view data) {
    Status s = PwriteAll(pos_, data);
    if (s.ok()) pos_ += data.size();
    return s;
  }
  // pwrite(2) may write less than asked (signals, RLIMIT_FSIZE, near-full
  // disks): loop until all is written or it fails. Positional, so the fd's
  // offset is never used and Append and WriteAt do not disturb each other.
  Status PwriteAll(uint64_t offset, std::string_view data) {
    size_t done = 0;
    while (done < data.size()) {
      size_t want = std::min<size_t>(data.size() - done, size_t{1} << 30);
      ssize_t r = ::pwrite(fd_, data.data() + done, want, static_cast<off_t>(offset + done));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        // r == 0 for a non-empty write does not happen on regular files; treat
        // it as "no space" rather than looping forever.
        int err = r < 0 ? errno : ENOSPC;
        return Fail(PosixError(StrCat(path_, ": write of ", data.size(), " bytes at offset ",
                                      offset, " failed at offset ", offset + done, " (", done,
                                      " bytes written)"),
                               err));
      }
      done += static_cast<size_t>(r);
    }
    return OkStatus();
  }

  const std::string path_;
  int fd_;  // -1 once closed
  uint64_t pos_ = 0;
  std::string buf_;
  mutable std::mutex mu_;  // guards error_ (concurrent WriteAt calls may fail)
  Status error_;           // sticky: the first write/fsync/close error
};

// A file opened with O_DIRECT (Env::NewDirectWritableFile). The kernel
// takes direct writes only in whole blocks at block-aligned offsets from
// block-aligned memory, so appends gather in aligned buffers of kBufSize that
// go out whole. A full buffer is handed to the file's flusher thread and
// appends go on into the other one, so the caller's copying (and whatever
// produces the bytes: CRC, XXH3, decoding) overlaps the device's write
// instead of alternating with it. An append of aligned memory at an aligned
// position skips the buffers (the caller's pages go to the device as they
// are, on the caller's thread: staging-pool regions). Sync and Close wait for
// the flusher, write the current buffer's whole blocks directly and its
// unaligned tail through a second, ordinary descriptor of the same file (the
// page cache), so the file ends at exactly Position() and no padding is ever
// written; the tail stays in the buffer, and the next flush rewrites its
// block whole. WriteAt waits for the flusher too (a queued buffer must not
// land over it later), then goes out directly when offset, size and memory
// are aligned and through the ordinary descriptor otherwise (Linux keeps the
// two coherent: a direct write first writes back and then drops cached pages
// of its range).
//
// Where a direct write fails with EINVAL (a file system that accepted the
// flag at open but cannot honour it) the descriptor drops O_DIRECT and the
// file carries on as an ordinary one (direct_io() false from then on).
class PosixDirectWritableFile final : public WritableFile {
 public:
  static constexpr size_t kAlign = 4096;  // a multiple of every logical block size in use
  static constexpr size_t kBufSize = 4 << 20;
  static constexpr int kBuffers = 2;  // one filling, one being written

  static Result<std::unique_ptr<WritableFile>> Open(const std::string& path, int fd) {
    std::unique_ptr<PosixDirectWritableFile> f(new PosixDirectWritableFile(path, fd));
    for (int i = 0; i < kBuffers; ++i) {
      void* buf = std::aligned_alloc(kAlign, kBufSize);
      if (buf == nullptr) {
        return ResourceExhaustedError(StrCat("create ", path, ": no memory for a ", kBufSize, "-byte write buffer"));
      }
      if (i == 0) {
        f->owned_.push_back(static_cast<char*>(buf));
        f->cur_ = static_cast<char*>(buf);
      } else {
        f->AddBuffer(static_cast<char*>(buf));
      }
    }
    return std::unique_ptr<WritableFile>(f.release());
  }
  ~PosixDirectWritableFile() override {
    Close().IgnoreError();
    StopFlusher();
    for (char* b : owned_) std::free(b);
  }
  // Open's setup, before the file is shared with any thread.
  void AddBuffer(char* b) CKPT_EXCLUDES(qmu_) {
    owned_.push_back(b);
    MutexLock l(&qmu_);
    free_.push_back(b);
  }

  Status Append(std::string_view data) override {
    CKPT_RETURN_IF_ERROR(CheckUsable("append"));
    const char* p = data.data();
    size_t n = data.size();
    while (n > 0) {
      if (len_ == 0 && n >= kAlign && Aligned(p)) {
        const size_t whole = n & ~(kAlign - 1);
        CKPT_RETURN_IF_ERROR(WriteBlocks(start_, p, whole));
        start_ += whole;
        p += whole;
        n -= whole;
        continue;
      }
      const size_t k = std::min(n, kBufSize - len_);
      std::memcpy(cur_ + len_, p, k);
      len_ += k;
      p += k;
      n -= k;
      if (len_ == kBufSize) CKPT_RETURN_IF_ERROR(SubmitFull());
    }
    return OkStatus();
  }
  uint64_t Position() const override { return start_ + len_; }

  Status WriteAt(uint64_t offset, std::string_view data) override {
    CKPT_RETURN_IF_ERROR(CheckUsable("write"));
    if (offset > static_cast<uint64_t>(INT64_MAX) - data.size()) {
      return InvalidArgumentError(StrCat(path_, ": write of ", data.size(), " bytes at offset ", offset,
                                         ": end is past the largest file offset"));
    }
    CKPT_RETURN_IF_ERROR(Drain());
    // Bytes of the range still held in the buffer (a Sync's unaligned tail,
    // kept for the next flush) are patched there too, or that flush would
    // write the old ones back over these.
    const uint64_t lo = std::max<uint64_t>(offset, start_);
    const uint64_t hi = std::min<uint64_t>(offset + data.size(), start_ + len_);
    if (lo < hi) std::memcpy(cur_ + (lo - start_), data.data() + (lo - offset), hi - lo);
    if (offset % kAlign == 0 && data.size() % kAlign == 0 && Aligned(data.data())) {
      return WriteBlocks(offset, data.data(), data.size());
    }
    CKPT_ASSIGN_OR_RETURN(int fd, CachedFd());
    return PwriteAll(fd, offset, data.data(), data.size());
  }

  Status Sync() override {
    CKPT_RETURN_IF_ERROR(CheckUsable("sync"));
    CKPT_RETURN_IF_ERROR(Flush());
    // fsync of one descriptor writes back the whole file (both descriptors'
    // bytes) and its size. Never retried (see PosixWritableFile::Sync).
    if (::fsync(fd_) != 0) return Fail(PosixError(StrCat(path_, ": fsync"), errno));
    return OkStatus();
  }
  Status Close() override {
    if (fd_ < 0) return StickyError();
    Status s = Flush();
    StopFlusher();
    {
      MutexLock l(&mu_);
      if (cached_fd_ >= 0 && ::close(cached_fd_) != 0 && s.ok()) s = PosixError(StrCat(path_, ": close"), errno);
      cached_fd_ = -1;
    }
    if (::close(fd_) != 0 && s.ok()) s = PosixError(StrCat(path_, ": close"), errno);
    fd_ = -1;
    return s.ok() ? s : Fail(s);
  }
  bool direct_io() const override { return direct_.load(std::memory_order_relaxed); }

 private:
  PosixDirectWritableFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}

  static bool Aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % kAlign == 0; }

  Status StickyError() const CKPT_EXCLUDES(mu_) {
    MutexLock l(&mu_);
    return error_;
  }
  Status CheckUsable(std::string_view op) const CKPT_EXCLUDES(mu_) {
    CKPT_RETURN_IF_ERROR(StickyError());
    if (fd_ < 0) return FailedPreconditionError(StrCat(path_, ": ", op, " after close"));
    return OkStatus();
  }
  Status Fail(Status s) CKPT_EXCLUDES(mu_) {
    MutexLock l(&mu_);
    return FailLocked(std::move(s));
  }
  Status FailLocked(Status s) CKPT_REQUIRES(mu_) {
    if (error_.ok()) error_ = s;
    return s;
  }

  // The full current buffer to the flusher (started on first need); appends
  // go on in a free buffer, waiting for one while both are in flight.
  Status SubmitFull() CKPT_EXCLUDES(qmu_) {
    if (!flusher_.joinable()) {
      try {
        flusher_ = std::thread([this] { FlusherLoop(); });
      } catch (const std::system_error&) {
        // No thread: write it here.
        CKPT_RETURN_IF_ERROR(WriteBlocks(start_, cur_, kBufSize));
        start_ += kBufSize;
        len_ = 0;
        return OkStatus();
      }
    }
    {
      MutexLock l(&qmu_);
      queue_.push_back({start_, cur_});
      qcv_.SignalAll();
      while (free_.empty()) qcv_.Wait(&qmu_);
      cur_ = free_.back();
      free_.pop_back();
    }
    start_ += kBufSize;
    len_ = 0;
    return StickyError();
  }
  void FlusherLoop() CKPT_EXCLUDES(qmu_) {
    for (;;) {
      uint64_t offset;
      char* buf;
      {
        MutexLock l(&qmu_);
        while (!stop_ && queue_.empty()) qcv_.Wait(&qmu_);
        if (queue_.empty()) return;  // stop_
        std::tie(offset, buf) = queue_.front();
        queue_.pop_front();
        ++inflight_;
      }
      // After an error the buffer is dropped unwritten (the error is sticky:
      // the file is failed already).
      if (StickyError().ok()) WriteBlocks(offset, buf, kBufSize).IgnoreError();
      MutexLock l(&qmu_);
      --inflight_;
      free_.push_back(buf);
      qcv_.SignalAll();
    }
  }
  // Waits until every submitted buffer is written (or dropped after an error).
  Status Drain() CKPT_EXCLUDES(qmu_) {
    {
      MutexLock l(&qmu_);
      while (!queue_.empty() || inflight_ != 0) qcv_.Wait(&qmu_);
    }
    return StickyError();
  }
  void StopFlusher() CKPT_EXCLUDES(qmu_) {
    {
      MutexLock l(&qmu_);
      stop_ = true;
      qcv_.SignalAll();
    }
    if (flusher_.joinable()) flusher_.join();
  }
  // The buffer's whole blocks directly; its tail through the page cache,
  // kept in the buffer for the appends still to come.
  Status Flush() {
    CKPT_RETURN_IF_ERROR(Drain());
    const size_t whole = len_ & ~(kAlign - 1);
    const size_t tail = len_ - whole;
    if (whole > 0) CKPT_RETURN_IF_ERROR(WriteBlocks(start_, cur_, whole));
    if (tail > 0) {
      CKPT_ASSIGN_OR_RETURN(int fd, CachedFd());
      CKPT_RETURN_IF_ERROR(PwriteAll(fd, start_ + whole, cur_ + whole, tail));
      std::memmove(cur_, cur_ + whole, tail);
    }
    start_ += whole;
    len_ = tail;
    return OkStatus();
  }
  // Aligned bytes through the O_DIRECT descriptor, falling back to ordinary
  // writes for good where the file system refuses them (EINVAL).
  Status WriteBlocks(uint64_t offset, const char* p, size_t n) {
    if (direct_.load(std::memory_order_relaxed)) {
      bool refused = false;
      Status s = PwriteAll(fd_, offset, p, n, &refused);
      if (s.ok() || !refused) return s;
      MutexLock l(&mu_);
      const int flags = ::fcntl(fd_, F_GETFL);
      if (flags < 0 || ::fcntl(fd_, F_SETFL, flags & ~O_DIRECT) != 0) {
        return FailLocked(PosixError(StrCat(path_, ": turning O_DIRECT off after EINVAL"), errno));
      }
      direct_.store(false);
    }
    return PwriteAll(fd_, offset, p, n);
  }
  // An ordinary descriptor of the same file (opened through /proc, which
  // reaches the open inode whatever its name is now), opened once.
  Result<int> CachedFd() CKPT_EXCLUDES(mu_) {
    MutexLock l(&mu_);
    if (cached_fd_ >= 0) return cached_fd_;
    int fd = OpenRetryingEintr(StrCat("/proc/self/fd/", fd_).c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) fd = OpenRetryingEintr(path_.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return FailLocked(PosixError(StrCat("open ", path_, " (for its unaligned bytes)"), errno));
    cached_fd_ = fd;
    return fd;
  }
  // As PosixWritableFile::PwriteAll. With `refused`, an EINVAL before any
  // byte went out sets it and is returned without becoming sticky.
  Status PwriteAll(int fd, uint64_t offset, const char* p, size_t n, bool* refused = nullptr) {
    size_t done = 0;
    while (done < n) {
      size_t want = std::min<size_t>(n - done, size_t{1} << 30);
      ssize_t r = ::pwrite(fd, p + done, want, static_cast<off_t>(offset + done));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && errno == EINVAL && refused != nullptr && done == 0) {
        *refused = true;
        return InvalidArgumentError(StrCat(path_, ": direct write refused"));
      }
      if (r <= 0) {
        int err = r < 0 ? errno : ENOSPC;
        return Fail(PosixError(StrCat(path_, ": write of ", n, " bytes at offset ", offset, " failed at offset ",
                                      offset + done, " (", done, " bytes written)"),
                               err));
      }
      done += static_cast<size_t>(r);
    }
    return OkStatus();
  }

  const std::string path_;
  int fd_;                    // O_DIRECT; -1 once closed
  std::vector<char*> owned_;  // kBuffers buffers of kBufSize bytes, kAlign-aligned
  char* cur_ = nullptr;       // the buffer appends fill (the caller's thread only)
  uint64_t start_ = 0;        // file offset of cur_[0] (aligned)
  size_t len_ = 0;            // bytes in cur_
  std::atomic<bool> direct_{true};
  mutable Mutex mu_;  // also serializes the O_DIRECT switch
  Status error_ CKPT_GUARDED_BY(mu_);
  int cached_fd_ CKPT_GUARDED_BY(mu_) = -1;  // ordinary descriptor for unaligned bytes, opened on first need
  // The flusher: full buffers in file order, written by one thread.
  Mutex qmu_;
  CondVar qcv_;
  std::deque<std::pair<uint64_t, char*>> queue_ CKPT_GUARDED_BY(qmu_);
  std::vector<char*> free_ CKPT_GUARDED_BY(qmu_);
  int inflight_ CKPT_GUARDED_BY(qmu_) = 0;
  bool stop_ CKPT_GUARDED_BY(qmu_) = false;
  std::thread flusher_;  // started and joined by the caller's thread
};

class PosixEnv final : public Env {
 public:
  Result<std::unique_ptr<RandomAccessFile>> NewRandomAccessFile(const std::string& path) override {
    int fd = OpenRetryingEintr(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return PosixError(StrCat("open ", path), errno);
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      int e = errno;
      ::close(fd);
      return PosixError(StrCat("stat ", path), e);
    }
    if (S_ISDIR(st.st_mode)) {
      ::close(fd);
      return InvalidArgumentError(StrCat(path, ": is a directory, expected a file"));
    }
    return std::unique_ptr<RandomAccessFile>(
        new PosixRandomAccessFile(path, fd, static_cast<uint64_t>(st.st_size)));
  }

  Result<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) override {
    // 0666 & ~umask, as open(2) callers normally ask.
    int fd = OpenRetryingEintr(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) return PosixError(StrCat("create ", path), errno);
    return std::unique_ptr<WritableFile>(new PosixWritableFile(path, fd));
  }

  Result<std::unique_ptr<WritableFile>> NewDirectWritableFile(const std::string& path) override {
    int fd = OpenRetryingEintr(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_DIRECT, 0666);
    // EINVAL: the file system does not do O_DIRECT (tmpfs before Linux 6.6, some FUSE).
    if (fd < 0 && errno == EINVAL) return NewWritableFile(path);
    if (fd < 0) return PosixError(StrCat("create ", path), errno);
    return PosixDirectWritableFile::Open(path, fd);
  }

  bool FileExists(const std::string& path) override { return ::access(path.c_str(), F_OK) == 0; }

  bool IsDirectory(const std::string& path) override {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  }

  Result<uint64_t> GetFileSize(const std::string& path) override {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return PosixError(StrCat("stat ", path), errno);
    if (S_ISDIR(st.st_mode)) {
      return InvalidArgumentError(StrCat("stat ", path, ": is a directory, expected a file"));
    }
    return static_cast<uint64_t>(st.st_size);
  }

  Result<std::vector<std::string>> GetChildren(const std::string& dir) override {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return PosixError(StrCat("list ", dir), errno);
    std::vector<std::string> out;
    // readdir returns nullptr both at the end and on error; errno tells them apart.
    for (;;) {
      errno = 0;
      struct dirent* e = ::readdir(d);
      if (e == nullptr) break;
      std::string n = e->d_name;
      if (n != "." && n != "..") out.push_back(std::move(n));
    }
    int err = errno;
    ::closedir(d);
    if (err != 0) return PosixError(StrCat("list ", dir), err);
    std::sort(out.begin(), out.end());
    return out;
  }

  Status CreateDirs(const std::string& dir) override {
    if (dir.empty() || IsDirectory(dir)) return OkStatus();
    std::string parent = Dirname(dir);
    if (parent != dir) CKPT_RETURN_IF_ERROR(CreateDirs(parent));
    if (::mkdir(dir.c_str(), 0777) != 0) {
      int err = errno;
      // EEXIST from a concurrent creator is fine; from a file in the way it
      // is not (mkdir -p fails there too).
      if (err != EEXIST) return PosixError(StrCat("mkdir ", dir), err);
      if (!IsDirectory(dir)) {
        return FailedPreconditionError(
            StrCat("mkdir ", dir, ": ", dir, " exists and is not a directory"));
      }
    }
    return OkStatus();
  }

  Status RemoveFile(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return PosixError(StrCat("remove ", path), errno);
    return OkStatus();
  }

  Status RemoveDir(const std::string& dir) override {
    if (::rmdir(dir.c_str()) != 0) return PosixError(StrCat("remove folder ", dir), errno);
    return OkStatus();
  }

  Status RenameFile(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) {
      return PosixError(StrCat("rename ", from, " -> ", to), errno);
    }
    return OkStatus();
  }

  Status ExchangePaths(const std::string& a, const std::string& b) override {
    if (::renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) != 0) {
      const int e = errno;
      // EINVAL: the file system does not support the exchange; ENOSYS: the kernel.
      if (e == EINVAL || e == ENOSYS) {
        return UnimplementedError(StrCat("exchange ", a, " <-> ", b, ": not supported by the file system"));
      }
      return PosixError(StrCat("exchange ", a, " <-> ", b), e);
    }
    return OkStatus();
  }

  Status SyncDir(const std::string& dir) override {
    int fd = OpenRetryingEintr(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return PosixError(StrCat("open dir ", dir), errno);
    int r = ::fsync(fd);
    int e = errno;
    ::close(fd);
    // EINVAL: the file system cannot fsync directories (some FUSE, tmpfs
    // variants); there is nothing more to make durable.
    if (r != 0 && e != EINVAL) return PosixError(StrCat("fsync dir ", dir), e);
    return OkStatus();
  }
};

}  // namespace

Env* Env::Default() {
  static Env* const env = new PosixEnv();
  return env;
}

std::string JoinPath(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  if (!b.empty() && b.front() == '/') return b;
  if (a.back() == '/') return a + b;
  return a + "/" + b;
}

std::string Dirname(const std::string& path) {
  size_t p = path.find_last_of('/');
  if (p == std::string::npos) return ".";
  if (p == 0) return "/";
  return path.substr(0, p);
}

std::string Basename(const std::string& path) {
  size_t p = path.find_last_of('/');
  return p == std::string::npos ? path : path.substr(p + 1);
}

Status WriteFileAtomically(Env* env, const std::string& path,
                           const std::function<Status(WritableFile*)>& fill, bool direct_io) {
  const std::string dir = Dirname(path);
  const std::string tmp = JoinPath(dir, "." + Basename(path) + ".ckptkit-tmp");
  const std::string context = StrCat("writing ", path);
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> f,
                        direct_io ? env->NewDirectWritableFile(tmp) : env->NewWritableFile(tmp), context);
  Status s = fill(f.get());
  if (s.ok()) s = f->Sync();
  Status c = f->Close();
  f.reset();
  if (s.ok()) s = c;
  if (s.ok()) s = env->RenameFile(tmp, path);
  if (!s.ok()) {
    env->RemoveFile(tmp).IgnoreError();
    return s.WithContext(context);
  }
  // The new content is in place; only its durability across a crash is in
  // doubt if this fails.
  return env->SyncDir(dir).WithContext(StrCat(context, ": published, but not durable"));
}

}  // namespace ckpt
