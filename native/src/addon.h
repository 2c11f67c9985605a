// Per-environment state shared by the addon's modules (worker threads each get their own).
#pragma once
#include <napi.h>

#include <cstddef>
#include <cstdint>

namespace rnode {

struct AddonData {
  Napi::FunctionReference rawFileCtor;
};

inline AddonData* GetAddonData(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

// Argument checks of the calls that hand a Uint8Array to the pool (and keep it, see HeldBytes in io_worker.h).
inline bool IsUint8Array(const Napi::Value& v) {
  return v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_uint8_array;
}

// The bytes of a Uint8Array (its byteOffset applied) in one napi call with no handle allocation: the buffer
// helpers and the LZ4 calls sit on the per-chunk hot path. False for anything else.
inline bool Uint8ArrayBytes(const Napi::Value& v, uint8_t** data, size_t* length) {
  napi_typedarray_type type;
  void* ptr = nullptr;
  if (napi_get_typedarray_info(v.Env(), v, &type, length, &ptr, nullptr, nullptr) != napi_ok ||
      type != napi_uint8_array) {
    return false;
  }
  *data = static_cast<uint8_t*>(ptr);
  return true;
}

}  // namespace rnode
