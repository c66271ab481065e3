// The model's files, for the engine Worker: streamed with fetch + ReadableStream (never whole in
// memory), stored in the Cache API so that a second visit downloads nothing, resumed with HTTP
// Range when a download is interrupted, and checked against `manifest.json` (size, sha256) when
// the model has one. A file is stored only once it passed every check and the engine parsed it
// to its last byte: a truncated or tampered file is an error naming it and is never cached.
//
// manifest.json (optional, at the model's base URL), either
//   { "files": { "unet/diffusion_pytorch_model.safetensors": { "size": 123, "sha256": "ab…" }, … } }
// (a diffusers layout's checksums), or an fp16 bundle's manifest (`"format": "zepo-fp16-bundle"`,
// weights/README.md). The engine reads it (src/weights/source.rs, `Layout::detect`: the one
// place that tells a bundle from a diffusers layout) and declares every file it lists with
// `expect()` before opening any.
//
// A download broken off for longer than the in-visit retries keeps its prefix in the origin
// private file system (OPFS, `zepo-partial/`): the next visit resumes it with an HTTP Range
// request, and the whole file (stored prefix and new bytes) is checked again (size, sha256)
// before it is stored as complete. Complete files live in the Cache API (`CACHE_NAME`), each
// marked `x-zepo-complete: 1`; a partial file is never there. A text file (manifest, config,
// tokenizer) is stored only once the engine took it: after the load (or stylization) that read
// it succeeded, or failed only on a later download (`settle()`, `discard()`: www/worker.js).
//
// A hostile or broken host (weights/README.md, "Downloads: what a server may and may not do"):
// no file is read past its size (the manifest's, else a weight file's safetensors header's once
// the engine parsed it, else MAX_TEXT_BYTES / MAX_FILE_BYTES), a Content-Length that disagrees
// with the manifest or the header is refused, a Range request answered with anything but the
// bytes asked for is never appended to a stored prefix, a redirect to another origin is followed
// only for files whose bytes are checked (see `checkRedirect`), and a path that would leave the
// model's folder is never requested.
//
// For a storage panel: `storedModels()` lists what is stored per model, `clearCache(base)`
// deletes a model's files (complete and partial).

export const CACHE_NAME = 'zepo-models-v1';
const PARTIAL_DIR = 'zepo-partial';
const MAX_RESUMES = 5;
/**
 * The most a text file of a model (manifest, config, tokenizer file, shard index) may be when
 * the manifest gives no size: 16 MiB (the largest real ones, a bundle's manifest and CLIP's
 * vocab.json, are near 1 MB). More is refused, not read on.
 */
export const MAX_TEXT_BYTES = 16 * 2 ** 20;
/**
 * The most any one weight file may be when no manifest gives its size: 4 GiB, above the largest
 * part ZePo runs (an SD 1.x UNet in f32, one 3.44 GB file). A server announcing more, a
 * safetensors header stating more, or a body going on past it is refused.
 */
export const MAX_FILE_BYTES = 4 * 2 ** 30;
/** The marker stored, under a model's base, once a load stored every file it read. */
const COMPLETE_MARK = '.zepo-complete';

/** An Error with a name (IntegrityError, DownloadError, NotFound, StorageFull). */
function named(name, message) {
  return Object.assign(new Error(message), { name });
}

const MB = (n) => `${(n / 1e6).toFixed(1)} MB`;

/** The body's length as the server announces it (Content-Length of an uncompressed body), or null. */
function announcedLength(r) {
  // Content-Length is the transfer size: only an uncompressed body's is the file's.
  const encoding = r.headers.get('content-encoding');
  if (encoding && encoding !== 'identity') return null;
  const v = r.headers.get('content-length');
  return v !== null && /^\s*\d+\s*$/.test(v) ? Number(v) : null;
}

function isQuota(e) {
  return e?.name === 'QuotaExceededError' || /quota/i.test(String(e?.message || ''));
}

/** A quota error as a `StorageFull` error: what could not be stored, what is needed, what to do. */
async function storageFull(url, bytes, totalBytes) {
  let room = '';
  try {
    const { usage, quota } = await navigator.storage.estimate();
    // Only when the estimate explains the refusal (it is approximate, and overrides skip it).
    if (quota - usage < (totalBytes || bytes)) {
      room = ` This site may store ${MB(quota)} in this browser and already stores ${MB(usage)}.`;
    }
  } catch { /* no estimate */ }
  const need = totalBytes ? ` The model needs ${MB(totalBytes)} of storage in all.` : '';
  return named('StorageFull', `not enough storage to keep the model's files: ${url} (${MB(bytes)}) could not be stored.` +
    `${need}${room} Delete stored models you no longer use (clearCache), free disk space, or allow this site ` +
    'more storage, then reload; nothing partial was kept.');
}

