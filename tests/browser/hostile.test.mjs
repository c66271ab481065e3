// Weights from a hostile host (headless Chromium, WebGPU on SwiftShader; loads only, no
// stylization). A small Node server answers the model's files with one misbehaviour per case,
// on the tiny fp16 bundle (the manifest gives every file's size and sha256) and on the tiny
// diffusers layout (no sizes: a weight file's own safetensors header gives its length):
// - a Content-Length larger / smaller than the body it sends; an endless body (on a weight
//   file and on a text file); a safetensors header stating more than any model file may be;
// - redirects to another origin (the rule, weights/README.md: a file whose sha256 the manifest
//   gives may come from anywhere; a diffusers weight file too (the Hugging Face hub serves them
//   from its CDN); manifest.json and any other text file without a sha256 only from the model's
//   origin);
// - a resumed download (Range) answered with the whole file (200) or from the wrong byte:
//   across visits the whole file is taken from byte 0, never appended to the stored prefix;
//   within a visit it is a clear error;
// - a bundle manifest naming files outside the model's folder (`../`, absolute URLs, `//host`,
//   `%2e%2e`, backslashes): refused when the manifest is parsed, before any other request.
// Each failure is an error naming the file and what was wrong; nothing of the model is stored
// (Cache API, OPFS partials), except that a broken connection keeps its prefix and the text
// files the engine had taken, by design; and the same engine (one Worker, one GPU device for the
// whole file) then loads a good model.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ROOT, assertEngineBuilt, inPage, launch } from './helpers.mjs';
import { createServer } from '../../scripts/serve.mjs';

const T = 5 * 60_000;
const BUNDLE = path.join(ROOT, 'weights/tiny-lcm-bundle');
const TINY = path.join(ROOT, 'weights/tiny-lcm');
const manifest = JSON.parse(fs.readFileSync(path.join(BUNDLE, 'manifest.json'), 'utf8'));
/** The first UNet shard: the first weights a bundle's load streams. */
const SHARD = manifest.parts.unet.shards[0].url;
const SHARD_SIZE = manifest.parts.unet.shards[0].size;
const UNET = 'unet/diffusion_pytorch_model.safetensors';
const UNET_SIZE = fs.statSync(path.join(TINY, UNET)).size;
const CONFIG = 'unet/config.json';
const MODELS = { bundle: BUNDLE, tiny: TINY };
/** What weights.js allows: a text file, and any file without a known size. */
const MAX_TEXT = 16 << 20;
const MAX_FILE = 4 * 2 ** 30;
const CUT = 1_000_000;
const CORS = { 'Access-Control-Allow-Origin': '*', 'Access-Control-Expose-Headers': 'Content-Length, Content-Range, ETag' };

const read = (model, file) => fs.readFileSync(path.join(MODELS[model], file));
const escape = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** A normal answer: the file whole, or the Range asked for (206), with an ETag. */
function plain(req, res, bytes, extra = {}) {
  const etag = `"${crypto.createHash('sha1').update(bytes).digest('hex').slice(0, 16)}"`;
  const m = /^bytes=(\d+)-$/.exec(req.headers.range || '');
  if (m && (!req.headers['if-range'] || req.headers['if-range'] === etag) && Number(m[1]) < bytes.length) {
    const from = Number(m[1]);
    res.writeHead(206, { ...CORS, ETag: etag, 'Content-Length': bytes.length - from,
      'Content-Range': `bytes ${from}-${bytes.length - 1}/${bytes.length}`, ...extra });
    return res.end(bytes.subarray(from));
  }
  res.writeHead(200, { ...CORS, ETag: etag, 'Content-Length': bytes.length, ...extra });
  res.end(req.method === 'HEAD' ? undefined : bytes);
}

