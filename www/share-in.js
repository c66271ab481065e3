// Images that reach the installed app from the system: shared to it (Web Share Target: a
// multipart POST that sw.js answers, offline too) or opened with it ("Open with": file_handlers
// and window.launchQueue). A shared image becomes the portrait, or the style when a portrait is
// already there (the page remembers its portrait for a while, as a share reloads the app).

// sw.js's cache of shared images waiting for the page, and where each lies.
const SHARED_CACHE = 'zepo-shared-v1';
const sharedUrl = (id) => new URL(`__zepo/shared/${id}`, document.baseURI).href;
// The page's current portrait, kept so that a share arriving meanwhile becomes the style.
const INPUTS_CACHE = 'zepo-inputs-v1';
const PORTRAIT_URL = () => new URL('__zepo/input/portrait', document.baseURI).href;
/** A portrait older than this is not "already there" for a share. */
export const PORTRAIT_KEPT_MS = 60 * 60_000;

/** The shared image sw.js stored under `id`, taken out of the cache: { blob, name } or null. */
export async function takeShared(id) {
  if (!/^[0-9a-f-]{36}$/.test(id)) return null;
  const cache = await caches.open(SHARED_CACHE);
  const hit = await cache.match(sharedUrl(id));
  if (!hit) return null;
  const blob = await hit.blob();
  const name = decodeURIComponent(hit.headers.get('x-zepo-name') || 'shared-image');
  await cache.delete(sharedUrl(id));
  return { blob, name };
}

/** Remembers the page's portrait (`blob`, `name`), for a share that reloads the app. */
export async function rememberPortrait(blob, name) {
  try {
    const cache = await caches.open(INPUTS_CACHE);
    await cache.put(PORTRAIT_URL(), new Response(blob, {
      headers: { 'content-type': blob.type || 'application/octet-stream', 'x-zepo-name': encodeURIComponent(name || ''), 'x-zepo-time': String(Date.now()) },
    }));
  } catch (e) {
    // Remembering is a convenience: a full storage does not stop the page.
    console.warn(`remembering the portrait: ${e.name}: ${e.message}`);
  }
}

/** The portrait remembered within PORTRAIT_KEPT_MS: { blob, name } or null. */
export async function recentPortrait(now = Date.now()) {
  try {
    const cache = await caches.open(INPUTS_CACHE);
    const hit = await cache.match(PORTRAIT_URL());
    if (!hit) return null;
    if (now - Number(hit.headers.get('x-zepo-time') || 0) > PORTRAIT_KEPT_MS) {
      await cache.delete(PORTRAIT_URL());
      return null;
    }
    return { blob: await hit.blob(), name: decodeURIComponent(hit.headers.get('x-zepo-name') || '') || null };
  } catch {
    return null;
  }
}

/**
 * Files opened with the app ("Open with", file_handlers): `onFiles(files)` with the File objects
 * of each launch. Nothing where the browser has no launchQueue.
 */
export function onLaunchFiles(onFiles) {
  if (!('launchQueue' in window)) return false;
  window.launchQueue.setConsumer(async (params) => {
    const files = [];
    for (const handle of params?.files || []) {
      try {
        files.push(await handle.getFile());
      } catch (e) {
        console.warn(`an opened file could not be read: ${e.name}: ${e.message}`);
      }
    }
    if (files.length) onFiles(files);
  });
  return true;
}
