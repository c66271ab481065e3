// The deployable site (npm run build:site, scripts/build-site.mjs) on a plain static host, in
// headless Chromium on WebGPU (SwiftShader):
// - the build: the files it writes, the default model (www/zepo.js's DEFAULT_MODEL) or --model
//   written into the page, its own shell manifest, every URL relative;
// - hosting: the folder served by a bare static server written here (MIME types by extension, no
//   Range, no CORS, GitHub Pages' `Cache-Control: max-age=600`) under a sub-path, /apps/zepo/;
//   the model (the committed fp16 bundle) from another origin that sends CORS headers. Every
//   request to the site's host stays under the sub-path; the page loads the built-in model;
// - offline: one online run, then the network off (both hosts down too), reload, run again → the
//   same pixels;
// - update: the site rebuilt with another --model (index.html changes) is installed in the
//   background (only its changed files downloaded) and the next load switches to it, with its model.
// One browser, 64², 2 steps, no warm-up: SwiftShader is slow.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, before, test } from 'node:test';
import { ROOT, assertEngineBuilt, controlled, decodePng, httpHost, launch, loaded, screenshot, staticSite, stylizeOnPage, until } from './helpers.mjs';
import { createServer } from '../../scripts/serve.mjs';

const T = 10 * 60_000;
const BUILD_SITE = path.join(ROOT, 'scripts/build-site.mjs');
const PREFIX = '/apps/zepo/';
const QUERY = '?resolution=64&steps=2&warmup=0';

let tmp;
before(() => {
  assertEngineBuilt();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'zepo-dist-'));
});
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Runs `node scripts/build-site.mjs ARGS` (never building the engine); its stdout. */
const buildSite = (...args) => execFileSync(process.execPath, [BUILD_SITE, '--no-build', ...args], { encoding: 'utf8' });

/** A built site's shell manifest: { version, files: { path: sha256 } }. */
function shellOf(dir) {
  const self = {};
  new Function('self', fs.readFileSync(path.join(dir, 'www/shell-manifest.js'), 'utf8'))(self);
  return self.ZEPO_SHELL;
}

/** Every file under `dir` (relative, '/'-separated). */
function listFiles(dir, base = dir) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory()
    ? listFiles(path.join(dir, e.name), base) : [path.relative(base, path.join(dir, e.name)).split(path.sep).join('/')])).sort();
}

const modelOf = (dir) => /<meta name="zepo-model" content="([^"]*)">/.exec(fs.readFileSync(path.join(dir, 'index.html'), 'utf8'))?.[1];

