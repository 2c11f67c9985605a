// Failpoints let crash tests kill the process at an exact step (RNODE_FAILPOINT=<name>), the way
// etcd and TiKV test crash safety. Unset in production; costs one env lookup per call site.

export function failpoint(name: string): void {
  if (process.env.RNODE_FAILPOINT === name) process.kill(process.pid, 'SIGKILL');
}
