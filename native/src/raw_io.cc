#include "raw_io.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>

#include "addon.h"
#include "blocking_io.h"
#include "io_error.h"
#include "io_worker.h"

namespace rnode {
namespace {

bool IsUnsupportedSeek(int err) { return err == EINVAL || err == EOPNOTSUPP; }

// ---- open ------------------------------------------------------------------

class OpenWorker : public IoWorker {
 public:
  OpenWorker(Napi::Env env, std::string path, bool direct)
      : IoWorker(env, "rnode:open", std::move(path)), direct_(direct) {}

  void Execute() override {
    fd_ = OpenRetrying(path_.c_str(), O_RDONLY | O_CLOEXEC | (direct_ ? O_DIRECT : 0));
    if (fd_ < 0) return Fail("open");

    struct stat st;
    if (fstat(fd_, &st) != 0) return FailClosing("fstat", fd_);
    if (S_ISBLK(st.st_mode)) {
      type_ = "block";
      uint64_t bytes = 0;
      int lbs = 0;
      if (ioctl(fd_, BLKGETSIZE64, &bytes) != 0) return FailClosing("ioctl", fd_);
      if (ioctl(fd_, BLKSSZGET, &lbs) != 0) return FailClosing("ioctl", fd_);
      size_ = static_cast<double>(bytes);
      logicalBlockSize_ = lbs;
    } else {
      type_ = S_ISREG(st.st_mode) ? "file"
              : S_ISDIR(st.st_mode) ? "directory"
              : S_ISCHR(st.st_mode) ? "char"
                                    : "other";
      size_ = static_cast<double>(st.st_size);
    }
  }

 protected:
  Napi::Value Result(Napi::Env env) override {
    // From here the JS object owns the fd; its finalizer closes it if the caller leaks it.
    Napi::Object file = RawFile::NewInstance(env, fd_, path_, type_[0] == 'b');
    if (file.IsEmpty() || env.IsExceptionPending()) {
      close(fd_);  // no JS object owns it; a pending exception rejects the promise
      fd_ = -1;
      return Napi::Value();
    }
    Napi::Object result = Napi::Object::New(env);
    result.Set("file", file);
    result.Set("type", Napi::String::New(env, type_));
    result.Set("size", Napi::Number::New(env, size_));
    result.Set("logicalBlockSize", Napi::Number::New(env, logicalBlockSize_));
    return result;
  }