/** `prefix`, then bytes without end (chunked, no Content-Length) until the client goes away. */
function endless(res, prefix, stats) {
  res.writeHead(200, { ...CORS, 'Content-Type': 'application/octet-stream' });
  const chunk = Buffer.alloc(1 << 16, 0x20);
  stats.sent = prefix.length;
  res.write(prefix);
  // Never ends on its own within what a test may take; 128 MiB bounds a client that never stops.
  const pump = () => {
    while (!res.destroyed && stats.sent < 128 << 20) {
      stats.sent += chunk.length;
      if (!res.write(chunk)) return res.once('drain', pump);
    }
    if (!res.destroyed) res.end();
  };
  pump();
}

/** A Content-Length of `length` for a body of `bytes`, then the connection closes. */
function wrongLength(res, bytes, length) {
  res.writeHead(200, { ...CORS, 'Content-Type': 'application/octet-stream', 'Content-Length': length, Connection: 'close' });
  res.end(bytes);
}

/** Promises the whole file, sends its first `at` bytes, then the connection drops. */
function cutOff(res, bytes, at, from = 0) {
  const range = from ? { 'Content-Range': `bytes ${from}-${bytes.length - 1}/${bytes.length}` } : {};
  res.writeHead(from ? 206 : 200, { ...CORS, 'Content-Length': bytes.length - from, ...range });
  const hangUp = () => setTimeout(() => res.socket?.destroy(), 150);
  if (at <= from) {
    res.flushHeaders();
    return hangUp();
  }
  res.write(bytes.subarray(from, at), hangUp);
}

/** A safetensors header stating one F32 tensor of `n` bytes (no data). */
function hugeHeader(n) {
  const json = Buffer.from(JSON.stringify({ w: { dtype: 'F32', shape: [n / 4], data_offsets: [0, n] } }));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json]);
}

/**
 * The cases: `model` (bundle | tiny) served at /h/<name>/ by `serve(file, req, res, ctx)` (return
 * false for the normal answer); `expect`: { ok: true } or { name, message: RegExp }. `ctx`: the
 * case's own state, `other` the other origin's URL.
 */
