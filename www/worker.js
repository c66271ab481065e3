// The engine's dedicated module Worker: owns the wasm engine (www/engine, built by
// scripts/build-wasm.sh) and the model's files (www/weights.js), off the page's main thread.
//
// Protocol: the caller posts {id, type, args}; the worker answers {id, ok: true, result} or
// {id, ok: false, error: {name, message}}, and posts {id, type: 'progress', event} while it
// works. Requests run one at a time in arrival order; {type: 'cancel', args: {target}} is
// handled at once and makes the stylization `target` stop at its next step.
import init, { Engine, Sha256 } from './engine/zepo.js';
import { ModelFiles, clearCache, storedModels } from './weights.js';

const ready = init().catch((e) => {
  throw Object.assign(new Error(`the wasm engine (engine/zepo_bg.wasm) could not be loaded (${e.message || e}): ` +
    'it must be served beside the engine\'s JS with the type application/wasm ' +
    '(in a source checkout, build it with: bash scripts/build-wasm.sh)'), { name: 'EngineMissing' });
});

let engine = null;
let files = null;
let crashed = null;
const cancelled = new Set();

// The weights of the model parts loaded up front (the text encoder comes on demand).

/** Byte counters of the request in progress, reported as {stage: 'download', loaded, total}. */
let op = null;
function onBytes(path, n) {
  if (!op) return;
  op.loaded += n;
  op.post({ stage: 'download', file: path, loaded: op.loaded, total: Math.max(op.total, op.loaded) });
}
function onOpen(path, size) {
  if (op && !op.counted.has(path)) {
    op.counted.add(path);
    op.total += size || 0;
  }
}

/** A panic inside the wasm module surfaces as `unreachable`: give its message instead. */
function crashError(e) {
  const panic = self.__zepoPanic;
  if (!(e instanceof WebAssembly.RuntimeError) && !panic) return null;
  const text = String(panic || e.message);
  const name = /out of memory|outofmemory|allocat/i.test(text) ? 'OutOfMemory'
    : /device (was )?lost|DeviceLost/i.test(text) ? 'DeviceLost' : 'EngineCrashed';
  const what = name === 'OutOfMemory'
    ? 'the GPU ran out of memory (try a smaller resolution, close other GPU-heavy tabs)'
    : name === 'DeviceLost' ? 'the GPU device was lost' : 'the engine crashed';
  // The source location of a panic only helps a bug report: kept for a crash, not for these.
  const detail = name === 'EngineCrashed' ? text : text.replace(/^panicked at [^\n]*:\d+:\d+:\s*/, '');
  return Object.assign(new Error(`${what}: ${detail.trim().slice(0, 600)}. The engine must be re-created.`), { name });
}

/**
 * The text files a failed load or stylization read (manifest, configs, tokenizer): stored when
 * it failed only on a later download, a broken connection (DownloadError) or full storage
 * (StorageFull), since the engine took them before asking for the next file; forgotten after
 * any other error (a file refused, a config or header the engine rejects), so that the next
 * try asks the server again rather than keep what may be the cause. A failed download's
 * stored prefix is removed first (quiesce()).
 */
async function afterFailure(files, e) {
  await files.quiesce();
  if (e?.name === 'DownloadError' || e?.name === 'StorageFull') await files.settle().catch(() => {});
  else files.discard();
}

