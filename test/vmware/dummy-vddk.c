/* A stand-in libvixDiskLib.so for the tests: the same C ABI as VMware's VDDK (the entry points rnode loads),
 * serving local raw images instead of VMware disks. Built by test/vmware/build-dummy.ts with
 * `gcc -shared -fPIC` into <libdir>/lib64/libvixDiskLib.so and loaded through the same dlopen path as the real one.
 *
 * Configuration is the InitEx config file (re-read at every ConnectEx, so a test can change it between runs):
 *   dummy.log=<file>                       append one line per call (never a password)
 *   dummy.user=<name> / dummy.password=<pw> / dummy.thumbprint=<AA:BB:..>   what ConnectEx accepts
 *   dummy.disk=<snapshot moref>|<disk path as VDDK sees it>|<local image file>   (repeatable)
 *   dummy.failRead=<n>:<VixError>          the n-th Read since the last ConnectEx fails with that error
 *   dummy.delayRead=<n>:<milliseconds>     the n-th Read sleeps first
 *   dummy.readLatencyUs=<microseconds>     every Read sleeps first (a network round trip, for the bench)
 *   dummy.failReadPath=<part of a disk path>:<VixError>   every Read of a disk whose path has it fails
 *   dummy.failOpenPath=<part of a disk path>:<VixError>   Open of such a disk fails
 *   dummy.transport=<mode>                 what GetTransportMode answers (default nbdssl)
 *
 * Strict mode (environment RNODE_DUMMY_VDDK_STRICT=1, read at the first InitEx) enforces VMware's threading
 * advice: InitEx once per process (again only after Exit, and from the same thread), and InitEx, Exit,
 * ConnectEx, Disconnect, Open, Close, PrepareForAccess, EndAccess and Cleanup all from that one thread. A call
 * from another thread fails with VIX_E_FAIL and logs "strict-violation". Every such call logs thread=<tid>.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

typedef uint64_t VixError;
#define VIX_OK 0
#define VIX_E_FAIL 1
#define VIX_E_INVALID_ARG 3
#define VIX_E_FILE_NOT_FOUND 4
#define SECTOR 512

typedef void LogFunc(const char *fmt, va_list args);

/* The connect parameters, laid out as VDDK declares them on x86-64. */
typedef struct {
  char *vmxSpec;
  char *serverName;
  char *thumbPrint;
  long reserved1;
  int credType;
  union {
    struct { char *userName; char *password; } uid;
    struct { char *cookie; char *userName; char *key; } sessionId;
    void *reserved2;
  } creds;
  uint32_t port;
  uint32_t nfcHostPort;
  char *reserved3;
  char reserved4[8];
  void *reserved5;
  union { struct { char *id; char *datastoreMoRef; char *ssId; } vStorageObjSpec; } spec;
  int specType;
} ConnectParams;

typedef struct { uint32_t cylinders, heads, sectors; } Geometry;
typedef struct {
  Geometry biosGeo, physGeo;
  uint64_t capacity;
  int adapterType;
  int numLinks;
  char *parentFileNameHint;
  char *uuid;
} Info;
typedef struct { uint64_t offset, length; } Block;
typedef struct { uint32_t numBlocks; Block blocks[1]; } BlockList;

#define MAX_DISKS 64
#define MAX_LINE 4096

struct mapping { char snapshot[128]; char path[1024]; char file[1024]; };

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char config_path[1024];
static char log_path[1024];
static char want_user[256], want_password[256], want_thumbprint[256];
static struct mapping disks[MAX_DISKS];
static int ndisks;
static long fail_read_n = -1;
static VixError fail_read_err;
static long delay_read_n = -1;
static long delay_read_ms;
static long reads;  /* Read calls since the last ConnectEx */
static int initialized;
static long read_latency_us;
static char fail_read_path[1024], fail_open_path[1024], transport[32];
static VixError fail_read_path_err, fail_open_path_err;
static int strict = -1;        /* -1: not decided yet */
static long designated_tid;    /* the thread of the first InitEx */

struct connection { char snapshot[128]; };
struct handle { int fd; uint64_t capacity; char path[1024]; };

static __thread VixError last_err;
static __thread char last_text[512];

static VixError fail(VixError err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_text, sizeof last_text, fmt, ap);
  va_end(ap);
  last_err = err;
  return err;
}

