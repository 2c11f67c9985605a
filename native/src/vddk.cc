#include "vddk.h"

#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <string>
#include <vector>

#include "io_worker.h"
#include "vddk_abi.h"

namespace rnode {
namespace {

using namespace vddk;

// The layout must match VDDK's own header on x86-64, field for field.
static_assert(offsetof(ConnectParams, credType) == 32, "ConnectParams.credType");
static_assert(offsetof(ConnectParams, creds) == 40, "ConnectParams.creds");
static_assert(offsetof(ConnectParams, port) == 64, "ConnectParams.port");
static_assert(offsetof(ConnectParams, nfcHostPort) == 68, "ConnectParams.nfcHostPort");
static_assert(offsetof(ConnectParams, spec) == 96, "ConnectParams.spec");
static_assert(sizeof(ConnectParams) == 128, "ConnectParams size");
static_assert(offsetof(Info, capacity) == 24, "Info.capacity");
static_assert(sizeof(Block) == 16 && offsetof(BlockList, blocks) == 8, "BlockList layout");

// ---- the library: one per process, as VDDK itself is process-global ----------------------

struct Library {
  std::mutex mu;  // load, init and exit
  void* dl = nullptr;
  std::string path;
  bool initialized = false;
  std::string libdir;

  InitExFn initEx = nullptr;
  ExitFn exit = nullptr;
  GetErrorTextFn getErrorText = nullptr;
  FreeErrorTextFn freeErrorText = nullptr;
  ConnectExFn connectEx = nullptr;
  DisconnectFn disconnect = nullptr;
  OpenFn open = nullptr;
  CloseFn close = nullptr;
  GetInfoFn getInfo = nullptr;
  FreeInfoFn freeInfo = nullptr;
  ReadFn read = nullptr;
  // Optional: older releases (or stand-ins) may lack them.
  PrepareForAccessFn prepareForAccess = nullptr;
  EndAccessFn endAccess = nullptr;
  GetTransportModeFn getTransportMode = nullptr;
  QueryAllocatedBlocksFn queryAllocatedBlocks = nullptr;
  FreeBlockListFn freeBlockList = nullptr;
  CleanupFn cleanup = nullptr;

  // VixDiskLib_Open and VixDiskLib_Close are not thread-safe against each other in VDDK.
  std::mutex openClose;
};

// ---- the designated thread ------------------------------------------------------------------
// VMware's guidance: InitEx and Exit once per process from one thread, and every Open and Close (we add
// ConnectEx, Disconnect, PrepareForAccess, EndAccess and Cleanup) on one designated thread; calls from several
// threads fail intermittently. Reads of open handles may run on any thread, one call per handle at a time.
// So these calls are jobs on one thread that lives as long as the process; the pool thread of the AsyncWorker
// that queued a job waits for it (the event loop never does).
class VddkThread {
 public:
  void Run(const std::function<void()>& fn) {
    Job job{&fn};
    {
      std::unique_lock<std::mutex> lk(mu_);
      if (!started_) {
        std::thread([this] { Loop(); }).detach();
        started_ = true;
      }
      queue_.push_back(&job);
      cv_.notify_all();
      done_.wait(lk, [&job] { return job.done; });
    }
  }

 private:
  struct Job {
    const std::function<void()>* fn;
    bool done = false;
  };

