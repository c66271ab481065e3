// Writes a deployable static site: a folder to upload to any static host (GitHub Pages, S3, a
// CDN, nginx), at its root or under any sub-path. Nothing in it needs more than static files.
//
//   npm run build:site -- [--model URL] [--allow-host ORIGIN]… [--out DIR] [--no-build | --build]
//   node scripts/build-site.mjs …                  (the same)
//
// --model URL  the model the page loads by default (a visitor may still open ?model=… of an
//              allowed host), written into the page as <meta name="zepo-model">; default:
//              DEFAULT_MODEL of www/zepo.js, the public LCM_Dreamshaper_v7 repository. A host
//              serving the model must send CORS headers (and should answer Range requests, for
//              resumable downloads).
// --allow-host ORIGIN  (repeatable) another host the page may load models from, as an origin
//              (https://models.example.org, https://*.example.org, http://localhost:8000).
// --out DIR    the folder to write (default: dist/); a previous build there is replaced.
// --no-build   fail if the engine (www/engine/) is not built, instead of building it;
// --build      run scripts/build-wasm.sh first even if the engine is there (it is incremental).
//
// The page's Content-Security-Policy (<meta http-equiv="Content-Security-Policy">, which sw.js
// repeats as a header for the page and its Workers) lets it connect to its own origin, the
// model's (for the Hugging Face hub: huggingface.co and its CDN hosts, *.huggingface.co and
// *.hf.co) and the --allow-host origins only: nothing else, so no image can leave the page.
//
// The folder holds the page (index.html), sw.js, manifest.webmanifest, the app shell (www/*.js,
// style.css, icons, examples, the engine's glue and wasm: exactly the files scripts/build-shell.mjs
// lists) and the folder's own shell manifest (www/shell-manifest.js), so that the service worker
// installs this build and every later build updates it.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { GROUPS, OUTPUT, buildShell } from './build-shell.mjs';
import { resolveModel } from '../www/zepo.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const USAGE = 'usage: npm run build:site -- [--model URL] [--allow-host ORIGIN]… [--out DIR] [--no-build | --build]';
const ENGINE = ['www/engine/zepo.js', 'www/engine/zepo_bg.wasm'];

class BuildError extends Error {}

