#include "cpu_clock.h"

#include <time.h>

namespace rnode {
namespace {

// threadCpuMs(): CPU milliseconds the calling thread has used (CLOCK_THREAD_CPUTIME_ID), or -1 when unavailable.
Napi::Value ThreadCpuMs(const Napi::CallbackInfo& info) {
  struct timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return Napi::Number::New(info.Env(), -1);
  return Napi::Number::New(info.Env(), static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6);
}

}  // namespace

void InitCpuClock(Napi::Env env, Napi::Object exports) {
  exports.Set("threadCpuMs", Napi::Function::New(env, ThreadCpuMs, "threadCpuMs"));
}

}  // namespace rnode
