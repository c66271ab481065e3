// ZePo's JS API (an ES module; the page and, later, the npm package use it). Everything runs in
// a dedicated module Worker on the visitor's GPU (WebGPU): no image leaves the page.
//
//   import { stylize, ZePo } from './www/zepo.js';
//   const png = await stylize(portraitBlob, styleBlob, { steps: 2, seed: 1, onProgress, signal });
//
//   const engine = await ZePo.load({ model: 'https://…/LCM_Dreamshaper_v7', onProgress });
//   const a = await engine.stylize(face1, style);   // the style's features are kept:
//   const b = await engine.stylize(face2, style);   // a second face costs only its own work
//   engine.dispose();
//
// Options (all optional; the reference's defaults): resolution (512), width, height, fit
// ('stretch' | 'cover' | 'contain': 'contain' keeps the portrait's shape), steps (4), strength (0.5),
// cfg (2), styleGuidance (1.2), featureStep (99), startLayer (8), endLayer (16), mixQ (1),
// tome (true | false | {ratio, sx, sy, deterministic}), prompt ('face'), negativePrompt (''),
// seed (0), noCfg (false). Besides: model (base URL of the weights, or a hub repository id
// 'owner/name' resolved with `env`; by default the public LCM_Dreamshaper_v7 repository),
// revision ('main'), variant ('fp16': a diffusers repository's .fp16 weight files where it has
// them, else the full ones; null: the full ones), weights ('auto': a bundle's smallest variant;
// 'fp16'; 'q8'; 'mixed': its compact variants, see `zepo weights convert --variants`),
// precision ('auto' | 'f16' | 'f32'), onProgress({stage,
// loaded, total, step, steps, fraction}), signal (AbortSignal). ZePo.load also takes warmup
// (true or the options of the stylizations to come): compile the GPU's pipelines right away.
// Errors are Errors whose name says what happened: WebGpuUnavailable, InvalidOption,
// ImageError, IntegrityError, DownloadError, NotFound, StorageFull, WeightsError, AbortError, OutOfMemory,
// DeviceLost, EngineCrashed.

/** The public diffusers repository of LCM Dreamshaper v7 (fp32, 4.3 GB; streamed, then cached). */
export const DEFAULT_MODEL = 'https://huggingface.co/SimianLuo/LCM_Dreamshaper_v7/resolve/main';

/**
 * Where a hub repository id (`model: 'owner/name'`) is fetched from, as transformers.js's `env`:
 * `remoteHost` + `remotePathTemplate` with `{model}` and `{revision}` filled in. Point it at a
 * mirror to serve models from elsewhere.
 */
export const env = {
  remoteHost: 'https://huggingface.co/',
  remotePathTemplate: '{model}/resolve/{revision}/',
};

// `owner/name` and nothing else: a relative path of that shape is written './owner/name'.
const REPO_ID = /^[A-Za-z0-9][\w.-]*\/[A-Za-z0-9][\w.-]*$/;

/**
 * A model's base URL: a URL or path as given (relative to the page), or for a hub repository id
 * ('SimianLuo/LCM_Dreamshaper_v7') its files at `revision` (a branch, tag or commit; 'main')
 * under `env.remoteHost`.
 */
