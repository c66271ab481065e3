// Shared by the browser tests: the static server, headless Chromium with WebGPU (SwiftShader),
// and reading reference tensors from tests/fixtures/*.safetensors.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { startServer } from '../../scripts/serve.mjs';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const RESULTS = path.join(ROOT, 'test-results');

/** Fails unless the wasm engine is built into www/engine/ (the browser tests need it). */
export function assertEngineBuilt() {
  assert.ok(fs.existsSync(path.join(ROOT, 'www/engine/zepo_bg.wasm')),
    'www/engine is not built: run bash scripts/build-wasm.sh (scripts/test.sh does)');
}

/** Chromium's binary: $CHROME, else Debian's. Never a Playwright download. */
export function chromiumPath() {
  const candidates = [process.env.CHROME, '/usr/lib/chromium/chromium', '/usr/bin/chromium'];
  const found = candidates.find((c) => c && fs.existsSync(c));
  if (!found) throw new Error('no Chromium found: apt-get install chromium, or set CHROME=/path/to/chrome');
  return found;
}

const BASE_FLAGS = ['--headless=new', '--no-sandbox', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-dev-shm-usage',
  // A fake camera (a test pattern) that needs no permission prompt (the camera test).
  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream'];

/**
 * Launches Chromium on a fresh profile. `webgpu`: add --enable-unsafe-webgpu (WebGPU through
 * SwiftShader's Vulkan on a machine without a GPU). Returns { context, page, logs, close }.
 */
export async function launch({ webgpu = true } = {}) {
  const { chromium } = await import('playwright-core');
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'zepo-chromium-'));
  const args = [...BASE_FLAGS, ...(webgpu ? ['--enable-unsafe-webgpu'] : [])];
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: chromiumPath(),
    headless: true,
    args,
    // Only our flags decide about the GPU: drop Playwright's GPU-related defaults.
    ignoreDefaultArgs: ['--disable-gpu', '--use-angle=swiftshader-webgl', '--enable-unsafe-swiftshader'],
    timeout: 60_000,
  });
  const page = context.pages()[0] || (await context.newPage());
  const logs = [];
  page.on('console', (m) => logs.push(`[${m.type()}] ${m.text()}`.slice(0, 500)));
  page.on('pageerror', (e) => logs.push(`[pageerror] ${e}`));
  page.on('worker', (w) => w.on('console', (m) => logs.push(`[worker ${m.type()}] ${m.text()}`.slice(0, 500))));
  const close = async () => {
    await context.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  };
  return { context, page, logs, close, userDataDir };
}

/**
 * Samples the resident memory of this browser's processes (Linux /proc: every process whose
 * command line names `userDataDir`) every `ms`; `stop()` returns the peaks in bytes:
 * { total, byType: { gpu-process, renderer, … } } (SwiftShader's "GPU" memory is the GPU
 * process's).
 */
export function sampleBrowserRss(userDataDir, ms = 250) {
  const peak = { total: 0, byType: {} };
  const sample = () => {
    let total = 0;
    const byType = {};
    let pids = [];
    try { pids = fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p)); } catch { return; }
    for (const pid of pids) {
      try {
        const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
        if (!cmd.includes(userDataDir)) continue;
        const rss = Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] || 0) * 1024;
        const type = /--type=([\w-]+)/.exec(cmd)?.[1] || 'browser';
        total += rss;
        byType[type] = (byType[type] || 0) + rss;
      } catch { /* the process ended */ }
    }
    peak.total = Math.max(peak.total, total);
    for (const [k, v] of Object.entries(byType)) peak.byType[k] = Math.max(peak.byType[k] || 0, v);
  };
  sample();
  const timer = setInterval(sample, ms);
  return { stop: () => { clearInterval(timer); sample(); return peak; }, peek: () => ({ ...peak }) };
}

/**
 * The static server on a free localhost port (`model`: the directory served at /model/; `cut`:
 * responses to break off, see scripts/serve.mjs). `requests` logs every request:
 * { method, url, bodyBytes, range, status }.
 */
