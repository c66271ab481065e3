// The service worker that makes the page an offline app. Its scope is this file's folder (the
// page's), so the app works when hosted under a sub-path.
//
// - Install: the app shell of this build (www/shell-manifest.js, made by scripts/build-shell.mjs:
//   every file with its sha256) goes into its own cache, zepo-shell-<version>, in full: a file
//   whose bytes do not match the manifest (the server is mid-deploy, or the manifest is stale)
//   fails the install, so a version is never a mix of two builds. Unchanged files are copied
//   from the previous version's cache instead of downloaded again.
// - Activate (after the previous version's pages are gone, or when a page asks, see www/pwa.js):
//   deletes the other shell caches; never the model cache.
// - Fetch: the shell cache first (the page itself for any navigation to the app, whatever its
//   query), model files from the model cache of www/weights.js when stored there in full, the
//   network otherwise.
importScripts('www/shell-manifest.js');

const SHELL = self.ZEPO_SHELL;
const PREFIX = 'zepo-shell-';
const CACHE = PREFIX + SHELL.version;
// www/weights.js's CACHE_NAME and its marker of a complete file; read here, never written.
const MODEL_CACHE = 'zepo-models-v1';
const BASE = new URL('./', self.location).href;
const INDEX = new URL('index.html', BASE).href;
const SHELL_URLS = new Set(Object.keys(SHELL.files).map((p) => new URL(p, BASE).href));

const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');

/** Tells this origin's pages something (they show install failures). */
async function tell(message) {
  for (const client of await self.clients.matchAll({ includeUncontrolled: true, type: 'window' })) {
    client.postMessage(message);
  }
}

async function install() {
  const cache = await caches.open(CACHE);
  const previous = (await caches.keys()).filter((n) => n.startsWith(PREFIX) && n !== CACHE);
  await Promise.all(Object.entries(SHELL.files).map(async ([path, hash]) => {
    const url = new URL(path, BASE).href;
    if ((await cache.match(url))?.headers.get('x-zepo-sha256') === hash) return;
    for (const name of previous) {
      const old = await (await caches.open(name)).match(url);
      if (old?.headers.get('x-zepo-sha256') === hash) return cache.put(url, old);
    }
    const r = await fetch(url, { cache: 'no-store' });
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    const body = await r.arrayBuffer();
    const got = hex(await crypto.subtle.digest('SHA-256', body));
    if (got !== hash) {
      throw new Error(`${path}: the server sends other bytes than this build's (sha256 ${got.slice(0, 12)}…, ` +
        `www/shell-manifest.js says ${hash.slice(0, 12)}…): a deploy in progress, or a stale shell manifest ` +
        '(node scripts/build-shell.mjs)');
    }
    // A fresh response: no redirect flag (a navigation refuses those), no transfer encoding.
    const headers = { 'content-type': r.headers.get('content-type') || 'application/octet-stream', 'x-zepo-sha256': hash };
    await cache.put(url, new Response(body, { headers }));
  }));
}

self.addEventListener('install', (event) => {
  event.waitUntil(install().catch(async (e) => {
    await caches.delete(CACHE);
    await tell({ type: 'zepo-install-failed', version: SHELL.version, message: e.message });
    throw e;
  }));
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name.startsWith(PREFIX) && name !== CACHE) await caches.delete(name);
    }
    // The first visit's page (and its engine Worker) is served from here from now on.
    await self.clients.claim();
  })());
});

/** This app's windows, except `except` (a client id). */
async function otherWindows(except) {
  const all = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
  return all.filter((c) => c.id !== except && c.url.startsWith(BASE));
}

self.addEventListener('message', (event) => {
  const { type } = event.data || {};
  const reply = (m) => event.ports[0]?.postMessage(m);
  if (type === 'zepo-version') {
    reply({ version: SHELL.version, files: Object.keys(SHELL.files).length });
  } else if (type === 'zepo-activate') {
    // A waiting version takes over now: when the asking page is this app's only window, or
    // when the user asked for it (`force`; the other windows are told to reload).
    event.waitUntil((async () => {
      const others = await otherWindows(event.source?.id);
      const go = others.length === 0 || event.data.force === true;
      reply({ activating: go, others: others.length });
      // Not awaited before the reply: Chromium settles skipWaiting() only once activated.
      if (go) await self.skipWaiting();
    })());
  }
});

async function fromShell(url, request) {
  const hit = await caches.match(url, { cacheName: CACHE });
  return hit || fetch(request);
}

async function fromModelCache(request) {
  const hit = await caches.match(request.url, { cacheName: MODEL_CACHE, ignoreVary: true });
  // Only a file that www/weights.js committed complete (not a partial one, not a remembered 404).
  if (hit?.headers.get('x-zepo-complete') === '1') return hit;
  return fetch(request);
}

function isAppPage(href) {
  const url = new URL(href);
  url.search = '';
  url.hash = '';
  return url.href === BASE || url.href === INDEX;
}

self.addEventListener('fetch', (event) => {
  const request = event.request;
  // Range requests (resumed downloads) and anything but GET go to the network untouched.
  if (request.method !== 'GET' || request.headers.has('range')) return;
  if (request.mode === 'navigate') {
    if (isAppPage(request.url)) event.respondWith(fromShell(INDEX, request));
    return;
  }
  if (SHELL_URLS.has(request.url)) event.respondWith(fromShell(request.url, request));
  else if (request.cache !== 'only-if-cached' || request.mode === 'same-origin') event.respondWith(fromModelCache(request));
});
