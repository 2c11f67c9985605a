// XXH64 over a Uint8Array in place: the codec workers hash chunk slots (shared memory) without the copy into
// wasm memory that xxhash-wasm makes, which cost more than the hash itself.
#pragma once
#include <napi.h>

#include <cstddef>
#include <cstdint>

namespace rnode {

uint64_t Xxh64(const uint8_t* p, size_t len, uint64_t seed);
void InitXxh64(Napi::Env env, Napi::Object exports);

}  // namespace rnode