async function openCache(name) {
  try {
    return globalThis.caches ? await caches.open(name) : null;
  } catch {
    return null; // Storage disabled (private mode, opaque origin): everything still works, uncached.
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function partialDir(create = true) {
  try {
    const root = await navigator.storage.getDirectory();
    return await root.getDirectoryHandle(PARTIAL_DIR, { create });
  } catch {
    return null; // No OPFS (or not here): downloads still resume within a visit.
  }
}

/** The OPFS names of a URL's partial download: `<sha256(url)>.part` and `.json` (what it is). */
async function partialName(url) {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(url));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('').slice(0, 32);
}

async function removePartial(dir, name) {
  for (const f of [`${name}.part`, `${name}.json`]) await dir?.removeEntry(f).catch(() => {});
}

/**
 * The files of one model (diffusers layout, optionally with manifest.json). The engine calls
 * `text(path, optional)` and `open(path)`; `onBytes(path, n)` reports bytes as they arrive
 * (from the network or the cache), `onOpen(path, size)` each file opened.
 */
export class ModelFiles {
  static async open(base, { cacheName = CACHE_NAME, onBytes = () => {}, onOpen = () => {}, fetch: fetchFn, variant = null, sha256 } = {}) {
    const files = new ModelFiles(base, await openCache(cacheName), { onBytes, onOpen, fetchFn, sha256 });
    /** The diffusers weight variant to prefer ('fp16'), read by the engine. */
    files.variant = variant || null;
    return files;
  }

  /**
   * Declares `path`'s size and sha256 (either may be undefined), from `manifest.json`: the
   * engine reads it (a bundle's manifest, or a diffusers layout's checksum list) and declares
   * every file it lists before reading any. `now`: loaded by this call.
   */
  expect(path, size, sha256, now = false) {
    this.manifest ??= {};
    this.manifest[path] = { size, sha256 };
    if (now) this.onOpen(path, size, false);
  }

  /** Bytes of every declared file (what the model needs in storage), or null. */
  get totalBytes() {
    const sizes = Object.values(this.manifest || {}).map((m) => m.size || 0);
    return sizes.length ? sizes.reduce((a, b) => a + b, 0) : null;
  }

  /** Stores `response` for `path` (marked with the model's base); a quota error is StorageFull. */
  async store(path, response, bytes) {
    if (!this.cache) return false;
    try {
      await this.cache.put(this.url(path), response);
      return true;
    } catch (e) {
      if (isQuota(e)) throw await storageFull(this.url(path), bytes, this.totalBytes);
      this.unstored++;
      console.warn(`${this.url(path)}: not stored in the cache (${e.message}); the next visit downloads it again`);
      return false;
    }
  }

  /**
   * Stores the text files read since the last call: the engine accepted them (the load or the
   * stylization that read them succeeded). Best effort: a refusal only costs a download next
   * time (and keeps the model from being marked complete).
   */
  async settle() {
    const held = [...this.pending];
    this.pending.clear();
    for (const [path, { bytes, type }] of held) {
      const response = new Response(bytes, {
        headers: { 'content-type': type, 'x-zepo-complete': '1', 'x-zepo-base': this.baseUrl, 'x-zepo-size': String(bytes.length) },
      });
      await this.store(path, response, bytes.length).catch((e) => {
        this.unstored++;
        console.warn(`${this.url(path)}: not stored (${e.message}); the next visit downloads it again`);
      });
    }
  }

  /** Forgets the text files read since the last settle(): the engine refused what read them. */
  discard() {
    this.pending.clear();
  }

  /** After a load: stores its text files, and marks the model complete if every file it read is stored. */
  async markComplete() {
    await this.settle();
    if (!this.cache || this.unstored > 0) return false;
    return this.store(COMPLETE_MARK, new Response('', { headers: { 'x-zepo-base': this.baseUrl, 'x-zepo-size': '0' } }), 0)
      .catch(() => false);
  }

  /**
   * `sha256`: makes an incremental hasher (`update(bytes)`, then `hex()`): the engine's
   * (`Sha256` of www/engine/zepo.js, the sha2 crate). Needed only for files a manifest gives a
   * sha256 for.
   */
  constructor(base, cache, { onBytes, onOpen, fetchFn, sha256 }) {
    this.sha256 = sha256 || null;
    this.baseUrl = String(base).replace(/\/+$/, '');
    this.cache = cache;
    this.manifest = null;
    this.onBytes = onBytes;
    this.onOpen = onOpen;
    this.fetch = fetchFn || ((...a) => fetch(...a));
    this.requests = 0;
    /** Files read but not stored (storage refused them for another reason than quota). */
    this.unstored = 0;
    /** Text files read but not stored yet: path → { text, bytes, type } (see settle()). */
    this.pending = new Map();
    /** Partial downloads being removed (a download that failed): see quiesce(). */
    this.clearing = new Set();
  }

  /** Tracks the removal of a failed download's prefix, so that quiesce() can wait for it. */
  track(removal) {
    if (!removal) return;
    this.clearing.add(removal);
    removal.finally(() => this.clearing.delete(removal)).catch(() => {});
  }

  /**
   * Resolves once every failed download's stored prefix is removed: an error is reported only
   * after it, so that nothing is left half-removed in OPFS when the caller ends the Worker or
   * looks at the storage.
   */
  async quiesce() {
    while (this.clearing.size) await Promise.allSettled([...this.clearing]);
  }

  get base() {
    return this.baseUrl;
  }

  /** A new SHA-256 hasher (see the constructor's `sha256`). */
  hasher() {
    if (!this.sha256) throw named('IntegrityError', `${this.baseUrl}: no SHA-256 hasher was given to ModelFiles, and the manifest asks for a sha256 check`);
    return this.sha256();
  }

  url(path) {
    return `${this.baseUrl}/${path}`;
  }

  /**
   * Refuses a path that a URL parser would resolve outside the model's folder (`..`, `%2e%2e`,
   * `\`, `//host`, a scheme) or that carries a query or fragment. The engine's paths are
   * checked where they come from (a bundle's manifest, a shard index); this is the last guard.
   */
  checkPath(path) {
    let inside = false;
    try {
      const root = new URL(`${this.baseUrl}/`).href;
      inside = new URL(this.url(path)).href.startsWith(root) && !/[?#]/.test(path);
    } catch { /* not a URL */ }
    if (!inside) throw named('IntegrityError', `${this.url(path)}: refused: \`${path}\` is not a path inside the model's folder (${this.baseUrl}/)`);
  }

  /**
   * The redirect rule (weights/README.md). A redirect within the model's origin is followed. One
   * to another origin only for a file whose bytes are checked: one the manifest gives a sha256
   * for (every file of a bundle), or a weight file (`kind` 'weights': parsed against its own
   * safetensors header, the size it states and the model's config; the Hugging Face hub serves
   * these from its CDN by a redirect). A text file without a sha256 — manifest.json itself, a
   * diffusers layout's configs, tokenizer and shard indexes — must come from the model's origin.
   */
  async checkRedirect(path, r, kind) {
    if (!r.redirected || !r.url) return;
    const from = new URL(this.url(path)).origin;
    if (new URL(r.url).origin === from || this.manifest?.[path]?.sha256 || kind === 'weights') return;
    await r.body?.cancel().catch(() => {});
    throw named('IntegrityError', `${this.url(path)}: the server redirected it to another origin (${r.url}); refused: ` +
      `a file that no manifest gives a sha256 for (manifest.json itself, configs, the tokenizer, shard indexes) must come ` +
      `from the model's own origin (${from}); only weight files and files with a sha256 may come from elsewhere`);
  }

  async cached(path) {
    const hit = await this.cache?.match(this.url(path));
    return hit && hit.headers.get('x-zepo-complete') === '1' ? hit : null;
  }

  /** A request for `path` (`kind`: 'text' or 'weights', for the redirect rule). */
  async request(path, init = {}, kind = 'text') {
    this.checkPath(path);
    this.requests++;
    let r;
    try {
      // The Cache API keeps the files: the HTTP cache would only hold a second copy.
      r = await this.fetch(this.url(path), { cache: 'no-store', ...init });
    } catch (e) {
      throw named('DownloadError', `${this.url(path)}: request failed (${e.message}); check the connection and the model URL`);
    }
    await this.checkRedirect(path, r, kind);
    return r;
  }

  /**
   * A text file's bytes: at most the manifest's size for it, else MAX_TEXT_BYTES. A longer
   * announcement or body (an endless one) is refused as soon as it shows.
   */
  async readText(path, r) {
    const url = this.url(path);
    const size = this.manifest?.[path]?.size;
    const limit = size ?? MAX_TEXT_BYTES;
    const what = size != null ? "the manifest's size for it" : 'the most a text file of a model may be';
    const refuse = (message) => {
      reader?.cancel().catch(() => {});
      return named('IntegrityError', `${url}: ${message}; not stored`);
    };
    const reader = r.body?.getReader();
    const announced = announcedLength(r);
    if (announced != null && announced > limit) throw refuse(`the server announces ${announced} bytes (Content-Length), more than ${limit} bytes (${what})`);
    const parts = [];
    let n = 0;
    for (;;) {
      let res;
      try {
        res = reader ? await reader.read() : { done: true };
      } catch (e) {
        throw named('DownloadError', `${url}: the download broke off at ${n}${announced != null ? ` of ${announced}` : ''} bytes (${e.message}); check the connection`);
      }
      if (res.done) break;
      n += res.value.length;
      if (n > limit) throw refuse(`more than ${limit} bytes (${what})`);
      parts.push(res.value);
    }
    const bytes = new Uint8Array(n);
    let at = 0;
    for (const p of parts) {
      bytes.set(p, at);
      at += p.length;
    }
    return bytes;
  }

  /** Checks bytes against the manifest's entry for `path`, if any. */
  async verify(path, bytes) {
    const want = this.manifest?.[path];
    if (!want) return;
    if (want.size != null && bytes.length !== want.size) {
      throw named('IntegrityError', `${this.url(path)}: ${bytes.length} bytes, the manifest says ${want.size}; not stored`);
    }
    if (want.sha256) {
      const hash = this.hasher();
      hash.update(bytes);
      const got = hash.hex();
      if (got !== want.sha256.toLowerCase()) {
        throw named('IntegrityError', `${this.url(path)}: sha256 ${got} does not match the manifest (${want.sha256}): the file is corrupt or was tampered with; not stored`);
      }
    }
  }

  /**
   * A small text file; with `optional`, null when the server answers 404. Stored once the engine
   * used it (settle()): a file it refuses (a manifest it cannot read, a config it rejects) is
   * never kept, and the next load asks the server again.
   */
  async text(path, optional = false) {
    this.checkPath(path);
    const held = this.pending.get(path);
    if (held) return held.text;
    const hit = await this.cache?.match(this.url(path));
    if (hit && hit.headers.get('x-zepo-absent') === '1' && optional) return null;
    if (hit && hit.headers.get('x-zepo-complete') === '1') return hit.text();
    const r = await this.request(path);
    if (r.status === 404 && optional) {
      await r.body?.cancel().catch(() => {});
      // Remember the absence too, so that a second visit asks nothing.
      await this.markAbsent(path);
      return null;
    }
    if (!r.ok) {
      await r.body?.cancel().catch(() => {});
      throw named(r.status === 404 ? 'NotFound' : 'DownloadError', `${this.url(path)}: HTTP ${r.status} ${r.statusText}`);
    }
    const bytes = await this.readText(path, r);
    await this.verify(path, bytes);
    const text = new TextDecoder().decode(bytes);
    if (/\.json$/i.test(path)) {
      // A Content-Length shorter than the file cuts it without any error from the browser.
      try {
        JSON.parse(text);
      } catch (e) {
        throw named('IntegrityError', `${this.url(path)}: not valid JSON (${e.message}): cut short, or not the file asked for; not stored`);
      }
    }
    this.pending.set(path, { text, bytes, type: r.headers.get('content-type') || 'text/plain' });
    return text;
  }

  /** The size of `path` in bytes: from the cache, the manifest, or a HEAD request (null if unknown). */
  async size(path) {
    const hit = await this.cached(path);
    if (hit) return Number(hit.headers.get('x-zepo-size')) || null;
    const m = this.manifest?.[path];
    if (m?.size != null) return m.size;
    const r = await this.request(path, { method: 'HEAD' }, 'weights');
    if (!r.ok) throw named(r.status === 404 ? 'NotFound' : 'DownloadError', `${this.url(path)}: HTTP ${r.status} ${r.statusText}`);
    return Number(r.headers.get('content-length')) || null;
  }

  /**
   * A large file, read chunk by chunk: see Download. With `optional`, null when the server
   * answers 404 (remembered, like text()'s: a second visit asks nothing).
   */
  async open(path, optional = false) {
    this.checkPath(path);
    if (optional && (await this.absent(path))) return null;
    const d = new Download(this, path, optional);
    await d.start();
    if (d.absent) {
      await this.markAbsent(path);
      return null;
    }
    this.onOpen(path, d.size, d.fromCache);
    return d;
  }

  async absent(path) {
    const hit = await this.cache?.match(this.url(path));
    return !!hit && hit.headers.get('x-zepo-absent') === '1';
  }

  /** Remembers that the server has no `path` (a probe for an optional file). */
  markAbsent(path) {
    return this.store(path, new Response('', { headers: { 'x-zepo-absent': '1', 'x-zepo-base': this.baseUrl, 'x-zepo-size': '0' } }), 0);
  }

  /** Bytes the engine derived from the model and stored with it (prompt embeddings), or null. */
  async derived(path) {
    const hit = await this.cached(path);
    return hit ? new Uint8Array(await hit.arrayBuffer()) : null;
  }

  /** Stores bytes derived from the model with it; false if storage refused them. */
  async storeDerived(path, bytes) {
    return this.store(path, new Response(bytes, {
      headers: { 'x-zepo-complete': '1', 'x-zepo-base': this.baseUrl, 'x-zepo-size': String(bytes.length) },
    }), bytes.length).catch(() => false);
  }
}

/**
 * One file being read: from the cache, or from the network (with the prefix an earlier visit
 * stored, when there is one). `read()` gives chunks from byte 0 either way.
 */
class Download {
  constructor(files, path, optional = false) {
    this.files = files;
    this.path = path;
    /** A 404 sets `absent` instead of failing. */
    this.optional = optional;
    this.url = files.url(path);
    this.received = 0;
    this.resumes = 0;
    this.finished = false;
    this.closed = false;
    /** Whether an error keeps the stored prefix for the next visit (a network failure does). */
    this.keepPartial = false;
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
    this.hash = this.expected?.sha256 ? this.files.hasher() : null;
    try {
      await this.resumeOrConnect();
      if (this.absent) return;
    } catch (e) {
      if (!this.closed) {
        this.keepPartial = e.name === 'DownloadError';
        this.abort(e.message);
      }
      throw e;
    }
    // The cache's copy fills as the bytes pass, and is committed only by commit().
    if (this.files.cache) {
      const body = new ReadableStream({ start: (c) => { this.sink = c; } });
      const headers = { 'content-type': 'application/octet-stream', 'x-zepo-complete': '1', 'x-zepo-base': this.files.base };
      if (this.size != null) headers['x-zepo-size'] = String(this.size);
      if (this.expected?.sha256) headers['x-zepo-sha256'] = this.expected.sha256;
      this.stored = this.files.cache.put(this.url, new Response(body, { headers })).then(
        () => true,
        (e) => { this.storeError = e; return false; },
      );
    }
  }

  /**
   * Resumes the prefix an earlier visit stored (a Range request for the rest; the prefix is
   * read back first, so that size and sha256 are checked on the whole file), else downloads
   * from byte 0. The bytes that arrive are appended to the stored prefix as they pass.
   */
  async resumeOrConnect() {
    this.partial = await Partial.open(this.url);
    const meta = await this.partial?.meta();
    const sameFile = meta && meta.url === this.url && (this.expected?.sha256 ? meta.sha256 === this.expected.sha256 : !!meta.etag);
    const have = sameFile ? this.partial.size() : 0;
    let whole = null;
    if (have > 0 && (meta.size == null || have < meta.size)) {
      this.etag = meta.etag;
      this.size = this.expected?.size ?? meta.size;
      const r = await this.files.request(this.path, {
        headers: { Range: `bytes=${have}-`, ...(this.etag ? { 'If-Range': this.etag } : {}) },
      }, 'weights');
      const range = /^bytes (\d+)-/.exec(r.headers.get('content-range') || '');
      if (r.status === 206 && range && Number(range[1]) === have && r.body) {
        this.resumedFrom = have;
        this.reader = this.partial.reader(have);
        this.next = r.body.getReader();
        return;
      }
      // Anything else is never appended to the stored prefix. A 200 is the whole file (the
      // server ignores Range, or the file changed: If-Range): taken from byte 0. Any other
      // answer (a 206 from elsewhere, an error) is dropped and the file asked for whole.
      if (r.status === 200) whole = r;
      else await r.body?.cancel().catch(() => {});
    }
    // Nothing (usable) stored: start over; begin() empties the old prefix and records the new.
    this.etag = null;
    if (whole) await this.take(whole);
    else await this.connect();
    if (this.absent) return;
    this.partial?.begin({ url: this.url, base: this.files.base, sha256: this.expected?.sha256 || null, etag: this.etag, size: this.size });
  }

  /** (Re)connects at byte `this.received`: a Range request once some bytes are in. */
  async connect() {
    const from = this.received;
    const headers = from > 0 ? { Range: `bytes=${from}-`, ...(this.etag ? { 'If-Range': this.etag } : {}) } : {};
    const r = await this.files.request(this.path, { headers }, 'weights');
    if (from === 0) return this.take(r);
    const range = /^bytes (\d+)-/.exec(r.headers.get('content-range') || '');
    if (r.status !== 206 || !range || Number(range[1]) !== from) {
      // The bytes already passed to the engine cannot be taken back: never splice another answer on.
      await r.body?.cancel().catch(() => {});
      await this.partial?.clear();
      throw this.fail('DownloadError', `${this.url}: the download broke off at ${from} bytes and the server did not resume it (HTTP ${r.status}${r.status === 200 ? ': the whole file instead of the rest; the file changed or Range is not supported' : range ? `: bytes from ${range[1]} instead of ${from}` : ''})`);
    }
    if (!r.body) throw this.fail('DownloadError', `${this.url}: the response has no body`);
    this.reader = r.body.getReader();
  }

  /** The response for the whole file: its status, and its announced length against the manifest and the limit. */
  async take(r) {
    if (r.status === 404 && this.optional) {
      await r.body?.cancel().catch(() => {});
      this.absent = true;
      return;
    }
    if (r.status !== 200) {
      await r.body?.cancel().catch(() => {});
      throw this.fail(r.status === 404 ? 'NotFound' : 'DownloadError', `${this.url}: HTTP ${r.status} ${r.statusText}${r.ok ? ' (the whole file was asked for)' : ''}`);
    }
    const length = announcedLength(r);
    const refuse = async (message) => {
      await r.body?.cancel().catch(() => {});
      return this.fail('IntegrityError', `${this.url}: ${message}; not stored`);
    };
    if (this.expected?.size != null && length != null && length !== this.expected.size) {
      throw await refuse(`the server announces ${length} bytes (Content-Length), the manifest says ${this.expected.size}`);
    }
    if (length != null && length > MAX_FILE_BYTES) {
      throw await refuse(`the server announces ${length} bytes (Content-Length), more than a model file may be (${MAX_FILE_BYTES} bytes)`);
    }
    this.size = this.expected?.size ?? length;
    this.etag = r.headers.get('etag');
    if (!r.body) throw this.fail('DownloadError', `${this.url}: the response has no body`);
    this.reader = r.body.getReader();
  }

  /**
   * The file's length as its own safetensors header states it (the engine calls this once it
   * parsed the header, before any tensor is used): refused if it is more than MAX_FILE_BYTES or
   * not what the manifest or the server's Content-Length said; no byte past it is read.
   */
  expectSize(n) {
    if (this.fromCache || this.closed) return;
    if (!(n <= MAX_FILE_BYTES)) {
      throw this.fail('IntegrityError', `${this.url}: its safetensors header states ${n} bytes, more than a model file may be (${MAX_FILE_BYTES} bytes); not stored`);
    }
    if (this.size != null && n !== this.size) {
      const said = this.expected?.size != null ? `the manifest says ${this.size}` : `the server announced ${this.size} (Content-Length)`;
      const what = n > this.size ? 'truncated' : 'bytes past its end';
      throw this.fail('IntegrityError', `${this.url}: its safetensors header states ${n} bytes, ${said} (${what}); not stored`);
    }
    this.size = n;
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
        await this.reconnect(e);
        continue;
      }
      if (res.done) {
        if (this.next) {
          // The stored prefix is read back: the network's rest follows.
          this.reader = this.next;
          this.next = null;
          continue;
        }
        return this.end();
      }
      const chunk = res.value;
      this.received += chunk.length;
      if (this.size != null && this.received > this.size) {
        throw this.fail('IntegrityError', `${this.url}: more than the expected ${this.size} bytes; not stored`);
      }
      if (this.received > MAX_FILE_BYTES) {
        throw this.fail('IntegrityError', `${this.url}: more than ${MAX_FILE_BYTES} bytes, the most a model file may be; not stored`);
      }
      if (!this.fromCache && this.received > (this.resumedFrom || 0)) {
        try {
          this.partial?.write(chunk, this.received - chunk.length);
        } catch (e) {
          if (isQuota(e)) {
            await this.partial.clear();
            const full = await storageFull(this.url, this.size || this.received, this.files.totalBytes);
            throw this.fail(full.name, full.message);
          }
          // The prefix cannot be kept (OPFS failing): the download goes on without it.
          this.files.track(this.partial.clear());
          this.partial = null;
        }
      }
      this.hash?.update(chunk);
      this.sink?.enqueue(chunk);
      this.files.onBytes(this.path, chunk.length);
      return chunk;
    }
  }

  /** After a broken connection: Range requests, a few times with growing pauses, else a DownloadError. */
  async reconnect(cause) {
    for (;;) {
      const canResume = !this.fromCache && !this.next && this.received > 0 && this.resumes < MAX_RESUMES &&
        (this.size == null || this.received < this.size);
      if (!canResume) {
        const kept = this.partial && this.received > 0 ? `; the ${this.received} bytes received are kept and the next try resumes from there` : '';
        throw this.fail('DownloadError', `${this.url}: the download broke off at ${this.received}${this.size ? ` of ${this.size}` : ''} bytes (${cause.message})${kept}`);
      }
      this.resumes++;
      await sleep(200 * this.resumes);
      try {
        return await this.connect();
      } catch (e) {
        if (this.closed) throw e; // not a network failure: connect() gave up for good
        if (e.name !== 'DownloadError') throw this.fail(e.name, e.message); // a refused redirect
        cause = e;
      }
    }
  }

  end() {
    if (this.size != null && this.received !== this.size) {
      throw this.fail('IntegrityError', `${this.url}: truncated: ${this.received} of ${this.size} bytes; not stored`);
    }
    if (this.hash) {
      const hash = this.hash;
      this.hash = null; // spent by hex()
      const got = hash.hex();
      if (got !== this.expected.sha256.toLowerCase()) {
        throw this.fail('IntegrityError', `${this.url}: sha256 ${got} does not match the manifest (${this.expected.sha256}): the file is corrupt or was tampered with; not stored`);
      }
    }
    this.finished = true;
    return null;
  }

  fail(name, message) {
    this.keepPartial = name === 'DownloadError';
    this.abort(message);
    return named(name, message);
  }

  /** The engine parsed the whole file: store it. Resolves to whether it was stored. */
  async commit() {
    if (this.fromCache || this.closed) return false;
    if (!this.finished) throw named('Error', `${this.url}: commit before the end of the file`);
    this.closed = true;
    let ok = false;
    if (this.sink) {
      this.sink.close();
      ok = await this.stored;
    }
    // Stored whole (or not storable at all): the prefix has served its purpose.
    await this.partial?.clear();
    if (this.sink && !ok) {
      if (isQuota(this.storeError)) throw await storageFull(this.url, this.size || this.received, this.files.totalBytes);
      this.files.unstored++;
      console.warn(`${this.url}: downloaded but not stored in the cache (${this.storeError?.message}); the next visit downloads it again`);
    }
    return ok;
  }

  /** Stops reading; nothing is stored in the cache (a network failure keeps the prefix). */
  abort(reason) {
    if (this.closed) return;
    this.closed = true;
    this.hash?.free?.(); // the engine's hasher lives in wasm memory
    this.hash = null;
    try { this.sink?.error(new Error(String(reason))); } catch { /* already errored */ }
    this.reader?.cancel(String(reason)).catch(() => {});
    this.next?.cancel(String(reason)).catch(() => {});
    if (this.keepPartial) this.partial?.close();
    else this.files.track(this.partial?.clear());
  }
}