test('build:site: the page, sw.js, manifest and the app shell, the default model, relative URLs', async () => {
  const out = path.join(tmp, 'default');
  const log = buildSite('--out', out);
  const { DEFAULT_MODEL } = await import(pathToFileURL(path.join(ROOT, 'www/zepo.js')).href);
  assert.match(DEFAULT_MODEL, /LCM_Dreamshaper_v7/, 'the public model, never the tiny test model');
  assert.equal(modelOf(out), DEFAULT_MODEL, 'the default model is the JS API\'s');
  const files = listFiles(out);
  const shell = shellOf(out);
  assert.deepEqual(files, [...Object.keys(shell.files), 'sw.js', 'www/shell-manifest.js'].sort(), 'the shell, sw.js and its manifest, nothing else');
  for (const f of ['index.html', 'manifest.webmanifest', 'www/main.js', 'www/style.css', 'www/engine/zepo_bg.wasm', 'www/icons/icon-192.png', 'www/examples/style.png']) {
    assert.ok(files.includes(f), `${f} is in the site`);
  }
  for (const f of Object.keys(shell.files).filter((p) => p !== 'index.html')) {
    assert.ok(fs.readFileSync(path.join(out, f)).equals(fs.readFileSync(path.join(ROOT, f))), `${f} is a copy`);
  }
  const bytes = files.reduce((n, f) => n + fs.statSync(path.join(out, f)).size, 0);
  const summary = /wrote .*: (\d+) files, ([\d.]+) MiB \(shell version (\w+)\)/.exec(log);
  assert.ok(summary, `the build says what it wrote:\n${log}`);
  assert.deepEqual([Number(summary[1]), summary[2], summary[3]], [files.length, (bytes / 2 ** 20).toFixed(1), shell.version]);
  // Every URL of the page, the manifest and sw.js is relative (the site may live under a sub-path).
  const html = fs.readFileSync(path.join(out, 'index.html'), 'utf8');
  const urls = [...html.matchAll(/\s(?:src|href|data-src)="([^"]*)"/g)].map((m) => m[1]);
  const manifest = JSON.parse(fs.readFileSync(path.join(out, 'manifest.webmanifest'), 'utf8'));
  urls.push(manifest.id, manifest.start_url, manifest.scope, ...manifest.icons.map((i) => i.src));
  const sw = fs.readFileSync(path.join(out, 'sw.js'), 'utf8');
  urls.push(...[...sw.matchAll(/importScripts\(\s*'([^']*)'/g)].map((m) => m[1]));
  const named = urls.filter((u) => !/^[a-z][a-z0-9+.-]*:/i.test(u) && !u.startsWith('/'));
  assert.deepEqual(named.filter((u) => !fs.existsSync(path.join(out, u.replace(/[?#].*$/, '')))), [], 'every file named is in the site');
  urls.push(...[...sw.matchAll(/new URL\(\s*'([^']*)'/g)].map((m) => m[1]));
  assert.ok(urls.length > 15, urls.join(' '));
  assert.deepEqual(urls.filter((u) => u.startsWith('/')), [], 'no root-relative URL');
  // A second build replaces the first; a folder that is not a site is never overwritten.
  assert.match(buildSite('--out', out, '--model', 'https://example.org/m'), /wrote .*: \d+ files/);
  assert.equal(modelOf(out), 'https://example.org/m');
  fs.writeFileSync(path.join(tmp, 'keep.txt'), 'mine');
  assert.throws(() => execFileSync(process.execPath, [BUILD_SITE, '--no-build', '--out', tmp], { stdio: 'pipe' }),
    (e) => /not empty and holds no previous site build/.test(e.stderr));
  assert.ok(fs.existsSync(path.join(tmp, 'keep.txt')));
});

test('the site on a plain static host under a sub-path, the model from another origin: run, offline, update', { timeout: T }, async () => {
  const t0 = Date.now();
  const out = path.join(tmp, 'dist');
  // The "CDN": the repository served with CORS and Range (scripts/serve.mjs), on another origin.
  const cdnServer = createServer({ root: ROOT });
  const cdn = await httpHost((req, res) => cdnServer.emit('request', req, res));
  const MODEL = `${cdn.origin}/weights/tiny-lcm-bundle`;
  const MODEL2 = `${cdn.origin}/weights/tiny-lcm-2-bundle`;
  buildSite('--out', out, '--model', MODEL);
  const v1 = shellOf(out);
  const site = await staticSite(out, PREFIX);
  assert.notEqual(site.origin, cdn.origin);
  const APP = `${site.origin}${PREFIX}`;
  const browser = await launch({ webgpu: true });
  const { context, page, logs } = browser;
  try {
    await page.goto(`${APP}${QUERY}`);
    await loaded(page);
    assert.equal(await page.evaluate(() => window.zepo.model), MODEL, 'the page uses the model the build set');
    assert.equal(await page.textContent('#model-url'), MODEL);
    assert.ok(cdn.requests.some((u) => u.startsWith('/weights/tiny-lcm-bundle/unet/')), `the model came from the other origin: ${cdn.requests}`);
    const online = await stylizeOnPage(page);
    assert.equal(await controlled(page), v1.version, 'the service worker runs this build');
    const outside = site.requests.filter((u) => !u.startsWith(PREFIX));
    assert.deepEqual(outside, [], 'every request to the site stays under its sub-path');
    assert.ok(site.requests.includes(`${PREFIX}www/engine/zepo_bg.wasm`) && site.requests.includes(`${PREFIX}sw.js`), site.requests.join(' '));
    console.log(`online: load + run ${((Date.now() - t0) / 1000).toFixed(1)} s; ${site.requests.length} requests to the site, ${cdn.requests.length} to the model's host`);

    // Offline: the network off and both hosts unreachable.
    await context.setOffline(true);
    site.down = true;
    cdn.down = true;
    const t1 = Date.now();
    await page.reload();
    await loaded(page);
    assert.equal(await page.evaluate(() => navigator.onLine), false);
    assert.equal(await controlled(page), v1.version);
    const offline = await stylizeOnPage(page);
    const [a, b] = [decodePng(online), decodePng(offline)];
    assert.deepEqual([b.width, b.height], [64, 64]);
    assert.ok(Buffer.from(b.data).equals(Buffer.from(a.data)), 'the offline result has the online result\'s pixels');
    console.log(`offline: reload + run ${((Date.now() - t1) / 1000).toFixed(1)} s, ${a.width}×${a.height} pixels identical`);
    await screenshot(page, 'dist-offline.png');

    // Update: the site rebuilt with another default model (index.html changes), deployed.
    await context.setOffline(false);
    site.down = false;
    cdn.down = false;
    buildSite('--out', out, '--model', MODEL2);
    const v2 = shellOf(out);
    assert.notEqual(v2.version, v1.version);
    // (Files of the working tree edited since the first build change too.)
    const changed = Object.keys(v2.files).filter((p) => v2.files[p] !== v1.files[p]);
    assert.ok(changed.includes('index.html'), `changed: ${changed}`);
    const seen = site.requests.length;
    const t2 = Date.now();
    await page.reload();
    await loaded(page);
    assert.equal(await page.evaluate(() => window.zepo.model), MODEL, 'the old build runs while the new one installs');
    await until(page, () => document.body.dataset.update === 'ready', '"a new version is ready"');
    const fetched = site.requests.slice(seen).filter((u) => !/\/(sw|shell-manifest)\.js$/.test(u));
    assert.deepEqual(fetched.sort(), changed.map((p) => PREFIX + p).sort(), 'the install downloads only the changed files');
    await page.reload();
    const how = await until(page, ([m]) => (document.querySelector('meta[name="zepo-model"]')?.content === m && 'switched') ||
      (document.body.dataset.update === 'outdated' && 'late'), 'the new build to run', 60_000, [MODEL2]);
    if (how === 'late') await page.reload();
    await loaded(page);
    assert.equal(await controlled(page), v2.version, 'the new build runs');
    assert.equal(await page.evaluate(() => window.zepo.model), MODEL2, 'with its model');
    assert.ok(await page.isHidden('#update'));
    assert.equal(new URL(page.url()).pathname, PREFIX);
    console.log(`update: reload, install, reload → new build ${how === 'switched' ? 'directly' : 'after a late activation'} in ${((Date.now() - t2) / 1000).toFixed(1)} s`);
    await screenshot(page, 'dist-updated.png');
    assert.deepEqual(site.requests.filter((u) => !u.startsWith(PREFIX)), [], 'every request to the site stays under its sub-path');
    const errors = logs.filter((l) => l.startsWith('[pageerror]'));
    assert.deepEqual(errors, [], 'no uncaught errors in the page');
    console.log(`site test: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  } finally {
    if (logs.length) console.log(logs.slice(-30).join('\n'));
    await browser.close();
    await site.close();
    await cdn.close();
  }
});
