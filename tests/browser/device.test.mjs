// A lost GPU device (driver reset, GPU removed, tab's device destroyed) is a clear `DeviceLost`
// error, never a hang or a wrong image, and the next call gets a fresh engine that works; the
// same for the GPU running out of memory (`OutOfMemory`).
// The test loses the device for real: it serves the engine Worker with a prelude that keeps the
// GPUDevice the engine asks for and calls its destroy() on request (the product is unchanged).
// Out of memory cannot be provoked on SwiftShader (a buffer over the limits is a validation
// error, not OOM), so the prelude reports it as the browser does when an allocation outside an
// error scope fails: a GPUOutOfMemoryError in an `uncapturederror` event on the device.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import path from 'node:path';
import { ROOT, assertEngineBuilt, assertMatchesNative, decodePng, inPage, launch, readSafetensors, serve } from './helpers.mjs';

const T = 10 * 60_000;
const OPTS = { model: '/model', resolution: 64, steps: 2, seed: 7 };
// The native CLI's output for OPTS (as in stylize.test.mjs).
const REF = path.join(ROOT, 'tests/fixtures/web/tiny_r64_s2_seed7.safetensors');

// Runs before worker.js's own code (imports are hoisted above it, and only declare things).
const PRELUDE = `
const zepoRequestDevice = GPUAdapter.prototype.requestDevice;
GPUAdapter.prototype.requestDevice = async function (...args) {
  const device = await zepoRequestDevice.apply(this, args);
  self.zepoTestDevices = [...(self.zepoTestDevices || []), device];
  return device;
};
self.addEventListener('message', ({ data }) => {
  if (data?.type === 'test:destroy-device') for (const d of self.zepoTestDevices || []) d.destroy();
  if (data?.type === 'test:out-of-memory') {
    const error = new GPUOutOfMemoryError('Out of memory: test allocation of 117964800 bytes failed');
    for (const d of self.zepoTestDevices || []) d.dispatchEvent(new GPUUncapturedErrorEvent('uncapturederror', { error }));
  }
});
`;

let server;
let browser;
before(async () => {
  assertEngineBuilt();
  server = await serve();
  browser = await launch({ webgpu: true });
  await browser.context.route('**/www/worker.js', async (route) => {
    const original = await route.fetch();
    await route.fulfill({ response: original, body: PRELUDE + (await original.text()) });
  });
});
after(async () => {
  if (browser?.logs.length) console.log(browser.logs.slice(-30).join('\n'));
  await browser?.close();
  await server?.close();
});


// One flow, so that the one full run on a new engine serves both: a device lost between runs and
// during one, the GPU out of memory during one, then stylize()'s shared engine (a new Worker with
// a new device) gives the first run's image, which is the native pipeline's.
test('a lost device is a DeviceLost error, out of memory an OutOfMemory error; the next call works on a new engine', { timeout: 2 * T }, async () => {
  await browser.page.goto(`${server.url}/package.json`);
  const out = await inPage(browser.page, async (api, opts, _weights, kit) => {
    const [content, style] = await kit.examples();
    const { attempt, bytes } = kit;

    const engine = await api.ZePo.load({ model: opts.model });
    const before = await bytes(await engine.stylize(content, style, opts));

    // Between two runs.
    engine.worker.postMessage({ type: 'test:destroy-device' });
    await new Promise((r) => setTimeout(r, 500));
    const between = await attempt(() => engine.stylize(content, style, opts));
    const afterLoss = await attempt(() => engine.stylize(content, style, opts));

    // In the middle of a run.
    const second = await api.ZePo.load({ model: opts.model });
    const midRun = await attempt(() => second.stylize(content, style, {
      ...opts, onProgress: kit.atStage('denoise', () => second.worker.postMessage({ type: 'test:destroy-device' })),
    }));

    // Out of memory in the middle of a run.
    const third = await api.ZePo.load({ model: opts.model });
    const oomMidRun = await attempt(() => third.stylize(content, style, {
      ...opts, onProgress: kit.atStage('denoise', () => third.worker.postMessage({ type: 'test:out-of-memory' })),
    }));
    const afterOom = await attempt(() => third.stylize(content, style, opts));

    // stylize()'s shared engine is a new Worker, with a new device.
    const recovered = await attempt(async () => bytes(await api.stylize(content, style, opts)));
    return { before, between, afterLoss, midRun, oomMidRun, afterOom, recovered };
  }, OPTS);
  assert.ok(!out.error, JSON.stringify(out.error));

  assert.equal(out.between.error?.name, 'DeviceLost', JSON.stringify(out.between));
  assert.match(out.between.error.message, /lost/i);
  assert.equal(out.afterLoss.error?.name, 'DeviceLost', `the dead engine keeps saying why: ${JSON.stringify(out.afterLoss)}`);
  assert.equal(out.midRun.error?.name, 'DeviceLost', `lost during a run: ${JSON.stringify(out.midRun)}`);

  assert.equal(out.oomMidRun.error?.name, 'OutOfMemory', JSON.stringify(out.oomMidRun));
  assert.match(out.oomMidRun.error.message, /^the GPU ran out of memory \(try a smaller resolution.*\): wgpu error: Out of Memory\. /);
  assert.doesNotMatch(out.oomMidRun.error.message, /panicked at|\.rs:/, 'no source location in the message');
  assert.equal(out.afterOom.error?.name, 'OutOfMemory', `the dead engine keeps saying why: ${JSON.stringify(out.afterOom)}`);
  console.log(`out of memory: ${out.oomMidRun.error.name}: ${out.oomMidRun.error.message}`);

  assert.ok(out.recovered.ok, `a new engine after the loss and the out-of-memory error: ${JSON.stringify(out.recovered.error)}`);
  const [a, b] = [decodePng(Buffer.from(out.before)), decodePng(Buffer.from(out.recovered.ok))];
  assert.deepEqual([b.width, b.height], [64, 64]);
  assert.deepEqual(Buffer.from(b.data), Buffer.from(a.data), 'the new engine gives the same image');
  assertMatchesNative(b, readSafetensors(REF).image, 'after DeviceLost and OutOfMemory');
});