/** The files a site consists of, besides the generated shell manifest (paths relative to root). */
function siteFiles(root) {
  const files = ['sw.js'];
  for (const [dir, pattern] of GROUPS) {
    const abs = path.join(root, dir);
    if (!fs.existsSync(abs)) continue;
    for (const name of fs.readdirSync(abs).sort()) {
      const rel = path.posix.join(dir, name).replace(/^\.\//, '');
      if (rel !== OUTPUT && pattern.test(name) && fs.statSync(path.join(abs, name)).isFile()) files.push(rel);
    }
  }
  return files;
}

const escapeAttr = (s) => s.replace(/&/g, '&amp;').replace(/"/g, '&quot;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** index.html with its default model set: the <meta name="zepo-model"> replaced or added. */
export function setModel(html, model) {
  const meta = `<meta name="zepo-model" content="${escapeAttr(model)}">`;
  const existing = /<meta\s+name="zepo-model"[^>]*>/i;
  if (existing.test(html)) return html.replace(existing, meta);
  const head = /^([ \t]*)<\/head>/m.exec(html);
  if (!head) throw new BuildError('index.html has no </head>');
  const indent = /\n([ \t]+)<meta/.exec(html)?.[1] ?? '  ';
  return html.slice(0, head.index) + `${indent}${meta}\n` + html.slice(head.index);
}

// The Hugging Face hub: a resolve URL redirects to its CDN hosts (cdn-lfs.huggingface.co,
// cas-bridge.xethub.hf.co, …), which the page must be allowed to follow.
export const HUB_SOURCES = ['https://huggingface.co', 'https://*.huggingface.co', 'https://*.hf.co'];
const isHub = (host) => /(^|\.)(huggingface\.co|hf\.co)$/i.test(host);

/**
 * The hosts (CSP source expressions) the page may load `model` from: its origin, the hub's
 * hosts for a model on the hub (a URL or a repository id 'owner/name'), nothing for a model on
 * the site's own origin (a relative URL).
 */
export function modelSources(model) {
  let url;
  if (/^[a-z][a-z0-9+.-]*:/i.test(model)) url = new URL(model);
  else if (/^[A-Za-z0-9][\w.-]*\/[A-Za-z0-9][\w.-]*$/.test(model)) url = new URL(resolveModel(model));
  else return [];
  if (!/^https?:$/.test(url.protocol)) throw new BuildError(`--model ${model}: not an http(s) URL`);
  return isHub(url.hostname) ? [...new Set([url.origin, ...HUB_SOURCES])] : [url.origin];
}

/**
 * An --allow-host value as a CSP source: an origin (scheme, host, port), the host possibly
 * '*.'-wildcarded; a URL counts by its origin, a bare host is https.
 */
export function allowedHost(value) {
  const v = String(value).trim().replace(/\/+$/, '');
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(v) ? v : `https://${v}`;
  const m = /^(https?):\/\/(\*\.)?([a-z0-9-]+(?:\.[a-z0-9-]+)*)(?::(\d{1,5}|\*))?(?:\/.*)?$/i.exec(withScheme);
  if (!m || (m[2] && !m[3].includes('.') && m[3] !== 'localhost')) {
    throw new BuildError(`--allow-host ${value}: expected an origin such as https://models.example.org, ` +
      'https://*.example.org or http://localhost:8000 (one host; never a bare *)');
  }
  const [, scheme, wild = '', host, port] = m;
  return `${scheme.toLowerCase()}://${wild}${host.toLowerCase()}${port ? `:${port}` : ''}`;
}

/**
 * The page's Content-Security-Policy, as its <meta> holds it: scripts, workers, wasm, styles
 * and the manifest from its own origin only; network requests (fetch, WebSocket, beacons) to
 * its own origin, blob: URLs (its own results) and `connect` (the model hosts); images from its
 * own origin, blob: and data:; nothing else (no plugins, frames, fonts, media, form posts, no
 * other <base>). frame-ancestors is not valid in a <meta>: sw.js adds it to the header.
 */
export function pagePolicy(connect = []) {
  return ["default-src 'none'", "script-src 'self' 'wasm-unsafe-eval'", "worker-src 'self'",
    `connect-src ${["'self'", 'blob:', ...connect].join(' ')}`, "img-src 'self' blob: data:", "style-src 'self'",
    "manifest-src 'self'", "object-src 'none'", "base-uri 'self'", "form-action 'none'"].join('; ');
}

/** index.html with its policy set: the <meta http-equiv="Content-Security-Policy"> replaced or added first in <head>. */
export function setPolicy(html, policy) {
  const meta = `<meta http-equiv="Content-Security-Policy" content="${escapeAttr(policy)}">`;
  const existing = /<meta\s+http-equiv="Content-Security-Policy"[^>]*>/i;
  if (existing.test(html)) return html.replace(existing, meta);
  // Before anything it governs: right after <meta charset>, else at the start of <head>.
  const anchor = /<meta\s+charset[^>]*>/i.exec(html) || /<head[^>]*>/i.exec(html);
  if (!anchor) throw new BuildError('index.html has no <head>');
  const at = anchor.index + anchor[0].length;
  const indent = /\n([ \t]+)<meta/.exec(html)?.[1] ?? '  ';
  return `${html.slice(0, at)}\n${indent}${meta}${html.slice(at)}`;
}

/**
 * The site must work under any sub-path: every URL in the page, the manifest and sw.js is
 * relative (no leading '/'), and every file the page or the manifest names is in the site.
 * Returns the problems found.
 */
export function checkRelative(dir) {
  const problems = [];
  const local = (where, url) => {
    if (/^\/|^[a-z][a-z0-9+.-]*:/i.test(url)) {
      if (url.startsWith('/')) problems.push(`${where}: "${url}" is not relative (the site may live under a sub-path)`);
      return;
    }
    const file = decodeURI(url.replace(/[?#].*$/, ''));
    if (file && !fs.existsSync(path.join(dir, file))) problems.push(`${where}: "${url}" is not in the site`);
  };
  const html = fs.readFileSync(path.join(dir, 'index.html'), 'utf8');
  for (const [, attr, url] of html.matchAll(/\s(src|href|data-src|action|poster)\s*=\s*"([^"]*)"/g)) local(`index.html ${attr}`, url);
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.webmanifest'), 'utf8'));
  for (const key of ['id', 'start_url', 'scope']) {
    if (typeof manifest[key] === 'string' && /^\/|^[a-z][a-z0-9+.-]*:/i.test(manifest[key])) {
      problems.push(`manifest.webmanifest ${key}: "${manifest[key]}" is not relative`);
    }
  }
  for (const icon of manifest.icons || []) local('manifest.webmanifest icon', icon.src);
  const sw = fs.readFileSync(path.join(dir, 'sw.js'), 'utf8');
  for (const [, args] of sw.matchAll(/importScripts\(([^)]*)\)/g)) {
    for (const [, url] of args.matchAll(/['"`]([^'"`]*)['"`]/g)) local('sw.js importScripts', url);
  }
  for (const [, url] of sw.matchAll(/new URL\(\s*['"`]([^'"`]*)['"`]/g)) {
    if (url.startsWith('/')) problems.push(`sw.js: new URL("${url}") is not relative`);
  }
  return problems;
}

/** The engine must be built; builds it unless `noBuild` (or always, with `build`). */
function ensureEngine({ noBuild, build }) {
  const missing = ENGINE.filter((f) => !fs.existsSync(path.join(ROOT, f)));
  if (!build && !missing.length) return;
  if (noBuild) {
    throw new BuildError(`the wasm engine is not built (${missing.join(', ')} missing): run bash scripts/build-wasm.sh, ` +
      'or leave out --no-build to have this script run it');
  }
  console.log(missing.length ? 'www/engine is not built: running bash scripts/build-wasm.sh' : 'running bash scripts/build-wasm.sh');
  const r = spawnSync('bash', [path.join(ROOT, 'scripts/build-wasm.sh')], { cwd: ROOT, stdio: 'inherit' });
  if (r.status !== 0) throw new BuildError(`scripts/build-wasm.sh failed (${r.error?.message || `exit ${r.status}`})`);
  const still = ENGINE.filter((f) => !fs.existsSync(path.join(ROOT, f)));
  if (still.length) throw new BuildError(`scripts/build-wasm.sh did not write ${still.join(', ')}`);
}

/** Refuses an output folder that would overwrite the sources or something that is not a site. */
function checkOut(out) {
  const inside = (a, b) => a === b || a.startsWith(b + path.sep);
  if (inside(ROOT, out)) throw new BuildError(`--out ${out}: that is the repository or a folder above it`);
  for (const src of ['www', 'weights', 'src', 'scripts', 'tests', 'pkg', 'node_modules', '.git']) {
    if (inside(out, path.join(ROOT, src))) throw new BuildError(`--out ${out}: inside the repository's ${src}/`);
  }
  if (!fs.existsSync(out)) return;
  if (!fs.statSync(out).isDirectory()) throw new BuildError(`--out ${out}: not a folder`);
  const entries = fs.readdirSync(out);
  const previous = ['index.html', 'sw.js', OUTPUT].every((f) => fs.existsSync(path.join(out, f)));
  if (entries.length && !previous) {
    throw new BuildError(`--out ${out}: the folder is not empty and holds no previous site build: not replacing it`);
  }
}

/**
 * Writes the site into `out` (replaced in one step: the new build is written beside it first).
 * Returns { out, model, version, files: [{ path, size }], bytes, policy (the page's CSP),
 * modelHosts (its connect-src besides the site's own origin) }.
 */
export function buildSite({ model, allowHosts = [], out = path.join(ROOT, 'dist'), noBuild = false, build = false } = {}) {
  if (typeof model !== 'string' || !model.trim()) throw new BuildError('--model: an empty URL');
  model = model.trim();
  const connect = [...new Set([...modelSources(model), ...allowHosts.map(allowedHost)])];
  const policy = pagePolicy(connect);
  out = path.resolve(out);
  checkOut(out);
  ensureEngine({ noBuild, build });

  const tmp = `${out}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  try {
    for (const rel of siteFiles(ROOT)) {
      fs.mkdirSync(path.dirname(path.join(tmp, rel)), { recursive: true });
      fs.copyFileSync(path.join(ROOT, rel), path.join(tmp, rel));
    }
    const index = path.join(tmp, 'index.html');
    fs.writeFileSync(index, setPolicy(setModel(fs.readFileSync(index, 'utf8'), model), policy));
    const { version } = buildShell(tmp);
    const problems = checkRelative(tmp);
    if (problems.length) throw new BuildError(`the site would not work under a sub-path:\n  ${problems.join('\n  ')}`);
    fs.rmSync(out, { recursive: true, force: true });
    fs.renameSync(tmp, out);
    const files = [];
    const walk = (dir) => {
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const abs = path.join(dir, e.name);
        if (e.isDirectory()) walk(abs);
        else files.push({ path: path.relative(out, abs).split(path.sep).join('/'), size: fs.statSync(abs).size });
      }
    };
    walk(out);
    files.sort((a, b) => a.path.localeCompare(b.path));
    return { out, model, version, files, bytes: files.reduce((n, f) => n + f.size, 0), policy, modelHosts: connect };
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

function parseArgs(argv) {
  const o = {};
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split(/=(.*)/s, 2);
    const value = () => {
      const v = inline ?? argv[++i];
      if (v === undefined || (inline === undefined && v.startsWith('--'))) throw new BuildError(`${flag} needs a value\n${USAGE}`);
      return v;
    };
    if (flag === '--model') o.model = value();
    else if (flag === '--allow-host') (o.allowHosts ??= []).push(value());
    else if (flag === '--out') o.out = value();
    else if (flag === '--no-build') o.noBuild = true;
    else if (flag === '--build') o.build = true;
    else if (flag === '--help' || flag === '-h') o.help = true;
    else throw new BuildError(`unknown argument ${argv[i]}\n${USAGE}`);
  }
  if (o.noBuild && o.build) throw new BuildError(`--no-build and --build exclude each other\n${USAGE}`);
  return o;
}

/** Likely mistakes in --model (a URL, relative to the page, never copied into the site). */
function modelWarnings(model, cwd) {
  const out = [];
  const absolute = /^[a-z][a-z0-9+.-]*:/i.test(model);
  if (!absolute && fs.existsSync(path.resolve(cwd, model))) {
    out.push(`--model ${model}: a local folder of that name exists, but --model is a URL (relative to the page) ` +
      'and the model is not copied into the site: host it and give its URL');
  }
  if (/^http:/i.test(model) && !/^http:\/\/(localhost|127\.0\.0\.1|\[::1\])(:|\/|$)/i.test(model)) {
    out.push(`--model ${model}: a page served over https cannot load an http:// model (mixed content)`);
  }
  return out;
}

const mib = (n) => `${(n / 2 ** 20).toFixed(1)} MiB`;

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  try {
    const args = parseArgs(process.argv.slice(2));
    if (args.help) {
      console.log(USAGE);
      process.exit(0);
    }
    // Under `npm run`, relative paths are the caller's, not the package root's.
    const cwd = (process.env.npm_lifecycle_event === 'build:site' && process.env.INIT_CWD) || process.cwd();
    // The default model is the JS API's: read from www/zepo.js, not repeated here.
    const model = args.model ?? (await import(pathToFileURL(path.join(ROOT, 'www/zepo.js')).href)).DEFAULT_MODEL;
    const site = buildSite({ ...args, model, out: args.out === undefined ? undefined : path.resolve(cwd, args.out) });
    const rel = path.relative(cwd, site.out);
    const shown = !rel ? '.' : rel.startsWith('..') ? site.out : rel;
    for (const f of site.files) console.log(`  ${f.path.padEnd(36)} ${f.size.toLocaleString('en').padStart(14)} bytes`);
    console.log(`build-site: wrote ${shown}/: ${site.files.length} files, ${mib(site.bytes)} (shell version ${site.version})`);
    console.log(`  default model: ${site.model}`);
    console.log(`  models load from: this site's origin${site.modelHosts.map((h) => `, ${h}`).join('')} (Content-Security-Policy; ` +
      'another host: --model URL or --allow-host ORIGIN)');
    console.log(`  deploy: upload the contents of ${shown}/ to any static host (any sub-path; https, or localhost)`);
    for (const w of modelWarnings(site.model, cwd)) console.warn(`build-site: warning: ${w}`);
  } catch (e) {
    console.error(`build-site: ${e.message}`);
    if (!(e instanceof BuildError)) console.error(e.stack);
    process.exit(1);
  }
}
