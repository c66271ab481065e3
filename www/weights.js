// The model's files, for the engine Worker: streamed with fetch + ReadableStream (never whole in
// memory), stored in the Cache API so that a second visit downloads nothing, resumed with HTTP
// Range when a download is interrupted, and checked against `manifest.json` (size, sha256) when
// the model has one. A file is stored only once it passed every check and the engine parsed it
// to its last byte: a truncated or tampered file is an error naming it and is never cached.
//
// manifest.json (optional, at the model's base URL):
//   { "files": { "unet/diffusion_pytorch_model.safetensors": { "size": 123, "sha256": "ab…" }, … } }

export const CACHE_NAME = 'zepo-models-v1';
const MAX_RESUMES = 5;

/** An Error with a name (IntegrityError, DownloadError, NotFound). */
function named(name, message) {
  return Object.assign(new Error(message), { name });
}

const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

/** Incremental SHA-256 (WebCrypto's digest needs the whole input at once). */
export class Sha256 {
  constructor() {
    this.h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
    this.w = new Uint32Array(64);
    this.buf = new Uint8Array(64);
    this.bufLen = 0;
    this.length = 0;
  }

  update(data) {
    let i = 0;
    this.length += data.length;
    if (this.bufLen > 0) {
      i = Math.min(64 - this.bufLen, data.length);
      this.buf.set(data.subarray(0, i), this.bufLen);
      this.bufLen += i;
      if (this.bufLen < 64) return this;
      this.block(this.buf, 0);
      this.bufLen = 0;
    }
    for (; i + 64 <= data.length; i += 64) this.block(data, i);
    if (i < data.length) {
      this.buf.set(data.subarray(i), 0);
      this.bufLen = data.length - i;
    }
    return this;
  }

