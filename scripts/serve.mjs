// A small static file server for the page, the wasm engine and the model weights.
//
//   node scripts/serve.mjs [--port 8080] [--host 127.0.0.1] [--model weights/tiny-lcm]
//                          [--cut /model/unet/x.safetensors:BYTES[:TIMES]]
//
// --cut (tests of interrupted downloads): the first TIMES (default: all) GET responses for that
// URL path promise the whole file (or range) but the connection ends once the file's byte
// BYTES is reached; a Range request starting at or after it gets its headers and nothing else.
//
// Serves the repository root at `/` and the model directory at `/model/` (the page's default
// model). Correct MIME types (application/wasm for streaming compilation), CORS, and single
// HTTP Range requests (206 / 416) so that large weight downloads can resume. No caching
// headers beyond validators: a rebuilt engine is picked up on reload.
//
// Content-Security-Policy: when the served folder's index.html has a
// <meta http-equiv="Content-Security-Policy"> (the app's: its own origin, and local servers on
// any port, http://localhost:* and http://127.0.0.1:*, for models from a second local server),
// every page and script gets it as a header too, with `frame-ancestors 'none'`: a Worker's
// policy (the engine's) and the service worker's come from their script's response headers only.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.webmanifest': 'application/manifest+json; charset=utf-8',
  '.wasm': 'application/wasm',
  '.txt': 'text/plain; charset=utf-8',
  '.md': 'text/markdown; charset=utf-8',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.webp': 'image/webp',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
  '.safetensors': 'application/octet-stream',
  '.bin': 'application/octet-stream',
};

// Parses a Range header against a file of `size` bytes: null = serve whole (absent, multiple
// ranges or not bytes), 'unsatisfiable', or {start, end} inclusive.
export function parseRange(header, size) {
  if (!header) return null;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m) return null;
  const [, a, b] = m;
  let start, end;
  if (a === '' && b === '') return null;
  if (a === '') {
    // Suffix range: the last b bytes.
    const n = Number(b);
    if (n === 0) return 'unsatisfiable';
    start = Math.max(0, size - n);
    end = size - 1;
  } else {
    start = Number(a);
    end = b === '' ? size - 1 : Math.min(Number(b), size - 1);
    if (b !== '' && Number(b) < start) return null;
  }
  if (start >= size) return 'unsatisfiable';
  return { start, end };
}

// Maps a URL path to a file under one of the mounts; null if outside them.
function resolvePath(urlPath, mounts) {
  let decoded;
  try {
    decoded = decodeURIComponent(urlPath);
  } catch {
    return null;
  }
  if (decoded.includes('\0')) return null;
  for (const [prefix, dir] of mounts) {
    if (decoded === prefix.slice(0, -1) || decoded.startsWith(prefix)) {
      const rel = decoded.slice(prefix.length);
      const file = path.resolve(dir, '.' + path.posix.sep + rel);
      if (file !== dir && !file.startsWith(dir + path.sep)) return null;
      return file;
    }
  }
  return null;
}

/**
 * The policy of `root`'s index.html (its <meta http-equiv="Content-Security-Policy">) as a
 * header, with frame-ancestors; null where it has none. Read again when the file changes.
 */
const policies = new Map();
export function policyHeader(root) {
  const file = path.join(root, 'index.html');
  let mtime;
  try {
    mtime = fs.statSync(file).mtimeMs;
  } catch {
    return null;
  }
  const known = policies.get(file);
  if (known?.mtime === mtime) return known.policy;
  const html = fs.readFileSync(file, 'utf8');
  const meta = /<meta\s[^>]*http-equiv\s*=\s*["']?Content-Security-Policy["']?[^>]*>/i.exec(html)?.[0];
  const content = meta && /\scontent\s*=\s*"([^"]*)"/i.exec(meta)?.[1];
  const policy = content
    ? `${content.replace(/&quot;/g, '"').replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&').trim().replace(/;\s*$/, '')}; frame-ancestors 'none'`
    : null;
  policies.set(file, { mtime, policy });
  return policy;
}

/**
 * Creates (does not start) the server. `model`: the directory served at /model/. `cut`: a list
 * of { path, at, times } (see --cut); the objects are read on every request, so a test can
 * change `times` while the server runs.
 */