/**
 * The stored prefix of one URL's download in OPFS: `<name>.part` (the bytes, written through a
 * synchronous access handle: Worker only) and `<name>.json` ({url, base, sha256, etag, size}).
 */
class Partial {
  /** Null where OPFS or sync access handles are missing (the main thread, private modes). */
  static async open(url) {
    const dir = await partialDir();
    if (!dir || typeof FileSystemFileHandle === 'undefined' || !FileSystemFileHandle.prototype.createSyncAccessHandle) return null;
    const name = await partialName(url);
    try {
      const handle = await (await dir.getFileHandle(`${name}.part`, { create: true })).createSyncAccessHandle();
      return new Partial(dir, name, handle);
    } catch {
      return null; // Open in another tab's Worker: this download goes without.
    }
  }

  constructor(dir, name, handle) {
    this.dir = dir;
    this.name = name;
    this.handle = handle;
    this.writes = 0;
  }

  async meta() {
    try {
      return JSON.parse(await (await (await this.dir.getFileHandle(`${this.name}.json`)).getFile()).text());
    } catch {
      return null;
    }
  }

  size() {
    return this.handle?.getSize() ?? 0;
  }

  /** Starts a new prefix: empties the bytes and records what they belong to. */
  begin(meta) {
    if (!this.handle) return;
    this.handle.truncate(0);
    this.metaWrite = this.dir.getFileHandle(`${this.name}.json`, { create: true })
      .then((h) => h.createWritable())
      .then(async (w) => { await w.write(JSON.stringify(meta)); await w.close(); })
      .catch(() => {});
  }

