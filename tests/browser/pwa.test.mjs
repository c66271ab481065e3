// The page as an offline app (PWA), in headless Chromium on WebGPU (SwiftShader) with the tiny
// model, on a persistent profile so that the service worker and the caches survive reloads:
// - offline: one online run, then the network off (context.setOffline, and the server stopped),
//   reload, run again → the same pixels; the service worker controls the page, the start URL
//   opens offline, the manifest is valid (Chromium's own parser) and its icons load; the Storage
//   panel shows the stored model and deletes it; the share target, online and offline: a
//   multipart POST with a photo lands as the portrait, the next one as the style, other bodies
//   are refused by name and store nothing;
// - update: a new build on the server is installed in full beside the old one while the old one
//   keeps running; the next load switches to it directly (page, main script, engine Worker and
//   the engine it imports all of the new build), without console errors; the old shell cache is
//   gone, the model cache kept. Then no mixing: a third build takes over while a page of the
//   second is open; that page, its running engine Worker and a new engine it starts afterwards
//   still get the second build's files; once it closes, that build's cache goes.
// Each test serves a copy of the page's files (a "build", with its own shell manifest) from a
// server whose files can be swapped on the same origin.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { ROOT, assertEngineBuilt, controlled, decodePng, launch, loaded, screenshot, stylizeOnPage, until } from './helpers.mjs';
import { createServer } from '../../scripts/serve.mjs';
import { buildShell } from '../../scripts/build-shell.mjs';

const T = 10 * 60_000;
// The tiny model as the CDN serves it: the fp16 bundle.
const TINY = path.join(ROOT, 'weights/tiny-lcm-bundle');
const QUERY = '?resolution=64&steps=2&seed=7';
const MODEL_CACHE = 'zepo-models-v1';

let tmp;
before(() => {
  assertEngineBuilt();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'zepo-pwa-'));
});
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A copy of the page's served files in tmp/name, changed by `edit(dir)`, with its shell manifest. */
function build(name, edit) {
  const dir = path.join(tmp, name);
  for (const f of ['index.html', 'sw.js', 'manifest.webmanifest']) fs.cpSync(path.join(ROOT, f), path.join(dir, f));
  fs.cpSync(path.join(ROOT, 'www'), path.join(dir, 'www'), { recursive: true, filter: (src) => !src.endsWith('shell-manifest.js') });
  edit?.(dir);
  return { dir, ...buildShell(dir) };
}

/**
 * Marks a build in four of its files: the page, its main script, the engine Worker's script
 * and the engine module the Worker imports. The Worker answers {type: 'zepo-build?'} with its
 * own mark and the engine's, fetched (through the service worker) when asked.
 */
function mark(dir, id) {
  const html = path.join(dir, 'index.html');
  fs.writeFileSync(html, fs.readFileSync(html, 'utf8').replace('<body ', `<body data-build="${id}" `));
  fs.appendFileSync(path.join(dir, 'www/main.js'), `\nwindow.zepo.build = '${id}';\n`);
  fs.appendFileSync(path.join(dir, 'www/engine/zepo.js'), `\n// build ${id}\n`);
  fs.appendFileSync(path.join(dir, 'www/worker.js'), `
{
  const inner = self.onmessage;
  self.onmessage = async (e) => {
    if (e.data?.type !== 'zepo-build?') return inner(e);
    const engine = await (await fetch(new URL('./engine/zepo.js', import.meta.url))).text();
    self.postMessage({ type: 'zepo-build', worker: '${id}', engine: /\\/\\/ build (\\w+)\\s*$/.exec(engine)?.[1] || null });
  };
}
`);
}

/**
 * The static server on a fixed origin, the page under `prefix` (a sub-path, as on a shared
 * host); `use(dir)` swaps the files it serves (a deploy). `requests`: URLs below the prefix.
 */