  void Loop() {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [this] { return !queue_.empty(); });
      Job* job = queue_.front();
      queue_.pop_front();
      lk.unlock();
      (*job->fn)();
      lk.lock();
      job->done = true;
      done_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_, done_;
  std::deque<Job*> queue_;
  bool started_ = false;
};

// Never destroyed: the thread may still be waiting for work when the process exits.
VddkThread& Designated() {
  static VddkThread* t = new VddkThread();
  return *t;
}

Library& Lib() {
  static Library lib;
  return lib;
}

bool Ready() {
  Library& lib = Lib();
  std::lock_guard<std::mutex> lk(lib.mu);
  return lib.initialized;
}

// VDDK's log callbacks arrive on its own threads; they are quiet unless RNODE_VDDK_DEBUG is set.
void LogTo(const char* level, const char* fmt, va_list args) {
  if (getenv("RNODE_VDDK_DEBUG") == nullptr) return;
  char line[1024];
  vsnprintf(line, sizeof line, fmt, args);
  size_t n = strlen(line);
  while (n > 0 && line[n - 1] == '\n') line[--n] = '\0';
  fprintf(stderr, "vddk %s: %s\n", level, line);
}
void LogInfo(const char* fmt, va_list args) { LogTo("info", fmt, args); }
void LogWarn(const char* fmt, va_list args) { LogTo("warning", fmt, args); }
void LogPanic(const char* fmt, va_list args) {
  char line[1024];
  vsnprintf(line, sizeof line, fmt, args);
  fprintf(stderr, "vddk panic: %s\n", line);
}

// ---- errors ---------------------------------------------------------------------------

struct Failure {
  bool failed = false;
  std::string code;     // RNODE_VDDK_*
  std::string op;       // the VixDiskLib call, or "dlopen"...
  std::string message;  // VDDK's own text, or ours
  bool isVix = false;
  VixError vix = 0;
};

const char* CodeForVix(VixError err) {
  switch (err & 0xFFFF) {
    case 2: return "RNODE_VDDK_OUT_OF_MEMORY";
    case 3: return "RNODE_VDDK_INVALID_ARG";
    case 4: return "RNODE_VDDK_FILE_NOT_FOUND";
    case 6: return "RNODE_VDDK_NOT_SUPPORTED";
    default: return "RNODE_VDDK_ERROR";
  }
}

// Called on the worker thread, right after the failing call: GetErrorText may block.
Failure VixFailure(VixError err, const char* op) {
  Failure f;
  f.failed = true;
  f.code = CodeForVix(err);
  f.op = op;
  f.isVix = true;
  f.vix = err;
  Library& lib = Lib();
  if (lib.getErrorText != nullptr) {
    char* text = lib.getErrorText(err, nullptr);
    if (text != nullptr) {
      f.message = text;
      if (lib.freeErrorText != nullptr) lib.freeErrorText(text);
    }
  }
  while (!f.message.empty() && (f.message.back() == '\n' || f.message.back() == ' ')) f.message.pop_back();
  if (f.message.empty()) f.message = "no error text from VDDK";
  return f;
}

Failure OwnFailure(const char* code, const char* op, std::string message) {
  Failure f;
  f.failed = true;
  f.code = code;
  f.op = op;
  f.message = std::move(message);
  return f;
}

Napi::Error MakeVddkError(Napi::Env env, const Failure& f) {
  std::string message = "VixDiskLib_" + f.op + ": " + f.message;
  if (f.isVix) {
    char hex[32];
    snprintf(hex, sizeof hex, "0x%llx", static_cast<unsigned long long>(f.vix));
    message += std::string(" (VixError ") + hex + ")";
  } else if (f.op == "dlopen" || f.op == "dlsym") {
    message = f.op + ": " + f.message;
  }
  Napi::Error error = Napi::Error::New(env, message);
  Napi::Object obj = error.Value();
  obj.Set("code", Napi::String::New(env, f.code));
  obj.Set("op", Napi::String::New(env, f.op));
  obj.Set("vddkText", Napi::String::New(env, f.message));
  if (f.isVix) {
    obj.Set("vixError", Napi::BigInt::New(env, static_cast<uint64_t>(f.vix)));
    obj.Set("vixCode", Napi::Number::New(env, static_cast<double>(f.vix & 0xFFFF)));
  }
  return error;
}

// ---- handles ------------------------------------------------------------------------------

// Connections and disks are Externals tagged with their type. A handle still open when collected is leaked
// on purpose: closing it would block the event loop on network I/O inside a GC finalizer.
struct ConnState {
  Connection conn = nullptr;
  std::mutex mu;
  bool closed = false;
};

struct DiskState {
  Handle handle = nullptr;
  std::mutex mu;  // a VDDK handle serves one call at a time
  bool closed = false;
};

const napi_type_tag kConnTag = {0x7a1c4d29e3b84f10ULL, 0x9d2e61c8a05b7f34ULL};
const napi_type_tag kDiskTag = {0x3f8b2a6d91c04e57ULL, 0xb61d0e9c4a7f2385ULL};

template <typename T>
T* Unwrap(Napi::Value v, const napi_type_tag& tag) {
  if (!v.IsExternal()) return nullptr;
  auto ext = v.As<Napi::External<T>>();
  if (!ext.CheckTypeTag(&tag)) return nullptr;
  return ext.Data();
}

// ---- option helpers: TS validated everything; these only guard the types -----------------

bool GetString(Napi::Object o, const char* name, std::string* out, bool required) {
  Napi::Value v = o.Get(name);
  if (v.IsUndefined() || v.IsNull()) return !required;
  if (!v.IsString()) return false;
  *out = v.As<Napi::String>().Utf8Value();
  return out->find('\0') == std::string::npos;
}

bool GetNumber(Napi::Object o, const char* name, double* out, bool required) {
  Napi::Value v = o.Get(name);
  if (v.IsUndefined()) return !required;
  if (!v.IsNumber()) return false;
  *out = v.As<Napi::Number>().DoubleValue();
  return *out >= 0 && *out <= 9007199254740991.0 && *out == static_cast<double>(static_cast<uint64_t>(*out));
}

Napi::Value Reject(Napi::Env env, Napi::Error err) {
  return RejectedPromise(env, err.Value());
}

Napi::Value TypeFail(Napi::Env env, const std::string& what) {
  return Reject(env, Napi::TypeError::New(env, what));
}

// Bytes that must not outlive their use (passwords): copied from a caller Buffer, wiped on every path.
class SecretBytes {
 public:
  SecretBytes() = default;
  SecretBytes(const SecretBytes&) = delete;
  SecretBytes& operator=(const SecretBytes&) = delete;
  ~SecretBytes() { Wipe(); }
  void Assign(const uint8_t* data, size_t n) {
    Wipe();
    bytes_.assign(data, data + n);
    bytes_.push_back('\0');
  }
  char* c_str() { return bytes_.empty() ? nullptr : bytes_.data(); }
  void Wipe() {
    if (!bytes_.empty()) explicit_bzero(bytes_.data(), bytes_.size());
    bytes_.clear();
    bytes_.shrink_to_fit();
  }