  write(chunk, at) {
    if (!this.handle) return;
    this.handle.write(chunk, { at });
    if (++this.writes % 32 === 0) this.handle.flush();
  }

  /** The stored bytes from 0 to `end`, as a stream reader. */
  reader(end) {
    let pos = 0;
    return {
      read: async () => {
        if (pos >= end) return { done: true };
        const buf = new Uint8Array(Math.min(1 << 20, end - pos));
        const n = this.handle.read(buf, { at: pos });
        if (n <= 0) throw new Error('the stored prefix could not be read back');
        pos += n;
        return { done: false, value: n === buf.length ? buf : buf.subarray(0, n) };
      },
      cancel: async () => {},
    };
  }

  /** Keeps the prefix for the next visit. */
  close() {
    try { this.handle?.flush(); this.handle?.close(); } catch { /* closed */ }
    this.handle = null;
  }

  /**
   * Drops the prefix: emptied at once (a Worker ended before the files are removed leaves no
   * bytes), its files removed by the promise returned, which an error path awaits before it
   * reports, so that nothing is left behind when the caller ends the Worker.
   */
  clear() {
    if (!this.handle) return this.cleared ?? Promise.resolve();
    try { this.handle.truncate(0); } catch { /* closed */ }
    this.close();
    this.cleared = Promise.resolve(this.metaWrite).then(() => removePartial(this.dir, this.name));
    return this.cleared;
  }
}