static void logline(const char *fmt, ...) {
  char line[MAX_LINE];
  va_list ap;
  int n;
  pthread_mutex_lock(&lock);
  if (log_path[0] != '\0') {
    va_start(ap, fmt);
    n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof line - 2) n = (int)sizeof line - 2;
    line[n++] = '\n';
    int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) {
      if (write(fd, line, (size_t)n) < 0) { /* a lost log line only weakens a test's assertion */ }
      close(fd);
    }
  }
  pthread_mutex_unlock(&lock);
}

static void copy(char *dst, size_t size, const char *src) {
  snprintf(dst, size, "%s", src ? src : "");
}

static long tid(void) { return (long)syscall(SYS_gettid); }

/* Strict mode: the calls VMware wants on one designated thread fail from any other. */
static VixError off_thread(const char *op) {
  long me = tid();
  int bad;
  pthread_mutex_lock(&lock);
  bad = strict == 1 && designated_tid != 0 && me != designated_tid;
  pthread_mutex_unlock(&lock);
  if (!bad) return VIX_OK;
  logline("%s thread=%ld -> strict-violation (designated thread %ld)", op, me, designated_tid);
  return fail(VIX_E_FAIL, "dummy-vddk (strict): %s called from thread %ld, not the designated thread %ld", op, me, designated_tid);
}

/* Caller holds lock. */
static void load_config(void) {
  FILE *f;
  char line[MAX_LINE];
  log_path[0] = want_user[0] = want_password[0] = want_thumbprint[0] = '\0';
  ndisks = 0;
  fail_read_n = delay_read_n = -1;
  read_latency_us = 0;
  fail_read_path[0] = fail_open_path[0] = '\0';
  copy(transport, sizeof transport, "nbdssl");
  if (config_path[0] == '\0' || (f = fopen(config_path, "re")) == NULL) return;
  while (fgets(line, sizeof line, f)) {
    char *eq, *val;
    line[strcspn(line, "\r\n")] = '\0';
    if (line[0] == '#' || (eq = strchr(line, '=')) == NULL) continue;
    *eq = '\0';
    val = eq + 1;
    if (strcmp(line, "dummy.log") == 0) copy(log_path, sizeof log_path, val);
    else if (strcmp(line, "dummy.user") == 0) copy(want_user, sizeof want_user, val);
    else if (strcmp(line, "dummy.password") == 0) copy(want_password, sizeof want_password, val);
    else if (strcmp(line, "dummy.thumbprint") == 0) copy(want_thumbprint, sizeof want_thumbprint, val);
    else if (strcmp(line, "dummy.failRead") == 0) {
      unsigned long long e = 0;
      if (sscanf(val, "%ld:%llu", &fail_read_n, &e) == 2) fail_read_err = e; else fail_read_n = -1;
    } else if (strcmp(line, "dummy.delayRead") == 0) {
      if (sscanf(val, "%ld:%ld", &delay_read_n, &delay_read_ms) != 2) delay_read_n = -1;
    } else if (strcmp(line, "dummy.readLatencyUs") == 0) {
      read_latency_us = atol(val);
    } else if (strcmp(line, "dummy.transport") == 0) {
      copy(transport, sizeof transport, val);
    } else if (strcmp(line, "dummy.failReadPath") == 0 || strcmp(line, "dummy.failOpenPath") == 0) {
      char *colon = strrchr(val, ':');
      int rd = line[10] == 'R';
      if (!colon) continue;
      *colon = '\0';
      copy(rd ? fail_read_path : fail_open_path, sizeof fail_read_path, val);
      if (rd) fail_read_path_err = strtoull(colon + 1, NULL, 10); else fail_open_path_err = strtoull(colon + 1, NULL, 10);
    } else if (strcmp(line, "dummy.disk") == 0 && ndisks < MAX_DISKS) {
      char *p1 = strchr(val, '|'), *p2 = p1 ? strchr(p1 + 1, '|') : NULL;
      if (!p2) continue;
      *p1 = *p2 = '\0';
      copy(disks[ndisks].snapshot, sizeof disks[ndisks].snapshot, val);
      copy(disks[ndisks].path, sizeof disks[ndisks].path, p1 + 1);
      copy(disks[ndisks].file, sizeof disks[ndisks].file, p2 + 1);
      ndisks++;
    }
  }
  fclose(f);
}