const CASES = [
  // --- wrong Content-Length, endless bodies: a bundle (sizes from the manifest) ---
  { name: 'bundle-length-more', what: `bundle shard: Content-Length ${SHARD_SIZE + 1000}, ${SHARD_SIZE} bytes sent`, model: 'bundle',
    serve: (f, req, res) => f === SHARD && wrongLength(res, read('bundle', f), SHARD_SIZE + 1000),
    expect: { name: 'IntegrityError', message: new RegExp(`${escape(SHARD)}.*${SHARD_SIZE + 1000} bytes.*manifest says ${SHARD_SIZE}`) } },
  { name: 'bundle-length-less', what: `bundle shard: Content-Length ${SHARD_SIZE - 1000}, ${SHARD_SIZE} bytes sent`, model: 'bundle',
    serve: (f, req, res) => f === SHARD && wrongLength(res, read('bundle', f), SHARD_SIZE - 1000),
    expect: { name: 'IntegrityError', message: new RegExp(`${escape(SHARD)}.*${SHARD_SIZE - 1000} bytes.*manifest says ${SHARD_SIZE}`) } },
  { name: 'bundle-endless', what: 'bundle shard: the file, then bytes without end (no Content-Length)', model: 'bundle',
    serve: (f, req, res, ctx) => f === SHARD && endless(res, read('bundle', f), ctx),
    expect: { name: 'IntegrityError', message: new RegExp(`${escape(SHARD)}.*more than.*${SHARD_SIZE} bytes`) },
    sentAtMost: SHARD_SIZE },
  { name: 'bundle-text-endless', what: 'bundle config: the file, then bytes without end', model: 'bundle',
    serve: (f, req, res, ctx) => f === CONFIG && endless(res, read('bundle', f), ctx),
    expect: { name: 'IntegrityError', message: new RegExp(`${escape(CONFIG)}.*more than.*${manifest.parts.unet.config.size} bytes`) },
    sentAtMost: manifest.parts.unet.config.size },

  // --- wrong Content-Length, endless bodies: a diffusers layout (no manifest) ---
  { name: 'tiny-length-more', what: `diffusers weights: Content-Length ${UNET_SIZE + 1000}, ${UNET_SIZE} bytes sent`, model: 'tiny',
    serve: (f, req, res) => f === UNET && wrongLength(res, read('tiny', f), UNET_SIZE + 1000),
    expect: { name: 'IntegrityError', message: new RegExp(`${escape(UNET)}.*header states ${UNET_SIZE} bytes.*${UNET_SIZE + 1000}`) } },
  { name: 'tiny-length-less', what: `diffusers weights: Content-Length ${UNET_SIZE - 1000}, ${UNET_SIZE} bytes sent`, model: 'tiny',
    serve: (f, req, res) => f === UNET && wrongLength(res, read('tiny', f), UNET_SIZE - 1000),
    expect: { name: 'IntegrityError', message: new RegExp(`${escape(UNET)}.*header states ${UNET_SIZE} bytes.*${UNET_SIZE - 1000}`) } },
  { name: 'tiny-endless', what: 'diffusers weights: the file, then bytes without end', model: 'tiny',
    serve: (f, req, res, ctx) => f === UNET && endless(res, read('tiny', f), ctx),
    expect: { name: 'IntegrityError', message: new RegExp(`${escape(UNET)}.*more than.*${UNET_SIZE} bytes`) },
    sentAtMost: UNET_SIZE },
  { name: 'tiny-huge-header', what: 'diffusers weights: a header stating 8 GiB, then bytes without end', model: 'tiny',
    serve: (f, req, res, ctx) => f === UNET && endless(res, hugeHeader(8 * 2 ** 30), ctx),
    expect: { name: 'IntegrityError', message: new RegExp(`${escape(UNET)}.*header states 85899\\d{5} bytes.*more than.*${MAX_FILE}`) },
    sentAtMost: 0 },
  { name: 'tiny-manifest-endless', what: 'diffusers manifest.json (no size known): bytes without end', model: 'tiny',
    serve: (f, req, res, ctx) => f === 'manifest.json' && endless(res, Buffer.from('{"files": {'), ctx),
    expect: { name: 'IntegrityError', message: new RegExp(`manifest\\.json.*more than.*${MAX_TEXT} bytes`) },
    sentAtMost: MAX_TEXT },
  { name: 'tiny-config-length-less', what: 'diffusers config.json: Content-Length 100 bytes short (its JSON cut)', model: 'tiny',
    serve: (f, req, res) => f === CONFIG && wrongLength(res, read('tiny', f), read('tiny', f).length - 100),
    expect: { name: 'IntegrityError', message: new RegExp(`${escape(CONFIG)}.*not valid JSON`) } },

  // --- redirects ---
  { name: 'bundle-manifest-away', what: 'bundle manifest.json: 302 to another origin', model: 'bundle',
    serve: (f, req, res, ctx) => f === 'manifest.json' && redirect(res, `${ctx.other}/o/bundle/manifest.json`),
    expect: { name: 'IntegrityError', message: /manifest\.json.*redirected it to another origin \(http:\/\/127\.0\.0\.1:\d+\/o\/bundle\/manifest\.json\)/ } },
  { name: 'bundle-manifest-here', what: 'bundle manifest.json: 302 within the origin', model: 'bundle',
    serve: (f, req, res) => f === 'manifest.json' && !req.url.includes('?moved') && redirect(res, `${req.url}?moved`),
    expect: { ok: true } },
  { name: 'bundle-shard-away', what: 'bundle shard: 302 to another origin, the same bytes', model: 'bundle',
    serve: (f, req, res, ctx) => f === SHARD && redirect(res, `${ctx.other}/o/bundle/${f}`),
    expect: { ok: true } },
  { name: 'bundle-shard-away-tampered', what: 'bundle shard: 302 to another origin, other bytes', model: 'bundle',
    serve: (f, req, res, ctx) => f === SHARD && redirect(res, `${ctx.other}/o/tampered/bundle/${f}`),
    expect: { name: 'IntegrityError', message: new RegExp(`${escape(SHARD)}.*sha256.*does not match`) } },
  { name: 'tiny-weights-away', what: 'diffusers weights: 302 to another origin (as the hub to its CDN)', model: 'tiny',
    serve: (f, req, res, ctx) => f === UNET && redirect(res, `${ctx.other}/o/tiny/${f}`),
    expect: { ok: true } },
  { name: 'tiny-config-away', what: 'diffusers config.json: 302 to another origin', model: 'tiny',
    serve: (f, req, res, ctx) => f === CONFIG && redirect(res, `${ctx.other}/o/tiny/${f}`),
    expect: { name: 'IntegrityError', message: new RegExp(`${escape(CONFIG)}.*redirected it to another origin.*must come from the model's own origin`) } },

  // --- Range answered with something else ---
  { name: 'bundle-range-200-next-visit', what: 'bundle shard: broken off; the next visit\'s Range request answered 200 (whole file)', model: 'bundle',
    serve: (f, req, res, ctx) => {
      if (f !== SHARD) return false;
      const bytes = read('bundle', f);
      if (ctx.visit === 1) return cutOff(res, bytes, req.headers.range ? 0 : CUT, req.headers.range ? CUT : 0);
      res.writeHead(200, { ...CORS, 'Content-Length': bytes.length });
      return res.end(bytes);
    },
    first: { name: 'DownloadError', message: new RegExp(`${escape(SHARD)}.*broke off at ${CUT} of ${SHARD_SIZE} bytes`) },
    expect: { ok: true }, requests: [[`bytes=${CUT}-`, 200]] },
  { name: 'bundle-range-from-0-next-visit', what: 'bundle shard: broken off; the next visit\'s Range request answered 206 from byte 0', model: 'bundle',
    serve: (f, req, res, ctx) => {
      if (f !== SHARD) return false;
      const bytes = read('bundle', f);
      if (ctx.visit === 1) return cutOff(res, bytes, req.headers.range ? 0 : CUT, req.headers.range ? CUT : 0);
      if (!req.headers.range) return false;
      res.writeHead(206, { ...CORS, 'Content-Length': bytes.length, 'Content-Range': `bytes 0-${bytes.length - 1}/${bytes.length}` });
      return res.end(bytes);
    },
    first: { name: 'DownloadError', message: new RegExp(`${escape(SHARD)}.*broke off at ${CUT} of ${SHARD_SIZE} bytes`) },
    expect: { ok: true }, requests: [[`bytes=${CUT}-`, 206], [null, 200]] },
  { name: 'bundle-range-200-same-visit', what: 'bundle shard: broken off; the Range request within the visit answered 200', model: 'bundle',
    serve: (f, req, res) => {
      if (f !== SHARD) return false;
      const bytes = read('bundle', f);
      if (!req.headers.range) return cutOff(res, bytes, CUT);
      res.writeHead(200, { ...CORS, 'Content-Length': bytes.length });
      return res.end(bytes);
    },
    expect: { name: 'DownloadError', message: new RegExp(`${escape(SHARD)}.*broke off at ${CUT} bytes.*did not resume it \\(HTTP 200`) } },

  // --- a manifest naming files outside the model's folder ---
  ...[['../escaped.safetensors', '`..` component'], ['http://127.0.0.1:1/x.safetensors', '`:`'], ['//evil.example/x.safetensors', 'another host'],
    ['%2e%2e/%2e%2e/escaped.safetensors', '`%` escape'], ['..\\..\\escaped.safetensors', 'backslash']].map(([url, why], i) => ({
    name: `bundle-path-${i}`, what: `bundle manifest: a shard at \`${url}\``, model: 'bundle',
    serve: (f, req, res) => {
      if (f !== 'manifest.json') return false;
      const m = structuredClone(manifest);
      m.parts.unet.shards[0].url = url;
      res.writeHead(200, { ...CORS, 'Content-Type': 'application/json' });
      return res.end(JSON.stringify(m));
    },
    expect: { name: 'WeightsError', message: new RegExp(`manifest\\.json.*\`${escape(url)}\`.*${escape(why)}`) },
    onlyManifest: true,
  })),
];

