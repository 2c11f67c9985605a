#include "file_write.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "addon.h"
#include "blocking_io.h"
#include "io_error.h"
#include "io_worker.h"

namespace rnode {
namespace {

// O_DIRECT wants address, offset and length aligned to the device's logical block; 4096 covers 512e and 4Kn.
constexpr size_t kDirectAlign = 4096;

bool SetDirect(int fd, bool on) {
  const int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return false;
  return fcntl(fd, F_SETFL, on ? (fl | O_DIRECT) : (fl & ~O_DIRECT)) == 0;
}

// On failure the file is left for the caller to remove: it knows the name and owns the cleanup policy.
class WriteFileWorker : public IoWorker {
 public:
  WriteFileWorker(Napi::Env env, std::string path, Napi::Uint8Array data, bool sync, bool direct, int mode)
      : IoWorker(env, "rnode:writeFile", std::move(path)), data_(data), sync_(sync), direct_(direct), mode_(mode) {}

  void Execute() override {
    fd_ = OpenRetrying(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, static_cast<mode_t>(mode_));
    if (fd_ < 0) return Fail("open");
    const uint8_t* data = data_.data();
    const size_t length = data_.length();
    size_t done = 0;
    // The aligned body straight from our memory to the device: no copy into the page cache, which costs more
    // CPU than compressing here. A filesystem that refuses O_DIRECT (fcntl or the write says EINVAL) gets
    // the ordinary buffered write instead; so does the unaligned tail.
    const size_t body = length / kDirectAlign * kDirectAlign;
    if (direct_ && body > 0 && reinterpret_cast<uintptr_t>(data) % kDirectAlign == 0 && SetDirect(fd_, true)) {
      while (done < body) {
        const ssize_t n = pwrite(fd_, data + done, body - done, static_cast<off_t>(done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0 || static_cast<size_t>(n) % kDirectAlign != 0) {
          if (n > 0) done += static_cast<size_t>(n);
          break;  // refused, or short at an odd place: buffered from here on
        }
        done += static_cast<size_t>(n);
      }
      wroteDirect_ = done > 0;
      if (!SetDirect(fd_, false)) return FailClosing("fcntl", fd_);
    }
    if (!WriteAll(fd_, data + done, length - done, done)) return FailClosing("write", fd_);
    // fdatasync: the data and the size, without a journal write for timestamps. Direct writes still need it
    // for the allocation metadata and the device's cache.
    if (sync_ && fdatasync(fd_) != 0) return FailClosing("fdatasync", fd_);
    struct stat st;
    if (fstat(fd_, &st) != 0) return FailClosing("fstat", fd_);
    size_ = static_cast<double>(st.st_size);
    ino_ = std::to_string(static_cast<unsigned long long>(st.st_ino));
    mtimeNs_ = std::to_string(static_cast<unsigned long long>(st.st_mtim.tv_sec) * 1000000000ULL +
                              static_cast<unsigned long long>(st.st_mtim.tv_nsec));
    const int fd = fd_;
    fd_ = -1;
    if (close(fd) != 0 && errno != EINTR) return Fail("close");
  }

 protected:
  Napi::Value Result(Napi::Env env) override {
    Napi::Object r = Napi::Object::New(env);
    r.Set("size", Napi::Number::New(env, size_));
    r.Set("ino", Napi::String::New(env, ino_));
    r.Set("mtimeNs", Napi::String::New(env, mtimeNs_));
    r.Set("direct", Napi::Boolean::New(env, wroteDirect_));
    return r;
  }

 private:
  HeldBytes data_;
  bool sync_;
  bool direct_;
  int mode_;
  int fd_ = -1;
  bool wroteDirect_ = false;
  double size_ = 0;
  std::string ino_;
  std::string mtimeNs_;
};

// writeFile(path: string, data: Uint8Array, sync: boolean, direct: boolean, mode: number):
//   Promise<{size, ino, mtimeNs, direct}>; creates the file exclusively (EEXIST if it exists).
Napi::Value WriteFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !IsUint8Array(info[1]) || !info[2].IsBoolean() || !info[3].IsBoolean() ||
      !info[4].IsNumber()) {
    Napi::TypeError::New(env, "writeFile: expected (path, Uint8Array, sync, direct, mode)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return QueueWorker(new WriteFileWorker(env, info[0].As<Napi::String>().Utf8Value(), info[1].As<Napi::Uint8Array>(),
                                         info[2].As<Napi::Boolean>().Value(), info[3].As<Napi::Boolean>().Value(),
                                         info[4].As<Napi::Number>().Int32Value()));
}

// lockExclusive(fd: number): boolean; flock(LOCK_EX|LOCK_NB): true when taken, false when another open file holds
// it. It never waits, so it runs on the calling thread. The kernel drops the lock when the last fd of that open file
// closes, also when the process dies: no stale lock is ever left behind.
Napi::Value LockExclusive(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) {
    Napi::TypeError::New(env, "lockExclusive: expected (fd)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const int fd = info[0].As<Napi::Number>().Int32Value();
  int rc;
  do rc = flock(fd, LOCK_EX | LOCK_NB); while (rc != 0 && errno == EINTR);
  if (rc == 0) return Napi::Boolean::New(env, true);
  if (errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
  MakeIoError(env, errno, "flock", "").ThrowAsJavaScriptException();
  return env.Undefined();
}

}  // namespace

void InitFileWrite(Napi::Env env, Napi::Object exports) {
  exports.Set("writeFile", Napi::Function::New(env, WriteFile, "writeFile"));
  exports.Set("lockExclusive", Napi::Function::New(env, LockExclusive, "lockExclusive"));
}

}  // namespace rnode
