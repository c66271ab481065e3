// The page lets nothing out: its Content-Security-Policy (scripts/build-site.mjs writes it into
// the page as a <meta>; sw.js repeats it as a header for the page and the engine's Worker;
// scripts/serve.mjs sends it in development).
// - build:site: the policy names the model's origin (the hub's hosts for a hub model) and
//   --allow-host's, nothing else; a bad --allow-host is refused;
// - the dev server sends the page's policy as a header with its pages and scripts;
// - the built site on a plain static host (no headers), the model on another origin: the page
//   loads the model (the policy allows what it needs); then, from the page and from the engine's
//   Worker (served by the service worker with the policy as a header), every way out to a third
//   origin (fetch, an <img>, a form post, a WebSocket, a beacon, …) is blocked by the policy, and
//   that third server receives nothing (not a byte); ?model= on a host the site was not built
//   for says so by name (ModelHostBlocked).
// No stylization: loading the tiny bundle and the probes prove it.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { ROOT, assertEngineBuilt, httpHost, launch, screenshot, serve, staticSite, until } from './helpers.mjs';
import { createServer } from '../../scripts/serve.mjs';
import { HUB_SOURCES, pagePolicy } from '../../scripts/build-site.mjs';

const T = 5 * 60_000;
const BUILD_SITE = path.join(ROOT, 'scripts/build-site.mjs');
const PREFIX = '/apps/zepo/';

let tmp;
before(() => {
  assertEngineBuilt();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'zepo-csp-'));
});
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Runs `node scripts/build-site.mjs ARGS` (never building the engine); its stdout. */
const buildSite = (...args) => execFileSync(process.execPath, [BUILD_SITE, '--no-build', ...args], { encoding: 'utf8', stdio: 'pipe' });
/** The policy in a built page's <meta>. */
const policyOf = (dir) => /<meta http-equiv="Content-Security-Policy" content="([^"]*)">/.exec(fs.readFileSync(path.join(dir, 'index.html'), 'utf8'))?.[1];
const connectOf = (policy) => /(?:^|;\s*)connect-src ([^;]*)/.exec(policy)?.[1].split(' ');

test('build:site: the policy allows the model\'s origin (the hub\'s hosts for the hub) and --allow-host, nothing else', () => {
  const out = path.join(tmp, 'policies');
  buildSite('--out', out);
  const hub = policyOf(out);
  assert.equal(hub, pagePolicy(HUB_SOURCES));
  assert.deepEqual(connectOf(hub), ["'self'", 'blob:', 'https://huggingface.co', 'https://*.huggingface.co', 'https://*.hf.co']);
  for (const d of ["default-src 'none'", "script-src 'self' 'wasm-unsafe-eval'", "worker-src 'self'", "img-src 'self' blob: data:",
    "object-src 'none'", "base-uri 'self'", "form-action 'none'"]) assert.ok(hub.split('; ').includes(d), `${d} in ${hub}`);
  const html = fs.readFileSync(path.join(out, 'index.html'), 'utf8');
  assert.ok(html.indexOf('http-equiv="Content-Security-Policy"') < html.indexOf('<link'), 'the policy comes before what it governs');
  assert.equal(html.match(/http-equiv="Content-Security-Policy"/g).length, 1);

  const log = buildSite('--out', out, '--model', 'https://models.example.org/zepo/lcm', '--allow-host', 'https://*.cdn.example.net',
    '--allow-host', 'http://localhost:8000/some/path');
  assert.deepEqual(connectOf(policyOf(out)), ["'self'", 'blob:', 'https://models.example.org', 'https://*.cdn.example.net', 'http://localhost:8000']);
  assert.match(log, /models load from: this site's origin, https:\/\/models\.example\.org, https:\/\/\*\.cdn\.example\.net, http:\/\/localhost:8000/);
  buildSite('--out', out, '--model', 'models/lcm-bundle-at-this-site/'); // not a repository id: one slash too many
  assert.deepEqual(connectOf(policyOf(out)), ["'self'", 'blob:']);
  for (const bad of ['*', 'https:', 'https://*', '*.com', 'ftp://example.org']) {
    assert.throws(() => buildSite('--out', out, '--allow-host', bad), (e) => /--allow-host .*expected an origin/.test(e.stderr), bad);
  }
});

test('the dev server sends the page\'s policy as a header with its pages and scripts', async () => {
  const srv = await serve();
  try {
    const meta = /<meta http-equiv="Content-Security-Policy" content="([^"]*)">/.exec(fs.readFileSync(path.join(ROOT, 'index.html'), 'utf8'))[1];
    assert.match(meta, /connect-src 'self' blob: http:\/\/localhost:\* http:\/\/127\.0\.0\.1:\* https:\/\/huggingface\.co https:\/\/\*\.huggingface\.co https:\/\/\*\.hf\.co;/,
      'the dev page: its origin, local servers and the Hugging Face hub');
    for (const p of ['/', '/index.html', '/www/worker.js', '/www/main.js', '/sw.js']) {
      const r = await fetch(`${srv.url}${p}`);
      assert.equal(r.headers.get('content-security-policy'), `${meta}; frame-ancestors 'none'`, p);
    }
    for (const p of ['/package.json', '/model/unet/config.json', '/www/style.css']) {
      assert.equal((await fetch(`${srv.url}${p}`)).headers.get('content-security-policy'), null, p);
    }
  } finally {
    await srv.close();
  }
});

