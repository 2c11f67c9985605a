// The slice of VMware's VixDiskLib C ABI that rnode uses, declared here so that nothing of VDDK (which is
// proprietary) is needed at build time. Layouts are those of x86-64 Linux; the library is dlopen'ed at run time.
#pragma once
#include <stdarg.h>
#include <stdint.h>

namespace rnode::vddk {

using VixError = uint64_t;
constexpr VixError kVixOk = 0;
constexpr uint32_t kFlagOpenReadOnly = 4;
constexpr uint64_t kSectorSize = 512;
// QueryAllocatedBlocks: the chunk size is at least this many sectors, and one call covers at most this many chunks.
constexpr uint64_t kMinChunkSectors = 128;
constexpr uint64_t kMaxChunksPerQuery = 512 * 1024;

// InitEx's major.minor: the API level rnode is written against (6.7: QueryAllocatedBlocks).
constexpr uint32_t kApiMajor = 6;
constexpr uint32_t kApiMinor = 7;

using Connection = void*;
using Handle = void*;
using LogFunc = void(const char* fmt, va_list args);

enum CredType : int { kCredUid = 1, kCredSessionId = 2, kCredTicketId = 3, kCredSspi = 4, kCredUnknown = 256 };
enum SpecType : int { kSpecVmx = 0, kSpecVStorageObject = 1, kSpecUnknown = 2 };

struct VStorageObjectSpec {
  char* id;
  char* datastoreMoRef;
  char* ssId;
};

struct ConnectParams {
  char* vmxSpec;     // "moref=vm-42"
  char* serverName;  // vCenter or ESXi host
  char* thumbPrint;  // SHA-1 of the server certificate, "AA:BB:..."
  long reserved1;
  CredType credType;
  union {
    struct {
      char* userName;
      char* password;
    } uid;
    struct {
      char* cookie;
      char* userName;
      char* key;
    } sessionId;
    void* reserved2;
  } creds;
  uint32_t port;         // vSphere API port (443)
  uint32_t nfcHostPort;  // ESXi NFC port (902); 0 = default
  char* reserved3;
  char reserved4[8];
  void* reserved5;
  union {
    VStorageObjectSpec vStorageObjSpec;
  } spec;
  SpecType specType;
};

struct Geometry {
  uint32_t cylinders;
  uint32_t heads;
  uint32_t sectors;
};

// Only the fields present since VDDK 5.5 are read; 7.0 appended sector sizes we do not rely on.
struct Info {
  Geometry biosGeo;
  Geometry physGeo;
  uint64_t capacity;  // in 512-byte sectors
  int adapterType;
  int numLinks;
  char* parentFileNameHint;
  char* uuid;
};

struct Block {
  uint64_t offset;  // sectors
  uint64_t length;  // sectors
};

struct BlockList {
  uint32_t numBlocks;
  Block blocks[1];
};

// Function pointer types, one per entry point rnode resolves with dlsym.
using InitExFn = VixError (*)(uint32_t major, uint32_t minor, LogFunc* log, LogFunc* warn, LogFunc* panic,
                              const char* libDir, const char* configFile);
using ExitFn = void (*)();
using GetErrorTextFn = char* (*)(VixError err, const char* locale);
using FreeErrorTextFn = void (*)(char* text);
using PrepareForAccessFn = VixError (*)(const ConnectParams* params, const char* identity);
using EndAccessFn = VixError (*)(const ConnectParams* params, const char* identity);
using ConnectExFn = VixError (*)(const ConnectParams* params, char readOnly, const char* snapshotRef,
                                 const char* transportModes, Connection* connection);
using DisconnectFn = VixError (*)(Connection connection);
using OpenFn = VixError (*)(const Connection connection, const char* path, uint32_t flags, Handle* handle);
using CloseFn = VixError (*)(Handle handle);
using GetInfoFn = VixError (*)(Handle handle, Info** info);
using FreeInfoFn = void (*)(Info* info);
using ReadFn = VixError (*)(Handle handle, uint64_t startSector, uint64_t numSectors, unsigned char* buf);
using GetTransportModeFn = const char* (*)(Handle handle);
using QueryAllocatedBlocksFn = VixError (*)(Handle handle, uint64_t startSector, uint64_t numSectors,
                                            uint64_t chunkSize, BlockList** list);
using FreeBlockListFn = VixError (*)(BlockList* list);
using CleanupFn = VixError (*)(const ConnectParams* params, uint32_t* numCleanedUp, uint32_t* numRemaining);

}  // namespace rnode::vddk
