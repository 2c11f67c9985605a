// Chunk-sized file I/O in one libuv job per call: a whole (or ranged) read of a store file into the caller's
// buffer, and a positioned write that skips zero blocks. Each replaces several promise round trips per chunk.
#pragma once
#include <napi.h>

namespace rnode {

void InitChunkIo(Napi::Env env, Napi::Object exports);

}  // namespace rnode