 private:
  std::vector<char> bytes_;
};

// Connect parameters as owned strings; the password lives in SecretBytes only.
struct Params {
  std::string vmxSpec, serverName, thumbprint, userName, identity;
  SecretBytes password;
  uint32_t port = 0;
  uint32_t nfcHostPort = 0;
  bool remote = false;

  ConnectParams Build() {
    ConnectParams p;
    memset(&p, 0, sizeof p);
    p.specType = kSpecVmx;
    p.vmxSpec = vmxSpec.empty() ? nullptr : &vmxSpec[0];
    if (remote) {
      p.serverName = &serverName[0];
      p.thumbPrint = thumbprint.empty() ? nullptr : &thumbprint[0];
      p.credType = kCredUid;
      p.creds.uid.userName = &userName[0];
      p.creds.uid.password = password.c_str();
      p.port = port;
      p.nfcHostPort = nfcHostPort;
    }
    return p;
  }
};

// Reads {vmxSpec, serverName, thumbprint, userName, password: Uint8Array, port, nfcHostPort, identity}.
bool ReadParams(Napi::Object o, Params* p, std::string* why) {
  double port = 0, nfc = 0;
  if (!GetString(o, "vmxSpec", &p->vmxSpec, true)) { *why = "vmxSpec"; return false; }
  if (!GetString(o, "serverName", &p->serverName, false)) { *why = "serverName"; return false; }
  if (!GetString(o, "thumbprint", &p->thumbprint, false)) { *why = "thumbprint"; return false; }
  if (!GetString(o, "userName", &p->userName, false)) { *why = "userName"; return false; }
  if (!GetString(o, "identity", &p->identity, true)) { *why = "identity"; return false; }
  if (!GetNumber(o, "port", &port, false) || port > 65535) { *why = "port"; return false; }
  if (!GetNumber(o, "nfcHostPort", &nfc, false) || nfc > 65535) { *why = "nfcHostPort"; return false; }
  p->port = static_cast<uint32_t>(port);
  p->nfcHostPort = static_cast<uint32_t>(nfc);
  p->remote = !p->serverName.empty();
  Napi::Value pw = o.Get("password");
  if (!pw.IsUndefined()) {
    if (!pw.IsTypedArray() || pw.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
      *why = "password (a Uint8Array)";
      return false;
    }
    auto bytes = pw.As<Napi::Uint8Array>();
    if (memchr(bytes.Data(), 0, bytes.ByteLength()) != nullptr) { *why = "password (no NUL bytes)"; return false; }
    p->password.Assign(bytes.Data(), bytes.ByteLength());
  }
  if (p->remote && p->userName.empty()) { *why = "userName"; return false; }
  return true;
}

// ---- workers ----------------------------------------------------------------------------

// A VDDK call's worker (io_worker.h's promise): a failure is VDDK's, or one of ours with an RNODE_VDDK_* code.
class VddkWorker : public PromiseWorker {
 public:
  VddkWorker(Napi::Env env, const char* name) : PromiseWorker(env, name) {}

 protected:
  Napi::Value Result(Napi::Env env) override { return env.Undefined(); }
  bool Failed() const override { return fail_.failed; }
  Napi::Error FailureError(Napi::Env env) const override { return MakeVddkError(env, fail_); }
  bool NotReady() {
    if (Ready()) return false;
    fail_ = OwnFailure("RNODE_VDDK_NOT_INITIALIZED", "Init", "VDDK is not initialized (call init first, or it was exited)");
    return true;
  }

  Failure fail_;
};

// The VDDK calls that must all run on one thread (InitEx, ConnectEx, Open, Close, ...): Execute hands the work to
// the designated thread and waits, so the libuv thread only blocks.
class DesignatedWorker : public VddkWorker {
 public:
  using VddkWorker::VddkWorker;
  void Execute() final {
    Designated().Run([this] { OnDesignatedThread(); });
  }

 protected:
  virtual void OnDesignatedThread() = 0;
};

// Runs call with the C connection parameters built from params, then wipes them (they hold the password).
template <typename F>
VixError WithConnectParams(Params& params, F call) {
  ConnectParams p = params.Build();
  const VixError err = call(&p);
  memset(&p, 0, sizeof p);
  return err;
}

// init({libraryPath, libdir, configFile?}): dlopen + dlsym + InitEx. Idempotent for the same library.
class InitWorker : public DesignatedWorker {
 public:
  InitWorker(Napi::Env env, std::string path, std::string libdir, std::string config)
      : DesignatedWorker(env, "rnode:vddk:init"), path_(std::move(path)), libdir_(std::move(libdir)), config_(std::move(config)) {}

