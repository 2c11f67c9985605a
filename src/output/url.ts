// Parsing and naming of cloud output URLs (s3://bucket/key, azblob://container/name.vhd, gs://bucket/name.tar.gz);
// messages show a URL without its query, which may name endpoints and options.
import { ErrorCodes, RnodeError } from '../errors.js';

export function parseOutUrl(out: string): URL {
  let url: URL;
  try {
    url = new URL(out);
  } catch {
    throw badOut(out.replace(/\?.*$/, ''), 'is not a valid URL');
  }
  if (url.username || url.password) throw badOut(displayUrl(url), 'carries credentials; give them in the environment as for store URLs');
  if (!url.hostname || url.pathname.replace(/^\/+/, '') === '' || url.pathname.endsWith('/')) {
    throw badOut(
      displayUrl(url),
      'must name a bucket or container and an object (s3://bucket/key, azblob://container/name.vhd, gs://bucket/name.tar.gz)',
    );
  }
  return url;
}

export function displayUrl(url: URL): string {
  return `${url.protocol}//${url.hostname}${url.pathname}`;
}

/** The object's name inside its bucket or container. */
export function objectName(url: URL): string {
  return decodeURIComponent(url.pathname.replace(/^\/+/, ''));
}

export function badOut(out: string, why: string): RnodeError {
  return new RnodeError(ErrorCodes.BAD_OUTPUT, `--out ${out} ${why}`, { details: { out } });
}
