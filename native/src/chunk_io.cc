#include "chunk_io.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "addon.h"
#include "io_error.h"

namespace rnode {
namespace {

alignas(64) const uint8_t kZeroBlock[4096] = {};

bool BlockIsZero(const uint8_t* p, size_t n) {
  while (n >= sizeof kZeroBlock) {
    if (memcmp(p, kZeroBlock, sizeof kZeroBlock) != 0) return false;
    p += sizeof kZeroBlock;
    n -= sizeof kZeroBlock;
  }
  return n == 0 || memcmp(p, kZeroBlock, n) == 0;
}

// Reads [offset, offset+length) of a file (clipped at its end) into the caller's memory: open, fstat, pread
// and close in one job on the libuv pool, where four promise round trips through the event loop cost more than
// the copy. Answers the file's size, the range read, and whether it was a regular file and fitted.
class ReadIntoWorker : public Napi::AsyncWorker {
 public:
  ReadIntoWorker(Napi::Env env, std::string path, Napi::Uint8Array into, double offset, double length)
      : Napi::AsyncWorker(env, "rnode:readFileInto"),
        deferred_(env),
        path_(std::move(path)),
        intoRef_(Napi::Persistent(into.As<Napi::Object>())),
        into_(into.Data()),
        capacity_(into.ByteLength()),
        offset_(static_cast<uint64_t>(offset)),
        length_(length) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    int fd;
    do fd = open(path_.c_str(), O_RDONLY | O_CLOEXEC); while (fd < 0 && errno == EINTR);
    if (fd < 0) return Fail("open");
    struct stat st;
    if (fstat(fd, &st) != 0) {
      Fail("fstat");
      close(fd);
      return;
    }
    size_ = static_cast<uint64_t>(st.st_size);
    isFile_ = S_ISREG(st.st_mode);
    if (isFile_) {
      start_ = offset_ < size_ ? offset_ : size_;
      uint64_t end = size_;
      if (length_ >= 0 && start_ + static_cast<uint64_t>(length_) < end) end = start_ + static_cast<uint64_t>(length_);
      fits_ = end - start_ <= capacity_;
      if (fits_) {
        const size_t want = static_cast<size_t>(end - start_);
        while (done_ < want) {
          const ssize_t n = pread(fd, into_ + done_, want - done_, static_cast<off_t>(start_ + done_));
          if (n < 0 && errno == EINTR) continue;
          if (n < 0) {
            Fail("read");
            close(fd);
            return;
          }
          if (n == 0) break;  // cannot shrink (puts replace the inode), but never loop forever
          done_ += static_cast<size_t>(n);
        }
      }
    }
    close(fd);  // read-only: nothing a failed close could lose
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_ != 0) {
      deferred_.Reject(MakeIoError(env, err_, syscall_, path_).Value());
      return;
    }
    Napi::Object r = Napi::Object::New(env);
    r.Set("size", Napi::Number::New(env, static_cast<double>(size_)));
    r.Set("isFile", Napi::Boolean::New(env, isFile_));
    r.Set("fits", Napi::Boolean::New(env, fits_));
    r.Set("start", Napi::Number::New(env, static_cast<double>(start_)));
    r.Set("bytesRead", Napi::Number::New(env, static_cast<double>(done_)));
    deferred_.Resolve(r);
  }

 private:
  void Fail(const char* syscall) {
    err_ = errno;
    syscall_ = syscall;
  }

  Napi::Promise::Deferred deferred_;
  std::string path_;
  Napi::ObjectReference intoRef_;  // keeps the destination alive while the pool writes to it
  uint8_t* into_;
  size_t capacity_;
  uint64_t offset_;
  double length_;  // < 0: to the end of the file
  uint64_t size_ = 0;
  uint64_t start_ = 0;
  size_t done_ = 0;
  bool isFile_ = false;
  bool fits_ = false;
  int err_ = 0;
  const char* syscall_ = "";
};

