#!/usr/bin/env node
// The browser benchmark (npm run bench:browser): the public JS API in headless Chromium on
// WebGPU, on any model (default: the full-size LCM_Dreamshaper_v7 structure with random weights,
// made once by the project's own CLI), at the given sizes and steps. Prints per run what carries
// over to every GPU — dispatches, queue submits, GPU→CPU read-backs, pipelines compiled, GPU
// bytes live — with the times, the wasm heap and the browser's memory; and, for comparison, the
// same work natively (zepo bench on the CPU and on wgpu). It prints numbers; it asserts nothing.
//
//   node scripts/bench-browser.mjs [--model DIR|URL] [--weights auto,fp16,q8,…] [--sizes 64,128]
//        [--steps 2,4|0] [--precision auto|f32|f16] [--unet] [--cold] [--native cpu,wgpu|none]
//        [--json FILE]
//
// --weights runs each of a bundle's weight variants in turn (a fresh browser each), for
// comparing their download, GPU bytes and dispatches; --steps 0 runs no stylization (with
// --unet: load and one UNet call, the quickest full-size measurement).
//
// As the page does, the engine warms up after loading (ZePo.warmup at the run's size): the
// "first" run is the first stylization a user waits for; --cold skips the warm-up and shows the cold first run.
//
// The counters come from a prelude that wraps the WebGPU API inside the engine's Worker
// (tests/browser/gpu-stats.mjs); the product runs unchanged.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ROOT, assertEngineBuilt, inPage, launch, sampleBrowserRss, serve } from '../tests/browser/helpers.mjs';
import { GPU_STATS_READER, diffCounts, perStage, routeWorkerPrelude } from '../tests/browser/gpu-stats.mjs';
import { bundleWeights, fullSizeBundle, zepoCli } from '../tests/browser/fullsize-model.mjs';

const { values: opt } = parseArgs({
  options: {
    model: { type: 'string' },
    sizes: { type: 'string', default: '64' },
    steps: { type: 'string', default: '2' },
    precision: { type: 'string', default: 'auto' },
    weights: { type: 'string', default: 'auto' },
    unet: { type: 'boolean', default: false },
    cold: { type: 'boolean', default: false },
    native: { type: 'string', default: 'cpu,wgpu' },
    json: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  },
});
if (opt.help) {
  console.log(fs.readFileSync(new URL(import.meta.url), 'utf8').split('\n').filter((l) => l.startsWith('//')).join('\n'));
  process.exit(0);
}
const list = (s) => s.split(',').filter(Boolean).map(Number);
const sizes = list(opt.sizes);
const stepsList = list(opt.steps).filter((n) => n > 0);
const variants = opt.weights.split(',').filter(Boolean);
const MiB = (b) => (b / 2 ** 20).toFixed(0);
const s1 = (x) => (Number.isFinite(x) ? x.toFixed(1) : '-');

assertEngineBuilt();
let modelDir = null;
let modelUrl = opt.model;
if (!modelUrl) modelDir = fullSizeBundle();
else if (fs.existsSync(opt.model)) { modelDir = path.resolve(opt.model); modelUrl = null; }
const server = await serve(modelDir ? { model: modelDir } : {});
const model = modelUrl || '/model';
const bundleDir = modelDir && fs.existsSync(path.join(modelDir, 'manifest.json')) ? modelDir : null;

