// The page's own features, in headless Chromium on WebGPU (SwiftShader), one browser, one
// stylization (tiny model, 64², 2 steps, no warm-up):
// - www/model-size.js: an fp16 bundle's sizes from its manifest (no other request), a diffusers
//   layout's from HEAD requests in the engine's order (fp16 variant, its shards, plain files), the
//   Range fallback when HEAD says nothing, `stored` after a load;
// - ?confirm=1: the page says the download size (the tiny model's real file sizes) and the
//   precision choice, and downloads nothing until "Download model" is pressed; the choice is
//   remembered (localStorage) and passed to the engine;
// - input: a style picked from the keyboard (Tab to its drop zone, Enter opens the file picker),
//   a portrait pasted (a paste event with an image file goes to the first empty zone), Stylize
//   pressed with Enter;
// - the result: the before/after slider moves with the keyboard and changes what is revealed; the
//   run's settings list the seed; the download's file name says what was made;
// - share (www/share.js): the result file to the system's share sheet (navigator.share stubbed),
//   a cancelled share, and the download where files cannot be shared;
// - screenshots at desktop (1280×900) and phone (390×844) width: nothing overflows horizontally on
//   the phone, and the result, the slider and the download link are visible;
// - the camera (www/camera.js), with Chromium's fake capture device: preview, shutter, the stream
//   stopped however the dialog closes, denied / missing / busy cameras, a phone's system camera.
// - files opened with the app (launchQueue, stubbed: Chromium gives it to installed apps only).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { ROOT, assertEngineBuilt, decodePng, launch, screenshot, serve } from './helpers.mjs';

const T = 10 * 60_000;
const TINY = path.join(ROOT, 'weights/tiny-lcm');
const BUNDLE = path.join(ROOT, 'weights/tiny-lcm-bundle');
const QUERY = '?resolution=64&steps=2&warmup=0&seed=7';
const STYLE_NAME = 'Van Gogh — Starry Night (1).PNG';
const EXPECTED_FILE = 'zepo-portrait-van-gogh-starry-night-1-seed7-64x64.png';

const fileSize = (dir, rel) => fs.statSync(path.join(dir, rel)).size;
const MB = (n) => `${(n / 2 ** 20).toFixed(1)} MB`;
// The tiny diffusers model: its load (UNet, VAE) and its text encoder (every first run needs it).
const LOAD = fileSize(TINY, 'unet/diffusion_pytorch_model.safetensors') + fileSize(TINY, 'vae/diffusion_pytorch_model.safetensors');
const TEXT = fileSize(TINY, 'text_encoder/model.safetensors');

// A hub-style layout, for sizes only (the bytes are never parsed): the UNet as fp16 shards with
// an index, the VAE as one plain file, the text encoder in both forms (the fp16 one counts).
const HUB_FILES = {
  'unet/diffusion_pytorch_model.fp16.safetensors.index.json': JSON.stringify({ metadata: {}, weight_map: { a: 'u1.safetensors', b: 'u2.safetensors', c: 'u1.safetensors' } }),
  'unet/u1.safetensors': 1000,
  'unet/u2.safetensors': 2345,
  'unet/diffusion_pytorch_model.safetensors': 9999,
  'vae/diffusion_pytorch_model.safetensors': 500,
  'text_encoder/model.fp16.safetensors': 300,
  'text_encoder/model.safetensors': 600,
};

let server;
let bundleServer;
let hubServer;
let hubDir;
let browser;
before(async () => {
  assertEngineBuilt();
  hubDir = fs.mkdtempSync(path.join(os.tmpdir(), 'zepo-hub-sizes-'));
  for (const [rel, content] of Object.entries(HUB_FILES)) {
    fs.mkdirSync(path.dirname(path.join(hubDir, rel)), { recursive: true });
    fs.writeFileSync(path.join(hubDir, rel), typeof content === 'number' ? Buffer.alloc(content) : content);
  }
  server = await serve();
  bundleServer = await serve({ model: BUNDLE });
  hubServer = await serve({ model: hubDir });
  browser = await launch({ webgpu: true });
});
after(async () => {
  if (browser?.logs.length) console.log(browser.logs.slice(-30).join('\n'));
  await browser?.close();
  await server?.close();
  await bundleServer?.close();
  await hubServer?.close();
  if (hubDir) fs.rmSync(hubDir, { recursive: true, force: true });
});

