// Synchronous buffer helpers: zero detection and aligned allocation for O_DIRECT.
#pragma once
#include <napi.h>

namespace rnode {

void InitBuffers(Napi::Env env, Napi::Object exports);

}  // namespace rnode