/**
 * Tries every way out to `sink` from the page or a Worker (`where`); resolves to
 * { results: { probe: outcome }, violations: [{ directive, blocked }] } once every probe settled.
 */
async function probe(target, sink, where) {
  return target.evaluate(async ([S, where]) => {
    const violations = [];
    const scope = where === 'page' ? document : self;
    scope.addEventListener('securitypolicyviolation', (e) => violations.push({ directive: e.effectiveDirective, blocked: e.blockedURI }));
    const settle = (p, ms = 3000) => Promise.race([p, new Promise((r) => setTimeout(() => r('no answer'), ms))]);
    const tries = {
      fetch: () => fetch(`${S}/fetch?${where}`, { method: 'POST', body: 'pixels', mode: 'no-cors' }).then(() => 'sent', (e) => `${e.name}`),
      websocket: () => new Promise((resolve) => {
        try {
          const ws = new WebSocket(`${S.replace('http', 'ws')}/websocket?${where}`);
          ws.onopen = () => resolve('open');
          ws.onerror = () => resolve('error');
        } catch (e) {
          resolve(e.name);
        }
      }),
      eventsource: () => new Promise((resolve) => {
        const es = new EventSource(`${S}/eventsource?${where}`);
        es.onopen = () => { es.close(); resolve('open'); };
        es.onerror = () => { es.close(); resolve('error'); };
      }),
      import: () => import(`${S}/import.js?${where}`).then(() => 'loaded', (e) => e.name),
    };
    if (where === 'page') {
      const element = (tag, attrs, wait = 'error') => new Promise((resolve) => {
        const el = document.createElement(tag);
        el.addEventListener('load', () => resolve('loaded'));
        el.addEventListener(wait, () => resolve('error'));
        Object.assign(el, attrs);
        document.body.append(el);
      });
      Object.assign(tries, {
        beacon: async () => (navigator.sendBeacon(`${S}/beacon?page`, 'pixels') ? 'queued' : 'refused'),
        img: () => element('img', { src: `${S}/img?page` }),
        script: () => element('script', { src: `${S}/script.js?page` }),
        stylesheet: () => element('link', { rel: 'stylesheet', href: `${S}/stylesheet.css?page` }),
        iframe: () => element('iframe', { src: `${S}/iframe?page` }),
        object: () => element('object', { data: `${S}/object?page` }),
        video: () => element('video', { src: `${S}/video?page` }),
        font: () => new FontFace('probe', `url(${S}/font?page)`).load().then(() => 'loaded', (e) => e.name),
        'css-image': async () => {
          document.body.style.backgroundImage = `url(${S}/css-image?page)`;
          getComputedStyle(document.body).backgroundImage;
          await new Promise((r) => setTimeout(r, 500));
          document.body.style.backgroundImage = '';
          return 'set';
        },
        form: async () => {
          const form = Object.assign(document.createElement('form'), { method: 'post', action: `${S}/form?page`, target: '_blank' });
          form.append(Object.assign(document.createElement('input'), { name: 'image', value: 'pixels' }));
          document.body.append(form);
          form.submit();
          await new Promise((r) => setTimeout(r, 500));
          form.remove();
          return 'submitted';
        },
      });
    }
    const results = {};
    await Promise.all(Object.entries(tries).map(async ([name, f]) => {
      try {
        results[name] = await settle(f());
      } catch (e) {
        results[name] = `threw ${e.name}`;
      }
    }));
    await new Promise((r) => setTimeout(r, 500));
    return { results, violations };
  }, [sink.origin, where]);
}

// The directive that blocks each probe (the browser reports what it checked).
const DIRECTIVES = {
  fetch: 'connect-src', websocket: 'connect-src', eventsource: 'connect-src', beacon: 'connect-src', import: 'script-src-elem',
  script: 'script-src-elem', stylesheet: 'style-src-elem', img: 'img-src', 'css-image': 'img-src', iframe: 'frame-src',
  object: 'object-src', video: 'media-src', font: 'font-src', form: 'form-action',
};

/**
 * Asserts that every probe was blocked by the policy: a violation of its directive naming its
 * URL (only the origin, for a frame's or a plugin's, as Chromium reports those).
 */
