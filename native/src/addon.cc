// Module init for rnode_native: raw block I/O (raw_io), buffer helpers (buffers), the VDDK binding (vddk)
// the LZ4 block codec (lz4), whole-file writes and the overlay lock (file_write), XXH64 (xxh64), thread CPU time (cpu_clock)
// and a socket's kernel send queue (socket_queue).
#include <napi.h>

#include "addon.h"
#include "cpu_clock.h"
#include "buffers.h"
#include "chunk_io.h"
#include "file_write.h"
#include "lz4.h"
#include "raw_io.h"
#include "socket_queue.h"
#include "vddk.h"
#include "xxh3.h"
#include "xxh64.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new rnode::AddonData());
  rnode::InitRawIo(env, exports);
  rnode::InitBuffers(env, exports);
  rnode::InitVddk(env, exports);
  rnode::InitLz4(env, exports);
  rnode::InitFileWrite(env, exports);
  rnode::InitChunkIo(env, exports);
  rnode::InitXxh64(env, exports);
  rnode::InitXxh3(env, exports);
  rnode::InitCpuClock(env, exports);
  rnode::InitSocketQueue(env, exports);
  // The C library this addon was built against (and so runs with): spares the platform packages of other native
  // dependencies their own libc probe (src/native/blake.ts).
#if defined(__GLIBC__)
  exports.Set("glibc", Napi::Boolean::New(env, true));
#else
  exports.Set("glibc", Napi::Boolean::New(env, false));
#endif
  return exports;
}

}  // namespace

NODE_API_MODULE(rnode_native, Init)
