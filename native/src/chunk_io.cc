#include "chunk_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "addon.h"
#include "blocking_io.h"
#include "buffers.h"
#include "io_worker.h"

namespace rnode {
namespace {

// Reads [offset, offset+length) of a file (clipped at its end) into the caller's memory: open, fstat, pread
// and close in one job on the libuv pool, where four promise round trips through the event loop cost more than
// the copy. Answers the file's size, the range read, and whether it was a regular file and fitted.
class ReadIntoWorker : public IoWorker {
 public:
  ReadIntoWorker(Napi::Env env, std::string path, Napi::Uint8Array into, double offset, double length)
      : IoWorker(env, "rnode:readFileInto", std::move(path)),
        into_(into),
        offset_(static_cast<uint64_t>(offset)),
        length_(length) {}

  void Execute() override {
    const int fd = OpenRetrying(path_.c_str(), O_RDONLY | O_CLOEXEC);
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
      fits_ = end - start_ <= into_.length();
      if (fits_) {
        // A short read cannot come from a shrinking file (puts replace the inode): it is the end of the file.
        const ssize_t n = ReadUpTo(fd, into_.data(), static_cast<size_t>(end - start_), start_);
        if (n < 0) {
          Fail("read");
        } else {
          done_ = static_cast<size_t>(n);
        }
      }
    }
    close(fd);  // read-only: nothing a failed close could lose
  }

 protected:
  Napi::Value Result(Napi::Env env) override {
    Napi::Object r = Napi::Object::New(env);
    r.Set("size", Napi::Number::New(env, static_cast<double>(size_)));
    r.Set("isFile", Napi::Boolean::New(env, isFile_));
    r.Set("fits", Napi::Boolean::New(env, fits_));
    r.Set("start", Napi::Number::New(env, static_cast<double>(start_)));
    r.Set("bytesRead", Napi::Number::New(env, static_cast<double>(done_)));
    return r;
  }

 private:
  HeldBytes into_;
  uint64_t offset_;
  double length_;  // < 0: to the end of the file
  uint64_t size_ = 0;
  uint64_t start_ = 0;
  size_t done_ = 0;
  bool isFile_ = false;
  bool fits_ = false;
};

// Writes data at position of an open fd, skipping the blocks of `block` bytes that are all zeros when block > 0
// (a sparse output keeps them as holes): the zero scan and every pwrite in one job on the libuv pool. Answers the
// bytes written; EINVAL (O_DIRECT refused the alignment) is an error the caller handles.
class WriteNonZeroWorker : public IoWorker {
 public:
  WriteNonZeroWorker(Napi::Env env, int fd, Napi::Uint8Array data, double position, size_t block)
      : IoWorker(env, "rnode:writeNonZero", ""),
        fd_(fd),
        data_(data),
        position_(static_cast<uint64_t>(position)),
        block_(block) {}

  void Execute() override {
    const size_t length = data_.length();
    if (block_ == 0) {
      Put(0, length);
      return;
    }
    size_t run = 0;  // start of the current non-zero run
    bool inRun = false;
    for (size_t o = 0; o < length; o += block_) {
      const size_t n = length - o < block_ ? length - o : block_;
      const bool zero = AllZero(data_.data() + o, n);
      if (!zero && !inRun) {
        run = o;
        inRun = true;
      } else if (zero && inRun) {
        if (!Put(run, o - run)) return;
        inRun = false;
      }
    }
    if (inRun) Put(run, length - run);
  }

 protected:
  Napi::Value Result(Napi::Env env) override { return Napi::Number::New(env, static_cast<double>(written_)); }

 private:
  bool Put(size_t from, size_t length) {
    if (!WriteAll(fd_, data_.data() + from, length, position_ + from)) {
      Fail("write");
      return false;
    }
    written_ += length;
    return true;
  }

  int fd_;
  HeldBytes data_;
  uint64_t position_;
  size_t block_;
  size_t written_ = 0;
};

// readFileInto(path: string, into: Uint8Array, offset: number, length: number (-1: to the end)):
//   Promise<{size, isFile, fits, start, bytesRead}>; arguments validated in TS.
Napi::Value ReadFileInto(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !IsUint8Array(info[1]) || !info[2].IsNumber() || !info[3].IsNumber()) {
    Napi::TypeError::New(env, "readFileInto: expected (path, Uint8Array, offset, length)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return QueueWorker(new ReadIntoWorker(env, info[0].As<Napi::String>().Utf8Value(), info[1].As<Napi::Uint8Array>(),
                                        info[2].As<Napi::Number>().DoubleValue(),
                                        info[3].As<Napi::Number>().DoubleValue()));
}

// writeNonZero(fd: number, data: Uint8Array, position: number, block: number): Promise<number>; validated in TS.
Napi::Value WriteNonZero(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber() || !IsUint8Array(info[1]) || !info[2].IsNumber() || !info[3].IsNumber()) {
    Napi::TypeError::New(env, "writeNonZero: expected (fd, Uint8Array, position, block)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return QueueWorker(new WriteNonZeroWorker(env, info[0].As<Napi::Number>().Int32Value(),
                                            info[1].As<Napi::Uint8Array>(), info[2].As<Napi::Number>().DoubleValue(),
                                            static_cast<size_t>(info[3].As<Napi::Number>().Int64Value())));
}

}  // namespace

void InitChunkIo(Napi::Env env, Napi::Object exports) {
  exports.Set("readFileInto", Napi::Function::New(env, ReadFileInto, "readFileInto"));
  exports.Set("writeNonZero", Napi::Function::New(env, WriteNonZero, "writeNonZero"));
}

}  // namespace rnode
