// The service worker that makes the page an offline app. Its scope is this file's folder (the
// page's), so the app works when hosted under a sub-path.
//
// - Install: the app shell of this build (www/shell-manifest.js, made by scripts/build-shell.mjs:
//   every file with its sha256) goes into its own cache, zepo-shell-<version>, in full: a file
//   whose bytes do not match the manifest (the server is mid-deploy, or the manifest is stale)
//   fails the install, so a version is never a mix of two builds. Unchanged files are copied
//   from the previous version's cache instead of downloaded again.
// - Versions are pinned per client: a page runs the version its navigation was served from, and
//   so does every Worker it starts (the Worker's script request names the Worker's client id).
//   Every shell file a client asks for comes from its version's cache, whichever version of this
//   worker is active by then, so a page never runs files of two builds. The pins (client id →
//   version) live in the Cache API (zepo-clients-v1), as this worker may be stopped any time.
// - Activate (after the previous version's pages are gone, or when a page asks, see www/pwa.js):
//   claims the open pages (they keep their versions) and retires the other shell caches; a
//   retired cache is deleted once no open page or Worker uses it. Never the model cache.
// - Fetch: a navigation to the app gets this version's page; other requests the client's
//   version's shell file, else model files from the model cache of www/weights.js when stored
//   there in full, else the network.
// - Share target (manifest.webmanifest's share_target): a multipart POST to ./share-target with
//   an image is kept in zepo-shared-v1 and answered with a redirect to the app (./?shared=<id>),
//   which takes it from there (www/share-in.js); it needs no network. Anything else POSTed there
//   (another encoding, no file, not an image, too large, a damaged body) stores nothing and
//   redirects to ./?share-error=<what was wrong>, which the page shows.
// - Content-Security-Policy: the page and the scripts it serves (the engine's Worker among them:
//   a dedicated Worker's policy comes from its script's response, never from the page's <meta>)
//   carry the policy of their version's page as a header, the page's
//   <meta http-equiv="Content-Security-Policy"> plus `frame-ancestors 'none'` (which a <meta>
//   cannot set). The policies are checked before a request reaches this worker.
importScripts('www/shell-manifest.js');

const SHELL = self.ZEPO_SHELL;
const PREFIX = 'zepo-shell-';
const CACHE = PREFIX + SHELL.version;
// www/weights.js's CACHE_NAME and its marker of a complete file; read here, never written.
const MODEL_CACHE = 'zepo-models-v1';
const BASE = new URL('./', self.location).href;
const INDEX = new URL('index.html', BASE).href;
const SHELL_URLS = new Set(Object.keys(SHELL.files).map((p) => new URL(p, BASE).href));
// Client id → version, shared by every version of this worker (not a zepo-shell- cache).
const PINS = 'zepo-clients-v1';
const PIN_URL = new URL('__zepo/client/', BASE).href;
// Markers in a shell cache: this version was active once; a newer one activated since.
const ACTIVATED = new URL('__zepo/activated', BASE).href;
const RETIRED = new URL('__zepo/retired', BASE).href;
// An empty Worker script (see www/pwa.js's nudge()).
const NUDGE = new URL('__zepo/nudge', BASE).href;
// The version of a page that came from the network (this version's cache lost its page).
const NETWORK = 'network';
// A pin whose client was never listed keeps its version this long (a page or Worker between
// its request and its creation); once listed, it goes with its client.
const PIN_GRACE_MS = 30_000;
// The share target, where shared images wait for the page, and the largest one taken.
const SHARE_TARGET = new URL('share-target', BASE).href;
const SHARED = 'zepo-shared-v1';
const MAX_SHARE_BYTES = 64 * 1024 * 1024;
// The nudge Worker needs nothing at all.
const NUDGE_POLICY = "default-src 'none'";

/** The policy of a shell cache's page (its <meta>) with frame-ancestors, or null: cache name → promise. */
const policies = new Map();
function policyOf(cacheName) {
  if (!policies.has(cacheName)) {
    const p = (async () => {
      const page = await caches.match(INDEX, { cacheName });
      const html = page ? await page.text() : '';
      const meta = /<meta\s[^>]*http-equiv\s*=\s*["']?Content-Security-Policy["']?[^>]*>/i.exec(html)?.[0];
      const content = meta && /\scontent\s*=\s*"([^"]*)"/i.exec(meta)?.[1];
      if (!content) return null;
      const policy = content.replace(/&quot;/g, '"').replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&').trim();
      return `${policy.replace(/;\s*$/, '')}; frame-ancestors 'none'`;
    })();
    policies.set(cacheName, p);
    // A version whose cache has no page (yet, or no more) is asked again next time.
    p.then((v) => { if (!v) policies.delete(cacheName); }, () => policies.delete(cacheName));
  }
  return policies.get(cacheName);
}

/** A shell file's response with its version's policy as a header, for a page or a script. */
async function withPolicy(response, cacheName) {
  if (!/^(text\/html|[a-z]+\/(x-)?(java|ecma)script)\b/i.test(response.headers.get('content-type') || '')) return response;
  const policy = await policyOf(cacheName).catch(() => null);
  if (!policy) return response;
  const headers = new Headers(response.headers);
  headers.set('content-security-policy', policy);
  return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
}

