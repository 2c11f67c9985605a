#include "socket_queue.h"

#include <linux/sockios.h>
#include <sys/ioctl.h>

namespace rnode {
namespace {

// socketSendQueue(fd): bytes in the socket's kernel send queue (sent but not acknowledged by the peer, and not yet
// sent), or -1 when it cannot be read. A slow link drains it at the link's pace while nothing leaves the process.
Napi::Value SocketSendQueue(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) return Napi::Number::New(env, -1);
  int fd = info[0].As<Napi::Number>().Int32Value();
  int queued = 0;
  if (fd < 0 || ioctl(fd, SIOCOUTQ, &queued) != 0) return Napi::Number::New(env, -1);
  return Napi::Number::New(env, queued);
}

}  // namespace

void InitSocketQueue(Napi::Env env, Napi::Object exports) {
  exports.Set("socketSendQueue", Napi::Function::New(env, SocketSendQueue, "socketSendQueue"));
}

}  // namespace rnode