const modelRequests = (srv) => srv.requests.filter((r) => r.url.startsWith('/model/'));

test('model-size.js: bundle sizes from the manifest, diffusers sizes from HEAD (or a Range GET)', { timeout: T }, async () => {
  const { page } = browser;
  await page.goto(`${server.url}/package.json`);
  server.requests.length = 0;
  bundleServer.requests.length = 0;
  const out = await page.evaluate(async ([bundleUrl, hubUrl]) => {
    const { modelSize } = await import('/www/model-size.js');
    const bundle = await modelSize(bundleUrl);
    const diffusers = await modelSize('/model');
    // A server whose HEAD answers carry no length: the one-byte Range GET tells the total.
    const noHeadLength = (url, init = {}) => (init.method === 'HEAD' ? Promise.resolve(new Response(null, { status: 200 })) : fetch(url, init));
    const ranged = await modelSize('/model', { fetch: noHeadLength });
    const hub = await modelSize(hubUrl);
    const hubPlain = await modelSize(hubUrl, { variant: null });
    let missing;
    try {
      await modelSize('/nowhere');
    } catch (e) {
      missing = { name: e.name, message: e.message };
    }
    return { bundle, diffusers, ranged, hub, hubPlain, missing };
  }, [`${bundleServer.url}/model/`, `${hubServer.url}/model`]);

  const m = JSON.parse(fs.readFileSync(path.join(BUNDLE, 'manifest.json'), 'utf8'));
  const part = (p) => p.config.size + p.shards.reduce((a, s) => a + s.size, 0);
  const bundleLoad = m.scheduler.size + part(m.parts.unet) + part(m.parts.vae) + m.prompt_embeddings.size;
  const bundleText = part(m.parts.text_encoder) + m.tokenizer.reduce((a, t) => a + t.size, 0);
  assert.deepEqual(
    { layout: out.bundle.layout, bytes: out.bundle.bytes, text: out.bundle.textEncoderBytes, always: out.bundle.textEncoderAlways, stored: out.bundle.stored },
    { layout: 'fp16-bundle', bytes: bundleLoad, text: bundleText, always: false, stored: false });
  assert.deepEqual(modelRequests(bundleServer).map((r) => `${r.method} ${r.url}`), ['GET /model/manifest.json'],
    'a bundle\'s sizes cost one request: its manifest');

  assert.deepEqual(
    { layout: out.diffusers.layout, bytes: out.diffusers.bytes, text: out.diffusers.textEncoderBytes, always: out.diffusers.textEncoderAlways, stored: out.diffusers.stored },
    { layout: 'diffusers', bytes: LOAD, text: TEXT, always: true, stored: false });
  assert.deepEqual([out.ranged.bytes, out.ranged.textEncoderBytes], [LOAD, TEXT], 'the Range fallback gives the same sizes');
  // The fp16 variant's files are asked first (ZePo.load's default); the tiny model has none.
  const ranges = modelRequests(server).filter((r) => r.range);
  assert.deepEqual(ranges.filter((r) => r.status === 206).map((r) => r.url).sort(),
    ['/model/text_encoder/model.safetensors', '/model/unet/diffusion_pytorch_model.safetensors', '/model/vae/diffusion_pytorch_model.safetensors'],
    'one Range GET per weight file');
  assert.ok(ranges.every((r) => r.range === 'bytes=0-0' && (r.status === 206 || (r.status === 404 && r.url.endsWith('.fp16.safetensors')))),
    JSON.stringify(ranges));
  // The engine's order: the fp16 variant (a file, or shards with an index) before the plain file.
  assert.deepEqual([out.hub.bytes, out.hub.textEncoderBytes], [1000 + 2345 + 500, 300], 'fp16 shards and files preferred');
  assert.deepEqual([out.hubPlain.bytes, out.hubPlain.textEncoderBytes], [9999 + 500, 600], 'variant null: the plain files');
  assert.equal(out.missing?.name, 'NotFound', JSON.stringify(out.missing));
  assert.match(out.missing.message, /no weights found/);
  console.log(`model-size: bundle ${bundleLoad} + ${bundleText} bytes (text encoder), diffusers ${LOAD} + ${TEXT}; missing: ${out.missing.message}`);
});