function assertBlocked({ results, violations }, sink, where) {
  console.log(`${where}: ${Object.entries(results).map(([k, v]) => `${k} → ${v}`).join(', ')}`);
  const host = sink.origin.replace(/^http:\/\//, '');
  for (const name of Object.keys(results)) {
    const v = violations.find((x) => x.directive === DIRECTIVES[name] &&
      (new RegExp(`^(http|ws)://${host}/${name}\\b`).test(x.blocked) || x.blocked === sink.origin));
    assert.ok(v, `${where}: ${name} (${results[name]}) was not reported blocked by ${DIRECTIVES[name]}: ${JSON.stringify(violations)}`);
  }
  // (A blocked frame still fires its load event, for the error page.)
  const through = Object.entries(results).filter(([k, r]) => ['sent', 'open', 'loaded'].includes(r) && k !== 'iframe');
  assert.deepEqual(through, [], `${where}: nothing gets through`);
}

test('the built site: the model loads from its host; nothing else leaves the page or the engine\'s Worker; ?model= elsewhere is refused', { timeout: T }, async () => {
  const t0 = Date.now();
  const out = path.join(tmp, 'dist');
  // The model's host (the repository with CORS and Range), the site (a plain static host), and
  // a third server that must never hear from the page (it would answer anything).
  const cdnServer = createServer({ root: ROOT });
  const cdn = await httpHost((req, res) => cdnServer.emit('request', req, res));
  const sink = await httpHost((req, res) => res.writeHead(200, { 'Access-Control-Allow-Origin': '*', 'Content-Type': 'text/plain' }).end('ok'));
  const MODEL = `${cdn.origin}/weights/tiny-lcm-bundle`;
  buildSite('--out', out, '--model', MODEL);
  const policy = policyOf(out);
  assert.equal(policy, pagePolicy([cdn.origin]), 'the model\'s origin and nothing else');
  const site = await staticSite(out, PREFIX);
  const APP = `${site.origin}${PREFIX}`;
  const browser = await launch({ webgpu: true });
  const { page, logs } = browser;
  const state = () => until(page, () => ['loaded', 'error', 'no-webgpu'].includes(document.body.dataset.state) && document.body.dataset.state, 'the page');
  try {
    // First visit: the page's <meta> holds (a static host sends no header); the model loads.
    await page.goto(`${APP}?warmup=0`);
    assert.equal(await state(), 'loaded', await page.textContent('#error'));
    assert.ok(cdn.requests.some((u) => u.startsWith('/weights/tiny-lcm-bundle/unet/')), `the model came from its host: ${cdn.requests}`);
    assertBlocked(await probe(page, sink, 'page'), sink, 'page (first visit)');
    console.log(`first visit: model loaded and page probed in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

    // From the service worker: the page and the engine's Worker carry the policy as a header.
    await until(page, () => navigator.serviceWorker.controller && document.body.dataset.offline === 'ready', 'the service worker', 120_000);
    const response = await page.reload();
    assert.ok(response.fromServiceWorker(), 'the page came from the service worker');
    assert.equal(response.headers()['content-security-policy'], `${policy}; frame-ancestors 'none'`);
    assert.equal(await state(), 'loaded', await page.textContent('#error'));
    const worker = page.workers().find((w) => w.url() === `${APP}www/worker.js`);
    assert.ok(worker, `the engine's Worker: ${page.workers().map((w) => w.url())}`);
    const workerScript = await page.evaluate(async () => (await fetch('www/worker.js')).headers.get('content-security-policy'));
    assert.equal(workerScript, `${policy}; frame-ancestors 'none'`, 'the Worker\'s script carries the policy');
    assertBlocked(await probe(page, sink, 'page'), sink, 'page (from the service worker)');
    assertBlocked(await probe(worker, sink, 'worker'), sink, 'engine Worker');
    // The Worker may still reach the model's host (what it loads from), and nothing else.
    assert.equal(await worker.evaluate(async (m) => (await fetch(`${m}/manifest.json`)).status, MODEL), 200);

    // ?model= on another host: refused by name before any request.
    for (const other of [`${sink.origin}/weights/tiny-lcm-bundle`, 'SimianLuo/LCM_Dreamshaper_v7']) {
      await page.goto(`${APP}?warmup=0&model=${encodeURIComponent(other)}`);
      assert.equal(await state(), 'error');
      const shown = await page.evaluate(() => ({ error: document.body.dataset.error, status: document.getElementById('status').textContent,
        detail: document.getElementById('error').textContent }));
      assert.equal(shown.error, 'ModelHostBlocked', JSON.stringify(shown));
      assert.equal(shown.status, `This site only loads models from this site (${site.origin}), ${cdn.origin}.`);
      assert.match(shown.detail, /build the site with --model <url>/);
      assert.ok(shown.detail.includes(other.includes('://') ? sink.origin : 'https://huggingface.co'), shown.detail);
    }
    await screenshot(page, 'csp-model-blocked.png');

    await new Promise((r) => setTimeout(r, 500));
    assert.deepEqual(sink.requests, [], 'the third server received no request');
    assert.equal(sink.bytesReceived(), 0, 'not a byte');
    // (Chromium may open a connection for a frame before its policy check blocks it: nothing is sent on it.)
    console.log(`the third server: ${sink.requests.length} requests, ${sink.bytesReceived()} bytes received, ${sink.connections} connections opened`);
    assert.deepEqual(logs.filter((l) => l.startsWith('[pageerror]')), [], 'no uncaught errors');
    console.log(`csp test: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  } finally {
    if (logs.length) console.log(logs.slice(-20).join('\n'));
    await browser.close();
    await site.close();
    await cdn.close();
    await sink.close();
  }
});
