// The full-size model in the browser: LCM_Dreamshaper_v7's structure (860M-parameter UNet,
// 1.9 GB fp16 bundle) with random weights, made by the project's own CLI (no torch), streamed
// into headless Chromium, then one UNet call (the two CFG halves) at the smallest latent checked
// against the native engine on the same inputs. Memory goals: the wasm heap stays at most
// 512 MiB (weights pass through wasm memory a tensor at a time) and the GPU holds little more
// than the weights (live bytes counted by wrapping WebGPU in the engine's Worker).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { ROOT, assertEngineBuilt, inPage, launch, readSafetensors, relError, serve } from './helpers.mjs';
import { GPU_STATS_READER, diffCounts, routeWorkerPrelude } from './gpu-stats.mjs';
import { bundleWeights, fullSizeBundle, zepoCli } from './fullsize-model.mjs';

const T = 40 * 60_000;
const MiB = 2 ** 20;
// The smallest latent the UNet takes whole (three 2× downsamplings: 8 → 1).
const SIZE = 64;
// The wasm heap goal, and the GPU's: live bytes at most this much over the weights plus the
// activations of the call (peak growth during it).
const WASM_HEAP_MAX = 512 * MiB;
const GPU_OVER_NEEDED_MAX = 1.15;
// f32 on both sides, random weights: kernels differ in summation order only.
const TOL = 1e-4;

let bundle;
let server;
let browser;
let reference;
before(async () => {
  assertEngineBuilt();
  bundle = fullSizeBundle();
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'zepo-full-')), 'unet.safetensors');
  execFileSync(zepoCli(), ['unet', '--model', bundle, '--size', String(SIZE), '--batch', '2', '--out', out],
    { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  reference = readSafetensors(out);
  server = await serve({ model: bundle });
  browser = await launch({ webgpu: true });
  await routeWorkerPrelude(browser.context);
});
after(async () => {
  if (browser?.logs.length) console.log(browser.logs.slice(-30).join('\n'));
  await browser?.close();
  await server?.close();
});

test('the full-size model streams into the browser and its UNet matches the native engine', { timeout: T }, async () => {
  await browser.page.goto(`${server.url}/package.json`);
  const r = reference;
  const out = await inPage(browser.page, async (api, a) => {
    const gpuStats = (0, eval)(a.reader);
    const t0 = performance.now();
    const engine = await api.ZePo.load({ model: '/model' });
    const loadSeconds = (performance.now() - t0) / 1000;
    const load = await gpuStats(engine.worker);
    engine.worker.postMessage({ type: 'gpu-stats:reset' });
    const call = await engine.unetForward(a.sample, a.shape, a.timesteps, a.context);
    const unet = await gpuStats(engine.worker);
    engine.dispose();
    return { loadSeconds, info: engine.info, device: engine.device, load, unet, output: Array.from(call.output), seconds: call.seconds };
  }, { reader: GPU_STATS_READER, sample: r.sample.values, shape: r.sample.shape, timesteps: r.timesteps.values, context: r.context.values });
  assert.ok(!out.error, JSON.stringify(out.error));
  assert.equal(out.info.layout, 'bundle');

  const w = bundleWeights(bundle).parts;
  const weights = w.unet.gpuBytes[out.device.precision] + w.vae.gpuBytes[out.device.precision];
  const { load, unet } = out;
  const call = diffCounts(load, unet);
  const activations = unet.peakLive - load.live;
  const ratio = unet.peakLive / (weights + activations);
  console.log(`full size: ${((w.unet.elements + w.vae.elements) / 1e6).toFixed(0)} M parameters streamed in ${out.loadSeconds.toFixed(1)} s; ` +
    `wasm heap ${(load.wasmBytes / MiB).toFixed(0)} MiB after load, ${(unet.wasmBytes / MiB).toFixed(0)} MiB after the call`);
  console.log(`GPU: weights ${(weights / MiB).toFixed(0)} MiB (${out.device.precision}), live after load ${(load.live / MiB).toFixed(0)} MiB ` +
    `(peak ${(load.peakLive / MiB).toFixed(0)}), peak in the call ${(unet.peakLive / MiB).toFixed(0)} MiB, largest buffer ${(unet.largest / MiB).toFixed(0)} MiB; ` +
    `peak / (weights + call's growth) = ${ratio.toFixed(3)}`);
  console.log(`UNet call [2, 4, ${SIZE / 8}, ${SIZE / 8}]: ${out.seconds.toFixed(1)} s, dispatches ${call.dispatches}, submits ${call.submits}, ` +
    `read-backs ${call.readbacks}, pipelines created ${call.pipelines}`);
  console.log(`dispatches by kernel: ${Object.entries(unet.byKernel).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${v} ${k.slice(0, 40)}`).join(', ')}`);

  const err = relError(out.output, r.output.values);
  console.log(`UNet output vs native (CPU): max abs error ${err.toExponential(3)} of max |ref|`);
  assert.ok(err <= TOL, `UNet output differs from native: ${err.toExponential(3)} > ${TOL}`);
  assert.ok(unet.wasmBytes <= WASM_HEAP_MAX, `wasm heap ${(unet.wasmBytes / MiB).toFixed(0)} MiB > ${WASM_HEAP_MAX / MiB} MiB`);
  assert.ok(load.peakLive <= GPU_OVER_NEEDED_MAX * weights, `GPU peak while loading ${(load.peakLive / MiB).toFixed(0)} MiB > ${GPU_OVER_NEEDED_MAX} × weights`);
  assert.ok(ratio <= GPU_OVER_NEEDED_MAX, `GPU peak ${ratio.toFixed(3)} × (weights + activations)`);
});
