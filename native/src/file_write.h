// Whole-file writes for the filesystem store: create, write, optionally fdatasync, stat and close in one
// libuv job, bypassing the page cache for the aligned body when the caller asks for durability anyway; and the
// exclusive lock (flock) that keeps a writable export's overlay to one export.
#pragma once
#include <napi.h>

namespace rnode {

void InitFileWrite(Napi::Env env, Napi::Object exports);

}  // namespace rnode
