// Synchronous buffer helpers: zero detection, aligned allocation for O_DIRECT, and plain memcpy/memset for
// shared chunk slots.
#pragma once
#include <napi.h>

namespace rnode {

void InitBuffers(Napi::Env env, Napi::Object exports);

}  // namespace rnode
