#include "xxh3.h"

#include <dlfcn.h>
#include <stdlib.h>

#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>

#include "addon.h"
#include "blocking_io.h"
#include "io_worker.h"

namespace rnode {
namespace {

// XXH128_hash_t and XXH3_128bits_withSeed as xxhash.h (0.8) declares them; the struct comes back in registers.
struct Hash128 {
  uint64_t low64;
  uint64_t high64;
};
using Xxh3WithSeedFn = Hash128 (*)(const void* data, size_t len, uint64_t seed);
using VersionNumberFn = unsigned (*)();

struct Xxh3Library {
  Xxh3WithSeedFn hash = nullptr;
  unsigned version = 0;
  // True when hash is the library's CPU-dispatched entry (AVX2/AVX-512 where the CPU has them).
  bool dispatch = false;
  std::string error;
};

const Xxh3Library& Library() {
  static Xxh3Library lib;
  static std::once_flag once;
  std::call_once(once, [] {
    void* dl = nullptr;
    for (const char* name : {"libxxhash.so.0", "libxxhash.so"}) {
      dl = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (dl != nullptr) break;
    }
    if (dl == nullptr) {
      const char* e = dlerror();
      lib.error = e != nullptr ? e : "libxxhash.so.0 not found";
      return;
    }
    // The plain entry point is built for the baseline ISA (SSE2 on x86-64). A library built with xxhash's x86 dispatch
    // also exports the same function as _dispatch, which picks AVX2 or AVX-512 at run time: the same hashes (the
    // vector paths implement one algorithm), at 0.12 s of CPU for a 1.5 GiB scan against 0.20 s.
    auto hash = reinterpret_cast<Xxh3WithSeedFn>(dlsym(dl, "XXH3_128bits_withSeed_dispatch"));
    lib.dispatch = hash != nullptr;
    if (hash == nullptr) hash = reinterpret_cast<Xxh3WithSeedFn>(dlsym(dl, "XXH3_128bits_withSeed"));
    auto version = reinterpret_cast<VersionNumberFn>(dlsym(dl, "XXH_versionNumber"));
    // XXH3's output was frozen in 0.8.0: an earlier library hashes differently.
    if (hash == nullptr || version == nullptr || version() < 800) {
      lib.error = "libxxhash is older than 0.8 or lacks XXH3_128bits_withSeed";
      return;
    }
    lib.version = version();
    lib.hash = hash;
  });
  return lib;
}

// The canonical form of a hash (big-endian, high half first), as xxhsum prints it.
void Store(const Hash128& h, uint8_t* out) {
  for (int i = 0; i < 8; i++) {
    out[i] = static_cast<uint8_t>(h.high64 >> (56 - 8 * i));
    out[8 + i] = static_cast<uint8_t>(h.low64 >> (56 - 8 * i));
  }
}

bool SeedOf(const Napi::Value& v, uint64_t* seed) {
  if (!v.IsBigInt()) return false;
  bool lossless = false;
  *seed = v.As<Napi::BigInt>().Uint64Value(&lossless);
  return lossless;
}

bool Available(Napi::Env env, const char* name) {
  if (Library().hash != nullptr) return true;
  Napi::Error::New(env, std::string(name) + ": libxxhash is not available: " + Library().error).ThrowAsJavaScriptException();
  return false;
}

// xxh3Info(): { version, dispatch } when libxxhash loaded (e.g. "0.8.3", true), { error } when not.
Napi::Value Xxh3InfoJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object r = Napi::Object::New(env);
  const Xxh3Library& lib = Library();
  if (lib.hash != nullptr) {
    const unsigned v = lib.version;
    r.Set("version", Napi::String::New(env, std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100)));
    r.Set("dispatch", Napi::Boolean::New(env, lib.dispatch));
  } else {
    r.Set("error", Napi::String::New(env, lib.error));
  }
  return r;
}