  void OnDesignatedThread() override {
    Library& lib = Lib();
    std::lock_guard<std::mutex> lk(lib.mu);
    if (lib.dl != nullptr && lib.path != path_) {
      fail_ = OwnFailure("RNODE_VDDK_LOAD", "dlopen", "VDDK is already loaded from " + lib.path + "; one process uses one VDDK");
      return;
    }
    if (lib.dl == nullptr && !Load(lib)) return;
    if (lib.initialized) {
      if (lib.libdir != libdir_) {
        fail_ = OwnFailure("RNODE_VDDK_LOAD", "InitEx", "VDDK is already initialized with libdir " + lib.libdir);
      }
      return;
    }
    const VixError err = lib.initEx(kApiMajor, kApiMinor, LogInfo, LogWarn, LogPanic, libdir_.c_str(),
                                    config_.empty() ? nullptr : config_.c_str());
    if (err != kVixOk) {
      fail_ = VixFailure(err, "InitEx");
      return;
    }
    lib.initialized = true;
    lib.libdir = libdir_;
  }

 protected:
  Napi::Value Result(Napi::Env env) override {
    Library& lib = Lib();
    Napi::Object o = Napi::Object::New(env);
    o.Set("queryAllocatedBlocks", Napi::Boolean::New(env, lib.queryAllocatedBlocks != nullptr && lib.freeBlockList != nullptr));
    o.Set("prepareForAccess", Napi::Boolean::New(env, lib.prepareForAccess != nullptr && lib.endAccess != nullptr));
    return o;
  }

 private:
  template <typename Fn>
  bool Sym(void* dl, const char* name, Fn* out, bool required) {
    dlerror();
    *out = reinterpret_cast<Fn>(dlsym(dl, name));
    if (*out == nullptr && required) {
      fail_ = OwnFailure("RNODE_VDDK_LOAD", "dlsym", std::string(name) + " is missing from " + path_ +
                                                     "; is this a VDDK 6.7 or later libvixDiskLib.so?");
      return false;
    }
    return true;
  }

  bool Load(Library& lib) {
    void* dl = dlopen(path_.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (dl == nullptr) {
      const char* e = dlerror();
      fail_ = OwnFailure("RNODE_VDDK_LOAD", "dlopen", e != nullptr ? e : path_);
      return false;
    }
    // Every symbol resolves before any is published, so a failed load leaves the library untouched.
    InitExFn initEx; ExitFn exitFn; GetErrorTextFn get; FreeErrorTextFn freeText; ConnectExFn connectEx;
    DisconnectFn disconnect; OpenFn open; CloseFn close; GetInfoFn getInfo; FreeInfoFn freeInfo; ReadFn read;
    PrepareForAccessFn prep; EndAccessFn end; GetTransportModeFn mode; QueryAllocatedBlocksFn qab; FreeBlockListFn fbl;
    CleanupFn cleanup;
    if (!Sym(dl, "VixDiskLib_InitEx", &initEx, true) || !Sym(dl, "VixDiskLib_Exit", &exitFn, true) ||
        !Sym(dl, "VixDiskLib_GetErrorText", &get, true) || !Sym(dl, "VixDiskLib_FreeErrorText", &freeText, true) ||
        !Sym(dl, "VixDiskLib_ConnectEx", &connectEx, true) || !Sym(dl, "VixDiskLib_Disconnect", &disconnect, true) ||
        !Sym(dl, "VixDiskLib_Open", &open, true) || !Sym(dl, "VixDiskLib_Close", &close, true) ||
        !Sym(dl, "VixDiskLib_GetInfo", &getInfo, true) || !Sym(dl, "VixDiskLib_FreeInfo", &freeInfo, true) ||
        !Sym(dl, "VixDiskLib_Read", &read, true) ||
        !Sym(dl, "VixDiskLib_PrepareForAccess", &prep, false) || !Sym(dl, "VixDiskLib_EndAccess", &end, false) ||
        !Sym(dl, "VixDiskLib_GetTransportMode", &mode, false) ||
        !Sym(dl, "VixDiskLib_QueryAllocatedBlocks", &qab, false) || !Sym(dl, "VixDiskLib_FreeBlockList", &fbl, false) ||
        !Sym(dl, "VixDiskLib_Cleanup", &cleanup, false)) {
      dlclose(dl);
      return false;
    }
    lib.dl = dl;
    lib.path = path_;
    lib.initEx = initEx; lib.exit = exitFn; lib.getErrorText = get; lib.freeErrorText = freeText;
    lib.connectEx = connectEx; lib.disconnect = disconnect; lib.open = open; lib.close = close;
    lib.getInfo = getInfo; lib.freeInfo = freeInfo; lib.read = read;
    lib.prepareForAccess = prep; lib.endAccess = end; lib.getTransportMode = mode;
    lib.queryAllocatedBlocks = qab; lib.freeBlockList = fbl; lib.cleanup = cleanup;
    return true;
  }

  std::string path_, libdir_, config_;
};

// connect({...params, snapshotRef?, transports?, prepareForAccess}): PrepareForAccess + ConnectEx, read-only.
class ConnectWorker : public DesignatedWorker {
 public:
  ConnectWorker(Napi::Env env) : DesignatedWorker(env, "rnode:vddk:connect") {}
  Params params;
  std::string snapshotRef, transports;
  bool prepare = false;

