// Per-environment state shared by the addon's modules (worker threads each get their own).
#pragma once
#include <napi.h>

namespace rnode {

struct AddonData {
  Napi::FunctionReference rawFileCtor;
};

inline AddonData* GetAddonData(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

}  // namespace rnode
