#include "xxh64.h"

#include <cstring>

#include "addon.h"

namespace rnode {
namespace {

// The reference algorithm (xxhash.h, XXH64), scalar: the compiler keeps the four lanes in registers.
constexpr uint64_t P1 = 11400714785074694791ULL;
constexpr uint64_t P2 = 14029467366897019727ULL;
constexpr uint64_t P3 = 1609587929392839161ULL;
constexpr uint64_t P4 = 9650029242287828579ULL;
constexpr uint64_t P5 = 2870177450012600261ULL;

inline uint64_t Rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
// Little-endian loads; memcpy compiles to one unaligned load.
inline uint64_t Read64(const uint8_t* p) { uint64_t v; memcpy(&v, p, 8); return v; }
inline uint32_t Read32(const uint8_t* p) { uint32_t v; memcpy(&v, p, 4); return v; }

inline uint64_t Round(uint64_t acc, uint64_t input) {
  acc += input * P2;
  acc = Rotl(acc, 31);
  return acc * P1;
}

inline uint64_t MergeRound(uint64_t acc, uint64_t val) {
  acc ^= Round(0, val);
  return acc * P1 + P4;
}

// xxh64(data: Uint8Array, seed?: bigint): bigint
Napi::Value Xxh64Js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint8_t* data = nullptr;
  size_t length = 0;
  if (!Uint8ArrayBytes(info[0], &data, &length)) {
    Napi::TypeError::New(env, "xxh64: expected a Uint8Array").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uint64_t seed = 0;
  if (info.Length() > 1 && !info[1].IsUndefined()) {
    bool lossless = false;
    if (!info[1].IsBigInt()) {
      Napi::TypeError::New(env, "xxh64: seed must be a bigint").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    seed = info[1].As<Napi::BigInt>().Uint64Value(&lossless);
  }
  return Napi::BigInt::New(env, Xxh64(data, length, seed));
}

}  // namespace

uint64_t Xxh64(const uint8_t* p, size_t len, uint64_t seed) {
  const uint8_t* const end = p + len;
  uint64_t h;
  if (len >= 32) {
    const uint8_t* const limit = end - 32;
    uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
    do {
      v1 = Round(v1, Read64(p));
      v2 = Round(v2, Read64(p + 8));
      v3 = Round(v3, Read64(p + 16));
      v4 = Round(v4, Read64(p + 24));
      p += 32;
    } while (p <= limit);
    h = Rotl(v1, 1) + Rotl(v2, 7) + Rotl(v3, 12) + Rotl(v4, 18);
    h = MergeRound(h, v1);
    h = MergeRound(h, v2);
    h = MergeRound(h, v3);
    h = MergeRound(h, v4);
  } else {
    h = seed + P5;
  }
  h += static_cast<uint64_t>(len);
  while (p + 8 <= end) {
    h ^= Round(0, Read64(p));
    h = Rotl(h, 27) * P1 + P4;
    p += 8;
  }
  if (p + 4 <= end) {
    h ^= static_cast<uint64_t>(Read32(p)) * P1;
    h = Rotl(h, 23) * P2 + P3;
    p += 4;
  }
  while (p < end) {
    h ^= (*p) * P5;
    h = Rotl(h, 11) * P1;
    p++;
  }
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  h *= P3;
  h ^= h >> 32;
  return h;
}

void InitXxh64(Napi::Env env, Napi::Object exports) {
  exports.Set("xxh64", Napi::Function::New(env, Xxh64Js, "xxh64"));
}

}  // namespace rnode
