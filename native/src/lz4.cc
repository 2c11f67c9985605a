// LZ4 block codec calls into the system's liblz4.so.1, opened with dlopen on first use so the addon builds
// without LZ4 headers and still loads (with lz4Info() saying why) where the library is missing. Calls are
// synchronous: the codec worker threads call them, compressing straight between shared buffers with one
// per-thread state, so no allocation or copy happens per block.
#include "lz4.h"

#include <dlfcn.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "addon.h"

namespace rnode {
namespace {

// The few entry points of lz4.h (stable since liblz4 1.7) that we call.
using CompressExtStateFn = int (*)(void* state, const char* src, char* dst, int srcSize, int dstCapacity, int acceleration);
using SizeofStateFn = int (*)();
using DecompressSafeFn = int (*)(const char* src, char* dst, int compressedSize, int dstCapacity);
using VersionStringFn = const char* (*)();

struct Lz4Library {
  CompressExtStateFn compress = nullptr;
  SizeofStateFn sizeofState = nullptr;
  DecompressSafeFn decompress = nullptr;
  std::string version;
  std::string error;  // non-empty when the library could not be used
};

const Lz4Library& Library() {
  static Lz4Library lib;
  static std::once_flag once;
  std::call_once(once, [] {
    void* dl = nullptr;
    for (const char* name : {"liblz4.so.1", "liblz4.so"}) {
      dl = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (dl != nullptr) break;
    }
    if (dl == nullptr) {
      const char* e = dlerror();
      lib.error = e != nullptr ? e : "liblz4.so.1 not found";
      return;
    }
    lib.compress = reinterpret_cast<CompressExtStateFn>(dlsym(dl, "LZ4_compress_fast_extState"));
    lib.sizeofState = reinterpret_cast<SizeofStateFn>(dlsym(dl, "LZ4_sizeofState"));
    lib.decompress = reinterpret_cast<DecompressSafeFn>(dlsym(dl, "LZ4_decompress_safe"));
    auto version = reinterpret_cast<VersionStringFn>(dlsym(dl, "LZ4_versionString"));
    if (lib.compress == nullptr || lib.sizeofState == nullptr || lib.decompress == nullptr || version == nullptr) {
      lib.compress = nullptr;
      lib.error = "liblz4 lacks LZ4_compress_fast_extState, LZ4_sizeofState, LZ4_decompress_safe or LZ4_versionString";
      return;
    }
    lib.version = version();
  });
  return lib;
}

constexpr size_t kMaxBlock = 0x7E000000;  // LZ4_MAX_INPUT_SIZE

// Checks both views and that liblz4 is loaded; throws in JS and returns false otherwise.
bool Args(const Napi::CallbackInfo& info, const char* name, uint8_t** src, size_t* srcLen, uint8_t** dst, size_t* dstLen) {
  Napi::Env env = info.Env();
  if (!Uint8ArrayBytes(info[0], src, srcLen) || !Uint8ArrayBytes(info[1], dst, dstLen)) {
    Napi::TypeError::New(env, std::string(name) + ": expected (src: Uint8Array, dst: Uint8Array)").ThrowAsJavaScriptException();
    return false;
  }
  if (*srcLen > kMaxBlock || *dstLen > kMaxBlock) {
    Napi::RangeError::New(env, std::string(name) + ": block larger than LZ4 allows").ThrowAsJavaScriptException();
    return false;
  }
  if (Library().compress == nullptr) {
    Napi::Error::New(env, std::string(name) + ": liblz4 is not available: " + Library().error).ThrowAsJavaScriptException();
    return false;
  }
  return true;
}

// lz4Info(): { version } when liblz4 loaded, { error } when not.
Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Lz4Library& lib = Library();
  Napi::Object o = Napi::Object::New(env);
  if (lib.compress != nullptr) o.Set("version", lib.version);
  else o.Set("error", lib.error);
  return o;
}

// lz4CompressBlock(src, dst): bytes of the LZ4 block written to dst, 0 when it does not fit.
Napi::Value Compress(const Napi::CallbackInfo& info) {
  uint8_t *src, *dst;
  size_t srcLen, dstLen;
  if (!Args(info, "lz4CompressBlock", &src, &srcLen, &dst, &dstLen)) return info.Env().Undefined();
  const Lz4Library& lib = Library();
  // One state per thread, reused by every call: the library resets it, we only avoid allocating it.
  thread_local std::vector<uint64_t> state;
  if (state.empty()) state.resize(static_cast<size_t>(lib.sizeofState()) / sizeof(uint64_t) + 1);
  const int n = lib.compress(state.data(), reinterpret_cast<const char*>(src), reinterpret_cast<char*>(dst),
                             static_cast<int>(srcLen), static_cast<int>(dstLen), 1);
  return Napi::Number::New(info.Env(), n);
}

// lz4DecompressBlock(src, dst): bytes written to dst, or -1 when src is not a valid block that fits dst.
Napi::Value Decompress(const Napi::CallbackInfo& info) {
  uint8_t *src, *dst;
  size_t srcLen, dstLen;
  if (!Args(info, "lz4DecompressBlock", &src, &srcLen, &dst, &dstLen)) return info.Env().Undefined();
  const int n = Library().decompress(reinterpret_cast<const char*>(src), reinterpret_cast<char*>(dst),
                                     static_cast<int>(srcLen), static_cast<int>(dstLen));
  return Napi::Number::New(info.Env(), n < 0 ? -1 : n);
}

}  // namespace

void InitLz4(Napi::Env env, Napi::Object exports) {
  exports.Set("lz4Info", Napi::Function::New(env, Info, "lz4Info"));
  exports.Set("lz4CompressBlock", Napi::Function::New(env, Compress, "lz4CompressBlock"));
  exports.Set("lz4DecompressBlock", Napi::Function::New(env, Decompress, "lz4DecompressBlock"));
}

}  // namespace rnode