export function resolveModel(model = DEFAULT_MODEL, { revision = 'main' } = {}) {
  if (REPO_ID.test(model)) {
    const path = env.remotePathTemplate.replaceAll('{model}', model).replaceAll('{revision}', encodeURIComponent(revision || 'main'));
    return new URL(path, env.remoteHost.replace(/\/*$/, '/')).href.replace(/\/+$/, '');
  }
  return new URL(model, globalThis.location?.href).href;
}

const ENGINE_KEYS = new Set(['model', 'revision', 'variant', 'weights', 'precision', 'onProgress', 'signal']);
// After these the Worker's engine is unusable (a failed GPU read leaves it in an unknown state):
// the next call starts a new one.
const FATAL = new Set(['DeviceLost', 'DeviceError', 'OutOfMemory', 'EngineCrashed', 'EngineMissing']);

/** The pipeline's options of `opts`: without the engine's own keys and undefined values. */
function pipelineOptions(opts) {
  return Object.fromEntries(Object.entries(opts).filter(([k, v]) => !ENGINE_KEYS.has(k) && v !== undefined));
}

function abortError() {
  return Object.assign(new Error('the stylization was cancelled'), { name: 'AbortError' });
}

/**
 * Image bytes of a Blob, File, ArrayBuffer or typed array (a copy, which the Worker gets); an
 * image the engine cannot decode itself but this browser can (AVIF, HEIC in Safari…) as a PNG of
 * the browser's pixels.
 */
async function bytesOf(what, name) {
  let bytes;
  if (what instanceof Blob) bytes = new Uint8Array(await what.arrayBuffer());
  else if (what instanceof ArrayBuffer) bytes = new Uint8Array(what.slice(0));
  else if (ArrayBuffer.isView(what)) bytes = new Uint8Array(what.buffer.slice(what.byteOffset, what.byteOffset + what.byteLength));
  else throw Object.assign(new TypeError(`${name}: expected a Blob, File, ArrayBuffer or typed array`), { name: 'ImageError' });
  return browserDecoded(bytes, what.name || name);
}

// The engine's own limit (src/zepo/image.rs MAX_PIXELS), for the images the browser decodes.
const MAX_PIXELS = 50_000_000;

/** Whether the engine decodes these bytes itself: PNG, JPEG, GIF, BMP, WebP (by magic bytes). */
function engineDecodes(b) {
  const is = (at, text) => [...text].every((ch, k) => b[at + k] === ch.charCodeAt(0));
  return (b[0] === 0x89 && is(1, 'PNG')) || (b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) || is(0, 'GIF8') || is(0, 'BM')
    || (is(0, 'RIFF') && is(8, 'WEBP'));
}

/**
 * An image in a format the engine lacks, decoded by the browser (createImageBitmap: its EXIF
 * orientation applied, its colour profile converted to sRGB, alpha kept for the engine's
 * compositing) and handed over as a lossless PNG of those pixels. The same pixel limit applies.
 * Bytes the browser cannot decode either go to the engine as they are: it names their format.
 */
async function browserDecoded(bytes, name) {
  if (engineDecodes(bytes) || typeof createImageBitmap !== 'function' || typeof OffscreenCanvas !== 'function') return bytes;
  let bitmap;
  try {
    bitmap = await createImageBitmap(new Blob([bytes]), { imageOrientation: 'from-image', premultiplyAlpha: 'none', colorSpaceConversion: 'default' });
  } catch {
    return bytes;
  }
  try {
    const { width, height } = bitmap;
    if (width * height > MAX_PIXELS) {
      throw Object.assign(new Error(`${name}: ${width}×${height} is ${(width * height / 1e6).toFixed(1)} megapixels; at most ${MAX_PIXELS / 1e6} are accepted (scale it down first)`),
        { name: 'ImageError' });
    }
    const canvas = new OffscreenCanvas(width, height);
    canvas.getContext('2d').drawImage(bitmap, 0, 0);
    return new Uint8Array(await (await canvas.convertToBlob({ type: 'image/png' })).arrayBuffer());
  } finally {
    bitmap.close();
  }
}

function noWebGpu() {
  return Object.assign(new Error(
    'This browser does not expose WebGPU (navigator.gpu is missing). ZePo runs entirely on your GPU ' +
    'through WebGPU: use a recent Chrome or Edge (113+), Safari 26+, or Firefox 141+ on Windows; on ' +
    'Linux, enable chrome://flags/#enable-unsafe-webgpu. The page must be served from localhost or over https.'),
  { name: 'WebGpuUnavailable' });
}

/** An engine: a Worker holding the model on the GPU. Make one with `await ZePo.load(...)`. */
export class ZePo {
  static async load({ model = DEFAULT_MODEL, revision = 'main', variant = 'fp16', weights = 'auto', precision = 'auto', onProgress, workerUrl, warmup } = {}) {
    if (!globalThis.navigator?.gpu) throw noWebGpu();
    const engine = new ZePo(resolveModel(model, { revision }), workerUrl);
    try {
      engine.device = await engine.call('create', { precision });
      engine.info = await engine.call('load', { model: engine.model, variant, weights }, onProgress);
      if (warmup) await engine.warmup(warmup === true ? {} : warmup, { onProgress });
    } catch (e) {
      engine.dispose();
      throw e;
    }
    return engine;
  }

  constructor(model, workerUrl) {
    this.model = model;
    // This literal form is what bundlers (Vite) recognise to bundle the Worker and its imports.
    this.worker = workerUrl ? new Worker(workerUrl, { type: 'module' })
      : new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
    this.pending = new Map();
    this.next = 0;
    this.queue = Promise.resolve();
    this.dead = null;
    this.worker.onmessage = ({ data }) => {
      if (data.type === 'fatal') return this.kill(Object.assign(new Error(data.error.message), { name: data.error.name }));
      const p = this.pending.get(data.id);
      if (!p) return;
      if (data.type === 'progress') return p.onProgress?.(data.event);
      this.pending.delete(data.id);
      if (data.ok) return p.resolve(data.result);
      const error = Object.assign(new Error(data.error.message), { name: data.error.name });
      if (data.fatal || FATAL.has(error.name)) this.kill(error);
      p.reject(error);
    };
    this.worker.onerror = (e) => {
      e.preventDefault?.();
      this.kill(Object.assign(new Error(`the engine worker failed: ${e.message || 'it could not start'}`), { name: 'EngineCrashed' }));
    };
  }

  /** Ends the Worker (after a fatal error); pending calls reject with `error`. */
  kill(error) {
    this.dead = error;
    this.worker.terminate();
    for (const p of this.pending.values()) p.reject(error);
    this.pending.clear();
  }

  /** One request to the Worker: returns a promise; `id` (for cancel) is given to `started`. */
  call(type, args, onProgress, transfer = [], started) {
    if (this.dead) return Promise.reject(this.dead);
    return new Promise((resolve, reject) => {
      const id = this.next++;
      this.pending.set(id, { resolve, reject, onProgress });
      started?.(id);
      this.worker.postMessage({ id, type, args }, transfer);
    });
  }

  /**
   * Stylizes `content` (a portrait) after `style`: Blobs/Files (or bytes) of PNG, JPEG, WebP,
   * BMP or GIF images, or of any format this browser decodes (AVIF; HEIC in Safari). Resolves to a PNG Blob of the working size (see
   * `fit`), its text chunks holding the settings, seed and model. Calls queue: one runs at a time.
   */
  stylize(content, style, opts = {}) {
    const run = this.queue.then(() => this.run(content, style, opts));
    this.queue = run.catch(() => {});
    return run;
  }

  async run(content, style, opts) {
    const { onProgress, signal } = opts;
    const options = pipelineOptions(opts);
    if (signal?.aborted) throw abortError();
    if (this.dead) throw this.dead;
    const [c, s] = await Promise.all([bytesOf(content, 'content'), bytesOf(style, 'style')]);
    if (signal?.aborted) throw abortError();
    let id = null;
    const onAbort = () => id !== null && this.worker.postMessage({ type: 'cancel', args: { target: id } });
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const result = await this.call('stylize', { content: c.buffer, style: s.buffer, options }, onProgress,
        [c.buffer, s.buffer], (i) => { id = i; });
      this.last = { seconds: result.seconds, stages: result.stages, downloaded: result.downloaded, counters: result.counters };
      return new Blob([result.png], { type: 'image/png' });
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /**
   * Stylizes several portraits after one style, in order: the style's features are computed
   * by the first run and reused by the others (same options), so each further portrait costs
   * only its own denoising. Resolves, once all are done, to one entry per portrait:
   * `{ png: Blob, seconds, counters }` or `{ error }` (a portrait that fails, or is cancelled,
   * does not stop the others). Options are stylize()'s, plus:
   * - `onProgress(event)`: stylize()'s events with `item` (its index) and `items`;
   * - `onItem(index, entry)`: as each portrait is done;
   * - `signal`: cancels the whole batch (the run in progress and those not begun);
   * - `itemSignals[index]`: cancels one portrait.
   */
  async stylizeMany(contents, style, opts = {}) {
    const { onProgress, onItem, signal, itemSignals = [], ...rest } = opts;
    const items = Array.from(contents);
    // The style is read once (each run copies the bytes it transfers to the Worker).
    const styleBytes = await bytesOf(style, 'style');
    const results = [];
    for (const [item, content] of items.entries()) {
      let entry;
      const mine = itemSignals[item];
      const aborted = signal?.aborted || mine?.aborted;
      try {
        if (aborted) throw abortError();
        const both = mine && signal && AbortSignal.any ? AbortSignal.any([signal, mine]) : mine || signal;
        const png = await this.stylize(content, styleBytes, {
          ...rest,
          signal: both,
          onProgress: onProgress && ((e) => onProgress({ ...e, item, items: items.length })),
        });
        entry = { png, seconds: this.last.seconds, counters: this.last.counters };
      } catch (error) {
        if (this.dead && error === this.dead) throw error; // the engine is gone: no item can run
        entry = { error };
      }
      results.push(entry);
      onItem?.(item, entry);
    }
    return results;
  }

  /**
   * Compiles the GPU's pipelines for stylizations with these options (the resolution is what
   * matters) by running one on synthetic images, so that the first real one costs what later
   * ones do. Worth it while the user is still choosing images; `ZePo.load({ warmup })` does it
   * right after loading. Queued like stylize(); resolves to the seconds it took.
   */
  warmup(opts = {}, { onProgress, signal } = {}) {
    const options = pipelineOptions(opts);
    const run = this.queue.then(async () => {
      if (signal?.aborted) throw abortError();
      let id = null;
      const onAbort = () => id !== null && this.worker.postMessage({ type: 'cancel', args: { target: id } });
      signal?.addEventListener('abort', onAbort, { once: true });
      try {
        const { seconds } = await this.call('warmup', { options }, onProgress, [], (i) => { id = i; });
        this.warm = { ...this.warm, [options.resolution ?? 512]: seconds };
        return seconds;
      } finally {
        signal?.removeEventListener('abort', onAbort);
      }
    });
    this.queue = run.catch(() => {});
    return run;
  }

  /**
   * Whether a stylization with this style and options would reuse the cached style features;
   * `content` is needed where the size follows the portrait's shape (`fit`).
   */
  async hasStyle(style, opts = {}, content) {
    const options = pipelineOptions(opts);
    const s = await bytesOf(style, 'style');
    const c = content === undefined ? null : await bytesOf(content, 'content');
    return this.call('hasStyle', { style: s.buffer, options, content: c?.buffer }, null, c ? [s.buffer, c.buffer] : [s.buffer]);
  }

  /** The UNet alone (kernel checks): { output: Float32Array, seconds }. */
  unetForward(sample, shape, timesteps, context) {
    const run = this.queue.then(() => this.call('unetForward', { sample, shape, timesteps, context }));
    this.queue = run.catch(() => {});
    return run;
  }

  /** Frees the GPU memory and ends the Worker. */
  dispose() {
    if (!this.dead) this.kill(Object.assign(new Error('this engine was disposed'), { name: 'EngineDisposed' }));
  }

  /** Deletes the stored files of `model` (a URL or hub id; every model's without one). */
  static async clearCache(model, { revision } = {}) {
    const { clearCache } = await import('./weights.js');
    return clearCache(model && resolveModel(model, { revision }));
  }
}

let shared = null;

/**
 * Stylizes with a shared default engine, loaded on first use (and again when `model`,
 * `weights` or `precision` change, or after a fatal error). Resolves to a PNG Blob.
 */
export async function stylize(content, style, opts = {}) {
  const model = resolveModel(opts.model || DEFAULT_MODEL, { revision: opts.revision });
  const precision = opts.precision || 'auto';
  const variant = opts.variant === undefined ? 'fp16' : opts.variant;
  const weights = opts.weights || 'auto';
  if (opts.signal?.aborted) throw abortError();
  if (!shared || shared.model !== model || shared.precision !== precision || shared.variant !== variant || shared.weights !== weights) {
    const previous = shared;
    const promise = ZePo.load({ model, precision, variant, weights, onProgress: opts.onProgress });
    shared = { model, precision, variant, weights, promise };
    previous?.promise.then((e) => e.dispose(), () => {});
    promise.catch(() => { if (shared?.promise === promise) shared = null; });
  }
  const engine = await shared.promise;
  if (engine.dead) {
    shared = null;
    return stylize(content, style, opts);
  }
  return engine.stylize(content, style, opts);
}
