// What the first load of a model will download, asked before downloading anything (the page
// says it, and waits for a click when it is large):
//
//   import { modelSize } from './model-size.js';
//   const { bytes, textEncoderBytes, stored, layout } = await modelSize('https://…/model');
//
// - fp16 bundle (`manifest.json` with "format": "zepo-fp16-bundle", weights/README.md): the sizes
//   come from the manifest. `bytes`: what a load and a run with a precomputed prompt need (the
//   scheduler config, the UNet's and the VAE's configs and shards, the prompt embeddings), for
//   the weights `weights` ('auto': the smallest the bundle has; `weights` says which that is);
//   `variants`: `[{ name, bytes, psnr }]`, each of the bundle's weights (fp16 and its compact
//   variants) with its load's bytes and the PSNR against fp16 the converter measured;
//   `textEncoderBytes`: the text encoder's config and shards and the tokenizer, fetched only for
//   another prompt (null when the bundle left them out).
// - diffusers layout (no manifest, or one with only `files`): `bytes` = the UNet's and the VAE's
//   weights, `textEncoderBytes` = the text encoder's. Each part's weights are looked for as the
//   engine does (src/weights/diffusers.rs): with `variant` ('fp16', ZePo.load's default) first
//   `<stem>.fp16.safetensors`, then its shards (`<stem>.fp16.safetensors.index.json`), then the
//   plain file and its shards; the first the server has counts. A file's size comes from the
//   manifest's `files` where it lists it, else a HEAD request (Content-Length), else a
//   `Range: bytes=0-0` GET (the total of its Content-Range). Such a model has no precomputed
//   prompts: its text encoder is fetched at the first run, whatever the prompt
//   (`textEncoderAlways`).
// - `stored`: whether the model is completely in this browser's storage (www/weights.js's
//   storedModels(): then the load downloads nothing). Sizes of a stored model are read from the
//   cache where possible, so this asks the network nothing for a stored bundle.
//
// The rules are the engine's own (src/web/size.rs, the wasm module loaded here without a GPU):
// whether manifest.json is a bundle's and what a load of it fetches, where a diffusers part's
// weights are looked for, and which shards an index names. This file only asks for sizes. The
// module is instantiated on the page for this (no GPU is touched; the browser keeps the compiled
// module in its code cache, and the Worker fetches the same file from the HTTP or service-worker
// cache).
//
// Nothing is stored or downloaded beyond manifest.json and the header-only requests. A size that
// cannot be told is null (`unknown` lists its files); a network failure fetching manifest.json is
// a DownloadError, a missing model (its weights answer 404) a NotFound.
import init, { bundleSizes, shardFiles, weightCandidates } from './engine/zepo.js';
import { CACHE_NAME, ModelFiles, storedModels } from './weights.js';

/** The diffusers layout's parts whose weights the first run downloads (the text encoder's at the first run too). */
export const DIFFUSERS_PARTS = ['unet', 'vae', 'text_encoder'];

let engineRules = null;
/** The engine's module (no GPU is touched): loaded once. */
function rules() {
  engineRules ??= init().catch((e) => {
    engineRules = null;
    throw named('EngineMissing', `the wasm engine (engine/zepo_bg.wasm) could not be loaded: ${e.message || e}`);
  });
  return engineRules;
}

function named(name, message) {
  return Object.assign(new Error(message), { name });
}

const sum = (list) => list.reduce((a, b) => a + b, 0);

/** A cached response of weights.js's model cache (complete files and remembered 404s), or null. */
async function cachedEntry(files, path) {
  try {
    return (await files.cache?.match(files.url(path))) || null;
  } catch {
    return null;
  }
}

/** manifest.json (from the model cache when stored there) as `{ text, json }`, or null when there is none. */
async function readManifest(files) {
  const hit = await cachedEntry(files, 'manifest.json');
  let text = null;
  if (hit?.headers.get('x-zepo-absent') === '1') return null;
  if (hit?.headers.get('x-zepo-complete') === '1') text = await hit.text();
  else {
    const r = await files.request('manifest.json');
    if (r.status === 404) return null;
    if (!r.ok) throw named('DownloadError', `${files.url('manifest.json')}: HTTP ${r.status} ${r.statusText}`);
    // weights.js's limits: at most MAX_TEXT_BYTES (an endless body is cut off), and its
    // redirect rule (files.request): a text file comes from the model's own origin.
    text = new TextDecoder().decode(await files.readText('manifest.json', r));
  }
  try {
    return { text, json: JSON.parse(text) };
  } catch (e) {
    throw named('IntegrityError', `${files.url('manifest.json')}: not valid JSON (${e.message})`);
  }
}

/** The total size of a file from a Content-Range header (`bytes 0-0/1234`), or null. */
function rangeTotal(header) {
  const m = /\/\s*(\d+)\s*$/.exec(header || '');
  return m ? Number(m[1]) : null;
}

/**
 * The size of one weight file of a diffusers layout: from the cache (stored complete), else a
 * HEAD request's Content-Length, else a one-byte Range GET's Content-Range total. Null if the
 * server tells neither; NotFound when it answers 404.
 */
