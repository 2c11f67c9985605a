// A promise the addon returns to JS and settles later, made and settled with raw Node-API calls whose failures are
// dropped. node-addon-api's Promise::Deferred is unsafe while a worker thread is being terminated: when it cannot
// make the promise it leaves the promise value uninitialised and hands that garbage to JS (V8 then dies on it), and
// a settle that fails goes through its error path. Settling here happens at most once; a promise that could not be
// made is undefined to JS and settles nothing.
#pragma once
#include <napi.h>

namespace rnode {

class PendingPromise {
 public:
  explicit PendingPromise(napi_env env) : env_(env) {
    if (napi_create_promise(env, &deferred_, &promise_) != napi_ok) {
      deferred_ = nullptr;
      promise_ = nullptr;
    }
  }
  PendingPromise(const PendingPromise&) = delete;
  PendingPromise& operator=(const PendingPromise&) = delete;
  PendingPromise(PendingPromise&& other) noexcept
      : env_(other.env_), deferred_(other.deferred_), promise_(other.promise_) {
    other.deferred_ = nullptr;
  }

  // For the JS call that made it, in that call's scope only (the value is a local handle).
  Napi::Value Promise() const { return Napi::Value(env_, promise_); }

  void Resolve(napi_value value) { Settle(value, true); }
  void Reject(napi_value value) { Settle(value, false); }

 private:
  void Settle(napi_value value, bool resolve) {
    if (deferred_ == nullptr || value == nullptr) return;
    napi_deferred deferred = deferred_;
    deferred_ = nullptr;
    if (resolve) {
      napi_resolve_deferred(env_, deferred, value);
    } else {
      napi_reject_deferred(env_, deferred, value);
    }
  }

  napi_env env_;
  napi_deferred deferred_ = nullptr;
  napi_value promise_ = nullptr;
};

// A promise already rejected with err.
inline Napi::Value RejectedPromise(Napi::Env env, napi_value err) {
  PendingPromise p(env);
  p.Reject(err);
  return p.Promise();
}

}  // namespace rnode