EXPORT VixError VixDiskLib_InitEx(uint32_t major, uint32_t minor, LogFunc *log, LogFunc *warn, LogFunc *panic,
                                  const char *libdir, const char *config) {
  const char *why = NULL;
  long me = tid();
  pthread_mutex_lock(&lock);
  if (strict < 0) {
    const char *e = getenv("RNODE_DUMMY_VDDK_STRICT");
    strict = e != NULL && strcmp(e, "1") == 0;
  }
  if (strict == 1 && initialized) why = "InitEx called again without Exit (once per process)";
  else if (strict == 1 && designated_tid != 0 && me != designated_tid) why = "InitEx called off the designated thread";
  if (!why) {
    copy(config_path, sizeof config_path, config);
    load_config();
    initialized = 1;
    if (designated_tid == 0) designated_tid = me;
  }
  pthread_mutex_unlock(&lock);
  if (why) {
    logline("InitEx thread=%ld -> strict-violation (%s)", me, why);
    return fail(VIX_E_FAIL, "dummy-vddk (strict): %s", why);
  }
  logline("InitEx version=%u.%u libdir=%s config=%s thread=%ld strict=%d", major, minor, libdir ? libdir : "",
          config ? config : "", me, strict);
  return VIX_OK;
}

EXPORT void VixDiskLib_Exit(void) {
  if (off_thread("Exit") != VIX_OK) return;
  logline("Exit thread=%ld", tid());
  pthread_mutex_lock(&lock);
  initialized = 0;
  pthread_mutex_unlock(&lock);
}

EXPORT VixError VixDiskLib_Cleanup(const ConnectParams *p, uint32_t *cleaned, uint32_t *remaining) {
  VixError e = off_thread("Cleanup");
  if (e) return e;
  logline("Cleanup vmxSpec=%s thread=%ld", p && p->vmxSpec ? p->vmxSpec : "", tid());
  if (cleaned) *cleaned = 0;
  if (remaining) *remaining = 0;
  return VIX_OK;
}

EXPORT char *VixDiskLib_GetErrorText(VixError err, const char *locale) {
  char buf[600];
  if (err == last_err && last_text[0] != '\0') return strdup(last_text);
  snprintf(buf, sizeof buf, "dummy-vddk: error %llu", (unsigned long long)err);
  return strdup(buf);
}

EXPORT void VixDiskLib_FreeErrorText(char *text) { free(text); }

EXPORT VixError VixDiskLib_PrepareForAccess(const ConnectParams *p, const char *identity) {
  VixError e = off_thread("PrepareForAccess");
  if (e) return e;
  logline("PrepareForAccess vmxSpec=%s identity=%s thread=%ld", p->vmxSpec ? p->vmxSpec : "", identity ? identity : "", tid());
  return VIX_OK;
}

EXPORT VixError VixDiskLib_EndAccess(const ConnectParams *p, const char *identity) {
  VixError e = off_thread("EndAccess");
  if (e) return e;
  logline("EndAccess vmxSpec=%s identity=%s thread=%ld", p->vmxSpec ? p->vmxSpec : "", identity ? identity : "", tid());
  return VIX_OK;
}

EXPORT VixError VixDiskLib_ConnectEx(const ConnectParams *p, char readOnly, const char *snapshot,
                                     const char *transports, void **connection) {
  struct connection *c;
  VixError err = off_thread("ConnectEx");
  if (err) return err;
  pthread_mutex_lock(&lock);
  load_config();
  reads = 0;
  if (!initialized) err = fail(VIX_E_FAIL, "dummy-vddk: ConnectEx before InitEx");
  else if (p->serverName != NULL) {
    const char *user = p->credType == 1 ? p->creds.uid.userName : NULL;
    const char *pw = p->credType == 1 ? p->creds.uid.password : NULL;
    if (want_thumbprint[0] && (!p->thumbPrint || strcasecmp(p->thumbPrint, want_thumbprint) != 0))
      err = fail(VIX_E_FAIL, "dummy-vddk: the host's SSL certificate does not match the thumbprint given");
    else if ((want_user[0] && (!user || strcmp(user, want_user) != 0)) ||
             (want_password[0] && (!pw || strcmp(pw, want_password) != 0)))
      err = fail(VIX_E_FAIL, "dummy-vddk: cannot complete login due to an incorrect user name or password");
  }
  pthread_mutex_unlock(&lock);
  logline("ConnectEx server=%s port=%u vmxSpec=%s snapshot=%s transports=%s readOnly=%d user=%s password=%s thread=%ld%s",
          p->serverName ? p->serverName : "", p->port, p->vmxSpec ? p->vmxSpec : "", snapshot ? snapshot : "",
          transports ? transports : "", readOnly, p->credType == 1 && p->creds.uid.userName ? p->creds.uid.userName : "",
          p->credType == 1 && p->creds.uid.password ? "<set>" : "<none>", tid(), err ? " -> failed" : "");
  if (err) return err;
  c = calloc(1, sizeof *c);
  if (!c) return fail(2, "dummy-vddk: out of memory");
  copy(c->snapshot, sizeof c->snapshot, snapshot);
  *connection = c;
  return VIX_OK;
}