// Writes data at position of an open fd, skipping the blocks of `block` bytes that are all zeros when block > 0
// (a sparse output keeps them as holes): the zero scan and every pwrite in one job on the libuv pool. Answers the
// bytes written; EINVAL (O_DIRECT refused the alignment) is an error the caller handles.
class WriteNonZeroWorker : public Napi::AsyncWorker {
 public:
  WriteNonZeroWorker(Napi::Env env, int fd, Napi::Uint8Array data, double position, size_t block)
      : Napi::AsyncWorker(env, "rnode:writeNonZero"),
        deferred_(env),
        fd_(fd),
        dataRef_(Napi::Persistent(data.As<Napi::Object>())),
        data_(data.Data()),
        length_(data.ByteLength()),
        position_(static_cast<uint64_t>(position)),
        block_(block) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    if (block_ == 0) {
      Put(0, length_);
      return;
    }
    size_t run = 0;  // start of the current non-zero run
    bool inRun = false;
    for (size_t o = 0; o < length_; o += block_) {
      const size_t n = length_ - o < block_ ? length_ - o : block_;
      const bool zero = BlockIsZero(data_ + o, n);
      if (!zero && !inRun) {
        run = o;
        inRun = true;
      } else if (zero && inRun) {
        if (!Put(run, o - run)) return;
        inRun = false;
      }
    }
    if (inRun) Put(run, length_ - run);
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_ != 0) {
      deferred_.Reject(MakeIoError(env, err_, "write", "").Value());
      return;
    }
    deferred_.Resolve(Napi::Number::New(env, static_cast<double>(written_)));
  }

 private:
  bool Put(size_t from, size_t length) {
    size_t done = 0;
    while (done < length) {
      const ssize_t n = pwrite(fd_, data_ + from + done, length - done, static_cast<off_t>(position_ + from + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        err_ = n < 0 ? errno : EIO;
        return false;
      }
      done += static_cast<size_t>(n);
    }
    written_ += length;
    return true;
  }

  Napi::Promise::Deferred deferred_;
  int fd_;
  Napi::ObjectReference dataRef_;  // keeps the source memory alive while the pool reads it
  const uint8_t* data_;
  size_t length_;
  uint64_t position_;
  size_t block_;
  size_t written_ = 0;
  int err_ = 0;
};

// readFileInto(path: string, into: Uint8Array, offset: number, length: number (-1: to the end)):
//   Promise<{size, isFile, fits, start, bytesRead}>; arguments validated in TS.
Napi::Value ReadFileInto(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsTypedArray() ||
      info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array || !info[2].IsNumber() || !info[3].IsNumber()) {
    Napi::TypeError::New(env, "readFileInto: expected (path, Uint8Array, offset, length)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto* worker = new ReadIntoWorker(env, info[0].As<Napi::String>().Utf8Value(), info[1].As<Napi::Uint8Array>(),
                                    info[2].As<Napi::Number>().DoubleValue(), info[3].As<Napi::Number>().DoubleValue());
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

// writeNonZero(fd: number, data: Uint8Array, position: number, block: number): Promise<number>; validated in TS.
Napi::Value WriteNonZero(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber() || !info[1].IsTypedArray() ||
      info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array || !info[2].IsNumber() || !info[3].IsNumber()) {
    Napi::TypeError::New(env, "writeNonZero: expected (fd, Uint8Array, position, block)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto* worker = new WriteNonZeroWorker(env, info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::Uint8Array>(),
                                        info[2].As<Napi::Number>().DoubleValue(),
                                        static_cast<size_t>(info[3].As<Napi::Number>().Int64Value()));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace

void InitChunkIo(Napi::Env env, Napi::Object exports) {
  exports.Set("readFileInto", Napi::Function::New(env, ReadFileInto, "readFileInto"));
  exports.Set("writeNonZero", Napi::Function::New(env, WriteNonZero, "writeNonZero"));
}

}  // namespace rnode