const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');

/** Tells this origin's pages something (they show install failures). */
async function tell(message) {
  for (const client of await self.clients.matchAll({ includeUncontrolled: true, type: 'window' })) {
    client.postMessage(message);
  }
}

async function install() {
  const cache = await caches.open(CACHE);
  // The same build again (a rollback) may find its old cache, retired: it is current again.
  await cache.delete(RETIRED);
  await cache.delete(ACTIVATED);
  const previous = (await caches.keys()).filter((n) => n.startsWith(PREFIX) && n !== CACHE);
  await Promise.all(Object.entries(SHELL.files).map(async ([path, hash]) => {
    const url = new URL(path, BASE).href;
    if ((await cache.match(url))?.headers.get('x-zepo-sha256') === hash) return;
    for (const name of previous) {
      const old = await caches.match(url, { cacheName: name });
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
  // An activation that ran meanwhile must not have taken this cache away.
  if (!(await caches.has(CACHE))) throw new Error('the new version\'s cache was deleted while it installed');
}

self.addEventListener('install', (event) => {
  event.waitUntil(install().catch(async (e) => {
    await caches.delete(CACHE);
    await tell({ type: 'zepo-install-failed', version: SHELL.version, message: e.message });
    throw e;
  }));
});

/** A client's pinned version, or null. */
const pins = new Map();
async function pinned(id) {
  if (!id) return null;
  if (!pins.has(id)) {
    const hit = await caches.match(PIN_URL + id, { cacheName: PINS });
    if (!hit) return null;
    pins.set(id, await hit.text());
  }
  return pins.get(id);
}

/**
 * Pins client `id` (a page or a Worker) to `version`; stored before its files are served.
 * `seen`: the client exists (it made a request), so its pin goes as soon as it is gone.
 */
const seenIds = new Set();
async function pin(id, version, seen = false) {
  if (!id) return;
  pins.set(id, version);
  if (seen) seenIds.add(id);
  const headers = { 'x-zepo-pinned': String(Date.now()), ...(seen ? { 'x-zepo-seen': '1' } : {}) };
  await (await caches.open(PINS)).put(PIN_URL + id, new Response(version, { headers }));
}

/**
 * The version of a client that was never pinned: a page shown before this worker controlled it
 * (the first visit, claimed), or a Worker whose script request did not name it. A Worker takes
 * the version of the app's pages when they agree; otherwise this version. Pinned from now on.
 */
async function adopt(id) {
  let version = SHELL.version;
  const client = id && await self.clients.get(id);
  if (client && client.type === 'worker') {
    const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
    const seen = new Set(await Promise.all(windows.map((w) => pinned(w.id))));
    seen.delete(null);
    if (seen.size === 1) [version] = seen;
  }
  await pin(id, version, true);
  return version;
}

/**
 * Forgets the pins of clients that are gone, and deletes the retired shell caches that no
 * client uses any more.
 */
async function prune() {
  const live = new Set((await self.clients.matchAll({ includeUncontrolled: true, type: 'all' })).map((c) => c.id));
  const store = await caches.open(PINS);
  const used = new Set([SHELL.version]);
  for (const request of await store.keys()) {
    const id = request.url.slice(PIN_URL.length);
    const hit = await store.match(request);
    if (!hit) continue;
    const version = await hit.text();
    if (live.has(id)) {
      used.add(version);
      if (!hit.headers.has('x-zepo-seen')) await pin(id, version, true);
    } else if (!hit.headers.has('x-zepo-seen') && Date.now() - Number(hit.headers.get('x-zepo-pinned')) < PIN_GRACE_MS) {
      used.add(version);
    } else {
      pins.delete(id);
      await store.delete(request);
    }
  }
  for (const name of await caches.keys()) {
    if (!name.startsWith(PREFIX) || used.has(name.slice(PREFIX.length))) continue;
    if (await caches.match(RETIRED, { cacheName: name })) await caches.delete(name);
  }
}

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    await (await caches.open(CACHE)).put(ACTIVATED, new Response(''));
    // The versions before this one retire (a cache that never activated too, unless a newer
    // version may be installing into it right now).
    const quiet = !self.registration.installing && !self.registration.waiting;
    for (const name of await caches.keys()) {
      if (!name.startsWith(PREFIX) || name === CACHE) continue;
      if (quiet || await caches.match(ACTIVATED, { cacheName: name })) {
        if (await caches.has(name)) await (await caches.open(name)).put(RETIRED, new Response(''));
      }
    }
    // The open pages (and their Workers) are served from here from now on, each from the
    // version it runs: their caches stay until they are gone.
    await self.clients.claim();
    await prune();
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
    // The asking page's version (a page keeps its own when a newer worker takes over).
    // Asked by every page once it runs: the time to let go of versions no page runs any more.
    event.waitUntil((async () => {
      reply({ version: (await pinned(event.source?.id)) || SHELL.version, worker: SHELL.version });
      await prune();
    })());
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

/** The page, from this version; the new page is pinned to it. */
async function navigate(event) {
  const hit = await caches.match(INDEX, { cacheName: CACHE });
  await pin(event.resultingClientId, hit ? SHELL.version : NETWORK);
  if (!hit) return fetch(event.request);
  event.waitUntil(prune());
  return withPolicy(hit, CACHE);
}

/**
 * Any other request: the shell file of the client's version when that version has it (a
 * Worker's script pins the Worker to its page's version), else a model file or the network.
 */
async function subresource(event) {
  const { request } = event;
  let version = await pinned(event.clientId);
  if (!version) version = await adopt(event.clientId);
  else if (!seenIds.has(event.clientId)) await pin(event.clientId, version, true);
  if (version === NETWORK) return fromModelCache(request);
  const name = PREFIX + version;
  const hit = await caches.match(request.url, { cacheName: name });
  if (hit) {
    if (request.destination === 'worker') await pin(event.resultingClientId, version);
    return withPolicy(hit, name);
  }
  // A shell file whose version's cache is gone (storage evicted): never another build's file.
  if (SHELL_URLS.has(request.url) && !(await caches.has(name))) {
    return new Response(`this page's version of the app (${version}) is no longer stored: reload the page`, { status: 503 });
  }
  return fromModelCache(request);
}

async function fromModelCache(request) {
  const hit = await caches.match(request.url, { cacheName: MODEL_CACHE, ignoreVary: true });
  // Only a file that www/weights.js committed complete (not a partial one, not a remembered 404).
  if (hit?.headers.get('x-zepo-complete') === '1') return hit;
  return fetch(request);
}

/** A share from the system's share sheet: see the header. */
async function receiveShare(request) {
  // The target's own query (a deploy may name its model there) goes on to the app.
  const back = (key, value) => {
    const to = new URL('./', BASE);
    to.search = new URL(request.url).search;
    to.searchParams.delete('shared');
    to.searchParams.delete('share-error');
    to.searchParams.set(key, value);
    return Response.redirect(to.href, 303);
  };
  const refuse = (reason) => back('share-error', reason);
  const type = request.headers.get('content-type') || '';
  if (!/^multipart\/form-data/i.test(type)) return refuse(`the share came as ${type.split(';')[0] || 'no content type'}, not as a multipart form with an image`);
  const length = Number(request.headers.get('content-length') || 0);
  if (length > MAX_SHARE_BYTES) return refuse(`the share is ${(length / 2 ** 20).toFixed(0)} MiB; at most ${MAX_SHARE_BYTES / 2 ** 20} MiB are taken`);
  let form;
  try {
    form = await request.formData();
  } catch (e) {
    return refuse(`the shared data could not be read (a damaged multipart body: ${e.message})`);
  }
  const files = [...form.values()].filter((v) => typeof v === 'object' && v && typeof v.arrayBuffer === 'function');
  if (!files.length) return refuse('nothing to stylize was shared: share a photo');
  const image = files.find((f) => f.type.startsWith('image/'));
  if (!image) return refuse(`"${files[0].name}" (${files[0].type || 'of unknown type'}) is not an image`);
  if (image.size > MAX_SHARE_BYTES) return refuse(`"${image.name}" is ${(image.size / 2 ** 20).toFixed(0)} MiB; at most ${MAX_SHARE_BYTES / 2 ** 20} MiB are taken`);
  const id = crypto.randomUUID();
  try {
    const cache = await caches.open(SHARED);
    await cache.put(new URL(`__zepo/shared/${id}`, BASE).href, new Response(image, {
      headers: { 'content-type': image.type, 'x-zepo-name': encodeURIComponent(image.name || 'shared-image') },
    }));
  } catch (e) {
    return refuse(`the shared image could not be kept (${e.name}: the site's storage may be full)`);
  }
  return back('shared', id);
}

function isAppPage(href) {
  const url = new URL(href);
  url.search = '';
  url.hash = '';
  return url.href === BASE || url.href === INDEX;
}

self.addEventListener('fetch', (event) => {
  const request = event.request;
  if (request.method === 'POST' && request.url.split(/[?#]/)[0] === SHARE_TARGET) {
    event.respondWith(receiveShare(request));
    return;
  }
  // Range requests (resumed downloads) and anything but GET go to the network untouched.
  if (request.method !== 'GET' || request.headers.has('range')) return;
  if (request.cache === 'only-if-cached' && request.mode !== 'same-origin') return;
  if (request.url === NUDGE) {
    event.respondWith(new Response('postMessage(0);', { headers: { 'content-type': 'text/javascript', 'content-security-policy': NUDGE_POLICY } }));
    return;
  }
  if (request.mode === 'navigate') {
    if (isAppPage(request.url)) event.respondWith(navigate(event));
    return;
  }
  if (request.url.startsWith(BASE)) event.respondWith(subresource(event));
  else event.respondWith(fromModelCache(request));
});
