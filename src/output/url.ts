// Parsing and naming of cloud output URLs (s3://bucket/key, azblob://container/name.vhd, gs://bucket/name.tar.gz);
// messages show a URL without its query, which may name endpoints and options.
import { ErrorCodes, RnodeError, isRnodeError } from '../errors.js';
import { redact } from '../store/schemes.js';

/** The query parameters each output reads (s3: its own part size, and the client settings of s3ClientConfig). */
const OUT_PARAMS: Record<string, readonly string[]> = {
  's3:': ['partSize', 'region', 'endpoint', 'forcePathStyle'],
  'azblob:': [],
  'gs:': ['project'],
};

/** A cloud output URL, its scheme in lower case (S3://... as s3://...), checked; BAD_OUTPUT says what is wrong. */
export function parseOutUrl(out: string): URL {
  let url: URL;
  try {
    url = new URL(out.replace(/^[a-z0-9]+:/i, (s) => s.toLowerCase()));
  } catch {
    throw badOut(redact(out.replace(/\?.*$/, '')), 'is not a valid URL');
  }
  if (url.username || url.password) throw badOut(displayUrl(url), 'carries credentials; give them in the environment as for store URLs');
  const known = OUT_PARAMS[url.protocol] ?? [];
  for (const name of url.searchParams.keys()) {
    if (known.includes(name)) continue;
    const takes = known.length ? `it takes ${known.join(', ')} (names are case-sensitive)` : 'it takes none';
    throw badOut(displayUrl(url), `has the parameter "${name}", which a ${url.protocol}// output does not take: ${takes}`);
  }
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

/** The bucket or container of an output: failure messages name the object in it ("upload part 3 k.raw in s3://b"). */
export function containerUrl(url: URL): string {
  return `${url.protocol}//${url.hostname}`;
}

/** The object's name inside its bucket or container. */
export function objectName(url: URL): string {
  return decodeURIComponent(url.pathname.replace(/^\/+/, ''));
}

export function badOut(out: string, why: string): RnodeError {
  // out and why apart too: the agent names the job's field (job.out) where the CLI names its flag.
  return new RnodeError(ErrorCodes.BAD_OUTPUT, `--out ${out} ${why}`, { details: { out, why } });
}

/**
 * Reads an output URL's client options with the store's reader of the same scheme (s3ClientConfig): what that refuses
 * is a mistake in --out, so RNODE_BAD_OUTPUT, not the RNODE_BAD_STORE_URL it means for a store URL.
 */
export function outClientOptions<T>(url: URL, read: () => T): T {
  // Credentials in --out are refused (parseOutUrl); in its endpoint they were taken, and sent as given.
  const endpoint = url.searchParams.get('endpoint');
  if (endpoint && URL.canParse(endpoint) && (new URL(endpoint).username || new URL(endpoint).password)) {
    throw badOut(displayUrl(url), 'has an endpoint with credentials in it; give them in the environment as for store URLs');
  }
  try {
    return read();
  } catch (err) {
    if (!isRnodeError(err) || err.code !== ErrorCodes.BAD_STORE_URL) throw err;
    throw new RnodeError(
      ErrorCodes.BAD_OUTPUT,
      `--out ${displayUrl(url)} cannot be used: ${err.message.replace(/^(the )?store URL parameter /, '')}`,
      {
        cause: err,
        details: { out: displayUrl(url) },
      },
    );
  }
}
