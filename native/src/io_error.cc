#include "io_error.h"

#include <string.h>

namespace rnode {

Napi::Error MakeIoError(Napi::Env env, int err, const char* syscall, const std::string& path) {
  const char* name = strerrorname_np(err);
  std::string code = name != nullptr ? name : "UNKNOWN";
  char text[256];
  const char* desc = strerror_r(err, text, sizeof text);  // GNU variant returns the string
  std::string message = code + ": " + desc + ", " + syscall;
  if (!path.empty()) message += " '" + path + "'";

  Napi::Error error = Napi::Error::New(env, message);
  Napi::Object obj = error.Value();
  obj.Set("errno", Napi::Number::New(env, err));
  obj.Set("code", Napi::String::New(env, code));
  obj.Set("syscall", Napi::String::New(env, syscall));
  obj.Set("path", Napi::String::New(env, path));
  return error;
}

}  // namespace rnode
