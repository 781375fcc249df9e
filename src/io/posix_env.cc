// PosixEnv: Env over POSIX file descriptors. Every error names the path and,
// for reads and writes, the offset and byte counts (leveldb env_posix.cc style).
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "ckpt/env.h"
#include "util/strings.h"

namespace ckpt {
namespace {

Status PosixError(const std::string& context, int err) {
  std::string msg = StrCat(context, ": ", std::strerror(err));
  switch (err) {
    case ENOENT: return NotFoundError(std::move(msg));
    case EACCES:
    case EPERM:
    case EROFS: return PermissionDeniedError(std::move(msg));
    case ENOSPC:
    case EDQUOT:
    case EFBIG: return ResourceExhaustedError(std::move(msg));
    case EEXIST: return AlreadyExistsError(std::move(msg));
    case EISDIR:
    case ENOTDIR:
    case EINVAL: return InvalidArgumentError(std::move(msg));
    case EINTR:
    case EAGAIN: return UnavailableError(std::move(msg));
    default: return Status(Code::kUnavailable, std::move(msg));
  }
}

class PosixRandomAccessFile final : public RandomAccessFile {
 public:
  PosixRandomAccessFile(std::string path, int fd, uint64_t size)
      : path_(std::move(path)), fd_(fd), size_(size) {}
  ~PosixRandomAccessFile() override { ::close(fd_); }

  uint64_t Size() const override { return size_; }
  std::string_view Name() const override { return path_; }

  Status ReadAt(uint64_t offset, size_t n, void* dst) const override {
    if (offset > size_ || n > size_ - offset) {
      return OutOfRangeError(StrCat(path_, ": read past end at offset ", offset, ": wanted ", n,
                                    " bytes, ", offset > size_ ? 0 : size_ - offset,
                                    " available (file size ", size_, ")"));
    }
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
  ~PosixWritableFile() override {
    if (fd_ >= 0) ::close(fd_);
  }

  Status Append(std::string_view data) override {
    if (fd_ < 0) return FailedPreconditionError(StrCat(path_, ": append after close"));
    // Small writes are buffered; big ones go straight through.
    if (buf_.size() + data.size() > kBufSize) {
      CKPT_RETURN_IF_ERROR(Flush());
      if (data.size() >= kBufSize) return WriteRaw(data);
    }
    buf_.append(data);
    pos_ += data.size();
    return OkStatus();
  }
  uint64_t Position() const override { return pos_; }

  Status Sync() override {
    CKPT_RETURN_IF_ERROR(Flush());
    if (::fsync(fd_) != 0) return PosixError(StrCat(path_, ": fsync"), errno);
    return OkStatus();
  }
  Status Close() override {
    if (fd_ < 0) return OkStatus();
    Status s = Flush();
    if (::close(fd_) != 0 && s.ok()) s = PosixError(StrCat(path_, ": close"), errno);
    fd_ = -1;
    return s;
  }

 private:
  static constexpr size_t kBufSize = 1 << 20;

  Status Flush() {
    if (buf_.empty()) return OkStatus();
    uint64_t start = pos_ - buf_.size();
    Status s = WriteAt(start, buf_);
    buf_.clear();
    return s;
  }
  Status WriteRaw(std::string_view data) {
    Status s = WriteAt(pos_, data);
    if (s.ok()) pos_ += data.size();
    return s;
  }
  Status WriteAt(uint64_t offset, std::string_view data) {
    size_t done = 0;
    while (done < data.size()) {
      size_t want = std::min<size_t>(data.size() - done, size_t{1} << 30);
      ssize_t r = ::write(fd_, data.data() + done, want);
      if (r < 0) {
        if (errno == EINTR) continue;
        return PosixError(StrCat(path_, ": write of ", data.size(), " bytes at offset ",
                                 offset + done),
                          errno);
      }
      done += static_cast<size_t>(r);
    }
    return OkStatus();
  }

  std::string path_;
  int fd_;
  uint64_t pos_ = 0;
  std::string buf_;
};

class PosixEnv final : public Env {
 public:
  Result<std::unique_ptr<RandomAccessFile>> NewRandomAccessFile(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
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
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return PosixError(StrCat("create ", path), errno);
    return std::unique_ptr<WritableFile>(new PosixWritableFile(path, fd));
  }

  bool FileExists(const std::string& path) override { return ::access(path.c_str(), F_OK) == 0; }

  bool IsDirectory(const std::string& path) override {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  }

  Result<uint64_t> GetFileSize(const std::string& path) override {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return PosixError(StrCat("stat ", path), errno);
    return static_cast<uint64_t>(st.st_size);
  }

  Result<std::vector<std::string>> GetChildren(const std::string& dir) override {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return PosixError(StrCat("list ", dir), errno);
    std::vector<std::string> out;
    while (struct dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") out.push_back(std::move(n));
    }
    ::closedir(d);
    std::sort(out.begin(), out.end());
    return out;
  }

  Status CreateDirs(const std::string& dir) override {
    if (dir.empty() || IsDirectory(dir)) return OkStatus();
    std::string parent = Dirname(dir);
    if (parent != dir) CKPT_RETURN_IF_ERROR(CreateDirs(parent));
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
      return PosixError(StrCat("mkdir ", dir), errno);
    }
    return OkStatus();
  }

  Status RemoveFile(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return PosixError(StrCat("remove ", path), errno);
    return OkStatus();
  }

  Status RenameFile(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) {
      return PosixError(StrCat("rename ", from, " -> ", to), errno);
    }
    return OkStatus();
  }

  Status SyncDir(const std::string& dir) override {
    int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return PosixError(StrCat("open dir ", dir), errno);
    int r = ::fsync(fd);
    int e = errno;
    ::close(fd);
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
                           const std::function<Status(WritableFile*)>& fill) {
  const std::string dir = Dirname(path);
  const std::string tmp = JoinPath(dir, "." + Basename(path) + ".ckptkit-tmp");
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> f, env->NewWritableFile(tmp));
  Status s = fill(f.get());
  if (s.ok()) s = f->Sync();
  Status c = f->Close();
  if (s.ok()) s = c;
  if (s.ok()) s = env->RenameFile(tmp, path);
  if (!s.ok()) {
    env->RemoveFile(tmp).IgnoreError();
    return s.WithContext(StrCat("writing ", path));
  }
  return env->SyncDir(dir);
}

}  // namespace ckpt