  void OnDesignatedThread() override {
    if (NotReady()) return params.password.Wipe();
    Library& lib = Lib();
    ConnectParams p = params.Build();
    bool prepared = false;
    if (prepare && params.remote && lib.prepareForAccess != nullptr) {
      const VixError err = lib.prepareForAccess(&p, params.identity.c_str());
      if (err != kVixOk) {
        fail_ = VixFailure(err, "PrepareForAccess");
        params.password.Wipe();
        return;
      }
      prepared = true;
    }
    Connection conn = nullptr;
    const VixError err = lib.connectEx(&p, 1, snapshotRef.empty() ? nullptr : snapshotRef.c_str(),
                                       transports.empty() ? nullptr : transports.c_str(), &conn);
    if (err != kVixOk) {
      fail_ = VixFailure(err, "ConnectEx");
      if (prepared) lib.endAccess(&p, params.identity.c_str());
    } else {
      conn_ = conn;
      prepared_ = prepared;
    }
    memset(&p, 0, sizeof p);
    params.password.Wipe();
  }

 protected:
  Napi::Value Result(Napi::Env env) override {
    auto* state = new ConnState();
    state->conn = conn_;
    auto ext = Napi::External<ConnState>::New(env, state, [](Napi::Env, ConnState* s) {
      if (s->closed) delete s;
    });
    ext.TypeTag(&kConnTag);
    Napi::Object o = Napi::Object::New(env);
    o.Set("connection", ext);
    o.Set("prepared", Napi::Boolean::New(env, prepared_));
    return o;
  }

 private:
  Connection conn_ = nullptr;
  bool prepared_ = false;
};

// disconnect({connection, endAccess, ...params}): Disconnect, then EndAccess with the same parameters.
class DisconnectWorker : public DesignatedWorker {
 public:
  DisconnectWorker(Napi::Env env, ConnState* state, Napi::Value ext)
      : DesignatedWorker(env, "rnode:vddk:disconnect"), state_(state), ref_(Napi::Persistent(ext)) {}
  Params params;
  bool endAccess = false;

  void OnDesignatedThread() override {
    Library& lib = Lib();
    {
      std::lock_guard<std::mutex> lk(state_->mu);
      if (!state_->closed) {
        if (NotReady()) return params.password.Wipe();
        const VixError err = lib.disconnect(state_->conn);
        state_->closed = true;
        state_->conn = nullptr;
        if (err != kVixOk) fail_ = VixFailure(err, "Disconnect");
      }
    }
    if (endAccess && params.remote && lib.endAccess != nullptr && Ready()) {
      const VixError err = WithConnectParams(params, [&](ConnectParams* p) { return lib.endAccess(p, params.identity.c_str()); });
      if (err != kVixOk && !fail_.failed) fail_ = VixFailure(err, "EndAccess");
    }
    params.password.Wipe();
  }

 private:
  ConnState* state_;
  Napi::Reference<Napi::Value> ref_;
};

// open({connection, path}): read-only.
class OpenWorker : public DesignatedWorker {
 public:
  OpenWorker(Napi::Env env, ConnState* state, Napi::Value ext, std::string path)
      : DesignatedWorker(env, "rnode:vddk:open"), state_(state), ref_(Napi::Persistent(ext)), path_(std::move(path)) {}

  void OnDesignatedThread() override {
    if (NotReady()) return;
    Library& lib = Lib();
    std::lock_guard<std::mutex> lk(state_->mu);
    if (state_->closed) {
      fail_ = OwnFailure("RNODE_VDDK_CLOSED", "Open", "the VDDK connection is already closed");
      return;
    }
    std::lock_guard<std::mutex> oc(lib.openClose);
    const VixError err = lib.open(state_->conn, path_.c_str(), kFlagOpenReadOnly, &handle_);
    if (err != kVixOk) fail_ = VixFailure(err, "Open");
  }

 protected:
  Napi::Value Result(Napi::Env env) override {
    auto* disk = new DiskState();
    disk->handle = handle_;
    auto ext = Napi::External<DiskState>::New(env, disk, [](Napi::Env, DiskState* d) {
      if (d->closed) delete d;
    });
    ext.TypeTag(&kDiskTag);
    return ext;
  }

 private:
  ConnState* state_;
  Napi::Reference<Napi::Value> ref_;
  std::string path_;
  Handle handle_ = nullptr;
};

// Base for calls on an open disk: holds the External alive and the disk's mutex while VDDK runs.
class DiskWorker : public VddkWorker {
 public:
  DiskWorker(Napi::Env env, const char* name, DiskState* disk, Napi::Value ext)
      : VddkWorker(env, name), disk_(disk), ref_(Napi::Persistent(ext)) {}

 protected:
  // Runs fn with the disk locked, unless it is closed or VDDK is gone.
  template <typename Fn>
  void WithDisk(const char* op, Fn fn) {
    if (NotReady()) return;
    std::lock_guard<std::mutex> lk(disk_->mu);
    if (disk_->closed) {
      fail_ = OwnFailure("RNODE_VDDK_CLOSED", op, "the VDDK disk handle is already closed");
      return;
    }
    fn(disk_->handle);
  }

  DiskState* disk_;
  Napi::Reference<Napi::Value> ref_;
};

class GetInfoWorker : public DiskWorker {
 public:
  using DiskWorker::DiskWorker;

