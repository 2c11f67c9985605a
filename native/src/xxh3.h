// XXH3-128 from the system's libxxhash.so.0 (opened with dlopen on first use, as liblz4 is): the change hashes an
// incremental scan compares each chunk of a raw source with, at memory speed, before any keyed BLAKE3 is taken.
#pragma once
#include <napi.h>

namespace rnode {

void InitXxh3(Napi::Env env, Napi::Object exports);

}  // namespace rnode
