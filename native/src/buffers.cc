#include "buffers.h"

#include <errno.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>

#include "addon.h"
#include "io_error.h"

namespace rnode {

// memcmp against a zero page uses glibc's SIMD memcmp and stops at the first non-zero byte.
alignas(64) static const uint8_t kZeroPage[4096] = {};

bool AllZero(const uint8_t* p, size_t n) {
  while (n >= sizeof kZeroPage) {
    if (memcmp(p, kZeroPage, sizeof kZeroPage) != 0) return false;
    p += sizeof kZeroPage;
    n -= sizeof kZeroPage;
  }
  return n == 0 || memcmp(p, kZeroPage, n) == 0;
}

namespace {

// isZero(u8: Uint8Array): boolean
Napi::Value IsZero(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint8_t* data = nullptr;
  size_t length = 0;
  if (!Uint8ArrayBytes(info[0], &data, &length)) {
    Napi::TypeError::New(env, "isZero: expected a Uint8Array").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Boolean::New(env, AllZero(data, length));
}

// allocAligned(size: number, alignment: number): Buffer — arguments validated in TS.
Napi::Value AllocAligned(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber() || !info[1].IsNumber()) {
    Napi::TypeError::New(env, "allocAligned: expected (size, alignment) numbers").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const size_t size = static_cast<size_t>(info[0].As<Napi::Number>().Int64Value());
  size_t alignment = static_cast<size_t>(info[1].As<Napi::Number>().Int64Value());
  if (alignment < sizeof(void*)) alignment = sizeof(void*);  // posix_memalign's minimum

  void* mem = nullptr;
  const int rc = posix_memalign(&mem, alignment, size > 0 ? size : 1);
  if (rc != 0) {
    MakeIoError(env, rc, "posix_memalign", "").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  // Zeroed like Buffer.alloc, so a short direct read never exposes stale heap bytes.
  memset(mem, 0, size);
  auto data = static_cast<uint8_t*>(mem);
  Napi::Buffer<uint8_t> buf =
      Napi::Buffer<uint8_t>::New(env, data, size, [](Napi::Env, uint8_t* d) { free(d); });
  if (env.IsExceptionPending()) {
    free(mem);  // node-addon-api drops the finalizer when creation fails
    return env.Undefined();
  }
  return buf;
}

// alignOffset(u8: Uint8Array, alignment: number): bytes to skip from the view's start to an address that is a
// multiple of alignment (a power of two, checked in TS). JS cannot see addresses; copies in and out of the kernel
// run several times faster on 64-byte-aligned buffers than on the 16-byte alignment ArrayBuffers get.
Napi::Value AlignOffset(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint8_t* data = nullptr;
  size_t length = 0;
  if (!Uint8ArrayBytes(info[0], &data, &length) || !info[1].IsNumber()) {
    Napi::TypeError::New(env, "alignOffset: expected (Uint8Array, alignment)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const uintptr_t alignment = static_cast<uintptr_t>(info[1].As<Napi::Number>().Int64Value());
  const uintptr_t address = reinterpret_cast<uintptr_t>(data);
  return Napi::Number::New(env, static_cast<double>((alignment - address % alignment) % alignment));
}

// copyBytes(src, dst): memcpy of all of src to the start of dst (dst at least as long, checked in JS).
// V8 copies into and out of SharedArrayBuffers with relaxed atomic word moves, several times slower than
// glibc's memcpy; chunk slots are shared, so their copies come here.
Napi::Value CopyBytes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint8_t* src = nullptr;
  uint8_t* dst = nullptr;
  size_t srcLen = 0, dstLen = 0;
  if (!Uint8ArrayBytes(info[0], &src, &srcLen) || !Uint8ArrayBytes(info[1], &dst, &dstLen) || srcLen > dstLen) {
    Napi::TypeError::New(env, "copyBytes: expected (src, dst) Uint8Arrays, dst at least as long").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  memmove(dst, src, srcLen);
  return env.Undefined();
}

// zeroBytes(dst): memset to 0 (see copyBytes for why not TypedArray.fill).
Napi::Value ZeroBytes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint8_t* dst = nullptr;
  size_t length = 0;
  if (!Uint8ArrayBytes(info[0], &dst, &length)) {
    Napi::TypeError::New(env, "zeroBytes: expected a Uint8Array").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  memset(dst, 0, length);
  return env.Undefined();
}

constexpr size_t kHugePage = 2 * 1024 * 1024;

// allocMapped(size: number): Buffer — its own anonymous mapping, page-aligned; from 2 MiB up, 2 MiB-aligned and
// advised for transparent huge pages. Pages are zero and become resident only when written. Why: a first write to a
// fresh 4 KiB page costs a fault, ~19 us of CPU on the 2-vCPU VMs we measure on (writing 48 MiB of fresh memory: 230
// ms of CPU; 5 ms with huge pages), and a replicate's three pack buffers took 10,600 of them on the thread that
// sequences the whole pipeline.
Napi::Value AllocMapped(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) {
    Napi::TypeError::New(env, "allocMapped: expected a size").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const size_t size = static_cast<size_t>(info[0].As<Napi::Number>().Int64Value());
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const bool huge = size >= kHugePage;
  const size_t align = huge ? kHugePage : page;
  const size_t length = ((size > 0 ? size : 1) + align - 1) / align * align;
  // Mapped with room to trim to the alignment: mmap only promises pages.
  const size_t span = huge ? length + kHugePage : length;
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) {
    MakeIoError(env, errno, "mmap", "").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto* base = static_cast<uint8_t*>(raw);
  uint8_t* start = base;
  if (huge) {
    const uintptr_t addr = reinterpret_cast<uintptr_t>(base);
    start = reinterpret_cast<uint8_t*>((addr + kHugePage - 1) & ~(uintptr_t)(kHugePage - 1));
    if (start > base) munmap(base, static_cast<size_t>(start - base));
    const size_t tail = span - static_cast<size_t>(start - base) - length;
    if (tail > 0) munmap(start + length, tail);
#if defined(MADV_HUGEPAGE)
    madvise(start, length, MADV_HUGEPAGE);  // advice only: without THP the pages are 4 KiB as before
#endif
  }
  // V8 is told of the memory, so garbage collection frees these buffers as it would ArrayBuffers of this size.
  Napi::MemoryManagement::AdjustExternalMemory(env, static_cast<int64_t>(length));
  Napi::Buffer<uint8_t> buf = Napi::Buffer<uint8_t>::New(env, start, size, [length](Napi::Env e, uint8_t* d) {
    munmap(d, length);
    Napi::MemoryManagement::AdjustExternalMemory(e, -static_cast<int64_t>(length));
  });
  if (env.IsExceptionPending()) {
    munmap(start, length);
    Napi::MemoryManagement::AdjustExternalMemory(env, -static_cast<int64_t>(length));
    return env.Undefined();
  }
  return buf;
}

// discardPages(buf): gives a buffer's pages back to the system (MADV_DONTNEED). They read as zero again and cost no
// RSS until written; the mapping stays until the GC frees the buffer. Only for buffers from allocMapped, whose memory
// is a private anonymous mapping of their own. Why: an agent's finished pack buffers stayed resident until a
// collection found them. Reusing them instead cut its major GCs 913 -> 105 in 25 minutes, and the garbage those GCs
// had freed (the glibc heap: 9 -> 47 MiB) cost more than the buffers.
Napi::Value DiscardPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint8_t* data = nullptr;
  size_t length = 0;
  if (!Uint8ArrayBytes(info[0], &data, &length)) {
    Napi::TypeError::New(env, "discardPages: expected a Uint8Array").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  if (reinterpret_cast<uintptr_t>(data) % page != 0) {
    Napi::TypeError::New(env, "discardPages: the buffer does not start at a page").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (length == 0) return env.Undefined();
  // The whole mapping, as allocMapped sized it: a huge page past the buffer's end, filled in, is resident too.
  const size_t align = length >= kHugePage ? kHugePage : page;
  const size_t span = (length + align - 1) / align * align;
  if (madvise(data, span, MADV_DONTNEED) != 0) {
    MakeIoError(env, errno, "madvise", "").ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

// returnLargeFreesToSystem(): makes every later allocation of 128 KiB or more its own mapping, unmapped when freed.
// glibc raises that threshold each time such a block is freed (up to 32 MiB), after which 1-8 MiB buffers come from
// its heaps and what they leave behind is kept: a long-running agent with three busy slots grew to 220+ MiB RSS
// (136 MiB with a fixed threshold). Returns whether the allocator took it (false off glibc).
Napi::Value ReturnLargeFreesToSystem(const Napi::CallbackInfo& info) {
#if defined(__GLIBC__)
  return Napi::Boolean::New(info.Env(), mallopt(M_MMAP_THRESHOLD, 128 * 1024) == 1);
#else
  return Napi::Boolean::New(info.Env(), false);
#endif
}

// keepFreedHeap(bytes): freed memory at the top of glibc's heaps stays for reuse up to `bytes`, instead of going back
// to the system once 128 KiB of it is free (glibc's default, raised only as large blocks are freed). A receiving node
// frees and takes again every socket read and message buffer: returned and refaulted, that churn was 42,000-68,000 page
// faults and 0.4-1.1 s of its main thread's CPU in a 1.5 GiB ws:// replicate (20,000-21,000 faults with 32 MiB kept).
// Fixes glibc's large-block threshold where it stands (128 KiB at start). Returns whether the allocator took it
// (false off glibc).
Napi::Value KeepFreedHeap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) {
    Napi::TypeError::New(env, "keepFreedHeap: expected a byte count").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const int64_t bytes = info[0].As<Napi::Number>().Int64Value();
  if (bytes < 0 || bytes > INT32_MAX) {
    Napi::RangeError::New(env, "keepFreedHeap: the byte count must be in [0, 2^31)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
#if defined(__GLIBC__)
  return Napi::Boolean::New(env, mallopt(M_TRIM_THRESHOLD, static_cast<int>(bytes)) == 1);
#else
  return Napi::Boolean::New(env, false);
#endif
}

// trimNativeHeap(): hands the free pages inside glibc's heaps (every thread's arena) back to the system. Freed small
// blocks leave holes between live ones that glibc never returns by itself: an agent's heaps grew 5 -> 21 MiB in 40
// minutes, and one malloc_trim(0) gave back 11-17 MiB of its RSS. Returns whether anything was released (false off
// glibc).
Napi::Value TrimNativeHeap(const Napi::CallbackInfo& info) {
#if defined(__GLIBC__)
  return Napi::Boolean::New(info.Env(), malloc_trim(0) == 1);
#else
  return Napi::Boolean::New(info.Env(), false);
#endif
}

// adviseHugePages(u8): advises the whole 2 MiB pages inside a view for transparent huge pages (MADV_HUGEPAGE), for
// shared buffers, which V8 allocates (allocMapped maps its own). As there, a first write per 4 KiB page costs ~19 us
// of CPU here: a 1.5 GiB recover faulted 18,000 times (9,800 with its slots on huge pages, 2.0 s -> 1.6 s) and a cold
// export 30,000 (5,000). Advice only: without THP the pages stay 4 KiB. Returns the bytes advised (0: none fit).
Napi::Value AdviseHugePages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint8_t* data = nullptr;
  size_t length = 0;
  if (!Uint8ArrayBytes(info[0], &data, &length)) {
    Napi::TypeError::New(env, "adviseHugePages: expected a Uint8Array").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const uintptr_t from = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~(uintptr_t)(kHugePage - 1);
  const uintptr_t to = (reinterpret_cast<uintptr_t>(data) + length) & ~(uintptr_t)(kHugePage - 1);
  if (to <= from) return Napi::Number::New(env, 0);
#if defined(MADV_HUGEPAGE)
  if (madvise(reinterpret_cast<void*>(from), to - from, MADV_HUGEPAGE) != 0) return Napi::Number::New(env, 0);
  return Napi::Number::New(env, static_cast<double>(to - from));
#else
  return Napi::Number::New(env, 0);
#endif
}

}  // namespace

void InitBuffers(Napi::Env env, Napi::Object exports) {
  exports.Set("isZero", Napi::Function::New(env, IsZero, "isZero"));
  exports.Set("allocAligned", Napi::Function::New(env, AllocAligned, "allocAligned"));
  exports.Set("allocMapped", Napi::Function::New(env, AllocMapped, "allocMapped"));
  exports.Set("alignOffset", Napi::Function::New(env, AlignOffset, "alignOffset"));
  exports.Set("copyBytes", Napi::Function::New(env, CopyBytes, "copyBytes"));
  exports.Set("zeroBytes", Napi::Function::New(env, ZeroBytes, "zeroBytes"));
  exports.Set("discardPages", Napi::Function::New(env, DiscardPages, "discardPages"));
  exports.Set("returnLargeFreesToSystem", Napi::Function::New(env, ReturnLargeFreesToSystem, "returnLargeFreesToSystem"));
  exports.Set("trimNativeHeap", Napi::Function::New(env, TrimNativeHeap, "trimNativeHeap"));
  exports.Set("keepFreedHeap", Napi::Function::New(env, KeepFreedHeap, "keepFreedHeap"));
  exports.Set("adviseHugePages", Napi::Function::New(env, AdviseHugePages, "adviseHugePages"));
}

}  // namespace rnode
