// The page in headless Chromium on WebGPU (SwiftShader): loads the tiny model in the engine
// Worker, runs it on the reference inputs and compares with PyTorch's output; and without
// WebGPU, shows the message saying so.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ROOT, assertEngineBuilt, launch, readSafetensors, relError, screenshot, serve } from './helpers.mjs';

const TOL = 1e-4;
const LOAD_TIMEOUT = 10 * 60_000;

let server;
before(async () => {
  assertEngineBuilt();
  server = await serve();
});
after(() => server?.close());

describe('page on WebGPU', () => {
  let browser;
  before(async () => { browser = await launch({ webgpu: true }); });
  after(async () => {
    if (browser?.logs.length) console.log(browser.logs.join('\n'));
    await browser?.close();
  });

  test('loads the tiny UNet and reports the device', { timeout: LOAD_TIMEOUT }, async () => {
    const { page } = browser;
    // ?warmup=0: the kernels are checked here, not the page's warm-up (a stylization at 512²).
    await page.goto(`${server.url}/?warmup=0`);
    await page.waitForFunction(() => ['loaded', 'error', 'no-webgpu'].includes(document.body.dataset.state),
      null, { timeout: LOAD_TIMEOUT, polling: 250 });
    const state = await page.evaluate(() => ({
      state: document.body.dataset.state,
      status: document.getElementById('status').textContent,
      error: document.getElementById('error').textContent,
      device: window.zepo.device,
      info: window.zepo.info,
    }));
    await screenshot(page, 'page-loaded.png');
    assert.equal(state.state, 'loaded', `page state ${state.state}: ${state.status} ${state.error}`);
    assert.match(state.status, /model loaded/i);
    assert.equal(state.device.backend, 'BrowserWebGpu');
    // SwiftShader has no shader-f16: 'auto' precision is f32 here.
    assert.equal(state.device.precision, state.device.shader_f16 === 'true' ? 'f16' : 'f32');
    const size = (p) => fs.statSync(path.join(ROOT, 'weights/tiny-lcm', p)).size;
    assert.equal(state.info.bytes, size('unet/diffusion_pytorch_model.safetensors') + size('vae/diffusion_pytorch_model.safetensors'));
    const text = await page.textContent('#device-info');
    assert.ok(text.includes('BrowserWebGpu'), `device info shown on the page: ${text}`);
    // scripts/test.sh: headless Chromium without a GPU must run WebGPU on SwiftShader.
    if (process.env.ZEPO_TEST_WEBGPU_ARCH) assert.equal(state.device.gpu_architecture, process.env.ZEPO_TEST_WEBGPU_ARCH);
    console.log(`device: ${JSON.stringify(state.device)}`);
    console.log(`model (UNet + VAE): ${state.info.bytes} bytes in ${state.info.requests} requests, loaded in ${state.info.seconds.toFixed(2)} s`);
  });

  test('UNet output matches PyTorch within 1e-4 of max |ref|', { timeout: LOAD_TIMEOUT }, async () => {
    const fx = readSafetensors(path.join(ROOT, 'tests/fixtures/components.safetensors'));
    for (const suffix of ['', '_12']) {
      const sample = fx[`unet_in_sample${suffix}`];
      const timesteps = fx[`unet_in_timestep${suffix}`];
      const context = fx[`unet_in_ehs${suffix}`] || fx.unet_in_ehs;
      const expected = fx[`unet_out${suffix}`];
      const batch = sample.shape[0];
      // unet_in_ehs holds the context for the largest batch; a smaller batch uses its first rows.
      const ctx = context.values.slice(0, batch * context.values.length / context.shape[0]);
      const { output, seconds } = await browser.page.evaluate(
        async ([s, shape, t, c]) => {
          const r = await window.zepo.unetForward(s, shape, t, c);
          return { output: Array.from(r.output), seconds: r.seconds };
        },
        [sample.values, sample.shape, timesteps.values, ctx],
      );
      const err = relError(output, expected.values);
      console.log(`unet_out${suffix} ${JSON.stringify(sample.shape)}: max abs error ${err.toExponential(3)} of max |ref|, ${seconds.toFixed(2)} s`);
      assert.ok(err <= TOL, `unet_out${suffix}: error ${err.toExponential(3)} > ${TOL}`);
    }
  });

  test('bad input is a clear error, not a crash', { timeout: 60_000 }, async () => {
    const message = await browser.page.evaluate(async () => {
      try {
        await window.zepo.unetForward([1, 2, 3], [1, 4, 8, 8], [10], new Array(77 * 32).fill(0));
        return 'no error';
      } catch (e) {
        return e.message;
      }
    });
    assert.match(message, /sample has 3 values/);
  });
});

test('without WebGPU the page says so', { timeout: 120_000 }, async () => {
  const browser = await launch({ webgpu: false });
  try {
    const { page } = browser;
    // ?warmup=0: the kernels are checked here, not the page's warm-up (a stylization at 512²).
    await page.goto(`${server.url}/?warmup=0`);
    await page.waitForFunction(() => ['loaded', 'error', 'no-webgpu'].includes(document.body.dataset.state),
      null, { timeout: 100_000, polling: 250 });
    const state = await page.evaluate(() => document.body.dataset.state);
    const message = await page.textContent('#error');
    await screenshot(page, 'page-no-webgpu.png');
    assert.equal(state, 'no-webgpu', `state ${state}: ${message}`);
    assert.match(message, /WebGPU/);
    assert.ok(await page.isVisible('#error'), 'the message is visible');
  } finally {
    await browser.close();
  }
});
