// The VDDK binding: loads libvixDiskLib.so with dlopen at run time and runs every VixDiskLib call on the libuv
// pool. Entry points take one plain options object and return a promise; policy (what to read, retries) is in TS.
#pragma once
#include <napi.h>

namespace rnode {

void InitVddk(Napi::Env env, Napi::Object exports);

}  // namespace rnode