  void Execute() override {
    WithDisk("GetInfo", [this](Handle h) {
      Library& lib = Lib();
      Info* info = nullptr;
      const VixError err = lib.getInfo(h, &info);
      if (err != kVixOk) {
        fail_ = VixFailure(err, "GetInfo");
        return;
      }
      capacity_ = info->capacity;
      numLinks_ = info->numLinks;
      adapterType_ = info->adapterType;
      if (info->uuid != nullptr) uuid_ = info->uuid;
      lib.freeInfo(info);
      if (lib.getTransportMode != nullptr) {
        const char* mode = lib.getTransportMode(h);
        if (mode != nullptr) transport_ = mode;
      }
    });
  }

 protected:
  Napi::Value Result(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    o.Set("capacitySectors", Napi::Number::New(env, static_cast<double>(capacity_)));
    o.Set("numLinks", Napi::Number::New(env, numLinks_));
    o.Set("adapterType", Napi::Number::New(env, adapterType_));
    o.Set("uuid", Napi::String::New(env, uuid_));
    o.Set("transportMode", Napi::String::New(env, transport_));
    return o;
  }

 private:
  uint64_t capacity_ = 0;
  int numLinks_ = 0;
  int adapterType_ = 0;
  std::string uuid_, transport_;
};

// read({disk, buffer, bufferOffset, startSector, sectors, maxSectorsPerCall}): split into calls of at most
// maxSectorsPerCall sectors, because NFC servers cap the size of one request.
class ReadWorker : public DiskWorker {
 public:
  ReadWorker(Napi::Env env, DiskState* disk, Napi::Value ext, Napi::Uint8Array buf, size_t bufOffset,
             uint64_t start, uint64_t sectors, uint64_t maxPerCall)
      : DiskWorker(env, "rnode:vddk:read", disk, ext),
        buf_(buf),
        data_(buf.Data() + bufOffset),
        start_(start),
        sectors_(sectors),
        maxPerCall_(maxPerCall) {}

  void Execute() override {
    WithDisk("Read", [this](Handle h) {
      Library& lib = Lib();
      uint64_t done = 0;
      while (done < sectors_) {
        const uint64_t n = std::min(maxPerCall_, sectors_ - done);
        const VixError err = lib.read(h, start_ + done, n, data_ + done * kSectorSize);
        if (err != kVixOk) {
          fail_ = VixFailure(err, "Read");
          return;
        }
        done += n;
      }
    });
  }

 private:
  HeldBytes buf_;  // keeps the destination memory alive while VDDK writes to it
  uint8_t* data_;
  uint64_t start_, sectors_, maxPerCall_;
};

// queryAllocatedBlocks({disk, startSector, sectors, chunkSectors}) -> [{offset, length}] in sectors.
class QueryAllocatedWorker : public DiskWorker {
 public:
  QueryAllocatedWorker(Napi::Env env, DiskState* disk, Napi::Value ext, uint64_t start, uint64_t sectors, uint64_t chunk)
      : DiskWorker(env, "rnode:vddk:queryAllocatedBlocks", disk, ext), start_(start), sectors_(sectors), chunk_(chunk) {}

  void Execute() override {
    Library& lib = Lib();
    if (lib.queryAllocatedBlocks == nullptr || lib.freeBlockList == nullptr) {
      fail_ = OwnFailure("RNODE_VDDK_NOT_SUPPORTED", "QueryAllocatedBlocks", "this VDDK has no QueryAllocatedBlocks (VDDK 6.7 or later has)");
      return;
    }
    WithDisk("QueryAllocatedBlocks", [this, &lib](Handle h) {
      BlockList* list = nullptr;
      const VixError err = lib.queryAllocatedBlocks(h, start_, sectors_, chunk_, &list);
      if (err != kVixOk) {
        fail_ = VixFailure(err, "QueryAllocatedBlocks");
        return;
      }
      if (list == nullptr) return;
      blocks_.reserve(list->numBlocks);
      for (uint32_t i = 0; i < list->numBlocks; i++) blocks_.push_back(list->blocks[i]);
      lib.freeBlockList(list);
    });
  }

 protected:
  Napi::Value Result(Napi::Env env) override {
    Napi::Array out = Napi::Array::New(env, blocks_.size());
    for (size_t i = 0; i < blocks_.size(); i++) {
      Napi::Object b = Napi::Object::New(env);
      b.Set("offset", Napi::Number::New(env, static_cast<double>(blocks_[i].offset)));
      b.Set("length", Napi::Number::New(env, static_cast<double>(blocks_[i].length)));
      out.Set(static_cast<uint32_t>(i), b);
    }
    return out;
  }

 private:
  uint64_t start_, sectors_, chunk_;
  std::vector<Block> blocks_;
};

class CloseWorker : public DiskWorker {
 public:
  using DiskWorker::DiskWorker;

