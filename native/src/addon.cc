// Module init for rnode_native: raw block I/O (raw_io), buffer helpers (buffers).
// The VDDK binding registers itself here too when it lands.
#include <napi.h>

#include "addon.h"
#include "buffers.h"
#include "raw_io.h"
#include "vddk.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new rnode::AddonData());
  rnode::InitRawIo(env, exports);
  rnode::InitBuffers(env, exports);
  rnode::InitVddk(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(rnode_native, Init)