function redirect(res, location) {
  res.writeHead(302, { ...CORS, Location: location });
  res.end();
}

let srv;
let other;
let base;
let otherBase;
const log = [];
const otherLog = [];
const state = new Map(CASES.map((c) => [c.name, { visit: 1 }]));

before(async () => {
  assertEngineBuilt();
  const inner = createServer({ model: BUNDLE });
  srv = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    const m = /^\/h\/([\w-]+)\/(.+)$/.exec(url.pathname);
    if (!m) return inner.emit('request', req, res);
    const entry = { case: m[1], file: decodeURIComponent(m[2]), url: req.url, method: req.method, range: req.headers.range || null, status: null };
    log.push(entry);
    res.on('finish', () => { entry.status = res.statusCode; });
    res.on('close', () => { entry.status ??= res.statusCode; });
    const c = CASES.find((x) => x.name === m[1]);
    const file = path.join(MODELS[c?.model] || '/nonexistent', entry.file);
    if (c && c.serve(entry.file, req, res, Object.assign(state.get(c.name), { other: otherBase })) !== false) return;
    if (!c || !file.startsWith(MODELS[c.model] + path.sep) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.writeHead(404, { ...CORS, 'Content-Type': 'text/plain' });
      return res.end('not found\n');
    }
    return plain(req, res, fs.readFileSync(file));
  });
  // The other origin: the same files plainly (/o/<model>/…), or with one byte changed (/o/tampered/…).
  other = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    otherLog.push(req.url);
    const m = /^\/o\/(tampered\/)?(bundle|tiny)\/(.+)$/.exec(url.pathname);
    const file = m && path.join(MODELS[m[2]], decodeURIComponent(m[3]));
    if (!m || !file.startsWith(MODELS[m[2]] + path.sep) || !fs.existsSync(file)) {
      res.writeHead(404, CORS);
      return res.end();
    }
    const bytes = fs.readFileSync(file);
    if (m[1]) bytes[bytes.length - 3] ^= 0x10;
    plain(req, res, bytes);
  });
  await Promise.all([srv, other].map((s) => new Promise((r) => s.listen(0, '127.0.0.1', r))));
  base = `http://127.0.0.1:${srv.address().port}`;
  otherBase = `http://127.0.0.1:${other.address().port}`;
});