/**
 * Deletes every stored file of the model at `base` (or of every model without one): complete
 * files in the Cache API and partial downloads in OPFS. Resolves to the number of entries
 * deleted. For the storage panel, with storedModels().
 */
export async function clearCache(base, cacheName = CACHE_NAME) {
  const prefix = base ? String(base).replace(/\/+$/, '') + '/' : null;
  let n = 0;
  const dir = await partialDir(false);
  if (dir) {
    for (const { name, meta } of await partials(dir)) {
      if (prefix && !(meta?.url || '').startsWith(prefix)) continue;
      await removePartial(dir, name);
      n++;
    }
  }
  if (!globalThis.caches) return n;
  if (!prefix) return n + ((await caches.delete(cacheName)) ? 1 : 0);
  const cache = await caches.open(cacheName);
  for (const req of await cache.keys()) {
    if (req.url.startsWith(prefix) && await cache.delete(req)) n++;
  }
  return n;
}

/** The partial downloads in `dir`: [{ name, meta, bytes }] (meta null if unreadable). */
async function partials(dir) {
  const names = new Set();
  for await (const name of dir.keys()) names.add(name.replace(/\.(part|json)$/, ''));
  const out = [];
  for (const name of names) {
    let meta = null;
    let bytes = 0;
    try { meta = JSON.parse(await (await (await dir.getFileHandle(`${name}.json`)).getFile()).text()); } catch { /* none */ }
    try { bytes = (await (await dir.getFileHandle(`${name}.part`)).getFile()).size; } catch { /* in use or none */ }
    out.push({ name, meta, bytes });
  }
  return out;
}