EXPORT VixError VixDiskLib_Disconnect(void *connection) {
  VixError e = off_thread("Disconnect");
  if (e) return e;
  logline("Disconnect thread=%ld", tid());
  free(connection);
  return VIX_OK;
}

EXPORT VixError VixDiskLib_Open(void *connection, const char *path, uint32_t flags, void **handle) {
  struct connection *c = connection;
  char file[1024] = "";
  struct handle *h;
  struct stat st;
  int i;
  VixError injected = off_thread("Open");
  if (injected) return injected;
  pthread_mutex_lock(&lock);
  for (i = 0; i < ndisks; i++)
    if (strcmp(disks[i].snapshot, c->snapshot) == 0 && strcmp(disks[i].path, path) == 0) copy(file, sizeof file, disks[i].file);
  if (fail_open_path[0] && strstr(path, fail_open_path) != NULL) injected = fail_open_path_err;
  pthread_mutex_unlock(&lock);
  logline("Open path=%s flags=%u snapshot=%s thread=%ld%s", path, flags, c->snapshot, tid(), injected ? " -> injected error" : "");
  if (injected) return fail(injected, "dummy-vddk: injected failure of Open %s", path);
  if (file[0] == '\0') return fail(VIX_E_FILE_NOT_FOUND, "dummy-vddk: the file specified was not found: %s", path);
  if ((flags & 4) == 0) return fail(VIX_E_INVALID_ARG, "dummy-vddk: only read-only opens are supported");
  h = calloc(1, sizeof *h);
  if (!h) return fail(2, "dummy-vddk: out of memory");
  h->fd = open(file, O_RDONLY | O_CLOEXEC);
  if (h->fd < 0 || fstat(h->fd, &st) != 0) {
    int e = errno;
    if (h->fd >= 0) close(h->fd);
    free(h);
    return fail(VIX_E_FILE_NOT_FOUND, "dummy-vddk: cannot open %s: %s", file, strerror(e));
  }
  h->capacity = (uint64_t)st.st_size / SECTOR;
  copy(h->path, sizeof h->path, path);
  *handle = h;
  return VIX_OK;
}

EXPORT VixError VixDiskLib_Close(void *handle) {
  struct handle *h = handle;
  VixError e = off_thread("Close");
  if (e) return e;
  logline("Close path=%s thread=%ld", h->path, tid());
  close(h->fd);
  free(h);
  return VIX_OK;
}

EXPORT VixError VixDiskLib_GetInfo(void *handle, Info **info) {
  struct handle *h = handle;
  Info *i = calloc(1, sizeof *i);
  if (!i) return fail(2, "dummy-vddk: out of memory");
  i->capacity = h->capacity;
  i->adapterType = 3;
  i->numLinks = 1;
  i->uuid = strdup("60 00 c2 9d 2e 4a 71 5b-8c 1f 0e 3a 55 d4 2b 90");
  logline("GetInfo path=%s capacity=%llu", h->path, (unsigned long long)h->capacity);
  *info = i;
  return VIX_OK;
}

EXPORT void VixDiskLib_FreeInfo(Info *info) {
  if (info) free(info->uuid);
  free(info);
}

EXPORT const char *VixDiskLib_GetTransportMode(void *handle) { return transport; }

