// CPU time of the calling thread: the codec workers time their stages with it, so the pipeline's counters say
// what each stage cost in CPU, not how long a thread that the scheduler preempted took.
#pragma once
#include <napi.h>

namespace rnode {

void InitCpuClock(Napi::Env env, Napi::Object exports);

}  // namespace rnode