const results = [];
for (const variant of variants) for (const size of sizes) {
  const browser = await launch({ webgpu: true });
  await routeWorkerPrelude(browser.context);
  const rss = sampleBrowserRss(browser.userDataDir);
  // Progress on stderr (a full-size run on a software adapter takes many minutes).
  const t0 = Date.now();
  browser.page.on('console', (m) => {
    if (m.text().startsWith('[bench] ')) console.error(`${size}² +${((Date.now() - t0) / 1000).toFixed(0)} s: ${m.text().slice(8)}`);
  });
  try {
    await browser.page.goto(`${server.url}/package.json`);
    console.error(`${size}²: loading ${modelDir || model} (weights ${variant}) ...`);
    const out = await inPage(browser.page, async (api, a, _w, kit) => {
      const gpuStats = (0, eval)(a.reader);
      const [content, style] = await kit.examples();
      const t0 = performance.now();
      const say = (what) => (e) => e.stage !== 'download' && console.log(`[bench] ${what} ${e.stage}${e.part ? ` ${e.part}` : ''}${e.steps && e.stage !== 'done' ? ` ${e.step + 1}/${e.steps}` : ''}`);
      const engine = await api.ZePo.load({ model: a.model, precision: a.precision, weights: a.weights, onProgress: say('load') });
      const load = { seconds: (performance.now() - t0) / 1000, info: engine.info, device: engine.device, stats: await gpuStats(engine.worker) };
      if (a.warmup) load.warmup = await engine.warmup({ resolution: a.size, steps: a.steps[0] }, { onProgress: say('warm-up') });
      const runs = [];
      let seed = 1;
      for (const steps of a.steps) {
        // The first run at a size compiles its pipelines; a second one with another seed does
        // the same work again (the style's features depend on the seed: nothing is reused).
        for (const kind of runs.length ? ['warm'] : ['first', 'warm']) {
          engine.worker.postMessage({ type: 'gpu-stats:reset' });
          const t = performance.now();
          await engine.stylize(content, style, { resolution: a.size, steps, seed: seed++, onProgress: say(`${kind} run N=${steps}`) });
          runs.push({ kind, steps, seconds: (performance.now() - t) / 1000, last: engine.last, stats: await gpuStats(engine.worker) });
        }
      }
      let unet = null;
      if (a.unet) {
        const lat = a.size / 8;
        const [b, ctxLen, dim] = [2, 77, Number(engine.info.cross_attention_dim || 768)];
        const sample = Array.from({ length: b * 4 * lat * lat }, (_, i) => Math.sin(i));
        const context = Array.from({ length: b * ctxLen * dim }, (_, i) => Math.cos(i) * 0.5);
        engine.worker.postMessage({ type: 'gpu-stats:reset' });
        const before = await gpuStats(engine.worker);
        const r = await engine.unetForward(sample, [b, 4, lat, lat], [499, 499], context);
        unet = { seconds: r.seconds, before, stats: await gpuStats(engine.worker) };
      }
      engine.dispose();
      return { load, runs, unet };
    }, { model, precision: opt.precision, weights: variant, size, steps: stepsList, unet: opt.unet, warmup: !opt.cold && stepsList.length > 0, reader: GPU_STATS_READER });
    if (out.error) throw new Error(`${size}²: ${out.error.name}: ${out.error.message}\n${browser.logs.slice(-20).join('\n')}`);
    results.push({ size, variant, ...out, rss: rss.stop() });
  } finally {
    rss.stop();
    await browser.close();
  }
}
await server.close();