EXPORT VixError VixDiskLib_Read(void *handle, uint64_t start, uint64_t count, unsigned char *buf) {
  struct handle *h = handle;
  long n;
  long delay_ms = 0;
  VixError injected = VIX_OK;
  uint64_t done = 0, bytes = count * SECTOR;
  long latency_us;
  pthread_mutex_lock(&lock);
  n = ++reads;
  if (n == fail_read_n) injected = fail_read_err;
  if (fail_read_path[0] && strstr(h->path, fail_read_path) != NULL) injected = fail_read_path_err;
  if (n == delay_read_n) delay_ms = delay_read_ms;
  latency_us = read_latency_us;
  pthread_mutex_unlock(&lock);
  if (delay_ms > 0) {
    struct timespec ts = { delay_ms / 1000, (delay_ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
  }
  if (latency_us > 0) {
    struct timespec ts = { latency_us / 1000000, (latency_us % 1000000) * 1000L };
    nanosleep(&ts, NULL);
  }
  if (injected) {
    logline("Read path=%s start=%llu count=%llu -> injected error %llu", h->path, (unsigned long long)start,
            (unsigned long long)count, (unsigned long long)injected);
    return fail(injected, "dummy-vddk: injected failure of Read #%ld (NFC connection lost)", n);
  }
  if (start > h->capacity || count > h->capacity - start)
    return fail(VIX_E_INVALID_ARG, "dummy-vddk: read of sectors %llu+%llu beyond the capacity %llu",
                (unsigned long long)start, (unsigned long long)count, (unsigned long long)h->capacity);
  while (done < bytes) {
    ssize_t r = pread(h->fd, buf + done, bytes - done, (off_t)(start * SECTOR + done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return fail(VIX_E_FAIL, "dummy-vddk: read failed: %s", r < 0 ? strerror(errno) : "short file");
    done += (uint64_t)r;
  }
  logline("Read path=%s start=%llu count=%llu", h->path, (unsigned long long)start, (unsigned long long)count);
  return VIX_OK;
}

/* Allocated areas by SEEK_DATA/SEEK_HOLE, widened to whole chunks as VDDK reports them. */
EXPORT VixError VixDiskLib_QueryAllocatedBlocks(void *handle, uint64_t start, uint64_t count, uint64_t chunk,
                                                BlockList **out) {
  struct handle *h = handle;
  uint64_t end = start + count, cap = 16, n = 0;
  off_t pos;
  BlockList *list;
  if (chunk < 128 || start % chunk != 0 || (count % chunk != 0 && end != h->capacity) || end > h->capacity ||
      count / chunk > 512 * 1024)
    return fail(VIX_E_INVALID_ARG, "dummy-vddk: QueryAllocatedBlocks arguments out of range");
  list = malloc(sizeof(BlockList) + cap * sizeof(Block));
  if (!list) return fail(2, "dummy-vddk: out of memory");
  pos = (off_t)(start * SECTOR);
  while ((uint64_t)pos < end * SECTOR) {
    off_t data = lseek(h->fd, pos, SEEK_DATA), hole;
    uint64_t a, b;
    if (data < 0 || (uint64_t)data >= end * SECTOR) break;
    hole = lseek(h->fd, data, SEEK_HOLE);
    if (hole < 0) hole = (off_t)(end * SECTOR);
    a = (uint64_t)data / SECTOR / chunk * chunk;
    b = ((uint64_t)hole / SECTOR + chunk - 1) / chunk * chunk;
    if (b > end) b = end;
    if (n > 0 && list->blocks[n - 1].offset + list->blocks[n - 1].length >= a) {
      list->blocks[n - 1].length = b - list->blocks[n - 1].offset;
    } else {
      if (n == cap) {
        BlockList *bigger = realloc(list, sizeof(BlockList) + cap * 2 * sizeof(Block));
        if (!bigger) { free(list); return fail(2, "dummy-vddk: out of memory"); }
        list = bigger;
        cap *= 2;
      }
      list->blocks[n].offset = a;
      list->blocks[n].length = b - a;
      n++;
    }
    pos = (off_t)(b * SECTOR);
  }
  list->numBlocks = (uint32_t)n;
  logline("QueryAllocatedBlocks path=%s start=%llu count=%llu chunk=%llu blocks=%llu", h->path,
          (unsigned long long)start, (unsigned long long)count, (unsigned long long)chunk, (unsigned long long)n);
  *out = list;
  return VIX_OK;
}

EXPORT VixError VixDiskLib_FreeBlockList(BlockList *list) {
  free(list);
  return VIX_OK;
}
