// The engine's Worker: loads the wasm module (www/pkg, built by scripts/build-wasm.sh) and runs
// every request off the page's main thread. Protocol: the page posts {id, type, args}; the
// worker answers {id, ok: true, result} or {id, ok: false, error: {name, message}}, and posts
// {type: 'progress', ...} events while loading.
import init, * as engine from './pkg/zepo.js';

const ready = init().catch((e) => {
  throw Object.assign(new Error(`the wasm engine could not be loaded (${e.message || e}). ` +
    'Build it with: bash scripts/serve.sh'), { name: 'EngineMissing' });
});

const handlers = {
  async initDevice() {
    const info = await engine.init_device();
    // The engine's adapter name is often empty in browsers; GPUAdapter.info says more.
    const adapter = await navigator.gpu?.requestAdapter();
    for (const key of ['vendor', 'architecture', 'description']) {
      if (adapter?.info?.[key]) info[`gpu_${key}`] = adapter.info[key];
    }
    return info;
  },
  async loadUNet({ baseUrl }) {
    const t0 = performance.now();
    const info = await engine.load_unet(baseUrl, (loaded, total) => {
      self.postMessage({ type: 'progress', what: 'unet', loaded, total });
    });
    return { ...info, seconds: (performance.now() - t0) / 1000 };
  },
  async unetForward({ sample, shape, timesteps, context }) {
    const t0 = performance.now();
    const out = await engine.unet_forward(
      Float32Array.from(sample), Uint32Array.from(shape), Float32Array.from(timesteps), Float32Array.from(context));
    return { output: out, seconds: (performance.now() - t0) / 1000 };
  },
};

self.onmessage = async ({ data: { id, type, args } }) => {
  try {
    await ready;
    const handler = handlers[type];
    if (!handler) throw new Error(`unknown request ${type}`);
    const result = await handler(args || {});
    const transfer = result && result.output instanceof Float32Array ? [result.output.buffer] : [];
    self.postMessage({ id, ok: true, result }, transfer);
  } catch (e) {
    const error = e instanceof Error ? { name: e.name, message: e.message } : { name: 'Error', message: String(e) };
    self.postMessage({ id, ok: false, error });
  }
};