export function createServer({ root = ROOT, model = path.join(ROOT, 'weights/tiny-lcm'), log = false, cut = [] } = {}) {
  // Longest prefix first.
  const mounts = [
    ['/model/', path.resolve(model)],
    ['/', path.resolve(root)],
  ];
  return http.createServer((req, res) => {
    const done = (status, headers = {}, body = '') => {
      res.writeHead(status, { 'Access-Control-Allow-Origin': '*', ...headers });
      res.end(req.method === 'HEAD' ? undefined : body);
      if (log) console.log(`${status} ${req.method} ${req.url}`);
    };
    if (req.method === 'OPTIONS') {
      return done(204, {
        'Access-Control-Allow-Methods': 'GET, HEAD, OPTIONS',
        'Access-Control-Allow-Headers': 'Range, If-Range',
        'Access-Control-Max-Age': '86400',
      });
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') return done(405, { Allow: 'GET, HEAD, OPTIONS' });

    const urlPath = new URL(req.url, 'http://localhost').pathname;
    let file = resolvePath(urlPath, mounts);
    if (!file) return done(404, { 'Content-Type': 'text/plain' }, 'not found\n');
    let stat;
    try {
      stat = fs.statSync(file);
      if (stat.isDirectory()) {
        if (!urlPath.endsWith('/')) return done(301, { Location: urlPath + '/' });
        file = path.join(file, 'index.html');
        stat = fs.statSync(file);
      }
    } catch {
      return done(404, { 'Content-Type': 'text/plain' }, 'not found\n');
    }
    if (!stat.isFile()) return done(404, { 'Content-Type': 'text/plain' }, 'not found\n');

    const etag = `"${stat.size.toString(16)}-${Math.floor(stat.mtimeMs).toString(16)}"`;
    const type = MIME[path.extname(file).toLowerCase()] || 'application/octet-stream';
    const policy = /^text\/(html|javascript)/.test(type) ? policyHeader(mounts[1][1]) : null;
    const headers = {
      'Content-Type': type,
      ...(policy ? { 'Content-Security-Policy': policy } : {}),
      'Accept-Ranges': 'bytes',
      'Access-Control-Expose-Headers': 'Content-Length, Content-Range, Accept-Ranges, ETag',
      'Cache-Control': 'no-cache',
      ETag: etag,
      'Last-Modified': stat.mtime.toUTCString(),
    };
    if (req.headers['if-none-match'] === etag && !req.headers.range) return done(304, headers);

    // If-Range: a resumed download of a file that changed since gets the whole new file.
    const ifRange = req.headers['if-range'];
    const rangeValid = !ifRange || ifRange === etag || ifRange === headers['Last-Modified'];
    const range = rangeValid ? parseRange(req.headers.range, stat.size) : null;
    if (range === 'unsatisfiable') {
      return done(416, { ...headers, 'Content-Range': `bytes */${stat.size}` });
    }
    let status = 200;
    let start = 0;
    let end = stat.size - 1;
    if (range) {
      status = 206;
      ({ start, end } = range);
      headers['Content-Range'] = `bytes ${start}-${end}/${stat.size}`;
    }
    headers['Content-Length'] = String(stat.size === 0 ? 0 : end - start + 1);
    res.writeHead(status, { 'Access-Control-Allow-Origin': '*', ...headers });
    if (log) console.log(`${status} ${req.method} ${req.url}`);
    if (req.method === 'HEAD' || stat.size === 0) return res.end();
    const c = req.method === 'GET' && cut.find((x) => x.path === urlPath && x.times > 0);
    if (c) {
      // The connection ends at the file's byte `at`, short of the promised length.
      c.times--;
      if (log) console.log(`  (cut at byte ${c.at})`);
      // After a pause, so that the client has taken the bytes before the connection breaks
      // (a browser may drop the bytes it holds when the error comes with them).
      const hangUp = () => setTimeout(() => res.socket?.end(), 150);
      if (c.at <= start) {
        res.flushHeaders();
        return hangUp();
      }
      const partial = fs.createReadStream(file, { start, end: Math.min(end, c.at - 1) });
      partial.on('error', () => res.destroy());
      partial.on('end', () => res.write('', hangUp));
      return partial.pipe(res, { end: false });
    }
    const stream = fs.createReadStream(file, { start, end });
    stream.on('error', () => res.destroy());
    stream.pipe(res);
  });
}

/** Starts a server; resolves to { server, port, url } once it listens. Port 0 = any free one. */
export function startServer({ port = 8080, host = '127.0.0.1', ...options } = {}) {
  const server = createServer(options);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      const actual = server.address().port;
      const shown = host === '127.0.0.1' ? 'localhost' : host.includes(':') ? `[${host}]` : host;
      resolve({ server, port: actual, url: `http://${shown}:${actual}` });
    });
  });
}

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const [key, inline] = argv[i].split('=', 2);
    const value = () => (inline !== undefined ? inline : argv[++i]);
    if (key === '--port') out.port = Number(value());
    else if (key === '--host') out.host = value();
    else if (key === '--model') out.model = path.resolve(value());
    else if (key === '--quiet') out.log = false;
    else if (key === '--cut') {
      const m = /^(\/[^:]+):(\d+)(?::(\d+))?$/.exec(value() || '');
      if (!m) throw new Error('--cut: expected /url/path:BYTES[:TIMES]');
      (out.cut ??= []).push({ path: m[1], at: Number(m[2]), times: m[3] === undefined ? Infinity : Number(m[3]) });
    } else throw new Error(`unknown option ${argv[i]} (expected --port, --host, --model, --cut, --quiet)`);
  }
  return out;
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  let options;
  try {
    options = { log: true, ...parseArgs(process.argv.slice(2)) };
  } catch (e) {
    console.error(e.message);
    process.exit(2);
  }
  if (options.model && !fs.existsSync(path.join(options.model, 'unet', 'config.json'))) {
    console.error(`--model ${options.model}: no unet/config.json there (expected a diffusers model directory or an fp16 bundle)`);
    process.exit(2);
  }
  startServer(options).then(
    ({ url }) => {
      const model = path.relative(ROOT, options.model || path.join(ROOT, 'weights/tiny-lcm')) || '.';
      console.log(`ZePo: serving ${ROOT} on ${url}/ (model: ${model} at /model/). Open ${url}/ ; Ctrl-C stops.`);
    },
    (e) => {
      console.error(e.code === 'EADDRINUSE' ? `port ${options.port ?? 8080} is in use: pass --port N` : e.message);
      process.exit(1);
    },
  );
}