export async function serve({ model, cut } = {}) {
  const { server, url } = await startServer({ port: 0, host: '127.0.0.1', ...(model ? { model } : {}), ...(cut ? { cut } : {}) });
  const requests = [];
  server.prependListener('request', (req, res) => {
    const entry = { method: req.method, url: req.url, range: req.headers.range || null, bodyBytes: 0, status: null };
    requests.push(entry);
    req.on('data', (chunk) => { entry.bodyBytes += chunk.length; });
    res.on('finish', () => { entry.status = res.statusCode; });
  });
  return {
    url: url.replace('localhost', '127.0.0.1'),
    server,
    requests,
    close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(r); }),
  };
}

/** Decodes an 8-bit, non-interlaced PNG (grey, RGB or RGBA): { width, height, channels, data }. */
export function decodePng(buf) {
  const bytes = Buffer.from(buf);
  if (!bytes.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) throw new Error('not a PNG');
  let pos = 8;
  let width, height, channels;
  const idat = [];
  while (pos < bytes.length) {
    const len = bytes.readUInt32BE(pos);
    const type = bytes.toString('latin1', pos + 4, pos + 8);
    const data = bytes.subarray(pos + 8, pos + 8 + len);
    if (type === 'IHDR') {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      const [depth, color, , , interlace] = data.subarray(8);
      channels = { 0: 1, 2: 3, 6: 4 }[color];
      if (depth !== 8 || !channels || interlace) throw new Error(`unsupported PNG (depth ${depth}, color ${color}, interlace ${interlace})`);
    } else if (type === 'IDAT') idat.push(data);
    else if (type === 'IEND') break;
    pos += 12 + len;
  }
  const raw = zlib.inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  const out = new Uint8Array(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? out[y * stride + x - channels] : 0;
      const b = y > 0 ? out[(y - 1) * stride + x] : 0;
      const c = x >= channels && y > 0 ? out[(y - 1) * stride + x - channels] : 0;
      let v = line[x];
      if (filter === 1) v += a;
      else if (filter === 2) v += b;
      else if (filter === 3) v += (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c;
        const pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
        v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      out[y * stride + x] = v & 0xff;
    }
  }
  return { width, height, channels, data: out };
}

/** A PNG's text chunks (tEXt and uncompressed iTXt) as { keyword: text }. */
export function pngText(buf) {
  const bytes = Buffer.from(buf);
  const out = {};
  for (let pos = 8; pos + 8 <= bytes.length;) {
    const len = bytes.readUInt32BE(pos);
    const type = bytes.toString('latin1', pos + 4, pos + 8);
    const data = bytes.subarray(pos + 8, pos + 8 + len);
    const nul = data.indexOf(0);
    if (type === 'tEXt') out[data.toString('latin1', 0, nul)] = data.toString('latin1', nul + 1);
    if (type === 'iTXt' && data[nul + 1] === 0) {
      // keyword \0 compression-flag method language \0 translated-keyword \0 text
      const lang = data.indexOf(0, nul + 3);
      const translated = data.indexOf(0, lang + 1);
      out[data.toString('latin1', 0, nul)] = data.toString('utf8', translated + 1);
    }
    pos += 12 + len;
  }
  return out;
}

/** Every tensor of a safetensors file, as { shape, dtype, values: number[] }. */
export function readSafetensors(file) {
  const bytes = fs.readFileSync(file);
  const headerLen = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLen).toString('utf8'));
  const data = 8 + headerLen;
  const out = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [start, end] = t.data_offsets;
    const buf = bytes.buffer.slice(bytes.byteOffset + data + start, bytes.byteOffset + data + end);
    let values;
    switch (t.dtype) {
      case 'F32': values = Array.from(new Float32Array(buf)); break;
      case 'F64': values = Array.from(new Float64Array(buf)); break;
      case 'I64': values = Array.from(new BigInt64Array(buf), Number); break;
      case 'I32': values = Array.from(new Int32Array(buf)); break;
      default: continue;
    }
    out[name] = { shape: t.shape, dtype: t.dtype, values };
  }
  return out;
}

/** Max |a - b| relative to max |b|. */
export function relError(actual, expected) {
  if (actual.length !== expected.length) throw new Error(`${actual.length} values, expected ${expected.length}`);
  let err = 0;
  let scale = 0;
  for (let i = 0; i < expected.length; i++) {
    if (!Number.isFinite(actual[i])) return Infinity;
    err = Math.max(err, Math.abs(actual[i] - expected[i]));
    scale = Math.max(scale, Math.abs(expected[i]));
  }
  return err / Math.max(scale, 1e-12);
}

