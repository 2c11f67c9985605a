// Opens the output of a restore by its form: a cloud URL (s3://, azblob://, gs://) or a local path. Cloud outputs take
// their credentials exactly as the store URLs of the same scheme do (src/store/{s3,azure,gcs}), and load lazily.
import { ErrorCodes, RnodeError } from '../errors.js';
import { fileUrlPath } from '../file-url.js';
import { redact } from '../store/schemes.js';
import { urlPrefix } from '../store/common.js';
import { openFileOutput } from './file.js';
import type { OpenOutputOptions, OutputSink } from './sink.js';
import { displayUrl, objectName, parseOutUrl } from './url.js';

export type { OpenOutputOptions, OutputSink } from './sink.js';

const CLOUD = /^(s3|azblob|gs):\/\//i;

/** True for outputs that are cloud objects rather than local paths. */
export function isCloudOutput(out: string): boolean {
  return CLOUD.test(out);
}

/**
 * An output as recover writes it: a path as it is, a file:// URL as its path, a cloud URL as it is (where `flag` takes
 * one). Any other URL is refused: file:///srv/disk.img (or http://...) was taken for a relative path, and the image
 * went under ./file:/srv/ once "the folder does not exist" had sent its user to create that.
 */
export function outputPath(out: string, flag: '--out' | '--out-dir' = '--out'): string {
  const m = /^([a-z][a-z0-9+.-]*):\/\//i.exec(out);
  if (!m || (flag === '--out' && isCloudOutput(out))) return out;
  // Shown without user:password or a signature (an https:// URL pasted from a browser carries them).
  const shown = redact(out);
  const bad = (why: string) => new RnodeError(ErrorCodes.BAD_OUTPUT, `${flag} ${shown} ${why}`, { details: { out: shown, why } });
  const takes = flag === '--out' ? 'a file or device path, file:///path, s3://, azblob:// or gs://' : 'a folder path or file:///path';
  if (m[1].toLowerCase() !== 'file') throw bad(`is a URL (${m[1]}://) that recover cannot write a disk image to; give ${takes}`);
  try {
    return fileUrlPath(out);
  } catch (err) {
    throw bad(`${(err as Error).message}; give ${takes}`);
  }
}

export async function openOutput(out: string, opts: OpenOutputOptions): Promise<OutputSink> {
  if (!isCloudOutput(out)) return openFileOutput(out, opts.diskSize, { ownerOnly: opts.ownerOnly });
  const url = parseOutUrl(out);
  if (opts.storeLocation) refuseInsideStore(url, opts.storeLocation);
  switch (url.protocol) {
    case 's3:':
      return (await import('./s3-raw.js')).openS3Output(url, opts);
    case 'azblob:':
      return (await import('./azure-vhd.js')).openAzureVhdOutput(url, opts);
    default:
      return (await import('./gcs-targz.js')).openGcsTarGzOutput(url, opts);
  }
}

/**
 * Writing a disk image into the store it is read from would mix a foreign object into the repository (and
 * prune could later delete it): refused when the output is the store's bucket or container under its prefix.
 */
function refuseInsideStore(url: URL, storeLocation: string): void {
  let store: URL;
  try {
    store = new URL(storeLocation);
  } catch {
    return; // a local store: a cloud output cannot be inside it
  }
  if (store.protocol.toLowerCase() !== url.protocol || store.hostname !== url.hostname) return;
  // The store's own reading of its prefix: decoded (s3://b/dr%20site keeps its objects under "dr site/"), as the
  // output's object name is; the encoded form let a recover write over the store's r2/plain/config.
  if (objectName(url).startsWith(urlPrefix(store.pathname, storeLocation))) {
    throw new RnodeError(
      ErrorCodes.OUTPUT_IN_STORE,
      `--out ${displayUrl(url)} is inside the store ${storeLocation} being read; write the disk to another bucket, container or prefix`,
      { details: { out: displayUrl(url), store: storeLocation } },
    );
  }
}
