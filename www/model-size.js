// What the first load of a model will download, asked before downloading anything (the page
// says it, and waits for a click when it is large):
//
//   import { modelSize } from './model-size.js';
//   const { bytes, textEncoderBytes, stored, layout } = await modelSize('https://…/model');
//
// - fp16 bundle (`manifest.json` with "format": "zepo-fp16-bundle", weights/README.md): the sizes
//   come from the manifest. `bytes`: what a load and a run with a precomputed prompt need (the
//   scheduler config, the UNet's and the VAE's configs and shards, the prompt embeddings);
//   `textEncoderBytes`: the text encoder's config and shards and the tokenizer, fetched only for
//   another prompt (null when the bundle left them out).
// - diffusers layout (no manifest, or one with only `files`): `bytes` = the UNet's and the VAE's
//   weights, `textEncoderBytes` = the text encoder's, from the manifest's `files` sizes where it
//   lists them, else from HEAD requests (Content-Length), else from a `Range: bytes=0-0` GET
//   (the total of its Content-Range). With `variant` ('fp16', as ZePo.load's default) the
//   variant's file (`unet/diffusion_pytorch_model.fp16.safetensors`) is asked first and the full
//   one where the server has none (404). Such a model has no precomputed prompts: its text
//   encoder is fetched at the first run, whatever the prompt (`textEncoderAlways`).
// - `stored`: whether the model is completely in this browser's storage (www/weights.js's
//   storedModels(): then the load downloads nothing). Sizes of a stored model are read from the
//   cache where possible, so this asks the network nothing for a stored bundle.
//
// Nothing is stored or downloaded beyond manifest.json and the header-only requests. A size that
// cannot be told is null (`unknown` lists its files); a network failure fetching manifest.json is
// a DownloadError, a missing model (its weights answer 404) a NotFound.
import { CACHE_NAME, ModelFiles, storedModels } from './weights.js';

export const BUNDLE_FORMAT = 'zepo-fp16-bundle';

/** The diffusers layout's weight files (as on the model hub), by what they hold. */
export const DIFFUSERS_FILES = {
  unet: 'unet/diffusion_pytorch_model.safetensors',
  vae: 'vae/diffusion_pytorch_model.safetensors',
  textEncoder: 'text_encoder/model.safetensors',
};

/** A weight file's name in a diffusers variant: `x.safetensors` → `x.fp16.safetensors`. */
const variantPath = (path, variant) => path.replace(/\.safetensors$/, `.${variant}.safetensors`);

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

/** manifest.json as JSON (from the model cache when stored there), or null when there is none. */
async function readManifest(files) {
  const hit = await cachedEntry(files, 'manifest.json');
  let text = null;
  if (hit?.headers.get('x-zepo-absent') === '1') return null;
  if (hit?.headers.get('x-zepo-complete') === '1') text = await hit.text();
  else {
    const r = await files.request('manifest.json');
    if (r.status === 404) return null;
    if (!r.ok) throw named('DownloadError', `${files.url('manifest.json')}: HTTP ${r.status} ${r.statusText}`);
    text = await r.text();
  }
  try {
    return JSON.parse(text);
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

/** Sizes from a bundle's manifest (weights/README.md). */
function bundleSizes(m) {
  const part = (p) => (p ? (p.config?.size || 0) + sum((p.shards || []).map((s) => s.size || 0)) : 0);
  const parts = m.parts || {};
  const bytes = (m.scheduler?.size || 0) + part(parts.unet) + part(parts.vae) + (m.prompt_embeddings?.size || 0);
  const hasText = !!parts.text_encoder;
  const textEncoderBytes = hasText ? part(parts.text_encoder) + sum((m.tokenizer || []).map((t) => t.size || 0)) : null;
  return { bytes, textEncoderBytes, textEncoderAlways: !m.prompt_embeddings, unknown: [] };
}

/**
 * What the first load of the model at `base` downloads:
 * `{ layout: 'fp16-bundle' | 'diffusers', bytes, textEncoderBytes, textEncoderAlways, stored,
 *    storedBytes, unknown }` (see the top of this file). `variant`: a diffusers layout's weight
 * variant to prefer ('fp16', as ZePo.load; null: the full files). `fetch`: a fetch function (tests).
 */
export async function modelSize(base, { variant = 'fp16', fetch: fetchFn, cacheName = CACHE_NAME } = {}) {
  const root = new URL(String(base), globalThis.location?.href).href.replace(/\/+$/, '');
  let cache = null;
  try {
    cache = globalThis.caches ? await caches.open(cacheName) : null;
  } catch { /* storage disabled: nothing is stored */ }
  const files = new ModelFiles(root, cache, { fetchFn });
  const [store, manifest] = await Promise.all([
    storedModels(cacheName).then((list) => list.find((m) => m.base === root), () => null),
    readManifest(files),
  ]);
  const stored = { stored: !!store?.complete, storedBytes: store?.bytes || 0 };
  if (manifest?.format !== undefined) {
    if (manifest.format !== BUNDLE_FORMAT) {
      throw named('WeightsError', `${files.url('manifest.json')}: format ${JSON.stringify(manifest.format)} is not ${BUNDLE_FORMAT}`);
    }
    return { layout: 'fp16-bundle', ...bundleSizes(manifest), ...stored };
  }
  // A diffusers layout: its optional manifest's sizes, else the server's.
  const listed = manifest?.files || {};
  const sizeOf = async (full) => {
    const candidates = variant ? [variantPath(full, variant), full] : [full];
    // What is stored answers first: a stored model needs no network (offline).
    for (const path of candidates) {
      const n = Number((await files.cached(path).catch(() => null))?.headers.get('x-zepo-size'));
      if (n > 0) return n;
    }
    for (const [i, path] of candidates.entries()) {
      const last = i === candidates.length - 1;
      if (listed[path]?.size > 0) return listed[path].size;
      // A variant the engine found missing before (weights.js remembers the 404).
      if (!last && (await cachedEntry(files, path))?.headers.get('x-zepo-absent') === '1') continue;
      try {
        return await remoteSize(files, path);
      } catch (e) {
        if (e.name === 'NotFound' && !last) continue;
        if (stored.stored) return null; // A stored model never needs the network (offline).
        throw e;
      }
    }
    return null;
  };
  const [unet, vae, text] = await Promise.all(Object.values(DIFFUSERS_FILES).map(sizeOf));
  const unknown = Object.values(DIFFUSERS_FILES).filter((_, i) => [unet, vae, text][i] == null);
  return {
    layout: 'diffusers',
    bytes: unet != null && vae != null ? unet + vae : null,
    textEncoderBytes: text,
    textEncoderAlways: true,
    unknown,
    ...stored,
  };
}
