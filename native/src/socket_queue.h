// The kernel send queue of a TCP socket (SIOCOUTQ): how a ws:// sender sees a slow link still taking its bytes once
// they have all left the process (src/transport/link-progress.ts).
#pragma once
#include <napi.h>

namespace rnode {

void InitSocketQueue(Napi::Env env, Napi::Object exports);

}  // namespace rnode