  block(b, o) {
    const w = this.w;
    for (let t = 0; t < 16; t++, o += 4) w[t] = (b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3];
    for (let t = 16; t < 64; t++) {
      const x = w[t - 15];
      const y = w[t - 2];
      const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
      const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
      w[t] = (w[t - 16] + s0 + w[t - 7] + s1) | 0;
    }
    const h = this.h;
    let a = h[0], bb = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (let t = 0; t < 64; t++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const t1 = (hh + S1 + ((e & f) ^ (~e & g)) + K[t] + w[t]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const t2 = (S0 + ((a & bb) ^ (a & c) ^ (bb & c))) | 0;
      hh = g; g = f; f = e; e = (d + t1) | 0; d = c; c = bb; bb = a; a = (t1 + t2) | 0;
    }
    h[0] += a; h[1] += bb; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  }

  /** The digest as lowercase hex; the hasher is spent afterwards. */
  hex() {
    const bits = this.length * 8;
    const pad = new Uint8Array(((this.bufLen < 56 ? 56 : 120) - this.bufLen) + 8);
    pad[0] = 0x80;
    const view = new DataView(pad.buffer);
    view.setUint32(pad.length - 8, Math.floor(bits / 2 ** 32));
    view.setUint32(pad.length - 4, bits >>> 0);
    const length = this.length;
    this.update(pad);
    this.length = length;
    return Array.from(this.h, (x) => x.toString(16).padStart(8, '0')).join('');
  }
}

async function openCache(name) {
  try {
    return globalThis.caches ? await caches.open(name) : null;
  } catch {
    return null; // Storage disabled (private mode, opaque origin): everything still works, uncached.
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * The files of one model (diffusers layout, optionally with manifest.json). The engine calls
 * `text(path, optional)` and `open(path)`; `onBytes(path, n)` reports bytes as they arrive
 * (from the network or the cache), `onOpen(path, size)` each file opened.
 */
export class ModelFiles {
  static async open(base, { cacheName = CACHE_NAME, onBytes = () => {}, onOpen = () => {}, fetch: fetchFn } = {}) {
    const files = new ModelFiles(base, await openCache(cacheName), { onBytes, onOpen, fetchFn });
    const text = await files.text('manifest.json', true);
    if (text !== null) {
      try {
        files.manifest = JSON.parse(text).files || {};
      } catch (e) {
        throw named('IntegrityError', `${files.url('manifest.json')}: not valid JSON (${e.message})`);
      }
    }
    return files;
  }

  constructor(base, cache, { onBytes, onOpen, fetchFn }) {
    this.baseUrl = String(base).replace(/\/+$/, '');
    this.cache = cache;
    this.manifest = null;
    this.onBytes = onBytes;
    this.onOpen = onOpen;
    this.fetch = fetchFn || ((...a) => fetch(...a));
    this.requests = 0;
  }

  get base() {
    return this.baseUrl;
  }

  url(path) {
    return `${this.baseUrl}/${path}`;
  }

  async cached(path) {
    const hit = await this.cache?.match(this.url(path));
    return hit && hit.headers.get('x-zepo-complete') === '1' ? hit : null;
  }

  async request(path, init = {}) {
    this.requests++;
    try {
      // The Cache API keeps the files: the HTTP cache would only hold a second copy.
      return await this.fetch(this.url(path), { cache: 'no-store', ...init });
    } catch (e) {
      throw named('DownloadError', `${this.url(path)}: request failed (${e.message}); check the connection and the model URL`);
    }
  }

  /** Checks bytes against the manifest's entry for `path`, if any. */
  async verify(path, bytes) {
    const want = this.manifest?.[path];
    if (!want) return;
    if (want.size != null && bytes.length !== want.size) {
      throw named('IntegrityError', `${this.url(path)}: ${bytes.length} bytes, the manifest says ${want.size}; not stored`);
    }
    if (want.sha256) {
      const got = new Sha256().update(bytes).hex();
      if (got !== want.sha256.toLowerCase()) {
        throw named('IntegrityError', `${this.url(path)}: sha256 ${got} does not match the manifest (${want.sha256}): the file is corrupt or was tampered with; not stored`);
      }
    }
  }

  /** A small text file; with `optional`, null when the server answers 404. */
  async text(path, optional = false) {
    const hit = await this.cache?.match(this.url(path));
    if (hit && hit.headers.get('x-zepo-absent') === '1' && optional) return null;
    if (hit && hit.headers.get('x-zepo-complete') === '1') return hit.text();
    const r = await this.request(path);
    if (r.status === 404 && optional) {
      // Remember the absence too, so that a second visit asks nothing.
      await this.cache?.put(this.url(path), new Response('', { headers: { 'x-zepo-absent': '1' } })).catch(() => {});
      return null;
    }
    if (!r.ok) throw named(r.status === 404 ? 'NotFound' : 'DownloadError', `${this.url(path)}: HTTP ${r.status} ${r.statusText}`);
    const bytes = new Uint8Array(await r.arrayBuffer());
    await this.verify(path, bytes);
    await this.cache?.put(this.url(path), new Response(bytes, {
      headers: { 'content-type': r.headers.get('content-type') || 'text/plain', 'x-zepo-complete': '1' },
    })).catch(() => {});
    return new TextDecoder().decode(bytes);
  }

  /** The size of `path` in bytes: from the cache, the manifest, or a HEAD request (null if unknown). */
  async size(path) {
    const hit = await this.cached(path);
    if (hit) return Number(hit.headers.get('x-zepo-size')) || null;
    const m = this.manifest?.[path];
    if (m?.size != null) return m.size;
    const r = await this.request(path, { method: 'HEAD' });
    if (!r.ok) throw named(r.status === 404 ? 'NotFound' : 'DownloadError', `${this.url(path)}: HTTP ${r.status} ${r.statusText}`);
    return Number(r.headers.get('content-length')) || null;
  }

  /** A large file, read chunk by chunk: see Download. */
  async open(path) {
    const d = new Download(this, path);
    await d.start();
    this.onOpen(path, d.size, d.fromCache);
    return d;
  }
}

/** One file being read from the cache or the network. */
class Download {
  constructor(files, path) {
    this.files = files;
    this.path = path;
    this.url = files.url(path);
    this.received = 0;
    this.resumes = 0;
    this.finished = false;
    this.closed = false;
  }

  async start() {
    const hit = await this.files.cached(this.path);
    if (hit) {
      this.fromCache = true;
      this.size = Number(hit.headers.get('x-zepo-size')) || null;
      this.reader = hit.body.getReader();
      return;
    }
    this.fromCache = false;
    this.expected = this.files.manifest?.[this.path] || null;
    this.hash = this.expected?.sha256 ? new Sha256() : null;
    await this.connect();
    // The cache's copy fills as the bytes pass, and is committed only by commit().
    if (this.files.cache) {
      const body = new ReadableStream({ start: (c) => { this.sink = c; } });
      const headers = { 'content-type': 'application/octet-stream', 'x-zepo-complete': '1' };
      if (this.size != null) headers['x-zepo-size'] = String(this.size);
      if (this.expected?.sha256) headers['x-zepo-sha256'] = this.expected.sha256;
      this.stored = this.files.cache.put(this.url, new Response(body, { headers })).then(
        () => true,
        (e) => { this.storeError = e; return false; },
      );
    }
  }

  /** (Re)connects at byte `this.received`: a Range request once some bytes are in. */
  async connect() {
    const from = this.received;
    const headers = from > 0 ? { Range: `bytes=${from}-`, ...(this.etag ? { 'If-Range': this.etag } : {}) } : {};
    const r = await this.files.request(this.path, { headers });
    if (from > 0) {
      const range = /^bytes (\d+)-/.exec(r.headers.get('content-range') || '');
      if (r.status !== 206 || !range || Number(range[1]) !== from) {
        await r.body?.cancel();
        throw this.fail('DownloadError', `${this.url}: the download broke off at ${from} bytes and the server did not resume it (HTTP ${r.status}${r.status === 200 ? ': the file changed or Range is not supported' : ''})`);
      }
    } else {
      if (!r.ok) throw this.fail(r.status === 404 ? 'NotFound' : 'DownloadError', `${this.url}: HTTP ${r.status} ${r.statusText}`);
      const length = Number(r.headers.get('content-length'));
      // Content-Length is the transfer size: only an uncompressed body's is the file's.
      const plain = !r.headers.get('content-encoding') || r.headers.get('content-encoding') === 'identity';
      this.size = this.expected?.size ?? (plain && length > 0 ? length : null);
      if (this.expected?.size != null && plain && length > 0 && length !== this.expected.size) {
        await r.body?.cancel();
        throw this.fail('IntegrityError', `${this.url}: the server sends ${length} bytes, the manifest says ${this.expected.size}; not stored`);
      }
      this.etag = r.headers.get('etag');
    }
    if (!r.body) throw this.fail('DownloadError', `${this.url}: the response has no body`);
    this.reader = r.body.getReader();
  }

  /** The next chunk (Uint8Array), or null at the end once every check passed. */
  async read() {
    if (this.finished) return null;
    for (;;) {
      let res;
      try {
        res = await this.reader.read();
      } catch (e) {
        if (this.closed) throw e;
        const canResume = !this.fromCache && this.received > 0 && this.resumes < MAX_RESUMES &&
          (this.size == null || this.received < this.size);
        if (!canResume) {
          throw this.fail('DownloadError', `${this.url}: the download broke off at ${this.received}${this.size ? ` of ${this.size}` : ''} bytes (${e.message})`);
        }
        this.resumes++;
        await sleep(200 * this.resumes);
        await this.connect();
        continue;
      }
      if (res.done) return this.end();
      const chunk = res.value;
      this.received += chunk.length;
      if (this.size != null && this.received > this.size) {
        throw this.fail('IntegrityError', `${this.url}: more than the expected ${this.size} bytes; not stored`);
      }
      this.hash?.update(chunk);
      this.sink?.enqueue(chunk);
      this.files.onBytes(this.path, chunk.length);
      return chunk;
    }
  }

  end() {
    if (this.size != null && this.received !== this.size) {
      throw this.fail('IntegrityError', `${this.url}: truncated: ${this.received} of ${this.size} bytes; not stored`);
    }
    if (this.hash) {
      const got = this.hash.hex();
      if (got !== this.expected.sha256.toLowerCase()) {
        throw this.fail('IntegrityError', `${this.url}: sha256 ${got} does not match the manifest (${this.expected.sha256}): the file is corrupt or was tampered with; not stored`);
      }
    }
    this.finished = true;
    return null;
  }

  fail(name, message) {
    this.abort(message);
    return named(name, message);
  }

  /** The engine parsed the whole file: store it. Resolves to whether it was stored. */
  async commit() {
    if (this.fromCache || !this.sink || this.closed) return false;
    if (!this.finished) throw named('Error', `${this.url}: commit before the end of the file`);
    this.closed = true;
    this.sink.close();
    const ok = await this.stored;
    if (!ok) console.warn(`${this.url}: downloaded but not stored in the cache (${this.storeError?.message}); the next visit downloads it again`);
    return ok;
  }

  /** Stops reading; nothing is stored. */
  abort(reason) {
    if (this.closed) return;
    this.closed = true;
    try { this.sink?.error(new Error(String(reason))); } catch { /* already errored */ }
    this.reader?.cancel(String(reason)).catch(() => {});
  }
}

/** Deletes every stored file of the model at `base` (or of every model). */
export async function clearCache(base, cacheName = CACHE_NAME) {
  if (!globalThis.caches) return 0;
  if (!base) return (await caches.delete(cacheName)) ? 1 : 0;
  const cache = await caches.open(cacheName);
  const prefix = String(base).replace(/\/+$/, '') + '/';
  let n = 0;
  for (const req of await cache.keys()) {
    if (req.url.startsWith(prefix) && await cache.delete(req)) n++;
  }
  return n;
}
