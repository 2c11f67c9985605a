// errno -> JS Error with errno/code/syscall/path, shaped like Node's own fs errors.
#pragma once
#include <napi.h>

#include <string>

namespace rnode {

// errno is positive (as in os.constants.errno), unlike Node's negative uv errno.
Napi::Error MakeIoError(Napi::Env env, int err, const char* syscall, const std::string& path);

}  // namespace rnode