test('the page: size before the download, paste and keyboard input, before/after, settings, file name, phone layout', { timeout: T }, async () => {
  const t0 = Date.now();
  const { page } = browser;
  await page.setViewportSize({ width: 1280, height: 900 });
  const requests = [];
  page.on('request', (r) => requests.push({ url: r.url(), method: r.method(), body: r.postDataBuffer()?.length || 0 }));
  server.requests.length = 0;
  await page.goto(`${server.url}/${QUERY}&confirm=1`);

  // The confirmation step: the size, the precision, nothing downloaded yet.
  await page.waitForFunction(() => ['confirm', 'loaded', 'error', 'no-webgpu'].includes(document.body.dataset.state), null, { timeout: 60_000 });
  assert.equal(await page.evaluate(() => document.body.dataset.state), 'confirm', await page.textContent('#error'));
  assert.ok(await page.isVisible('#confirm-download'));
  const confirm = await page.evaluate(() => ({
    text: document.getElementById('confirm-text').textContent,
    bytes: Number(document.getElementById('confirm').dataset.bytes),
    note: document.getElementById('precision-note').textContent,
    f16: document.body.dataset.f16,
    f16Shown: !document.getElementById('precision-f16-label').hidden,
    engine: document.getElementById('model-info').textContent,
  }));
  assert.equal(confirm.bytes, LOAD + TEXT, 'the first download: UNet, VAE and text encoder (a diffusers model encodes every prompt)');
  assert.ok(confirm.text.includes(`This model downloads ${MB(LOAD + TEXT)} once`) && /then works offline/.test(confirm.text), confirm.text);
  // SwiftShader has no shader-f16: f16 is not offered, and the page says f32 is used.
  assert.equal(confirm.f16, 'false');
  assert.equal(confirm.f16Shown, false);
  assert.match(confirm.note, /f32 is used/);
  assert.ok(confirm.engine.includes(MB(LOAD + TEXT)), `the Engine panel says the size: ${confirm.engine}`);
  await screenshot(page, 'page-confirm.png');
  await page.waitForTimeout(1000);
  const early = modelRequests(server);
  assert.ok(early.every((r) => r.method === 'HEAD' || r.url === '/model/manifest.json' || r.url.endsWith('.safetensors.index.json')),
    `before the button only manifest.json, shard indexes and HEAD requests: ${early.map((r) => `${r.method} ${r.url}`)}`);
  assert.ok(!early.some((r) => r.method === 'GET' && r.url.endsWith('.safetensors')), 'no weights downloaded');

  // Keyboard: from auto, ArrowDown to f32 (f16 is not offered), Tab to the button, Enter.
  await page.focus('input[name="precision"]:checked');
  await page.keyboard.press('ArrowDown');
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'confirm-download');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => ['loaded', 'error'].includes(document.body.dataset.state), null, { timeout: T, polling: 250 });
  assert.equal(await page.evaluate(() => document.body.dataset.state), 'loaded', await page.textContent('#error'));
  const loaded = await page.evaluate(() => ({ stored: localStorage.getItem('zepo-precision'), precision: window.zepo.info.precision }));
  assert.deepEqual(loaded, { stored: 'f32', precision: 'f32' }, 'the chosen precision is remembered and used');
  assert.ok(modelRequests(server).some((r) => r.method === 'GET' && r.url.endsWith('.safetensors')), 'the weights came after the button');

  // The style from the keyboard: Tab from the portrait's zone (past its example and camera
  // buttons) to the style's zone, Enter opens the file picker.
  await page.focus('#content-zone');
  for (let i = 0; i < 3; i++) await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'style-zone');
  // Enter opens it. Headless Chromium once reported no file chooser for it (1 run in 3 here,
  // cause unknown), so Space, which opens it too, is a second try; the log says when it is used.
  let chooser;
  for (const key of ['Enter', ' ']) {
    [chooser] = await Promise.all([page.waitForEvent('filechooser', { timeout: 10_000 }).catch(() => null), page.keyboard.press(key)]);
    if (chooser) break;
    console.log(`no file chooser after ${JSON.stringify(key)} on the style zone: trying Space`);
  }
  assert.ok(chooser, 'Enter or Space on the focused style zone opens the file picker');
  await chooser.setFiles({ name: STYLE_NAME, mimeType: 'image/png', buffer: fs.readFileSync(path.join(ROOT, 'www/examples/style.png')) });
  await page.waitForFunction(() => !document.getElementById('style-preview').hidden);

  // The portrait pasted (nothing focused: the first empty zone).
  await page.evaluate(async () => {
    document.activeElement?.blur();
    const bytes = await (await fetch('/www/examples/portrait.png')).arrayBuffer();
    const data = new DataTransfer();
    data.items.add(new File([bytes], 'image.png', { type: 'image/png' }));
    document.body.dispatchEvent(new ClipboardEvent('paste', { clipboardData: data, bubbles: true, cancelable: true }));
  });
  await page.waitForFunction(() => !document.getElementById('content-preview').hidden);
  assert.match(await page.textContent('#status'), /Pasted the portrait/);

  // Stylize from the keyboard: Tab until it has the focus, Enter.
  let focused = null;
  for (let i = 0; i < 20 && focused !== 'stylize'; i++) {
    await page.keyboard.press('Tab');
    focused = await page.evaluate(() => document.activeElement?.id);
  }
  assert.equal(focused, 'stylize', 'Tab reaches the Stylize button');
  const focusStyle = await page.evaluate(() => {
    const s = getComputedStyle(document.activeElement);
    return { outline: s.outlineStyle, width: s.outlineWidth, shadow: s.boxShadow };
  });
  assert.ok(focusStyle.outline !== 'none' || focusStyle.shadow !== 'none', `a visible focus style: ${JSON.stringify(focusStyle)}`);
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => ['done', 'error', 'cancelled'].includes(document.body.dataset.state), null, { timeout: T, polling: 250 });
  const result = await page.evaluate(() => ({
    state: document.body.dataset.state,
    error: document.getElementById('error').textContent,
    result: window.zepo.result,
    stages: [...new Set(window.zepo.progress.map((p) => p.stage))],
    before: [document.getElementById('compare-before').naturalWidth, document.getElementById('compare-before').naturalHeight],
  }));
  assert.equal(result.state, 'done', result.error);
  for (const st of ['download', 'denoise', 'decode']) assert.ok(result.stages.includes(st), `progress stage ${st} shown: ${result.stages}`);
  assert.deepEqual([result.result.width, result.result.height], [64, 64]);
  assert.deepEqual(result.before, [64, 64], 'the portrait under the slider is at the result\'s size');
  console.log(`page: stylize ${result.result.seconds.toFixed(1)} s`);

  // The slider: the keyboard moves it, and what is revealed follows.
  const revealed = () => page.evaluate(() => ({
    value: document.getElementById('compare').dataset.reveal,
    clip: getComputedStyle(document.getElementById('compare-before')).clipPath,
  }));
  const start = await revealed();
  await page.focus('#compare-slider');
  await page.keyboard.press('Home');
  const left = await revealed();
  for (let i = 0; i < 3; i++) await page.keyboard.press('ArrowRight');
  const moved = await revealed();
  assert.equal(start.value, '50');
  assert.deepEqual([left.value, moved.value], ['0', '3']);
  assert.notEqual(left.clip, start.clip);
  assert.notEqual(moved.clip, left.clip);
  await page.keyboard.press('End');
  await page.keyboard.press('PageDown');
  const end = await revealed();
  assert.ok(Number(end.value) < 100 && Number(end.value) >= 80, `PageDown from the end: ${end.value}`);
  await page.evaluate(() => {
    const slider = document.getElementById('compare-slider');
    slider.value = '50';
    slider.dispatchEvent(new Event('input', { bubbles: true }));
  });

  // The settings list: every option, the seed, the model, the time.
  const settings = await page.evaluate(() => {
    const dl = document.getElementById('run-settings');
    const out = {};
    for (const dt of dl.querySelectorAll('dt')) out[dt.textContent] = dt.nextElementSibling.textContent;
    return { out, visible: !document.getElementById('run-info').hidden };
  });
  assert.ok(settings.visible);
  assert.equal(settings.out.seed, '7');
  for (const k of ['resolution', 'steps', 'strength', 'cfg', 'styleGuidance', 'startLayer', 'endLayer', 'tome', 'prompt', 'negativePrompt', 'model', 'time', 'precision']) {
    assert.ok(k in settings.out, `settings list ${k}: ${JSON.stringify(settings.out)}`);
  }
  assert.equal(settings.out.model, `${server.url}/model`);

  // The download, from the keyboard: its file name says what was made.
  await page.focus('#download');
  const [download] = await Promise.all([page.waitForEvent('download'), page.keyboard.press('Enter')]);
  assert.equal(download.suggestedFilename(), EXPECTED_FILE);
  const file = path.join(os.tmpdir(), `zepo-page-${process.pid}.png`);
  await download.saveAs(file);
  const downloaded = fs.readFileSync(file);
  const png = decodePng(downloaded);
  fs.rmSync(file, { force: true });
  assert.deepEqual([png.width, png.height], [64, 64]);

  // Share: the same file (name, bytes, so its embedded settings) to the system's share sheet;
  // a cancelled share is no error and downloads nothing; where files cannot be shared, the
  // download instead.
  await page.evaluate(() => {
    window.__shared = [];
    navigator.canShare = (data) => !!data?.files?.length;
    navigator.share = async (data) => {
      const f = data.files[0];
      window.__shared.push({ name: f.name, type: f.type, bytes: Array.from(new Uint8Array(await f.arrayBuffer())) });
    };
  });
  assert.ok(await page.isVisible('#share'));
  await page.click('#share');
  await page.waitForFunction(() => window.zepo.shared === 'shared');
  const sharedFiles = await page.evaluate(() => window.__shared);
  assert.equal(sharedFiles.length, 1);
  assert.equal(sharedFiles[0].name, EXPECTED_FILE);
  assert.equal(sharedFiles[0].type, 'image/png');
  assert.ok(Buffer.from(sharedFiles[0].bytes).equals(downloaded), 'the shared file is the downloaded PNG, settings included');
  await page.evaluate(() => {
    window.zepo.shared = null;
    navigator.share = async () => { throw new DOMException('the share sheet was closed', 'AbortError'); };
  });
  const [noDownload] = await Promise.all([page.waitForEvent('download', { timeout: 2000 }).catch(() => null), page.click('#share')]);
  await page.waitForFunction(() => window.zepo.shared === 'cancelled');
  assert.equal(noDownload, null, 'a cancelled share downloads nothing');
  assert.equal(await page.isVisible('#error'), false, 'a cancelled share is no error');
  await page.evaluate(() => { navigator.canShare = () => false; });
  const [fallback] = await Promise.all([page.waitForEvent('download'), page.click('#share')]);
  assert.equal(fallback.suggestedFilename(), EXPECTED_FILE);
  assert.match(await page.textContent('#status'), /downloaded instead/);

  // A loaded model is stored: its size is known without the network.
  const stored = await page.evaluate(async () => (await import('/www/model-size.js')).modelSize(window.zepo.model));
  assert.equal(stored.stored, true);

  // Desktop and phone widths.
  await page.evaluate(() => document.activeElement?.blur());
  await screenshot(page, 'page-desktop.png');
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(200);
  const phone = await page.evaluate(() => {
    const box = (id) => {
      const r = document.getElementById(id).getBoundingClientRect();
      return { left: r.left, right: r.right, width: r.width, height: r.height };
    };
    const wide = [...document.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right > innerWidth + 0.5)
      .map((e) => e.id || e.className || e.tagName).slice(0, 5);
    return { scrollWidth: document.documentElement.scrollWidth, innerWidth, wide,
      result: box('result'), slider: box('compare-slider'), download: box('download') };
  });
  await screenshot(page, 'page-phone.png');
  assert.ok(phone.scrollWidth <= phone.innerWidth, `nothing overflows at phone width: scrollWidth ${phone.scrollWidth} > ${phone.innerWidth} (${phone.wide})`);
  for (const id of ['result', 'compare-slider', 'download']) {
    assert.ok(await page.isVisible(`#${id}`), `#${id} is visible at phone width`);
    const b = phone[id === 'compare-slider' ? 'slider' : id];
    assert.ok(b.width > 0 && b.height > 0 && b.left >= 0 && b.right <= phone.innerWidth, `#${id} within the width: ${JSON.stringify(b)}`);
  }
  assert.ok(phone.result.width >= 250, `the result is large on a phone: ${phone.result.width}px`);
  await page.setViewportSize({ width: 1280, height: 900 });

  // No request carries image bytes: only bodiless GETs/HEADs, to the page's own server.
  for (const r of [...requests, ...server.requests]) assert.ok(!r.body && !r.bodyBytes, `a request with a body: ${JSON.stringify(r)}`);
  assert.ok(requests.every((r) => r.url.startsWith(server.url) || r.url.startsWith('blob:') || r.url.startsWith('data:')),
    `no other host: ${requests.map((r) => r.url).filter((u) => !u.startsWith(server.url))}`);
  console.log(`page test: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
});

test('the camera: live preview and shutter, the stream stopped however the dialog closes, denied and missing cameras, the phone\'s system camera', { timeout: T }, async () => {
  const page = await browser.context.newPage();
  try {
    await page.setViewportSize({ width: 1280, height: 900 });
    // No engine needed: the page waits at its download question.
    await page.goto(`${server.url}/${QUERY}&confirm=1`);
    await page.waitForFunction(() => document.body.dataset.state === 'confirm', null, { timeout: 60_000 });
    // Every stream the page gets, to check that its tracks end.
    await page.evaluate(() => {
      window.__streams = [];
      const get = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
      window.__realGetUserMedia = get;
      navigator.mediaDevices.getUserMedia = async (c) => {
        const s = await get(c);
        window.__streams.push(s);
        return s;
      };
    });
    const ended = () => page.evaluate(() => window.__streams.map((s) => s.getTracks().every((t) => t.readyState === 'ended')));

    // Desktop: the preview, then the shutter.
    await page.click('#content-drop button.camera');
    await page.waitForFunction(() => document.getElementById('camera-video').videoWidth > 0 && !document.getElementById('camera-shutter').disabled);
    assert.equal(await page.evaluate(() => window.zepo.camera.active), true);
    await screenshot(page, 'camera-desktop.png');
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(200);
    const phone = await page.evaluate(() => {
      const r = document.getElementById('camera-dialog').getBoundingClientRect();
      const shutter = document.getElementById('camera-shutter').getBoundingClientRect();
      return { left: r.left, right: r.right, innerWidth, scrollWidth: document.documentElement.scrollWidth, shutter: shutter.bottom <= innerHeight };
    });
    await screenshot(page, 'camera-phone.png');
    assert.ok(phone.left >= 0 && phone.right <= phone.innerWidth && phone.scrollWidth <= phone.innerWidth, `the camera dialog fits a phone: ${JSON.stringify(phone)}`);
    assert.ok(phone.shutter, 'the shutter is on screen at phone size');
    await page.setViewportSize({ width: 1280, height: 900 });
    const frame = await page.evaluate(() => [document.getElementById('camera-video').videoWidth, document.getElementById('camera-video').videoHeight]);
    await page.click('#camera-shutter');
    await page.waitForFunction(() => !document.getElementById('content-preview').hidden && document.getElementById('content-preview').naturalWidth > 0);
    const taken = await page.evaluate(() => ({
      open: document.getElementById('camera-dialog').open,
      size: [document.getElementById('content-preview').naturalWidth, document.getElementById('content-preview').naturalHeight],
      status: document.getElementById('status').textContent,
      active: window.zepo.camera.active,
      source: document.getElementById('camera-video').srcObject,
    }));
    assert.equal(taken.open, false);
    assert.deepEqual(taken.size, frame, 'the portrait is the camera\'s frame');
    assert.match(taken.status, /Took the portrait with the camera/);
    assert.equal(taken.active, false);
    assert.equal(taken.source, null);
    assert.deepEqual(await ended(), [true], 'the stream stopped when the photo was taken');

    // Closed with Escape, and with its button, before a photo: the stream stops all the same.
    for (const close of [() => page.keyboard.press('Escape'), () => page.click('#camera-cancel')]) {
      await page.click('#style-drop button.camera');
      await page.waitForFunction(() => !document.getElementById('camera-shutter').disabled);
      await close();
      await page.waitForFunction(() => !document.getElementById('camera-dialog').open);
    }
    assert.deepEqual(await ended(), [true, true, true], 'every stream stopped');
    assert.equal(await page.evaluate(() => document.getElementById('style-preview').hidden), true, 'no style image was taken');

    // A denied permission, a missing camera, a busy one: a message that says which.
    for (const [name, said] of [['NotAllowedError', /permission was denied/], ['NotFoundError', /No camera was found/], ['NotReadableError', /another app/]]) {
      await page.evaluate((n) => { navigator.mediaDevices.getUserMedia = async () => { throw new DOMException('refused', n); }; }, name);
      await page.click('#content-drop button.camera');
      await page.waitForFunction(() => !document.getElementById('camera-message').hidden);
      const shown = await page.evaluate(() => ({ text: document.getElementById('camera-message').textContent, shutter: document.getElementById('camera-shutter').disabled }));
      assert.match(shown.text, said, name);
      assert.equal(shown.shutter, true, `${name}: no shutter without a picture`);
      if (name === 'NotAllowedError') await screenshot(page, 'camera-denied.png');
      await page.click('#camera-cancel');
    }

    // A phone (a coarse pointer): the system camera through the file input's capture.
    await page.evaluate(() => {
      const real = window.matchMedia.bind(window);
      window.matchMedia = (q) => (q === '(pointer: coarse)' ? { matches: true, media: q, addEventListener() {}, removeEventListener() {} } : real(q));
    });
    const [chooser] = await Promise.all([page.waitForEvent('filechooser'), page.click('#style-drop button.camera')]);
    assert.equal(await page.evaluate(() => document.getElementById('camera-capture').getAttribute('capture')), 'environment', 'the back camera for a style photo');
    assert.equal(await page.evaluate(() => document.getElementById('camera-dialog').open), false, 'no preview dialog on a phone');
    await chooser.setFiles({ name: 'IMG_0001.png', mimeType: 'image/png', buffer: fs.readFileSync(path.join(ROOT, 'www/examples/style.png')) });
    await page.waitForFunction(() => !document.getElementById('style-preview').hidden);
    assert.match(await page.getAttribute('#style-zone', 'aria-label'), /IMG_0001\.png/);
  } finally {
    await page.close();
  }
});

test('opened with the app (file_handlers, launchQueue): one image is the portrait, two are the portrait and the style', { timeout: T }, async () => {
  const page = await browser.context.newPage();
  try {
    // Chromium gives launchQueue to an installed app only: the page gets one whose consumer
    // the test calls as the browser would.
    await page.addInitScript(() => {
      Object.defineProperty(window, 'launchQueue', { configurable: true, value: { setConsumer(f) { window.__launch = f; } } });
    });
    await page.goto(`${server.url}/${QUERY}&confirm=1`);
    await page.waitForFunction(() => document.body.dataset.state === 'confirm' && window.__launch, null, { timeout: 60_000 });
    await page.evaluate(() => caches.delete('zepo-inputs-v1'));
    const open = (names) => page.evaluate(async (list) => {
      const files = await Promise.all(list.map(async ([url, name]) => new File([await (await fetch(url)).blob()], name, { type: 'image/png' })));
      await window.__launch({ files: files.map((f) => ({ getFile: async () => f })) });
    }, names);
    const labels = () => page.evaluate(() => ['content', 'style'].map((w) => (document.getElementById(`${w}-preview`).hidden ? null : document.getElementById(`${w}-zone`).getAttribute('aria-label'))));
    await open([['/www/examples/portrait.png', 'me.png'], ['/www/examples/style.png', 'art.png']]);
    await page.waitForFunction(() => !document.getElementById('style-preview').hidden);
    const [content, style] = await labels();
    assert.match(content, /me\.png/);
    assert.match(style, /art\.png/);
    assert.match(await page.textContent('#status'), /Opened: the portrait and the style image/);
    // One more: the portrait is there, so it is the style.
    await open([['/www/examples/style.png', 'other.png']]);
    await page.waitForFunction(() => /other\.png/.test(document.getElementById('style-zone').getAttribute('aria-label')));
    assert.match((await labels())[0], /me\.png/, 'the portrait stays');
  } finally {
    await page.close();
  }
});