// ---- report ----
const sum = (stages, pred) => stages.filter(pred).reduce((acc, s) => {
  for (const [k, v] of Object.entries(s.counts)) acc[k] = (acc[k] || 0) + v;
  acc.calls = (acc.calls || 0) + 1;
  return acc;
}, {});
const per = (c, k) => (c.calls ? Math.round((c[k] || 0) / c.calls) : '-');
const device = results[0]?.load.device || {};
console.log(`\n# Browser benchmark: ${modelDir ? path.basename(modelDir) : model}`);
console.log(`Chromium WebGPU: ${device.gpu_description || device.adapter || '?'} (${device.gpu_architecture || device.backend}), precision ${device.precision}, shader-f16 ${device.shader_f16}`);
for (const r of results) {
  const L = r.load.stats;
  const loaded = r.load.info.weights || 'fp16';
  console.log(`\n## ${r.size}², weights ${loaded}${r.variant !== loaded ? ` (asked: ${r.variant})` : ''}`);
  if (bundleDir) {
    const w = bundleWeights(bundleDir, loaded).parts;
    const el = (w.unet?.elements || 0) + (w.vae?.elements || 0);
    r.weightBytes = (w.unet?.gpuBytes[device.precision] || 0) + (w.vae?.gpuBytes[device.precision] || 0);
    r.downloadBytes = (w.unet?.fileBytes || 0) + (w.vae?.fileBytes || 0);
    console.log(`weights streamed (UNet + VAE): ${(el / 1e6).toFixed(0)} M parameters, ${MiB(r.downloadBytes)} MiB of shards (${(r.downloadBytes / 1e6).toFixed(1)} MB), ${MiB(r.weightBytes)} MiB held on the GPU in ${device.precision} (${(r.weightBytes / r.downloadBytes).toFixed(3)} × the download)`);
  }
  console.log(`load: ${s1(r.load.seconds)} s (download + parse + upload, ${r.load.info.layout}${r.load.warmup ? `; then warm-up ${s1(r.load.warmup)} s` : ''}); GPU live after load ${MiB(L.live)} MiB, peak ${MiB(L.peakLive)} MiB, largest buffer ${MiB(L.largest)} MiB; wasm heap ${MiB(L.wasmBytes)} MiB; pipelines ${L.pipelines}, dispatches ${L.dispatches}, submits ${L.submits}`);
  const first = r.runs.find((x) => x.kind === 'first');
  const warm0 = r.runs.find((x) => x.kind === 'warm');
  for (const run of r.runs) {
    const st = perStage(run.stats.marks);
    const unet = sum(st, (s) => s.stage === 'denoise');
    const enc = sum(st, (s) => s.stage === 'encode' && s.step === 0);
    const dec = sum(st, (s) => s.stage === 'decode');
    const all = sum(st, () => true);
    const stageTimes = Object.entries(run.last.stages).map(([k, v]) => `${k} ${s1(v)}`).join(', ');
    // Activations: the largest growth of live bytes within a stage, over the live bytes at its
    // start; the goal compares the peak with weights + that.
    const act = Math.max(...st.map((s) => s.peakLive - s.liveAtStart));
    const goal = r.weightBytes ? run.stats.peakLive / (r.weightBytes + act) : NaN;
    run.summary = { unet, enc, dec, all, act, goal };
    console.log(`${run.kind} run, N=${run.steps}: ${s1(run.seconds)} s [${stageTimes}]`);
    console.log(`  per UNet call (denoise step): dispatches ${per(unet, 'dispatches')}, submits ${per(unet, 'submits')}, read-backs ${per(unet, 'readbacks')}, new pipelines ${per(unet, 'pipelines')}`);
    console.log(`  per VAE encode: dispatches ${per(enc, 'dispatches')}, submits ${per(enc, 'submits')}; VAE decode (+ result read-back): dispatches ${per(dec, 'dispatches')}, submits ${per(dec, 'submits')}, read-backs ${per(dec, 'readbacks')}`);
    console.log(`  whole stylization: dispatches ${all.dispatches}, submits ${all.submits}, read-backs ${all.readbacks} (${all.readbackBytes} B), pipelines created ${all.pipelines} (${s1(all.pipelineMs / 1000)} s in createComputePipeline)`);
    console.log(`  GPU live peak ${MiB(run.stats.peakLive)} MiB (largest stage growth ${MiB(act)} MiB${r.weightBytes ? `; peak / (weights + that) = ${goal.toFixed(3)}` : ''}), largest buffer ${MiB(run.stats.largest)} MiB; wasm heap ${MiB(run.stats.wasmBytes)} MiB`);
  }
  if (first && warm0) console.log(`first / warm: ${(first.seconds / warm0.seconds).toFixed(2)}${r.load.warmup ? ' (after the warm-up)' : ' (no warm-up)'}`);
  if (r.unet) {
    const u = diffCounts(r.unet.before, r.unet.stats);
    console.log(`bare UNet call (unetForward, batch 2): ${s1(r.unet.seconds)} s, dispatches ${u.dispatches}, submits ${u.submits}, read-backs ${u.readbacks}, new pipelines ${u.pipelines}; GPU live peak ${MiB(r.unet.stats.peakLive)} MiB; wasm heap ${MiB(r.unet.stats.wasmBytes)} MiB`);
    console.log(`  dispatches by kernel: ${Object.entries(r.unet.stats.byKernel).sort((a, b) => b[1] - a[1]).slice(0, 12).map(([k, v]) => `${v} ${k.slice(0, 40)}`).join(', ')}`);
  }
  console.log(`browser RSS peak: ${MiB(r.rss.total)} MiB in all (${Object.entries(r.rss.byType).map(([k, v]) => `${k} ${MiB(v)}`).join(', ')})`);
}

if (opt.native !== 'none' && modelDir && stepsList.length) {
  const cli = zepoCli();
  console.log(`\n## The same work natively (${path.relative(ROOT, cli)} bench: the same structure, random f32 weights)`);
  const args = ['bench', '--backend', opt.native, '--sizes', sizes.join(','), '--steps', stepsList.join(',')];
  try {
    console.log(execFileSync(cli, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 24 }).toString().trim());
  } catch (e) {
    console.log(`zepo bench failed: ${e.message}`);
  }
}
if (opt.json) fs.writeFileSync(opt.json, JSON.stringify({ model: modelDir || model, device, results }, null, 1));
