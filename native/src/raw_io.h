// Raw block I/O on a file or block device: open, positional read, allocated extents, close.
// Blocking syscalls run in Napi::AsyncWorker on the libuv pool; argument policy lives in TS.
#pragma once
#include <napi.h>

#include <string>
#include <vector>

#include "promise.h"

namespace rnode {

void InitRawIo(Napi::Env env, Napi::Object exports);

// JS-visible handle owning one fd. Reads and extent queries in flight hold a reference to it;
// close() waits for them so the fd number is never reused under a running pread.
class RawFile : public Napi::ObjectWrap<RawFile> {
 public:
  static Napi::Function DefineClass(Napi::Env env);
  static Napi::Object NewInstance(Napi::Env env, int fd, const std::string& path, bool blockDevice);

  explicit RawFile(const Napi::CallbackInfo& info);
  ~RawFile() override;

  void OpFinished(Napi::Env env);
  void CloseFinished(Napi::Env env, int err);

 private:
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value AllocatedExtents(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value LendFd(const Napi::CallbackInfo& info);
  Napi::Value GiveBackFd(const Napi::CallbackInfo& info);

  bool Usable() const { return fd_ >= 0 && !closing_; }
  Napi::Value RejectClosed(Napi::Env env, const char* syscall);
  void StartClose(Napi::Env env);

  int fd_ = -1;
  std::string path_;
  bool blockDevice_ = false;
  int inflight_ = 0;
  int lent_ = 0;  // lendFd() calls not yet given back (each also counts in inflight_)
  bool closing_ = false;
  std::vector<PendingPromise> closeWaiters_;
};

}  // namespace rnode
