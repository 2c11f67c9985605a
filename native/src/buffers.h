// Synchronous buffer helpers: zero detection, aligned allocation for O_DIRECT, and plain memcpy/memset for
// shared chunk slots.
#pragma once
#include <napi.h>

#include <cstddef>
#include <cstdint>

namespace rnode {

void InitBuffers(Napi::Env env, Napi::Object exports);

// True when the n bytes at p are all zeros: isZero, and the zero-block scan of writeNonZero (chunk_io).
bool AllZero(const uint8_t* p, size_t n);

}  // namespace rnode
