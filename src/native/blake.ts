// BLAKE3 (chunk ids, checksums) from @napi-rs/blake-hash, loaded without the package's libc probe: its index.js
// asks process.report.getReport() whether the C library is glibc or musl, which builds a whole diagnostic report,
// 10-25 ms of CPU in every thread that loads it (the main thread and each codec worker, on every command). Our
// addon knows the answer from its own build.
import { createRequire } from 'node:module';

export type Blake = typeof import('@napi-rs/blake-hash');

const require = createRequire(import.meta.url);

/** The binding for this platform: glibc's package directly where the addon says glibc, else the package's own loader. */
export function loadBlake(glibc: boolean): Blake {
  if (glibc && process.platform === 'linux' && (process.arch === 'x64' || process.arch === 'arm64')) {
    try {
      return require(`@napi-rs/blake-hash-linux-${process.arch}-gnu`) as Blake;
    } catch {
      /* that optional package is not installed: the generic loader finds what is */
    }
  }
  return require('@napi-rs/blake-hash') as Blake;
}
