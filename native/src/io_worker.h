// The base of the addon's workers: the promise a JS call returns, settled on the main thread with the worker's
// result, or with the failure it recorded on the pool. IoWorker records an errno, rejected as a Node-shaped error
// (io_error.h); the VDDK workers record VDDK's own failures (vddk.cc).
#pragma once
#include <errno.h>
#include <napi.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "io_error.h"
#include "promise.h"

namespace rnode {

// True while JS can run in env. Not during its teardown: a worker thread stopped (or a process exiting) with pool
// work in flight still has that work's completion called, and every N-API call that may run JS then fails, a failure
// node-addon-api turns into "FATAL ERROR: Error::ThrowAsJavaScriptException napi_throw" and an abort of the process.
inline bool JsCanRun(napi_env env) {
  napi_value global = nullptr;
  napi_value value = nullptr;
  return napi_get_global(env, &global) == napi_ok && napi_get_named_property(env, global, "undefined", &value) == napi_ok;
}

// The base of every AsyncWorker of the addon: work completed during its environment's teardown, when nobody is left
// to take its result, is dropped as if cancelled (its references released, no callback run).
class TeardownSafeWorker : public Napi::AsyncWorker {
 protected:
  using Napi::AsyncWorker::AsyncWorker;

  // Called instead of any callback when the result will reach no JS (the environment is stopping, or the work was
  // cancelled): a worker whose Execute acquired something for JS to own, such as an fd, releases it here. Without
  // this, each worker thread stopped while an open completed kept that file open for the life of the process.
  virtual void Dropped() {}

  void OnWorkComplete(Napi::Env env, napi_status status) override {
    if (status == napi_cancelled || !JsCanRun(env)) {
      Dropped();
      status = napi_cancelled;
    }
    Napi::AsyncWorker::OnWorkComplete(env, status);
  }
};

class PromiseWorker : public TeardownSafeWorker {
 public:
  Napi::Value Promise() const { return promise_.Promise(); }

  void OnOK() override {
    Napi::Env env = Env();
    if (Failed()) {
      promise_.Reject(FailureError(env).Value());
      return;
    }
    Napi::Value result = Result(env);
    if (env.IsExceptionPending()) {
      promise_.Reject(env.GetAndClearPendingException().Value());
      return;
    }
    // An empty result with nothing pending: the environment began to stop after OnWorkComplete's check, and no JS
    // is left to take it (Resolve drops it).
    promise_.Resolve(result);
  }

 protected:
  PromiseWorker(Napi::Env env, const char* name) : TeardownSafeWorker(env, name), promise_(env) {}

  // The value the promise resolves to, when nothing failed. A JS exception left pending rejects it instead.
  virtual Napi::Value Result(Napi::Env env) = 0;

  // Whether the work on the pool failed, and (asked only then, on the main thread) the error that says how.
  virtual bool Failed() const = 0;
  virtual Napi::Error FailureError(Napi::Env env) const = 0;

 private:
  PendingPromise promise_;
};

// A worker of file and block I/O: a failure is the errno of a syscall.
class IoWorker : public PromiseWorker {
 protected:
  // path is named in the error; "" for an fd the caller opened.
  IoWorker(Napi::Env env, const char* name, std::string path) : PromiseWorker(env, name), path_(std::move(path)) {}

  bool Failed() const override { return err_ != 0; }
  Napi::Error FailureError(Napi::Env env) const override { return MakeIoError(env, err_, syscall_, path_); }

  // On the pool, right after a syscall failed: keeps its errno for OnOK.
  void Fail(const char* syscall) {
    err_ = errno;
    syscall_ = syscall;
  }

  // The same, for a worker that opened fd itself: closes it.
  void FailClosing(const char* syscall, int& fd) {
    Fail(syscall);
    if (fd >= 0) close(fd);
    fd = -1;
  }

  const std::string path_;

 private:
  int err_ = 0;
  const char* syscall_ = "";
};

// Queues the worker (libuv owns and deletes it once settled) and returns the promise it settles.
inline Napi::Value QueueWorker(PromiseWorker* worker) {
  Napi::Value promise = worker->Promise();
  worker->Queue();
  return promise;
}

// The memory of a Uint8Array that the pool reads or writes, with a reference that keeps its JS owner (and so the
// memory) alive until the worker is deleted on the main thread.
class HeldBytes {
 public:
  explicit HeldBytes(Napi::Uint8Array array)
      : ref_(Napi::Persistent(array.As<Napi::Object>())), data_(array.Data()), length_(array.ByteLength()) {}

  uint8_t* data() const { return data_; }
  size_t length() const { return length_; }

 private:
  Napi::ObjectReference ref_;
  uint8_t* data_;
  size_t length_;
};

}  // namespace rnode