  void Execute() override {
    Designated().Run([this] { OnDesignatedThread(); });
  }
  void OnDesignatedThread() {
    Library& lib = Lib();
    std::lock_guard<std::mutex> lk(disk_->mu);
    if (disk_->closed) return;  // idempotent
    if (!Ready()) {
      disk_->closed = true;  // Exit already released every handle
      return;
    }
    std::lock_guard<std::mutex> oc(lib.openClose);
    const VixError err = lib.close(disk_->handle);
    disk_->closed = true;
    disk_->handle = nullptr;
    if (err != kVixOk) fail_ = VixFailure(err, "Close");
  }
};

// cleanup({...params}): VixDiskLib_Cleanup, for what a killed process left behind (hotadd mounts, temp state).
class CleanupWorker : public DesignatedWorker {
 public:
  CleanupWorker(Napi::Env env) : DesignatedWorker(env, "rnode:vddk:cleanup") {}
  Params params;

  void OnDesignatedThread() override {
    if (NotReady()) return params.password.Wipe();
    Library& lib = Lib();
    if (lib.cleanup != nullptr) {
      const VixError err = WithConnectParams(params, [&](ConnectParams* p) { return lib.cleanup(p, &cleaned_, &remaining_); });
      if (err != kVixOk) fail_ = VixFailure(err, "Cleanup");
      supported_ = true;
    }
    params.password.Wipe();
  }

 protected:
  Napi::Value Result(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    o.Set("supported", Napi::Boolean::New(env, supported_));
    o.Set("cleanedUp", Napi::Number::New(env, cleaned_));
    o.Set("remaining", Napi::Number::New(env, remaining_));
    return o;
  }

 private:
  uint32_t cleaned_ = 0, remaining_ = 0;
  bool supported_ = false;
};

// endAccess({...params}): EndAccess without a connection, for a run that was killed after PrepareForAccess.
class EndAccessWorker : public DesignatedWorker {
 public:
  EndAccessWorker(Napi::Env env) : DesignatedWorker(env, "rnode:vddk:endAccess") {}
  Params params;

  void OnDesignatedThread() override {
    if (NotReady()) return params.password.Wipe();
    Library& lib = Lib();
    if (params.remote && lib.endAccess != nullptr) {
      const VixError err = WithConnectParams(params, [&](ConnectParams* p) { return lib.endAccess(p, params.identity.c_str()); });
      if (err != kVixOk) fail_ = VixFailure(err, "EndAccess");
    }
    params.password.Wipe();
  }
};

class ExitWorker : public DesignatedWorker {
 public:
  ExitWorker(Napi::Env env) : DesignatedWorker(env, "rnode:vddk:exit") {}
  void OnDesignatedThread() override {
    Library& lib = Lib();
    std::lock_guard<std::mutex> lk(lib.mu);
    if (!lib.initialized) return;
    lib.exit();
    lib.initialized = false;
  }
};

// ---- entry points --------------------------------------------------------------------------

Napi::Object Options(const Napi::CallbackInfo& info, bool* ok) {
  *ok = info.Length() >= 1 && info[0].IsObject();
  return *ok ? info[0].As<Napi::Object>() : Napi::Object::New(info.Env());
}

Napi::Value Init(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bool ok;
  Napi::Object o = Options(info, &ok);
  std::string path, libdir, config;
  if (!ok || !GetString(o, "libraryPath", &path, true) || !GetString(o, "libdir", &libdir, true) ||
      !GetString(o, "configFile", &config, false)) {
    return TypeFail(env, "vddkInit: expected {libraryPath: string, libdir: string, configFile?: string}");
  }
  return QueueWorker(new InitWorker(env, path, libdir, config));
}

Napi::Value Connect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bool ok;
  Napi::Object o = Options(info, &ok);
  if (!ok) return TypeFail(env, "vddkConnect: expected an options object");
  auto* w = new ConnectWorker(env);
  std::string why;
  if (!ReadParams(o, &w->params, &why) || !GetString(o, "snapshotRef", &w->snapshotRef, false) ||
      !GetString(o, "transports", &w->transports, false)) {
    delete w;
    return TypeFail(env, "vddkConnect: bad option " + (why.empty() ? std::string("snapshotRef/transports") : why));
  }
  w->prepare = o.Get("prepareForAccess").ToBoolean().Value();
  return QueueWorker(w);
}

Napi::Value Disconnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bool ok;
  Napi::Object o = Options(info, &ok);
  ConnState* state = ok ? Unwrap<ConnState>(o.Get("connection"), kConnTag) : nullptr;
  if (state == nullptr) return TypeFail(env, "vddkDisconnect: expected {connection, ...}");
  auto* w = new DisconnectWorker(env, state, o.Get("connection"));
  std::string why;
  w->endAccess = o.Get("endAccess").ToBoolean().Value();
  if (w->endAccess && !ReadParams(o, &w->params, &why)) {
    delete w;
    return TypeFail(env, "vddkDisconnect: bad option " + why);
  }
  return QueueWorker(w);
}

Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bool ok;
  Napi::Object o = Options(info, &ok);
  ConnState* state = ok ? Unwrap<ConnState>(o.Get("connection"), kConnTag) : nullptr;
  std::string path;
  if (state == nullptr || !GetString(o, "path", &path, true)) {
    return TypeFail(env, "vddkOpen: expected {connection, path: string}");
  }
  return QueueWorker(new OpenWorker(env, state, o.Get("connection"), path));
}

DiskState* DiskOf(const Napi::CallbackInfo& info, Napi::Object* o) {
  bool ok;
  *o = Options(info, &ok);
  return ok ? Unwrap<DiskState>(o->Get("disk"), kDiskTag) : nullptr;
}