async function server(dir, prefix = '/') {
  let inner = createServer({ root: dir, model: TINY });
  const requests = [];
  const srv = http.createServer((req, res) => {
    if (!req.url.startsWith(prefix)) {
      res.writeHead(404).end();
      return;
    }
    req.url = req.url.slice(prefix.length - 1);
    requests.push(req.url);
    inner.emit('request', req, res);
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  let open = true;
  return {
    url: `http://127.0.0.1:${srv.address().port}${prefix.slice(0, -1)}`,
    requests,
    use(d) { inner = createServer({ root: d, model: TINY }); },
    close: () => open && new Promise((r) => { open = false; srv.closeAllConnections(); srv.close(r); }),
  };
}

/** Cache names, and how many files the model cache holds. */
function caches(page) {
  return page.evaluate(async (name) => {
    const names = await globalThis.caches.keys();
    const models = names.includes(name) ? (await (await globalThis.caches.open(name)).keys()).length : 0;
    return { names, models };
  }, MODEL_CACHE);
}

/**
 * Shares `file` ({ name, type, bytes }) to the app as the system's share sheet does: a form POST
 * (`enctype`) to its share target, from another page. Returns the app's page once it took the
 * share (window.zepo.arrived), with what it shows.
 */
async function shareTo(context, target, file, enctype = 'multipart/form-data') {
  const p = await context.newPage();
  await p.goto('about:blank');
  await p.evaluate(([action, f, type]) => {
    const form = document.createElement('form');
    Object.assign(form, { method: 'POST', enctype: type, action });
    const input = document.createElement('input');
    Object.assign(input, { type: 'file', name: 'image' });
    const data = new DataTransfer();
    data.items.add(new File([new Uint8Array(f.bytes)], f.name, { type: f.type }));
    input.files = data.files;
    form.append(input);
    document.body.append(form);
    form.submit();
  }, [target, { ...file, bytes: Array.from(file.bytes) }, enctype]);
  await p.waitForFunction(() => window.zepo?.arrived, null, { timeout: 60_000 });
  await p.evaluate(() => window.zepo.arrived);
  const shown = await p.evaluate(() => ({
    url: location.href,
    content: document.getElementById('content-preview').hidden ? null : document.getElementById('content-zone').getAttribute('aria-label'),
    style: document.getElementById('style-preview').hidden ? null : document.getElementById('style-zone').getAttribute('aria-label'),
    notice: document.body.dataset.notice || null,
    error: document.getElementById('error').hidden ? null : document.getElementById('error').textContent,
    status: document.getElementById('status').textContent,
    input: document.getElementById('input-status').textContent,
    fromServiceWorker: performance.getEntriesByType('navigation')[0]?.workerStart > 0,
  }));
  return { page: p, shown };
}

/** Every share test: to an app with no portrait kept, one with a portrait, and bodies refused. */
async function checkShareTarget(context, base, label) {
  const target = `${base}/share-target?confirm=1&warmup=0`;
  const photo = { name: 'IMG_2040.png', type: 'image/png', bytes: fs.readFileSync(path.join(ROOT, 'www/examples/portrait.png')) };
  const clearKept = (p) => p.evaluate(() => caches.delete('zepo-inputs-v1'));
  // No portrait kept: the photo is the portrait.
  let got = await shareTo(context, target, photo);
  await clearKept(got.page);
  await got.page.close();
  got = await shareTo(context, target, photo);
  assert.match(got.shown.content || '', /IMG_2040\.png/, `${label}: the shared photo is the portrait: ${JSON.stringify(got.shown)}`);
  assert.equal(got.shown.style, null);
  assert.equal(got.shown.error, null);
  assert.ok(!/[?&]shared=/.test(got.shown.url) && /confirm=1/.test(got.shown.url), `the share's id leaves the address, the target's query stays: ${got.shown.url}`);
  assert.ok(got.shown.fromServiceWorker, 'the app page came from the service worker');
  assert.deepEqual(await got.page.evaluate(async () => (await (await caches.open('zepo-shared-v1')).keys()).length), 0, 'the shared image was taken out of its cache');
  await got.page.close();
  // A portrait is there (kept from the page the share replaces): the next photo is the style.
  const style = { name: 'painting.webp', type: 'image/png', bytes: fs.readFileSync(path.join(ROOT, 'www/examples/style.png')) };
  got = await shareTo(context, target, style);
  assert.match(got.shown.content || '', /IMG_2040\.png/, `${label}: the portrait stays: ${JSON.stringify(got.shown)}`);
  assert.match(got.shown.style || '', /painting\.webp/, `${label}: the shared image is the style`);
  assert.match(got.shown.input, /is the style image/);
  await got.page.close();
  // Refused by name, nothing stored, the kept portrait untouched: not an image, not multipart.
  for (const [what, file, enctype, said] of [
    ['a text file', { name: 'notes.txt', type: 'text/plain', bytes: Buffer.from('hello') }, 'multipart/form-data', /"notes\.txt" \(text\/plain\) is not an image/],
    ['a plain-text body', photo, 'text/plain', /came as text\/plain, not as a multipart form/],
  ]) {
    got = await shareTo(context, target, file, enctype);
    assert.equal(got.shown.notice, 'ShareError', `${label}, ${what}: ${JSON.stringify(got.shown)}`);
    assert.match(got.shown.error || '', said, `${label}, ${what}`);
    assert.match(got.shown.content || '', /IMG_2040\.png/, `${label}, ${what}: the kept portrait is still there`);
    assert.deepEqual(await got.page.evaluate(async () => (await (await caches.open('zepo-shared-v1')).keys()).length), 0, `${label}, ${what}: nothing stored`);
    await got.page.close();
  }
  console.log(`share target ${label}: a photo lands as the portrait, the next as the style; a text file and a plain-text body refused by name`);
}

const errorsIn = (logs) => logs.filter((l) => l.startsWith('[error]') || l.startsWith('[pageerror]') || l.startsWith('[worker error]'));

test('offline: after one online run, a reload with the network off stylizes to the same pixels', { timeout: T }, async () => {
  const t0 = Date.now();
  const b = build('offline');
  const srv = await server(b.dir);
  const browser = await launch({ webgpu: true });
  const { context, page } = browser;
  try {
    await page.goto(`${srv.url}/${QUERY}`);
    await loaded(page);
    const online = await stylizeOnPage(page);
    const version = await controlled(page);
    assert.equal(version, b.version, 'the service worker runs this build');
    const afterRun = await until(page, () => Number(document.getElementById('storage').dataset.modelBytes), 'the stored model size');
    const persist = await until(page, () => document.getElementById('storage').dataset.persist, 'the persist() answer');
    console.log(`online run done in ${((Date.now() - t0) / 1000).toFixed(1)} s; storage panel: ${afterRun} bytes of model, ` +
      `persist() ${persist}: ${await page.textContent('#storage-persist')}`);
    const shards = ['unet', 'vae'].flatMap((part) => fs.readdirSync(path.join(TINY, part))
      .filter((f) => f.endsWith('.safetensors')).map((f) => fs.statSync(path.join(TINY, part, f)).size));
    assert.ok(afterRun >= shards.reduce((a, b) => a + b), 'the panel counts the stored model (at least its UNet and VAE shards)');

    // The share target, online.
    await checkShareTarget(context, srv.url, 'online');

    // Does setOffline cut what the service worker itself fetches? A URL that no cache holds:
    await context.setOffline(true);
    const seen = srv.requests.length;
    const probe = await page.evaluate(() => fetch(`package.json?probe=${Date.now()}`).then((r) => `HTTP ${r.status}`, (e) => e.name));
    const reached = srv.requests.slice(seen).some((u) => u.startsWith('/package.json?probe'));
    console.log(`context.setOffline(true): a fetch the service worker passes on ${reached ? 'still reaches the server' : 'is cut off'} (${probe})`);
    // Either way nothing can come from the network now: the server is gone.
    await srv.close();

    const t1 = Date.now();
    await page.reload();
    await loaded(page);
    assert.equal(await page.evaluate(() => navigator.onLine), false);
    assert.equal(await controlled(page), b.version, 'the service worker controls the offline page');
    // The gallery, offline: the online run's result, listed with its settings.
    const gallery = await until(page, () => window.zepo.gallery.ready && window.zepo.gallery.count >= 1 &&
      [...document.querySelectorAll('#gallery-list .gallery-item')].map((li) => li.querySelector('.gallery-caption').textContent), 'the gallery offline');
    assert.equal(gallery.length, 1, 'the online run\'s result is kept');
    assert.match(gallery[0], /64×64 · seed 7/);
    const offline = await stylizeOnPage(page);
    await until(page, () => window.zepo.gallery.count === 2, 'the offline result kept too');
    const [a, c] = [decodePng(online), decodePng(offline)];
    assert.deepEqual([c.width, c.height], [64, 64]);
    assert.ok(Buffer.from(c.data).equals(Buffer.from(a.data)), 'the offline result has the online result\'s pixels');
    console.log(`offline reload + run: ${((Date.now() - t1) / 1000).toFixed(1)} s, ${a.width}×${a.height} pixels identical`);
    await screenshot(page, 'pwa-offline.png');
    // The share target, offline (the server is gone).
    await checkShareTarget(context, srv.url, 'offline');

    // The manifest, as Chromium parses it (served offline), and what installing needs.
    const cdp = await context.newCDPSession(page);
    const app = await cdp.send('Page.getAppManifest');
    assert.deepEqual(app.errors, [], `manifest errors: ${JSON.stringify(app.errors)}`);
    const manifest = JSON.parse(app.data);
    for (const key of ['name', 'short_name', 'description', 'start_url', 'scope', 'theme_color', 'background_color']) {
      assert.ok(typeof manifest[key] === 'string' && manifest[key], `manifest.${key}`);
    }
    assert.equal(manifest.display, 'standalone');
    // The share target and the file handlers, as Chromium reads them.
    assert.equal(new URL(manifest.share_target.action, app.url).href, new URL('share-target', app.url).href);
    assert.equal(manifest.share_target.method, 'POST');
    assert.equal(manifest.share_target.enctype, 'multipart/form-data');
    assert.equal(manifest.share_target.params.files[0].name, 'image');
    assert.ok(manifest.file_handlers?.[0]?.accept?.['image/jpeg'], 'file handlers for images');
    assert.ok(!/^(\/|[a-z]+:)/.test(manifest.start_url) && !/^(\/|[a-z]+:)/.test(manifest.scope), 'start_url and scope are relative (sub-path hosting)');
    const css = fs.readFileSync(path.join(ROOT, 'www/style.css'), 'utf8');
    assert.ok(css.includes(`--accent: ${manifest.theme_color}`) && css.includes(`--bg: ${manifest.background_color}`), 'colours match style.css');
    const sizes = manifest.icons.map((i) => `${i.sizes} ${i.purpose || 'any'}`);
    for (const want of ['192x192 any', '512x512 any', '512x512 maskable']) assert.ok(sizes.includes(want), `icon ${want}: ${sizes}`);
    const icons = await page.evaluate(async ([list, base]) => Promise.all(list.map((icon) => new Promise((resolve) => {
      const img = new Image();
      img.onload = () => resolve(`${img.naturalWidth}x${img.naturalHeight}`);
      img.onerror = () => resolve('failed');
      img.src = new URL(icon.src, base).href;
    }))), [manifest.icons, app.url]);
    assert.deepEqual(icons, manifest.icons.map((i) => i.sizes), 'every icon loads offline at its size');
    const { installabilityErrors } = await cdp.send('Page.getInstallabilityErrors');
    assert.deepEqual(installabilityErrors, [], `installability: ${JSON.stringify(installabilityErrors)}`);

    // The start URL opens offline, from the service worker.
    const start = new URL(manifest.start_url, app.url).href;
    const other = await context.newPage();
    const response = await other.goto(start);
    assert.equal(response.status(), 200);
    assert.ok(response.fromServiceWorker(), 'served by the service worker');
    assert.match(await other.title(), /ZePo/);
    await other.close();

    // Delete the downloaded model from the Storage panel.
    const stored = await caches(page);
    assert.ok(stored.models > 0);
    await page.click('#delete-model');
    await until(page, () => document.getElementById('storage').dataset.modelBytes === '0', 'the panel to show no model');
    const left = await caches(page);
    assert.equal(left.models, 0, 'the model cache is empty');
    assert.ok(left.names.includes(`zepo-shell-${b.version}`), 'the app shell is kept');
    console.log(`delete: ${await page.textContent('#storage-status')} (${stored.models} → 0 cached files)`);

    // Offline without the model: the page says so.
    await page.reload();
    const failed = await until(page, () => document.body.dataset.state === 'error' && document.body.dataset.error, 'the load to fail');
    assert.equal(failed, 'DownloadError');
    assert.match(await page.textContent('#status'), /offline.*not \(fully\) downloaded/i);
    console.log(`offline test: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  } finally {
    if (browser.logs.length) console.log(browser.logs.slice(-30).join('\n'));
    await browser.close();
    await srv.close();
  }
});

/** The marks of the build a page runs: page, main script, engine Worker, engine (see mark()). */
function buildOf(page) {
  return page.evaluate(async () => {
    const worker = window.zepo.engine?.worker;
    const [w, e] = worker ? await new Promise((resolve) => {
      const on = ({ data }) => {
        if (data?.type !== 'zepo-build') return;
        worker.removeEventListener('message', on);
        resolve([data.worker, data.engine]);
      };
      worker.addEventListener('message', on);
      worker.postMessage({ type: 'zepo-build?' });
    }) : [null, null];
    return [document.body.dataset.build, window.zepo.build, w, e];
  });
}

/** Shell file names of `version` in its cache → sha256 (null: missing). */
function shellCache(page, version, files) {
  return page.evaluate(async ([name, list]) => {
    const out = {};
    for (const p of list) out[p] = (await globalThis.caches.match(new URL(p, location.href).href, { cacheName: name }))?.headers.get('x-zepo-sha256') || null;
    return out;
  }, [`zepo-shell-${version}`, Object.keys(files)]);
}

test('update: the next load switches to a new build; a page never mixes two builds', { timeout: 2 * T }, async () => {
  const t0 = Date.now();
  const v1 = build('v1', (d) => mark(d, 'one'));
  const v2 = build('v2', (d) => mark(d, 'two'));
  const v3 = build('v3', (d) => mark(d, 'three'));
  const changed = Object.keys(v2.files).filter((p) => v2.files[p] !== v1.files[p]);
  assert.deepEqual(changed.sort(), ['index.html', 'www/engine/zepo.js', 'www/main.js', 'www/worker.js']);
  const srv = await server(v1.dir, '/apps/zepo/');
  const browser = await launch({ webgpu: true });
  const { context, page, logs } = browser;
  const workerLogs = [];
  const watch = (w) => w.on('console', (m) => workerLogs.push(`[sw ${m.type()}] ${m.text()}`.slice(0, 300)));
  context.serviceWorkers().forEach(watch);
  context.on('serviceworker', watch);
  let old = null;
  const oldLogs = [];
  const ONE = (id) => [id, id, id, id];
  try {
    await page.goto(`${srv.url}/${QUERY}`);
    await loaded(page);
    assert.equal(await controlled(page), v1.version);
    assert.deepEqual(await buildOf(page), ONE('one'));
    const first = await caches(page);
    assert.ok(first.names.includes(`zepo-shell-${v1.version}`) && first.models > 0, JSON.stringify(first));

    // Deploy v2. The next load still runs v1 (cache first) and installs v2 in the background.
    srv.use(v2.dir);
    const seen = srv.requests.length;
    await page.reload();
    await loaded(page);
    assert.deepEqual(await buildOf(page), ONE('one'), 'v1 runs whole while v2 installs');
    await until(page, () => document.body.dataset.update === 'ready', '"a new version is ready"');
    assert.ok(await page.isVisible('#update'), 'the page says a new version is ready');
    // v2 is complete in its own cache before it activates, and only its changed files were downloaded.
    assert.deepEqual(await shellCache(page, v2.version, v2.files), v2.files, 'the new version\'s cache holds every file of v2, verified');
    const fetched = srv.requests.slice(seen).filter((u) => !u.startsWith('/model/') && !u.includes('sw.js') && !u.includes('shell-manifest.js'));
    assert.deepEqual(fetched.filter((u) => u !== `/${QUERY}`).sort(), changed.map((p) => `/${p}`).sort(), `install downloads: ${fetched}`);
    assert.ok((await caches(page)).names.includes(`zepo-shell-${v1.version}`), 'v1 stays while it runs');

    // The next load: the page hands over to v2 and reloads into it, at once.
    let navigations = 0;
    page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations++; });
    const t1 = Date.now();
    await page.reload();
    const how = await until(page, () => (document.body.dataset.build === 'two' && 'switched') ||
      (document.body.dataset.update === 'outdated' && 'late'), 'v2 to run', 60_000);
    const switchSeconds = (Date.now() - t1) / 1000;
    assert.equal(how, 'switched', `the reload switched to v2 directly (not after the ${switchSeconds.toFixed(1)} s wait)`);
    await loaded(page);
    console.log(`update: the reload took over and reloaded into v2 in ${switchSeconds.toFixed(1)} s (${navigations} navigations)`);
    assert.deepEqual(await buildOf(page), ONE('two'), 'the page, its script, its engine Worker and the engine are all v2');
    assert.equal(await controlled(page), v2.version);
    assert.ok(await page.isHidden('#update'), 'no update notice once updated');
    assert.equal(new URL(page.url()).pathname, '/apps/zepo/', 'the app under a sub-path');
    await until(page, async () => !(await globalThis.caches.keys()).some((n) => n.startsWith('zepo-shell-') && !n.endsWith(document.getElementById('app-version').textContent.replace('app ', ''))),
      'the old shell cache to go', 30_000);
    const now = await caches(page);
    assert.deepEqual(now.names.filter((n) => n.startsWith('zepo-shell-')), [`zepo-shell-${v2.version}`], 'the old shell cache is gone');
    assert.equal(now.models, first.models, 'the model cache is kept');

    // No mixing. Deploy v3 while a second window runs v2: the first window forces v3 in
    // ("Reload"); v3 activates and takes control of the second window, which keeps running v2.
    srv.use(v3.dir);
    await page.reload();
    await loaded(page);
    await until(page, () => document.body.dataset.update === 'ready', 'v3 to be ready');
    old = await context.newPage();
    old.on('console', (m) => oldLogs.push(`[${m.type()}] ${m.text()}`.slice(0, 500)));
    old.on('pageerror', (e) => oldLogs.push(`[pageerror] ${e}`));
    await old.goto(`${srv.url}/${QUERY}`);
    await loaded(old);
    assert.deepEqual(await buildOf(old), ONE('two'), 'a second window does not take the update over: v2');
    const t2 = Date.now();
    await page.click('#update-reload');
    await until(page, () => document.body.dataset.build === 'three', 'v3 to run after "Reload"', 60_000);
    await loaded(page);
    console.log(`update: "Reload" with a second window open switched to v3 in ${((Date.now() - t2) / 1000).toFixed(1)} s`);
    assert.deepEqual(await buildOf(page), ONE('three'));
    await until(old, () => document.body.dataset.update === 'outdated', 'the v2 window to say a new version took over', 30_000);
    const { scriptURL, controlled: taken } = await old.evaluate(async () => ({
      scriptURL: navigator.serviceWorker.controller?.scriptURL,
      controlled: (await navigator.serviceWorker.getRegistration())?.active === navigator.serviceWorker.controller,
    }));
    assert.ok(scriptURL && taken, 'the v2 window is controlled by the active worker, v3');
    assert.ok((await caches(old)).names.includes(`zepo-shell-${v2.version}`), 'v2\'s cache stays while a window runs it');
    // Everything the v2 window and its engine Worker get now is v2's: its running Worker, files
    // the page fetches, and a new engine (Worker, engine module, wasm) started after the take-over.
    assert.deepEqual(await buildOf(old), ONE('two'), 'the running engine Worker fetches v2\'s engine');
    const pageFiles = await old.evaluate(async () => Promise.all(['index.html', 'www/main.js'].map(async (p) => (await fetch(p)).text())));
    assert.match(pageFiles[0], /data-build="two"/);
    assert.match(pageFiles[1], /window\.zepo\.build = 'two'/);
    const fresh = await old.evaluate(async () => {
      const { ZePo } = await import(new URL('www/zepo.js', location.href).href);
      const engine = await ZePo.load({ model: window.zepo.model });
      const marks = await new Promise((resolve) => {
        engine.worker.addEventListener('message', ({ data }) => data?.type === 'zepo-build' && resolve([data.worker, data.engine]));
        engine.worker.postMessage({ type: 'zepo-build?' });
      });
      engine.dispose();
      return marks;
    });
    assert.deepEqual(fresh, ['two', 'two'], 'a new engine started by the v2 window after v3 took over is v2\'s');
    assert.deepEqual(errorsIn(oldLogs), [], 'no errors in the v2 window');
    await old.close();
    old = null;

    // The v2 window is gone: the next load of the app deletes v2's cache.
    await page.reload();
    await loaded(page);
    assert.deepEqual(await buildOf(page), ONE('three'));
    assert.equal(await controlled(page), v3.version);
    await until(page, async () => (await globalThis.caches.keys()).filter((n) => n.startsWith('zepo-shell-')).length === 1, 'v2\'s cache to go', 30_000);
    const last = await caches(page);
    assert.deepEqual(last.names.filter((n) => n.startsWith('zepo-shell-')), [`zepo-shell-${v3.version}`]);
    assert.equal(last.models, first.models, 'the model cache is kept');
    assert.deepEqual(errorsIn(logs), [], 'no errors in the console');
    console.log(`update test: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  } finally {
    if (browser.logs.length) console.log(browser.logs.slice(-30).join('\n'));
    if (oldLogs.length) console.log(oldLogs.slice(-20).join('\n'));
    if (workerLogs.length) console.log(workerLogs.slice(-30).join('\n'));
    await old?.close();
    await browser.close();
    await srv.close();
  }
});