const handlers = {
  async create({ precision = 'auto' }) {
    if (!engine) engine = await Engine.create({ precision });
    const info = engine.device;
    // The engine's adapter name is often empty in browsers; GPUAdapter.info says more.
    const adapter = await navigator.gpu?.requestAdapter();
    for (const key of ['vendor', 'architecture', 'description']) {
      if (adapter?.info?.[key]) info[`gpu_${key}`] = adapter.info[key];
    }
    return info;
  },

  async load({ model, variant, weights = 'auto' }, post) {
    const t0 = performance.now();
    files = await ModelFiles.open(model, { onBytes, onOpen, variant, sha256: () => new Sha256() });
    const requests0 = files.requests;
    op = { loaded: 0, total: 0, counted: new Set(), post };
    // The total grows as each file opens (a bundle's files are declared up front by the engine
    // from its manifest, with files.expect); which files a diffusers layout has (a variant,
    // shards) the engine finds out as it goes.
    let info;
    try {
      info = await engine.load(files, (part) => post({ stage: 'load', part }), weights);
    } catch (e) {
      await afterFailure(files, e);
      throw e;
    }
    await files.markComplete();
    return { ...info, seconds: (performance.now() - t0) / 1000, bytes: op.loaded, requests: files.requests - requests0 };
  },

  async stylize({ content, style, options, id }, post) {
    if (!files) throw new Error('stylize: no model loaded');
    op = { loaded: 0, total: 0, counted: new Set(), post };
    const t0 = performance.now();
    const times = {};
    let last = null;
    let png;
    try {
      png = await engine.stylize(new Uint8Array(content), new Uint8Array(style), options, (p) => {
        const now = performance.now();
        if (last) times[last.stage] = (times[last.stage] || 0) + (now - last.t) / 1000;
        last = { stage: p.stage, t: now };
        post(p);
      }, () => cancelled.has(id));
    } catch (e) {
      await afterFailure(files, e);
      throw e;
    }
    // Text files read on demand (the tokenizer, the text encoder's config) are stored now.
    await files.settle();
    return { png, seconds: (performance.now() - t0) / 1000, stages: times, downloaded: op.loaded, counters: engine.counters() };
  },

  async warmup({ options, id }, post) {
    post({ stage: 'warmup', step: 0, steps: 1, fraction: 0, resolution: options?.resolution ?? 512 });
    return { seconds: await engine.warmup(options, () => cancelled.has(id)) };
  },

  hasStyle({ style, options, content }) {
    return engine?.hasStyle(new Uint8Array(style), options, content ? new Uint8Array(content) : undefined) ?? false;
  },

  async unetForward({ sample, shape, timesteps, context }) {
    const t0 = performance.now();
    const output = await engine.unetForward(Float32Array.from(sample), Uint32Array.from(shape),
      Float32Array.from(timesteps), Float32Array.from(context));
    return { output, seconds: (performance.now() - t0) / 1000 };
  },

  dispose() {
    engine?.dispose();
    files = null;
    return true;
  },

  clearCache({ model }) {
    return clearCache(model);
  },

  storedModels() {
    return storedModels();
  },
};

// A panic inside a wasm task is thrown from the microtask queue, not through the request's
// promise: report it to the caller, which ends this Worker.
self.addEventListener('error', (ev) => {
  const fatal = crashError(ev.error instanceof Error ? ev.error : new WebAssembly.RuntimeError(ev.message));
  if (!fatal) return;
  ev.preventDefault();
  crashed = fatal;
  self.postMessage({ type: 'fatal', error: { name: fatal.name, message: fatal.message } });
});

let queue = Promise.resolve();

self.onmessage = ({ data: { id, type, args } }) => {
  if (type === 'cancel') {
    cancelled.add(args.target);
    return;
  }
  queue = queue.then(() => run(id, type, args || {}));
};

async function run(id, type, args) {
  const post = (event) => self.postMessage({ id, type: 'progress', event });
  try {
    if (crashed) throw crashed;
    await ready;
    const handler = handlers[type];
    if (!handler) throw new Error(`unknown request ${type}`);
    if (cancelled.has(id)) throw Object.assign(new Error('the stylization was cancelled'), { name: 'AbortError' });
    const result = await handler({ ...args, id }, post);
    const transfer = [result?.output?.buffer, result?.png?.buffer].filter(Boolean);
    self.postMessage({ id, ok: true, result }, transfer);
  } catch (e) {
    const fatal = crashError(e);
    if (fatal) crashed = fatal;
    const err = fatal || e;
    const error = err instanceof Error ? { name: err.name, message: err.message } : { name: 'Error', message: String(err) };
    self.postMessage({ id, ok: false, error, fatal: !!fatal });
  } finally {
    cancelled.delete(id);
    op = null;
  }
}
