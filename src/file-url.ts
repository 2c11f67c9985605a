// file:// URLs name local paths wherever a store, a source or an output is given. One reading of them, so that a
// store, a source and an output take the same URL alike: each caller wraps the reason in its own error code.
import { fileURLToPath } from 'node:url';

/**
 * The local path of a file:// URL (file:///abs/path or file://localhost/abs/path, %-escapes decoded). Throws an Error
 * whose message says why not: it names a host (file://disk.img is the host "disk.img" and the path "/"), or its path
 * does not decode.
 */
export function fileUrlPath(location: string | URL): string {
  let url: URL;
  try {
    url = new URL(location);
  } catch {
    throw new Error('is not a valid URL');
  }
  if (url.protocol !== 'file:') throw new Error('is not a file:// URL');
  if (url.host !== '' && url.host !== 'localhost') throw new Error(`names a host (${url.host}), not a path on this machine`);
  try {
    return fileURLToPath(url);
  } catch (err) {
    throw new Error(`has a path that does not decode (${(err as Error).message}): write a % in a name as %25`, { cause: err });
  }
}
