// Failpoints let crash tests kill the process at an exact step (RNODE_FAILPOINT=<name>), the way
// etcd and TiKV test crash safety; <name>:SIGTERM sends it SIGTERM there instead, for graceful-stop tests.
// Unset in production; costs one env lookup per call site.

export function failpoint(name: string): void {
  const at = process.env.RNODE_FAILPOINT;
  if (at === name) process.kill(process.pid, 'SIGKILL');
  else if (at === `${name}:SIGTERM`) process.kill(process.pid, 'SIGTERM');
}