  // No RawFile was made to own the fd (Execute may not have run: then it is -1).
  void Dropped() override {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  bool direct_;
  int fd_ = -1;
  const char* type_ = "other";
  double size_ = 0;
  int logicalBlockSize_ = 0;
};

// open(path: string, direct: boolean): Promise<{file, type, size, logicalBlockSize}>
Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsBoolean()) {
    Napi::TypeError::New(env, "open: expected (path: string, direct: boolean)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return QueueWorker(new OpenWorker(env, info[0].As<Napi::String>().Utf8Value(), info[1].As<Napi::Boolean>().Value()));
}

// ---- operations on an open file -------------------------------------------------

// Base for work on a RawFile: keeps the JS object (and so the fd) alive until settled.
class FileWorker : public IoWorker {
 public:
  FileWorker(Napi::Env env, const char* name, RawFile* file, int fd, std::string path)
      : IoWorker(env, name, std::move(path)), self_(Napi::Persistent(file->Value())), file_(file), fd_(fd) {}

  void OnOK() override {
    IoWorker::OnOK();
    file_->OpFinished(Env());
  }

 protected:
  Napi::ObjectReference self_;
  RawFile* file_;
  int fd_;
};

class ReadWorker : public FileWorker {
 public:
  ReadWorker(Napi::Env env, RawFile* file, int fd, std::string path, Napi::Uint8Array buf, int64_t position,
             size_t length, bool direct, size_t alignment)
      : FileWorker(env, "rnode:read", file, fd, std::move(path)),
        buf_(buf),
        position_(position),
        length_(length),
        direct_(direct),
        alignment_(alignment) {}

  void Execute() override {
    const ssize_t n = ReadUpTo(fd_, buf_.data(), length_, static_cast<uint64_t>(position_), direct_ ? alignment_ : 1);
    if (n < 0) return Fail("pread");
    done_ = static_cast<size_t>(n);
  }

 protected:
  Napi::Value Result(Napi::Env env) override { return Napi::Number::New(env, static_cast<double>(done_)); }

 private:
  HeldBytes buf_;
  int64_t position_;
  size_t length_;
  bool direct_;
  size_t alignment_;
  size_t done_ = 0;
};

class ExtentsWorker : public FileWorker {
 public:
  ExtentsWorker(Napi::Env env, RawFile* file, int fd, std::string path, bool blockDevice, int64_t start,
                int64_t end, size_t maxCount)
      : FileWorker(env, "rnode:extents", file, fd, std::move(path)),
        blockDevice_(blockDevice),
        start_(start),
        end_(end),
        maxCount_(maxCount) {}

  void Execute() override {
    if (start_ >= end_ || maxCount_ == 0) return;
    if (blockDevice_) return WholeRange();
    off_t pos = start_;
    while (pos < end_ && extents_.size() < maxCount_) {
      const off_t data = lseek(fd_, pos, SEEK_DATA);
      if (data < 0) {
        if (errno == ENXIO) return;  // no data at or after pos
        if (IsUnsupportedSeek(errno) && extents_.empty()) return WholeRange();
        return Fail("lseek");
      }
      if (data >= end_) return;
      off_t hole = lseek(fd_, data, SEEK_HOLE);
      if (hole < 0) {
        if (errno == ENXIO) return;  // file shrank under us
        return Fail("lseek");
      }
      hole = std::min<off_t>(hole, end_);
      extents_.push_back({data, hole - data});
      pos = hole;
    }
  }

 protected:
  Napi::Value Result(Napi::Env env) override {
    Napi::Array out = Napi::Array::New(env, extents_.size());
    for (size_t i = 0; i < extents_.size(); i++) {
      Napi::Object e = Napi::Object::New(env);
      e.Set("offset", Napi::Number::New(env, static_cast<double>(extents_[i].first)));
      e.Set("length", Napi::Number::New(env, static_cast<double>(extents_[i].second)));
      out.Set(static_cast<uint32_t>(i), e);
    }
    return out;
  }

 private:
  // Without SEEK_DATA (block devices, some filesystems) every byte counts as allocated.
  void WholeRange() { extents_.assign(1, {start_, end_ - start_}); }

  bool blockDevice_;
  int64_t start_;
  int64_t end_;
  size_t maxCount_;
  std::vector<std::pair<int64_t, int64_t>> extents_;
};

class CloseWorker : public TeardownSafeWorker {
 public:
  CloseWorker(Napi::Env env, RawFile* file, int fd)
      : TeardownSafeWorker(env, "rnode:close"), self_(Napi::Persistent(file->Value())), file_(file), fd_(fd) {}

  // No EINTR retry: Linux releases the fd even when close() reports EINTR.
  void Execute() override { err_ = close(fd_) == 0 ? 0 : errno; }
  void OnOK() override { file_->CloseFinished(Env(), err_); }

 private:
  Napi::ObjectReference self_;
  RawFile* file_;
  int fd_;
  int err_ = 0;
};

}  // namespace

// ---- RawFile ---------------------------------------------------------------------

Napi::Function RawFile::DefineClass(Napi::Env env) {
  return ObjectWrap<RawFile>::DefineClass(env, "RawFile",
                                          {
                                              InstanceMethod("read", &RawFile::Read),
                                              InstanceMethod("allocatedExtents", &RawFile::AllocatedExtents),
                                              InstanceMethod("close", &RawFile::Close),
                                              InstanceMethod("lendFd", &RawFile::LendFd),
                                              InstanceMethod("giveBackFd", &RawFile::GiveBackFd),
                                          });
}

Napi::Object RawFile::NewInstance(Napi::Env env, int fd, const std::string& path, bool blockDevice) {
  // Raw Node-API calls, each checked: this runs in a completion, and when the environment stops under it (a worker
  // thread terminated meanwhile) the construction fails with nothing pending, or yields an object that was never
  // wrapped. node-addon-api's wrappers would then abort the process or hand back a null RawFile.
  napi_value ctor = nullptr;
  napi_value obj = nullptr;
  void* wrapped = nullptr;
  if (napi_get_reference_value(env, GetAddonData(env)->rawFileCtor, &ctor) != napi_ok || ctor == nullptr ||
      napi_new_instance(env, ctor, 0, nullptr, &obj) != napi_ok || napi_unwrap(env, obj, &wrapped) != napi_ok ||
      wrapped == nullptr) {
    return Napi::Object();
  }
  RawFile* file = static_cast<RawFile*>(wrapped);  // ObjectWrap wraps the T* itself
  file->fd_ = fd;
  file->path_ = path;
  file->blockDevice_ = blockDevice;
  return Napi::Object(env, obj);
}

// Constructed from JS directly, a RawFile has no fd and every call rejects with EBADF.
RawFile::RawFile(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RawFile>(info) {}

RawFile::~RawFile() {
  if (fd_ >= 0) close(fd_);  // leaked handle: the GC finalizer is the last chance
}

Napi::Value RawFile::RejectClosed(Napi::Env env, const char* syscall) {
  return RejectedPromise(env, MakeIoError(env, EBADF, syscall, path_).Value());
}

// read(buf: Uint8Array, position: number, length: number, alignment: number): Promise<number>
// alignment > 1 marks a direct handle; bounds were checked in TS.
Napi::Value RawFile::Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!IsUint8Array(info[0]) || !info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsNumber()) {
    Napi::TypeError::New(env, "read: expected (Uint8Array, position, length, alignment)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Uint8Array buf = info[0].As<Napi::Uint8Array>();
  const int64_t position = info[1].As<Napi::Number>().Int64Value();
  const int64_t length = info[2].As<Napi::Number>().Int64Value();
  const int64_t alignment = info[3].As<Napi::Number>().Int64Value();
  if (position < 0 || length < 0 || static_cast<uint64_t>(length) > buf.ByteLength() || alignment < 1) {
    Napi::RangeError::New(env, "read: position/length/alignment out of range").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (!Usable()) return RejectClosed(env, "pread");

  auto* worker = new ReadWorker(env, this, fd_, path_, buf, position, static_cast<size_t>(length), alignment > 1,
                                static_cast<size_t>(alignment));
  inflight_++;
  return QueueWorker(worker);
}

// allocatedExtents(start: number, end: number, maxCount: number): Promise<Extent[]>
Napi::Value RawFile::AllocatedExtents(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber()) {
    Napi::TypeError::New(env, "allocatedExtents: expected (start, end, maxCount)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const int64_t start = info[0].As<Napi::Number>().Int64Value();
  const int64_t end = info[1].As<Napi::Number>().Int64Value();
  const int64_t maxCount = info[2].As<Napi::Number>().Int64Value();
  if (start < 0 || end < start || maxCount < 0) {
    Napi::RangeError::New(env, "allocatedExtents: start/end/maxCount out of range").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (!Usable()) return RejectClosed(env, "lseek");

  auto* worker =
      new ExtentsWorker(env, this, fd_, path_, blockDevice_, start, end, static_cast<size_t>(maxCount));
  inflight_++;
  return QueueWorker(worker);
}

// close(): Promise<void>; idempotent, and waits for reads in flight before releasing the fd.
Napi::Value RawFile::Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PendingPromise closed(env);
  Napi::Value promise = closed.Promise();
  if (fd_ < 0 && !closing_) {
    closed.Resolve(env.Undefined());
    return promise;
  }
  closeWaiters_.push_back(std::move(closed));
  if (!closing_) {
    closing_ = true;
    if (inflight_ == 0) StartClose(env);
  }
  return promise;
}

// lendFd(): number; the fd, for positional reads on another thread of this process, or -1 once closing. A lent fd
// counts as a read in flight: close() waits for giveBackFd(), so the number is never reused under the borrower.
Napi::Value RawFile::LendFd(const Napi::CallbackInfo& info) {
  if (!Usable()) return Napi::Number::New(info.Env(), -1);
  inflight_++;
  lent_++;
  return Napi::Number::New(info.Env(), fd_);
}

// giveBackFd(): ends one lendFd(); calls beyond the loans are ignored.
Napi::Value RawFile::GiveBackFd(const Napi::CallbackInfo& info) {
  if (lent_ == 0) return info.Env().Undefined();
  lent_--;
  OpFinished(info.Env());
  return info.Env().Undefined();
}

void RawFile::StartClose(Napi::Env env) {
  auto* worker = new CloseWorker(env, this, fd_);
  fd_ = -1;  // from now on the worker owns the fd, so the finalizer must not close it
  worker->Queue();
}

void RawFile::OpFinished(Napi::Env env) {
  inflight_--;
  if (inflight_ == 0 && closing_ && fd_ >= 0) StartClose(env);
}

void RawFile::CloseFinished(Napi::Env env, int err) {
  closing_ = false;
  std::vector<PendingPromise> waiters;
  waiters.swap(closeWaiters_);
  for (auto& waiter : waiters) {
    if (err == 0) {
      waiter.Resolve(env.Undefined());
    } else {
      waiter.Reject(MakeIoError(env, err, "close", path_).Value());
    }
  }
}

void InitRawIo(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = RawFile::DefineClass(env);
  GetAddonData(env)->rawFileCtor = Napi::Persistent(ctor);
  exports.Set("open", Napi::Function::New(env, Open, "open"));
}

}  // namespace rnode