// xxh3(data: Uint8Array, seed: bigint, out: Uint8Array): writes the 16-byte hash of data to out.
Napi::Value Xxh3Js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint8_t *data = nullptr, *out = nullptr;
  size_t length = 0, outLength = 0;
  uint64_t seed = 0;
  if (!Uint8ArrayBytes(info[0], &data, &length) || !SeedOf(info[1], &seed) || !Uint8ArrayBytes(info[2], &out, &outLength) ||
      outLength < 16) {
    Napi::TypeError::New(env, "xxh3: expected (data: Uint8Array, seed: bigint in [0, 2^64), out: 16+ bytes)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (!Available(env, "xxh3")) return env.Undefined();
  Store(Library().hash(data, length, seed), out);
  return env.Undefined();
}

// Reads chunks of an fd and hashes each, in one job on the libuv pool: a run of an incremental scan. Chunks are
// (offset, length) pairs; hashes go to out at 16 x position. A short read stops the run there.
class ChangeHashWorker : public IoWorker {
 public:
  ChangeHashWorker(Napi::Env env, int fd, Napi::Float64Array chunks, uint64_t seed, Napi::Uint8Array out)
      : IoWorker(env, "rnode:changeHashes", ""),
        fd_(fd),
        chunksRef_(Napi::Persistent(chunks.As<Napi::Object>())),
        chunks_(chunks.Data()),
        count_(chunks.ElementLength() / 2),
        seed_(seed),
        out_(out) {}

  void Execute() override {
    // One buffer per pool thread, kept up to the default chunk size (runs come back to back during a scan; the pool
    // lives as long as the process, and an agent's would otherwise keep a 16 MiB chunk's buffer in each thread).
    thread_local uint8_t* buf = nullptr;
    thread_local size_t bufLength = 0;
    constexpr size_t kKeepBytes = 1 << 20;
    struct Trim {
      ~Trim() {
        if (bufLength > kKeepBytes) {
          free(buf);
          buf = nullptr;
          bufLength = 0;
        }
      }
    } trim;
    const auto hash = Library().hash;
    for (size_t i = 0; i < count_; i++) {
      const uint64_t offset = static_cast<uint64_t>(chunks_[2 * i]);
      const size_t length = static_cast<size_t>(chunks_[2 * i + 1]);
      if (length > bufLength) {
        free(buf);
        // Page-aligned: malloc puts a buffer this large 16 bytes past a page, and preads into it cost 0.17 s of CPU
        // for a 1.5 GiB scan against 0.12 s aligned (the kernel's copy to a misaligned destination).
        void* mem = nullptr;
        const int rc = posix_memalign(&mem, 4096, length);
        buf = rc == 0 ? static_cast<uint8_t*>(mem) : nullptr;
        bufLength = buf != nullptr ? length : 0;
        if (buf == nullptr) {
          errno = rc;
          return Fail("posix_memalign");
        }
      }
      const ssize_t n = ReadUpTo(fd_, buf, length, offset);
      if (n < 0) return Fail("pread");
      bytes_ += static_cast<uint64_t>(n);
      if (static_cast<size_t>(n) != length) {
        short_ = static_cast<int64_t>(i);
        got_ = static_cast<size_t>(n);
        return;
      }
      Store(hash(buf, length, seed_), out_.data() + 16 * i);
    }
  }

 protected:
  Napi::Value Result(Napi::Env env) override {
    Napi::Object r = Napi::Object::New(env);
    r.Set("bytes", Napi::Number::New(env, static_cast<double>(bytes_)));
    if (short_ >= 0) {
      r.Set("short", Napi::Number::New(env, static_cast<double>(short_)));
      r.Set("got", Napi::Number::New(env, static_cast<double>(got_)));
    }
    return r;
  }

 private:
  const int fd_;
  Napi::ObjectReference chunksRef_;
  const double* chunks_;
  const size_t count_;
  const uint64_t seed_;
  HeldBytes out_;
  uint64_t bytes_ = 0;
  int64_t short_ = -1;
  size_t got_ = 0;
};

// changeHashes(fd: number, chunks: Float64Array, seed: bigint, out: Uint8Array): Promise<{ bytes, short?, got? }>
Napi::Value ChangeHashesJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t seed = 0;
  if (!info[0].IsNumber() || !info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
      !SeedOf(info[2], &seed) || !info[3].IsTypedArray() || info[3].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    Napi::TypeError::New(env, "changeHashes: expected (fd, chunks: Float64Array, seed: bigint, out: Uint8Array)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Float64Array chunks = info[1].As<Napi::Float64Array>();
  Napi::Uint8Array out = info[3].As<Napi::Uint8Array>();
  if (chunks.ElementLength() % 2 != 0 || out.ByteLength() < 16 * (chunks.ElementLength() / 2)) {
    Napi::RangeError::New(env, "changeHashes: chunks must be (offset, length) pairs and out hold 16 bytes for each").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  for (size_t i = 0; i < chunks.ElementLength(); i++) {
    const double v = chunks[i];
    if (!(v >= 0 && v <= 9007199254740991.0) || v != static_cast<double>(static_cast<uint64_t>(v)) ||
        (i % 2 == 1 && v > 1073741824.0)) {
      Napi::RangeError::New(env, "changeHashes: offsets and lengths must be whole numbers, lengths at most 1 GiB").ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  if (!Available(env, "changeHashes")) return env.Undefined();
  return QueueWorker(new ChangeHashWorker(env, info[0].As<Napi::Number>().Int32Value(), chunks, seed, out));
}

}  // namespace

void InitXxh3(Napi::Env env, Napi::Object exports) {
  exports.Set("xxh3Info", Napi::Function::New(env, Xxh3InfoJs, "xxh3Info"));
  exports.Set("xxh3", Napi::Function::New(env, Xxh3Js, "xxh3"));
  exports.Set("changeHashes", Napi::Function::New(env, ChangeHashesJs, "changeHashes"));
}

}  // namespace rnode