async function remoteSize(files, path) {
  const hit = await files.cached(path).catch(() => null);
  const stored = Number(hit?.headers.get('x-zepo-size'));
  if (stored > 0) return stored;
  const url = files.url(path);
  try {
    const r = await files.request(path, { method: 'HEAD' });
    if (r.status === 404) throw named('NotFound', `${url}: HTTP 404 ${r.statusText}`);
    const n = r.ok ? Number(r.headers.get('content-length')) : NaN;
    if (n > 0) return n;
  } catch (e) {
    if (e.name === 'NotFound') throw e;
    // A host that refuses HEAD (or its CORS preflight): the Range GET may still answer.
  }
  try {
    const r = await files.request(path, { headers: { Range: 'bytes=0-0' } });
    // Never read the body: a server that ignores Range would send the whole file.
    const total = r.status === 206 ? rangeTotal(r.headers.get('content-range')) : null;
    const whole = r.status === 200 ? Number(r.headers.get('content-length')) : NaN;
    r.body?.cancel().catch(() => {});
    if (r.status === 404) throw named('NotFound', `${url}: HTTP 404 ${r.statusText}`);
    if (total > 0) return total;
    if (whole > 0) return whole;
  } catch (e) {
    if (e.name === 'NotFound') throw e;
  }
  return null;
}

/** A small text file from the model cache (complete) or the network; null when it is not there (404). */
async function optionalText(files, path) {
  const hit = await cachedEntry(files, path);
  if (hit?.headers.get('x-zepo-absent') === '1') return null;
  if (hit?.headers.get('x-zepo-complete') === '1') return hit.text();
  const r = await files.request(path);
  if (r.status === 404) return null;
  if (!r.ok) throw named('DownloadError', `${files.url(path)}: HTTP ${r.status} ${r.statusText}`);
  return new TextDecoder().decode(await files.readText(path, r));
}

/** The size of a stored file (weights.js's complete entries), or null. */
async function storedSize(files, path) {
  const n = Number((await files.cached(path).catch(() => null))?.headers.get('x-zepo-size'));
  return n > 0 ? n : null;
}

/**
 * A diffusers part's weight bytes: the first of its candidates the cache or the server has (a
 * sharded one: the sum of its shards). Null when a size cannot be told; NotFound when the server
 * has none of them.
 */
async function partSize(files, folder, variant, listed, offlineOk) {
  const list = weightCandidates(folder, variant);
  // What is stored answers first: a stored model needs no network (offline).
  for (const c of list) {
    if (!c.sharded) {
      const n = await storedSize(files, c.path);
      if (n) return n;
      continue;
    }
    const hit = await files.cached(c.path).catch(() => null);
    if (!hit) continue;
    const sizes = await Promise.all(shardFiles(await hit.text(), files.url(c.path)).map((s) => storedSize(files, `${folder}/${s}`)));
    if (sizes.every((n) => n)) return sum(sizes);
  }
  const sizeOf = async (path) => (listed[path]?.size > 0 ? listed[path].size : remoteSize(files, path));
  for (const c of list) {
    try {
      if (!c.sharded) {
        if (listed[c.path]?.size > 0) return listed[c.path].size;
        // A file the engine found missing before (weights.js remembers the 404).
        if ((await cachedEntry(files, c.path))?.headers.get('x-zepo-absent') === '1') continue;
        return await remoteSize(files, c.path);
      }
      const text = await optionalText(files, c.path);
      if (text === null) continue;
      const sizes = await Promise.all(shardFiles(text, files.url(c.path)).map((s) => sizeOf(`${folder}/${s}`)));
      return sizes.some((n) => n == null) ? null : sum(sizes);
    } catch (e) {
      if (e.name === 'NotFound' && !c.sharded) continue; // try the next candidate
      if (offlineOk) return null; // A stored model never needs the network (offline).
      throw e;
    }
  }
  if (offlineOk) return null;
  throw named('NotFound', `${files.url(folder)}: no weights found (looked for ${list.map((c) => c.path.slice(folder.length + 1)).join(', ')})`);
}

/**
 * What the first load of the model at `base` downloads:
 * `{ layout: 'fp16-bundle' | 'diffusers', bytes, textEncoderBytes, textEncoderAlways, stored,
 *    storedBytes, unknown }` (see the top of this file). `variant`: a diffusers layout's weight
 * variant to prefer ('fp16', as ZePo.load; null: the full files). `weights`: a bundle's weights
 * ('auto', as ZePo.load). `fetch`: a fetch function (tests).
 */
export async function modelSize(base, { variant = 'fp16', weights = 'auto', fetch: fetchFn, cacheName = CACHE_NAME } = {}) {
  const root = new URL(String(base), globalThis.location?.href).href.replace(/\/+$/, '');
  let cache = null;
  try {
    cache = globalThis.caches ? await caches.open(cacheName) : null;
  } catch { /* storage disabled: nothing is stored */ }
  const files = new ModelFiles(root, cache, { fetchFn });
  const [store, manifest] = await Promise.all([
    storedModels(cacheName).then((list) => list.find((m) => m.base === root), () => null),
    readManifest(files),
    rules(),
  ]);
  const stored = { stored: !!store?.complete, storedBytes: store?.bytes || 0 };
  const bundle = manifest === null ? null : bundleSizes(manifest.text, files.url('manifest.json'), weights);
  if (bundle) return { layout: 'fp16-bundle', ...bundle, unknown: [], ...stored };
  // A diffusers layout: its optional manifest's sizes (a checksum list), else the server's.
  const listed = manifest?.json.files || {};
  const parts = DIFFUSERS_PARTS;
  const [unet, vae, text] = await Promise.all(parts.map((p) => partSize(files, p, variant, listed, stored.stored)));
  const unknown = parts.filter((_, i) => [unet, vae, text][i] == null);
  return {
    layout: 'diffusers',
    weights: 'fp16',
    variants: [],
    bytes: unet != null && vae != null ? unet + vae : null,
    textEncoderBytes: text,
    textEncoderAlways: true,
    unknown,
    ...stored,
  };
}