Napi::Value GetInfo(const Napi::CallbackInfo& info) {
  Napi::Object o;
  DiskState* disk = DiskOf(info, &o);
  if (disk == nullptr) return TypeFail(info.Env(), "vddkGetInfo: expected {disk}");
  return QueueWorker(new GetInfoWorker(info.Env(), "rnode:vddk:getInfo", disk, o.Get("disk")));
}

Napi::Value Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o;
  DiskState* disk = DiskOf(info, &o);
  double bufOffset = 0, start = 0, sectors = 0, maxPerCall = 0;
  Napi::Value buf = disk != nullptr ? o.Get("buffer") : env.Undefined();
  if (disk == nullptr || !buf.IsTypedArray() || buf.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
      !GetNumber(o, "bufferOffset", &bufOffset, false) || !GetNumber(o, "startSector", &start, true) ||
      !GetNumber(o, "sectors", &sectors, true) || !GetNumber(o, "maxSectorsPerCall", &maxPerCall, true) || maxPerCall < 1) {
    return TypeFail(env, "vddkRead: expected {disk, buffer: Uint8Array, bufferOffset?, startSector, sectors, maxSectorsPerCall}");
  }
  auto bytes = buf.As<Napi::Uint8Array>();
  if (bufOffset + sectors * static_cast<double>(kSectorSize) > static_cast<double>(bytes.ByteLength())) {
    return Reject(env, Napi::RangeError::New(env, "vddkRead: the buffer is too small for the sectors asked"));
  }
  return QueueWorker(new ReadWorker(env, disk, o.Get("disk"), bytes, static_cast<size_t>(bufOffset), static_cast<uint64_t>(start),
                              static_cast<uint64_t>(sectors), static_cast<uint64_t>(maxPerCall)));
}

Napi::Value QueryAllocatedBlocks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o;
  DiskState* disk = DiskOf(info, &o);
  double start = 0, sectors = 0, chunk = 0;
  if (disk == nullptr || !GetNumber(o, "startSector", &start, true) || !GetNumber(o, "sectors", &sectors, true) ||
      !GetNumber(o, "chunkSectors", &chunk, true) || chunk < kMinChunkSectors) {
    return TypeFail(env, "vddkQueryAllocatedBlocks: expected {disk, startSector, sectors, chunkSectors >= 128}");
  }
  return QueueWorker(new QueryAllocatedWorker(env, disk, o.Get("disk"), static_cast<uint64_t>(start),
                                        static_cast<uint64_t>(sectors), static_cast<uint64_t>(chunk)));
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Object o;
  DiskState* disk = DiskOf(info, &o);
  if (disk == nullptr) return TypeFail(info.Env(), "vddkClose: expected {disk}");
  return QueueWorker(new CloseWorker(info.Env(), "rnode:vddk:close", disk, o.Get("disk")));
}

Napi::Value Exit(const Napi::CallbackInfo& info) { return QueueWorker(new ExitWorker(info.Env())); }

// cleanup / endAccess take the connect parameters only.
template <typename Worker>
Napi::Value WithParams(const Napi::CallbackInfo& info, const char* what) {
  Napi::Env env = info.Env();
  bool ok;
  Napi::Object o = Options(info, &ok);
  if (!ok) return TypeFail(env, std::string(what) + ": expected an options object");
  auto* w = new Worker(env);
  std::string why;
  if (!ReadParams(o, &w->params, &why)) {
    delete w;
    return TypeFail(env, std::string(what) + ": bad option " + why);
  }
  return QueueWorker(w);
}

Napi::Value Cleanup(const Napi::CallbackInfo& info) { return WithParams<CleanupWorker>(info, "vddkCleanup"); }
Napi::Value EndAccess(const Napi::CallbackInfo& info) { return WithParams<EndAccessWorker>(info, "vddkEndAccess"); }

}  // namespace

void InitVddk(Napi::Env env, Napi::Object exports) {
  exports.Set("vddkInit", Napi::Function::New(env, Init, "vddkInit"));
  exports.Set("vddkConnect", Napi::Function::New(env, Connect, "vddkConnect"));
  exports.Set("vddkOpen", Napi::Function::New(env, Open, "vddkOpen"));
  exports.Set("vddkGetInfo", Napi::Function::New(env, GetInfo, "vddkGetInfo"));
  exports.Set("vddkRead", Napi::Function::New(env, Read, "vddkRead"));
  exports.Set("vddkQueryAllocatedBlocks", Napi::Function::New(env, QueryAllocatedBlocks, "vddkQueryAllocatedBlocks"));
  exports.Set("vddkClose", Napi::Function::New(env, Close, "vddkClose"));
  exports.Set("vddkDisconnect", Napi::Function::New(env, Disconnect, "vddkDisconnect"));
  exports.Set("vddkExit", Napi::Function::New(env, Exit, "vddkExit"));
  exports.Set("vddkCleanup", Napi::Function::New(env, Cleanup, "vddkCleanup"));
  exports.Set("vddkEndAccess", Napi::Function::New(env, EndAccess, "vddkEndAccess"));
}

}  // namespace rnode