/**
 * What this browser stores, per model: [{ base, bytes, complete }]. `base` is the model's URL
 * (as given to ZePo.load / stylize's `model`, resolved), `bytes` what its stored files take
 * (complete files and partial downloads), `complete` whether a load stored every file it needed
 * and no download is left half-way (a model that is not complete downloads the rest on its next
 * load). For the storage panel, with clearCache(base).
 */
export async function storedModels(cacheName = CACHE_NAME) {
  const models = new Map();
  const entry = (base) => {
    if (!models.has(base)) models.set(base, { base, bytes: 0, marked: false, partial: false });
    return models.get(base);
  };
  const cache = await openCache(cacheName);
  for (const req of (await cache?.keys()) || []) {
    const res = await cache.match(req);
    const base = res?.headers.get('x-zepo-base');
    if (!base) continue;
    const m = entry(base);
    m.bytes += Number(res.headers.get('x-zepo-size')) || 0;
    if (req.url === `${base}/${COMPLETE_MARK}`) m.marked = true;
  }
  const dir = await partialDir(false);
  for (const { meta, bytes } of dir ? await partials(dir) : []) {
    if (!meta?.base || bytes === 0) continue;
    const m = entry(meta.base);
    m.bytes += bytes;
    m.partial = true;
  }
  return [...models.values()].map(({ base, bytes, marked, partial }) => ({ base, bytes, complete: marked && !partial }));
}