after(async () => {
  for (const s of [srv, other]) {
    s?.closeAllConnections?.();
    await new Promise((r) => (s ? s.close(r) : r()));
  }
});

describe('weights from a hostile host', () => {
  let browser;
  const results = [];
  before(async () => {
    browser = await launch({ webgpu: true });
    await browser.page.goto(`${base}/package.json`);
    // One engine (one Worker, one GPU device) for every load of this file.
    const out = await inPage(browser.page, async (api) => {
      const engine = new api.ZePo('/model');
      globalThis.__engine = engine;
      return { device: await engine.call('create', { precision: 'auto' }) };
    });
    assert.ok(!out.error, JSON.stringify(out.error));
  });
  after(async () => {
    if (results.length) {
      console.log('\ninput tried → result');
      for (const r of results) console.log(`- ${r}`);
    }
    if (browser?.logs.length) console.log(browser.logs.slice(-30).join('\n'));
    await browser?.close();
  });

  /** Loads the model at `model` (a URL) in the page's one engine: { ok: info } or { error }. */
  const load = (model) => inPage(browser.page, async (api, m) => {
    const t0 = performance.now();
    try {
      const info = await globalThis.__engine.call('load', { model: new URL(m, location.href).href, variant: 'fp16' });
      return { ok: info, seconds: (performance.now() - t0) / 1000 };
    } catch (e) {
      return { error: { name: e.name, message: e.message }, seconds: (performance.now() - t0) / 1000 };
    }
  }, model);

  /** What this origin stores under `prefix`: cache entries and OPFS partial downloads. */
  const stored = (prefix) => inPage(browser.page, async (api, p, weights) => {
    const cache = await caches.open(weights.CACHE_NAME);
    const entries = [];
    for (const req of await cache.keys()) {
      if (!req.url.startsWith(p)) continue;
      const res = await cache.match(req);
      entries.push({ url: req.url, complete: res.headers.get('x-zepo-complete') === '1', absent: res.headers.get('x-zepo-absent') === '1',
        bytes: (await res.arrayBuffer()).byteLength, sha256: res.headers.get('x-zepo-sha256') });
    }
    const partial = [];
    const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle('zepo-partial', { create: true });
    for await (const [name, h] of dir.entries()) {
      if (!name.endsWith('.json')) continue;
      let meta = null;
      try { meta = JSON.parse(await (await h.getFile()).text()); } catch { /* being written */ }
      if (!meta?.url?.startsWith(p)) continue;
      let bytes = -1;
      try { bytes = (await (await dir.getFileHandle(name.replace(/\.json$/, '.part'))).getFile()).size; } catch { /* none */ }
      partial.push({ url: meta.url, bytes });
    }
    return { entries, partial };
  }, prefix);

  /** The SHA-256 of a cached file, computed in the page. */
  const cachedSha = (url) => inPage(browser.page, async (api, u, weights) => {
    const res = await (await caches.open(weights.CACHE_NAME)).match(u);
    const bytes = await res.arrayBuffer();
    return { bytes: bytes.byteLength, sha256: Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', bytes)), (b) => b.toString(16).padStart(2, '0')).join('') };
  }, url);

  let goodLoads = 0;
  /** The engine still works: the good bundle at /model loads. */
  async function goodLoad(after) {
    const out = await load('/model');
    assert.ok(!out.error, `after ${after}: the good model does not load: ${JSON.stringify(out.error)}`);
    assert.equal(out.ok.layout, 'bundle');
    goodLoads++;
  }

  for (const c of CASES) {
    test(c.what, { timeout: T }, async () => {
      const prefix = `${base}/h/${c.name}/`;
      const ctx = state.get(c.name);
      let note = '';
      if (c.first) {
        const first = await load(prefix);
        assert.equal(first.error?.name, c.first.name, JSON.stringify(first));
        assert.match(first.error.message, c.first.message);
        const s = await stored(prefix);
        assert.ok(s.partial.some((p) => p.url.endsWith(SHARD) && p.bytes >= CUT), `the first visit kept its prefix: ${JSON.stringify(s.partial)}`);
        assert.ok(!s.entries.some((e) => e.url.endsWith(SHARD)), 'the broken-off shard is not in the cache');
        note = `first visit: ${first.error.name} (prefix of ${CUT} bytes kept); `;
        ctx.visit = 2;
      }
      const mark = log.length;
      const otherMark = otherLog.length;
      const out = await load(prefix);
      const requests = log.slice(mark);
      const s = await stored(prefix);
      if (c.expect.ok) {
        assert.ok(!out.error, `${c.name}: ${JSON.stringify(out.error)}`);
        // Whatever is stored is whole and is what the manifest (or the server) has.
        for (const e of s.entries.filter((x) => x.complete && x.url.endsWith('.safetensors'))) {
          const file = e.url.slice(prefix.length);
          const want = read(c.model, file);
          assert.equal(e.bytes, want.length, `${file} stored whole`);
          if (file === SHARD) assert.equal((await cachedSha(e.url)).sha256, crypto.createHash('sha256').update(want).digest('hex'));
        }
        assert.deepEqual(s.partial.filter((p) => p.bytes > 0), [], 'no partial download left');
        note += `loaded (${out.seconds.toFixed(1)} s)`;
      } else {
        assert.equal(out.error?.name, c.expect.name, `${c.name}: ${JSON.stringify(out)}`);
        assert.match(out.error.message, c.expect.message);
        // Nothing of the model is stored: no file as complete, no partial download. Only after
        // a broken connection (DownloadError) are the text files the engine had taken kept.
        const kept = s.entries.filter((e) => e.complete && (out.error.name !== 'DownloadError' || e.url.endsWith('.safetensors')));
        assert.deepEqual(kept, [], `${c.name}: nothing stored in the cache`);
        assert.deepEqual(s.partial.filter((p) => p.bytes !== 0), [], `${c.name}: no partial download in OPFS`);
        note += `${out.error.name}: ${out.error.message}`;
      }
      if (c.requests) {
        const got = requests.filter((r) => r.file === SHARD).map((r) => [r.range, r.status]);
        assert.deepEqual(got, c.requests, `${c.name}: the shard's requests`);
      }
      if (c.onlyManifest) {
        assert.deepEqual(requests.map((r) => r.file), ['manifest.json'], `${c.name}: refused before any other request`);
        assert.deepEqual(otherLog.slice(otherMark), [], `${c.name}: no request to another origin`);
        assert.ok(!log.slice(mark).some((r) => !r.url.startsWith(`/h/${c.name}/`)), 'no request outside the base');
      }
      if (c.sentAtMost !== undefined) {
        // The client stopped reading: at most the limit, plus what the socket and the browser's
        // network buffers took (the server would go on to 128 MiB).
        await new Promise((r) => setTimeout(r, 300));
        note += ` [the server sent ${ctx.sent} bytes before the client hung up]`;
        assert.ok(ctx.sent <= c.sentAtMost + (32 << 20), `${c.name}: ${note}`);
      }
      results.push(`${c.what} → ${note}`);
      console.log(`${c.name}: ${note}`);
      await goodLoad(c.name);
    });
  }

  test('the last guard: ModelFiles itself never requests a path outside its folder', { timeout: T }, async () => {
    const mark = log.length;
    const out = await inPage(browser.page, async (api, paths, weights) => {
      const files = new weights.ModelFiles(new URL('/h/guard', location.href).href, null, { onBytes() {}, onOpen() {} });
      const refused = [];
      for (const p of paths) {
        for (const call of [() => files.text(p), () => files.open(p)]) {
          try {
            await call();
            refused.push({ path: p, error: null });
          } catch (e) {
            refused.push({ path: p, error: `${e.name}: ${e.message}` });
          }
        }
      }
      return { refused, requests: files.requests };
    }, ['../x.safetensors', 'unet/../../x.json', '%2e%2e/x.json', '.%2E/x.json', '..\\x.json', 'unet/config.json?x', 'unet/config.json#x']);
    assert.ok(!out.error, JSON.stringify(out.error));
    for (const r of out.refused) assert.match(r.error || 'not refused', /^IntegrityError: .*is not a path inside the model's folder/, JSON.stringify(r));
    assert.equal(out.requests, 0);
    assert.deepEqual(log.slice(mark), []);
  });

  test('a new engine on the same page loads the good model too', { timeout: T }, async () => {
    const out = await inPage(browser.page, async (api) => {
      const e = await api.ZePo.load({ model: '/model' });
      const info = e.info;
      e.dispose();
      globalThis.__engine.dispose();
      return info;
    });
    assert.ok(!out.error, JSON.stringify(out.error));
    assert.equal(out.layout, 'bundle');
    console.log(`the one engine loaded the good model ${goodLoads} times, after each case`);
  });
});
