// LZ4 block compression through the system's liblz4 (the reference C implementation), loaded at run time.
#pragma once
#include <napi.h>

namespace rnode {

void InitLz4(Napi::Env env, Napi::Object exports);

}  // namespace rnode