export async function screenshot(page, name) {
  fs.mkdirSync(RESULTS, { recursive: true });
  const file = path.join(RESULTS, name);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

// The browser returns 8-bit pixels (rounding: ≤ 0.5/255); beyond that only float differences
// between SwiftShader's WebGPU and the CPU backend, through the steps and the VAE decoder.
// Measured on the tiny model: max 0.50/255, mean 0.244/255 (rounding only).
export const MAX_ABS = 1 / 255;
export const MEAN_ABS = 0.3 / 255;

/**
 * Asserts that a decoded PNG matches a native float image (`ref`: {shape: [H, W, 3], values}
 * in [0, 1]) within MAX_ABS / MEAN_ABS; logs and returns { max, mean }.
 */
export function assertMatchesNative(png, ref, what) {
  assert.deepEqual([png.height, png.width, png.channels], ref.shape, `${what}: image shape`);
  let max = 0;
  let sum = 0;
  for (let i = 0; i < ref.values.length; i++) {
    const d = Math.abs(png.data[i] / 255 - ref.values[i]);
    max = Math.max(max, d);
    sum += d;
  }
  const mean = sum / ref.values.length;
  console.log(`${what}: browser vs native: max |Δ| ${(max * 255).toFixed(2)}/255 (${max.toFixed(5)} on [0,1]), mean |Δ| ${(mean * 255).toFixed(3)}/255`);
  assert.ok(max <= MAX_ABS, `${what}: max |Δ| ${(max * 255).toFixed(2)}/255 > ${MAX_ABS * 255}/255`);
  assert.ok(mean <= MEAN_ABS, `${what}: mean |Δ| ${(mean * 255).toFixed(3)}/255 > ${MEAN_ABS * 255}/255`);
  return { max, mean };
}

/**
 * Runs `fn(api, args, weights, kit)` in `page` (api = www/zepo.js, weights = www/weights.js, both
 * imported from the page's origin; kit: the helpers below); an exception comes back as
 * { error: { name, message } }.
 */
export function inPage(page, fn, args) {
  return page.evaluate(async ([src, a]) => {
    const api = await import('/www/zepo.js');
    const weights = await import('/www/weights.js');
    const attempt = async (f) => {
      try {
        return { ok: await f() };
      } catch (e) {
        return { error: { name: e.name, message: e.message } };
      }
    };
    const kit = {
      /** The example portrait and style, as Blobs. */
      examples: () => Promise.all(['portrait', 'style'].map(async (n) => (await fetch(`/www/examples/${n}.png`)).blob())),
      /** `await f()` as { ok: value }, or its exception as { error: { name, message } }. */
      attempt,
      /** An onProgress callback that calls `f` once, at the first event of `stage`. */
      atStage: (stage, f) => {
        let done = false;
        return (e) => {
          if (e.stage === stage && !done) {
            done = true;
            f();
          }
        };
      },
      /** A Blob's bytes as an array (what page.evaluate can return). */
      bytes: async (blob) => Array.from(new Uint8Array(await blob.arrayBuffer())),
    };
    const f = new Function('return ' + src)();
    const out = await attempt(() => f(api, a, weights, kit));
    return out.error ? { error: out.error } : out.ok;
  }, [fn.toString(), args]);
}

/**
 * An HTTP server on a free 127.0.0.1 port: `handler(req, res)` answers. `requests`: every
 * request's path (a WebSocket handshake too, answered by closing the connection); `connections`:
 * how many TCP connections it accepted; `bytesReceived()`: the bytes it read on them, all told;
 * `down = true` drops every connection (the host is unreachable). Returns { origin, requests,
 * connections, bytesReceived, down, close }.
 */
export async function httpHost(handler) {
  const sockets = new Set();
  const h = { requests: [], connections: 0, down: false, bytesReceived: () => [...sockets].reduce((n, s) => n + s.bytesRead, 0) };
  const srv = http.createServer((req, res) => {
    if (h.down) return req.socket.destroy();
    h.requests.push(req.url);
    handler(req, res);
  });
  srv.on('connection', (socket) => {
    h.connections++;
    sockets.add(socket);
  });
  srv.on('upgrade', (req, socket) => {
    h.requests.push(`${req.url} (upgrade: ${req.headers.upgrade})`);
    socket.destroy();
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  h.origin = `http://127.0.0.1:${srv.address().port}`;
  h.close = () => new Promise((r) => { srv.closeAllConnections(); srv.close(r); });
  return h;
}

const SITE_MIME = {
  '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.json': 'application/json',
  '.webmanifest': 'application/manifest+json', '.wasm': 'application/wasm', '.png': 'image/png',
  '.jpg': 'image/jpeg', '.webp': 'image/webp', '.svg': 'image/svg+xml', '.txt': 'text/plain',
};

/**
 * A plain static host (as GitHub Pages): `dir` under the URL path `prefix` ('/apps/zepo/'),
 * MIME types by extension, whole files only, no CORS, no Content-Security-Policy or any other
 * header a static host cannot be told to send; `Cache-Control: max-age=600`. An httpHost.
 */
export function staticSite(dir, prefix) {
  return httpHost((req, res) => {
    const url = new URL(req.url, 'http://host');
    const fail = (status, headers = {}) => res.writeHead(status, { 'Content-Type': 'text/plain', ...headers }).end(`${status}\n`);
    if (req.method !== 'GET' && req.method !== 'HEAD') return fail(405, { Allow: 'GET, HEAD' });
    if (url.pathname === prefix.slice(0, -1)) return fail(301, { Location: prefix });
    if (!url.pathname.startsWith(prefix)) return fail(404);
    let file = path.join(dir, decodeURIComponent(url.pathname.slice(prefix.length)));
    if (file !== dir && !file.startsWith(dir + path.sep)) return fail(404);
    if (fs.existsSync(file) && fs.statSync(file).isDirectory()) {
      if (!url.pathname.endsWith('/')) return fail(301, { Location: `${url.pathname}/` });
      file = path.join(file, 'index.html');
    }
    if (!fs.existsSync(file) || !fs.statSync(file).isFile()) return fail(404);
    const body = fs.readFileSync(file);
    res.writeHead(200, {
      'Content-Type': SITE_MIME[path.extname(file)] || 'application/octet-stream',
      'Content-Length': body.length,
      'Cache-Control': 'max-age=600',
      'Last-Modified': fs.statSync(file).mtime.toUTCString(),
    }).end(req.method === 'HEAD' ? undefined : body);
  });
}

/** Polls `fn(arg)` in the page every 250 ms until it returns something truthy; survives the page's navigations. */
export async function until(page, fn, what, timeout = 4 * 60_000, arg = undefined) {
  const end = Date.now() + timeout;
  for (;;) {
    try {
      const v = await page.evaluate(fn, arg);
      if (v) return v;
    } catch (e) {
      if (!/context was destroyed|navigat|Target closed/i.test(e.message)) throw e;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Waits for the page's model to load (the page's state `loaded`, else fails with its error). */
export async function loaded(page) {
  const state = await until(page, () => ['loaded', 'error', 'no-webgpu'].includes(document.body.dataset.state) && document.body.dataset.state, 'the model to load');
  assert.equal(state, 'loaded', await page.textContent('#error'));
}

/** Runs the page on its two example images; resolves to the result's PNG bytes. */
export async function stylizeOnPage(page) {
  await page.click('button.example[data-for="content"]');
  await page.click('button.example[data-for="style"]');
  await page.waitForFunction(() => !document.getElementById('stylize').disabled);
  await page.click('#stylize');
  const state = await until(page, () => ['done', 'error', 'cancelled'].includes(document.body.dataset.state) && document.body.dataset.state, 'the run');
  assert.equal(state, 'done', await page.textContent('#error'));
  const bytes = await page.evaluate(async () => Array.from(new Uint8Array(await (await fetch(document.getElementById('result').src)).arrayBuffer())));
  return Buffer.from(bytes);
}

/** The service worker controls the page and its offline copy is ready: its version. */
export function controlled(page) {
  return until(page, () => navigator.serviceWorker.controller && document.body.dataset.offline === 'ready' &&
    document.getElementById('app-version').textContent.replace('app ', ''), 'the service worker to control the page', 120_000);
}
