// Mutex, MutexLock and CondVar with clang's thread-safety annotations
// (-Wthread-safety, on in clang builds): a member marked CKPT_GUARDED_BY(mu_)
// touched without holding mu_, or a CKPT_REQUIRES(mu_) function called
// without it, is a compile error under -Werror. std::mutex carries no
// annotations in libstdc++, so code that wants the checks uses these thin
// wrappers (the pattern of LevelDB's port::Mutex and Abseil's Mutex).
//
// Thread-safety: as std::mutex / std::condition_variable_any.
#ifndef CKPT_UTIL_MUTEX_H_
#define CKPT_UTIL_MUTEX_H_

#include <chrono>
#include <condition_variable>
#include <mutex>

#if defined(__clang__)
#define CKPT_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define CKPT_THREAD_ANNOTATION(x)
#endif

#define CKPT_CAPABILITY(x) CKPT_THREAD_ANNOTATION(capability(x))
#define CKPT_SCOPED_CAPABILITY CKPT_THREAD_ANNOTATION(scoped_lockable)
#define CKPT_GUARDED_BY(x) CKPT_THREAD_ANNOTATION(guarded_by(x))
#define CKPT_REQUIRES(...) CKPT_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define CKPT_ACQUIRE(...) CKPT_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define CKPT_RELEASE(...) CKPT_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define CKPT_EXCLUDES(...) CKPT_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))

namespace ckpt {

class CKPT_CAPABILITY("mutex") Mutex {
 public:
  void Lock() CKPT_ACQUIRE() { mu_.lock(); }
  void Unlock() CKPT_RELEASE() { mu_.unlock(); }

 private:
  friend class CondVar;
  std::mutex mu_;
};

// Holds a Mutex for its scope.
class CKPT_SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex* mu) CKPT_ACQUIRE(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() CKPT_RELEASE() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

// A condition variable; waiters hold the Mutex they pass.
class CondVar {
 public:
  // Releases `mu` while waiting; false when `deadline` passed first
  // (spurious wake-ups return true: callers re-check their condition).
  bool WaitUntil(Mutex* mu, std::chrono::steady_clock::time_point deadline) CKPT_REQUIRES(mu) {
    std::unique_lock<std::mutex> l(mu->mu_, std::adopt_lock);
    const bool woken = cv_.wait_until(l, deadline) == std::cv_status::no_timeout;
    l.release();  // still held: the caller's MutexLock releases it
    return woken;
  }
  // Releases `mu` while waiting (spurious wake-ups return: re-check).
  void Wait(Mutex* mu) CKPT_REQUIRES(mu) {
    std::unique_lock<std::mutex> l(mu->mu_, std::adopt_lock);
    cv_.wait(l);
    l.release();
  }
  void SignalAll() { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

}  // namespace ckpt

#endif  // CKPT_UTIL_MUTEX_H_
