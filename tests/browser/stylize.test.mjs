// The JS API and the page, end to end, in headless Chromium on WebGPU (SwiftShader) with the
// tiny model served from localhost (the "CDN"):
// - stylize() resolves to a PNG of the requested size whose pixels match the native pipeline
//   (tests/fixtures/web/tiny_r64_s2_seed7.safetensors, made by the CLI, see REF_COMMAND);
// - a second portrait in the same style reuses the style's features, with the same result;
//   stylizeMany() runs a batch (per-item errors and cancels), each result as the single run's,
//   the style computed once (the engine's counters); an AVIF portrait, decoded by the browser,
//   gives the PNG portrait's result, and a HEIC (which Chromium cannot decode) is named;
// - the second visit downloads nothing (Cache API); an interrupted download resumes (Range);
// - truncated and tampered weights are clear errors naming the file, and are not cached;
// - an AbortSignal cancels a run; a non-image blob is a clear error;
// - colour: Display P3 and Adobe RGB JPEGs decode in wasm as littleCMS converts them (1/255), a
//   transparent PNG is composited onto white as stated;
// (The page flow, and that no request carries image bytes: page.test.mjs.)
// SwiftShader is slow: 64² images (8×8 latents) and 2 steps.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ROOT, assertEngineBuilt, assertMatchesNative, decodePng, inPage, launch, pngText, readSafetensors, screenshot, serve } from './helpers.mjs';
import { zepoCli } from './fullsize-model.mjs';
import { createServer } from '../../scripts/serve.mjs';

const T = 10 * 60_000;
const TINY = path.join(ROOT, 'weights/tiny-lcm');
// The tiny model served at /model/ (the API's own default is the public repository).
const OPTS = { model: '/model', resolution: 64, steps: 2, seed: 7 };
// How the reference was made (native CPU backend, f32):
const REF_COMMAND = 'zepo stylize --model weights/tiny-lcm --content www/examples/portrait.png ' +
  '--style www/examples/style.png --resolution 64 --steps 2 --seed 7 --save-tensor tests/fixtures/web/tiny_r64_s2_seed7.safetensors';
const REF = path.join(ROOT, 'tests/fixtures/web/tiny_r64_s2_seed7.safetensors');

const UNET = 'unet/diffusion_pytorch_model.safetensors';
const VAE = 'vae/diffusion_pytorch_model.safetensors';

let server;
before(async () => {
  assertEngineBuilt();
  server = await serve();
});
after(() => server?.close());

/** A blank same-origin page where the tests import the API. */
async function apiPage(page, base = server.url) {
  await page.goto(`${base}/package.json`);
}


const modelRequests = (requests) => requests.filter((r) => r.url.startsWith('/model/'));

describe('the JS API on WebGPU', () => {
  let browser;
  before(async () => { browser = await launch({ webgpu: true }); });
  after(async () => {
    if (browser?.logs.length) console.log(browser.logs.slice(-40).join('\n'));
    await browser?.close();
  });

  test('stylize() gives a PNG of the requested size matching the native pipeline', { timeout: T }, async () => {
    const { page } = browser;
    await apiPage(page);
    server.requests.length = 0;
    const t0 = Date.now();
    const out = await inPage(page, async (api, opts, _weights, kit) => {
      const [content, style] = await kit.examples();
      const events = [];
      const t = performance.now();
      const blob = await api.stylize(content, style, { ...opts, onProgress: (e) => events.push(e) });
      const first = (performance.now() - t) / 1000;
      return { type: blob.type, bytes: await kit.bytes(blob), events, first };
    }, OPTS);
    assert.ok(!out.error, JSON.stringify(out.error));
    console.log(`first stylize() (load + run): ${out.first.toFixed(1)} s (${((Date.now() - t0) / 1000).toFixed(1)} s wall)`);
    assert.equal(out.type, 'image/png');
    const png = decodePng(Buffer.from(out.bytes));
    assert.deepEqual([png.width, png.height, png.channels], [64, 64, 3]);

    const stages = new Set(out.events.map((e) => e.stage));
    for (const s of ['download', 'load', 'text', 'encode', 'features', 'denoise', 'decode', 'done']) {
      assert.ok(stages.has(s), `progress stage ${s} seen (${[...stages]})`);
    }
    const dl = out.events.filter((e) => e.stage === 'download');
    const last = dl[dl.length - 1];
    const weights = fs.statSync(path.join(TINY, UNET)).size + fs.statSync(path.join(TINY, VAE)).size;
    assert.ok(dl.some((e) => e.total === weights && e.loaded === weights), `download progress reaches ${weights} bytes`);
    assert.ok(last.loaded > 0);
    const denoise = out.events.filter((e) => e.stage === 'denoise');
    assert.deepEqual(denoise.map((e) => [e.step, e.steps]), [[0, 2], [1, 2]]);

    assertMatchesNative(png, readSafetensors(REF).image, `stylize() (reference: ${REF_COMMAND})`);
    for (const r of server.requests) {
      assert.ok(['GET', 'HEAD'].includes(r.method) && r.bodyBytes === 0, `request without a body: ${JSON.stringify(r)}`);
    }
  });

  test('a 3:4 portrait keeps its shape (fit contain), matches the native CLI, and its PNG carries the settings', { timeout: T }, async () => {
    // The first test's page and its shared engine (warm: a new engine compiles its GPU pipelines).
    const { page } = browser;
    const out = await inPage(page, async (api, opts, _weights, kit) => {
      const [content, style] = await kit.examples();
      // The middle 3:4 of the example portrait (pixels copied, not resampled).
      const bmp = await createImageBitmap(content);
      const h = bmp.height;
      const w = Math.round((h * 3) / 4);
      const canvas = new OffscreenCanvas(w, h);
      canvas.getContext('2d').drawImage(bmp, Math.floor((bmp.width - w) / 2), 0, w, h, 0, 0, w, h);
      const portrait = await canvas.convertToBlob({ type: 'image/png' });
      const blob = await api.stylize(portrait, style, { ...opts, fit: 'contain' });
      return { portrait: await kit.bytes(portrait), result: await kit.bytes(blob) };
    }, OPTS);
    assert.ok(!out.error, JSON.stringify(out.error));
    const png = decodePng(Buffer.from(out.result));
    assert.deepEqual([png.width, png.height], [48, 64], '3:4 in, 3:4 out (long side = resolution)');
    const settings = JSON.parse(pngText(out.result)['zepo-settings']);
    assert.deepEqual([settings.width, settings.height, settings.fit, settings.seed, settings.steps], [48, 64, 'contain', 7, 2]);
    assert.match(settings.model, /\/model$/);

    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zepo-fit-'));
    try {
      fs.writeFileSync(path.join(dir, 'portrait.png'), Buffer.from(out.portrait));
      const ref = path.join(dir, 'ref.safetensors');
      execFileSync(zepoCli(), ['stylize', '--quiet', '--model', TINY, '--content', path.join(dir, 'portrait.png'),
        '--style', path.join(ROOT, 'www/examples/style.png'), '--resolution', '64', '--steps', '2', '--seed', '7',
        '--fit', 'contain', '--save-tensor', ref], { stdio: ['ignore', 'pipe', 'pipe'] });
      assertMatchesNative(png, readSafetensors(ref).image, 'fit contain, 48×64 (native: zepo stylize --fit contain)');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('an engine keeps the style: a second portrait skips its features, same bits; stylizeMany runs a batch on it', { timeout: T }, async () => {
    const out = await inPage(browser.page, async (api, opts, _weights, kit) => {
      const [content, style] = await kit.examples();
      const engine = await api.ZePo.load({ model: opts.model });
      const before = await engine.hasStyle(style, opts);
      const a = await engine.stylize(content, style, opts);
      const timesA = engine.last;
      const cached = await engine.hasStyle(style, opts);
      const otherSeed = await engine.hasStyle(style, { ...opts, seed: 8 });
      const b = await engine.stylize(content, style, opts);
      const timesB = engine.last;
      // Calls queue: two at once both complete.
      const [c, d] = await Promise.all([engine.stylize(content, style, opts), engine.stylize(style, style, opts)]);
      // A batch in another style (the portrait itself): three portraits, a broken one and a
      // cancelled one between them; then each portrait alone, the style now kept.
      const { bytes } = kit;
      const portraits = [content, style, a];
      const cancel = new AbortController();
      cancel.abort();
      const progress = new Set();
      const done = [];
      const many = await engine.stylizeMany([portraits[0], new Blob(['not an image']), portraits[1], portraits[2], content], content, {
        ...opts, itemSignals: [undefined, undefined, undefined, undefined, cancel.signal],
        onProgress: (e) => progress.add(`${e.item}/${e.items}`), onItem: (i) => done.push(i),
      });
      const batch = [];
      for (const e of many) batch.push(e.png ? { png: await bytes(e.png), counters: e.counters } : { error: e.error.name });
      const single = [];
      for (const p of portraits) single.push({ png: await bytes(await engine.stylize(p, content, opts)), counters: engine.last.counters });
      // The portrait as a lossless AVIF, which the engine cannot decode but the browser can; a
      // HEIC, which neither can here (Chromium), is named.
      const avif = await (await fetch('/tests/fixtures/web/portrait.avif')).blob();
      const fromAvif = await bytes(await engine.stylize(avif, style, opts));
      const heic = new Uint8Array([0, 0, 0, 24, ...new TextEncoder().encode('ftypheic'), 0, 0, 0, 0, ...new TextEncoder().encode('mif1heic'), 0, 0, 0, 0]);
      const heicError = await kit.attempt(() => engine.stylize(new File([heic], 'IMG_0042.HEIC'), style, opts));
      engine.dispose();
      return { before, cached, otherSeed, a: await bytes(a), b: await bytes(b), c: await bytes(c), d: d.size, timesA, timesB,
        batch, single, progress: [...progress].sort(), done, fromAvif, heicError: heicError.error };
    }, OPTS);
    assert.ok(!out.error, JSON.stringify(out.error));
    assert.equal(out.before, false);
    assert.equal(out.cached, true);
    assert.equal(out.otherSeed, false);
    assert.deepEqual(out.b, out.a, 'reused style features give the same image');
    assert.deepEqual(out.c, out.a);
    assert.ok(out.d > 0);
    console.log(`run with the style computed: ${out.timesA.seconds.toFixed(2)} s ${JSON.stringify(out.timesA.stages)} ${JSON.stringify(out.timesA.counters)}`);
    console.log(`run with the style cached:   ${out.timesB.seconds.toFixed(2)} s ${JSON.stringify(out.timesB.stages)} ${JSON.stringify(out.timesB.counters)}`);
    assert.ok(out.timesB.counters.unet_evals < out.timesA.counters.unet_evals, 'the counters show the kept style');

    // stylizeMany: every portrait's entry, in order; the broken and the cancelled ones are errors
    // that stop nothing; each result equals the same portrait run alone at the same seed; the
    // style is computed by the first portrait only.
    assert.deepEqual(out.done, [0, 1, 2, 3, 4]);
    assert.equal(out.batch[1].error, 'ImageError');
    assert.equal(out.batch[4].error, 'AbortError');
    const runs = [out.batch[0], out.batch[2], out.batch[3]];
    runs.forEach((r, i) => assert.deepEqual(r.png, out.single[i].png, `portrait ${i}: the batch's result is the single run's`));
    assert.deepEqual(runs[0].counters, out.timesA.counters, 'the first portrait computes the style');
    for (const r of [runs[1], runs[2], ...out.single]) assert.deepEqual(r.counters, out.timesB.counters, 'the others reuse it');
    assert.ok(['0/5', '2/5', '3/5'].every((k) => out.progress.includes(k)), `progress per item: ${out.progress}`);
    // AVIF, decoded by the browser: the PNG portrait's pixels, so its result.
    assert.deepEqual(out.fromAvif, out.a, 'a lossless AVIF of the portrait gives the PNG portrait\'s result');
    assert.equal(out.heicError?.name, 'ImageError', JSON.stringify(out.heicError));
    assert.match(out.heicError.message, /a HEIC image/);
    const saved = out.timesA.counters.unet_evals - out.timesB.counters.unet_evals;
    console.log(`batch of 3: UNet evaluations ${runs.map((r) => r.counters.unet_evals).join(' + ')}; each further portrait saves ${saved} (the style's)`);
  });

  test('photos as phones make them, in wasm: P3 and Adobe RGB JPEGs as littleCMS converts them (1/255), a transparent PNG on white', { timeout: T }, async () => {
    // The fixtures (tests/fixtures/color, made by make.py) as the wasm engine decodes its inputs
    // (decodeImage: the same Rust as the CLI's, whose tests hold it to the same references).
    const files = ['photo.display-p3.jpg', 'photo.adobe-rgb-1998.jpg', 'transparent.png'];
    const color = (f) => fs.readFileSync(path.join(ROOT, 'tests/fixtures/color', f));
    // A JPEG without its ICC profile (its APP2 "ICC_PROFILE" segments): the pixels as stored.
    const untagged = (jpeg) => {
      const parts = [jpeg.subarray(0, 2)];
      let i = 2;
      while (jpeg[i + 1] !== 0xda) {
        const end = i + 2 + jpeg.readUInt16BE(i + 2);
        if (!(jpeg[i + 1] === 0xe2 && jpeg.subarray(i + 4, i + 16).toString('latin1') === 'ICC_PROFILE\0')) parts.push(jpeg.subarray(i, end));
        i = end;
      }
      parts.push(jpeg.subarray(i));
      return Buffer.concat(parts);
    };
    const inputs = [...files.map((f) => [f, color(f)]), ['photo.untagged.jpg', untagged(color(files[0]))]];
    const out = await browser.page.evaluate(async (list) => {
      const { default: init, decodeImage } = await import('/www/engine/zepo.js');
      await init();
      return list.map(([name, bytes]) => {
        const img = decodeImage(new Uint8Array(bytes), name);
        return { name, width: img.width, height: img.height, pixels: Array.from(img.pixels) };
      });
    }, inputs.map(([n, b]) => [n, Array.from(b)]));
    const decoded = Object.fromEntries(out.map((o) => [o.name, o]));
    // The pixels both JPEG decoders (libjpeg-turbo, the reference's; the engine's) agree on.
    const libjpeg = decodePng(color('photo.decoded.png')).data;
    const stored = decoded['photo.untagged.jpg'].pixels;
    for (const [file, ref] of [['photo.display-p3.jpg', 'photo.display-p3.srgb.png'], ['photo.adobe-rgb-1998.jpg', 'photo.adobe-rgb-1998.srgb.png']]) {
      const img = decoded[file];
      const reference = decodePng(color(ref)).data;
      assert.deepEqual([img.width, img.height], [64, 48]);
      let compared = 0;
      let worst = 0;
      let applied = 0;
      for (let i = 0; i < stored.length; i += 3) {
        applied = Math.max(applied, ...[0, 1, 2].map((c) => Math.abs(img.pixels[i + c] - stored[i + c])));
        if ([0, 1, 2].some((c) => stored[i + c] !== libjpeg[i + c])) continue;
        compared++;
        worst = Math.max(worst, ...[0, 1, 2].map((c) => Math.abs(img.pixels[i + c] - reference[i + c])));
      }
      console.log(`wasm ${file}: max difference from littleCMS ${worst}/255 over the ${compared} of 3072 pixels both JPEG decoders agree on`);
      assert.ok(compared > 3072 * 3 / 4, `${file}: the decoders agree on ${compared} pixels`);
      assert.ok(worst <= 1, `${file}: ${worst}/255 from littleCMS`);
      assert.ok(applied >= 20, `${file}: the profile was applied (${applied})`);
    }
    // Transparent: each channel round(c·a/255 + 255·(255−a)/255), in integers.
    const rgba = decodePng(color('transparent.png'));
    const t = decoded['transparent.png'];
    assert.deepEqual([t.width, t.height], [rgba.width, rgba.height]);
    const expected = [];
    for (let i = 0; i < rgba.data.length; i += 4) {
      const a = rgba.data[i + 3];
      for (let c = 0; c < 3; c++) expected.push(Math.floor((rgba.data[i + c] * a + 255 * (255 - a) + 127) / 255));
    }
    assert.deepEqual(t.pixels, expected, 'composited onto white as stated');
    assert.ok(rgba.data.some((v, i) => i % 4 === 3 && v === 0) && rgba.data.some((v, i) => i % 4 === 3 && v > 0 && v < 255), 'the fixture has clear and partial alpha');
  });

  test('a truncated JPEG and a non-image blob are clear errors naming the input; bad options are named', { timeout: T }, async () => {
    const out = await inPage(browser.page, async (api, opts) => {
      const style = await (await fetch('/www/examples/style.png')).blob();
      // A photo cut short in transfer: the first quarter of a JPEG.
      const canvas = new OffscreenCanvas(64, 64);
      const g = canvas.getContext('2d');
      g.drawImage(await createImageBitmap(style), 0, 0, 64, 64);
      const jpeg = await canvas.convertToBlob({ type: 'image/jpeg', quality: 0.95 });
      const truncated = jpeg.slice(0, Math.floor(jpeg.size / 4), 'image/jpeg');
      const errors = [];
      for (const [c, o] of [[truncated, opts], [new Blob(['definitely not an image'], { type: 'image/png' }), opts],
        [style, { ...opts, steps: 'two' }], [style, { ...opts, resolution: 60 }], [style, { ...opts, colour: 1 }]]) {
        try {
          await api.stylize(c, style, o);
          errors.push(null);
        } catch (e) {
          errors.push({ name: e.name, message: e.message });
        }
      }
      return errors;
    }, OPTS);
    assert.ok(!out.error, JSON.stringify(out.error));
    const [cut, img, steps, res, unknown] = out;
    assert.equal(cut?.name, 'ImageError');
    assert.match(cut.message, /content image.*truncated JPEG/);
    assert.equal(img?.name, 'ImageError');
    assert.match(img.message, /content image/);
    assert.equal(steps?.name, 'InvalidOption');
    assert.match(steps.message, /steps/);
    assert.match(res?.message, /resolution 60/);
    assert.match(unknown?.message, /unknown option `colour`/);
  });

  test('an AbortSignal cancels a run mid-way; the engine goes on working', { timeout: T }, async () => {
    const out = await inPage(browser.page, async (api, opts, _weights, kit) => {
      const [content, style] = await kit.examples();
      const controller = new AbortController();
      const stages = [];
      let caught = null;
      try {
        await api.stylize(content, style, {
          ...opts, seed: 99, signal: controller.signal,
          onProgress: (e) => { stages.push(e.stage); if (e.stage === 'features') controller.abort(); },
        });
      } catch (e) {
        caught = { name: e.name, message: e.message };
      }
      let already = null;
      try {
        await api.stylize(content, style, { ...opts, signal: AbortSignal.abort() });
      } catch (e) {
        already = e.name;
      }
      const after = await api.stylize(content, style, opts);
      return { caught, stages, already, after: after.size };
    }, OPTS);
    assert.ok(!out.error, JSON.stringify(out.error));
    assert.equal(out.caught?.name, 'AbortError', JSON.stringify(out.caught));
    assert.match(out.caught.message, /cancelled/);
    assert.ok(out.stages.includes('features') && !out.stages.includes('decode'), `stopped mid-way: ${out.stages}`);
    assert.equal(out.already, 'AbortError');
    assert.ok(out.after > 0, 'a run after the cancelled one works');
  });
});

describe('weights: cache, resume, integrity', () => {
  let browser;
  let tmp;
  before(async () => {
    browser = await launch({ webgpu: true });
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'zepo-weights-'));
  });
  after(async () => {
    if (browser?.logs.length) console.log(browser.logs.slice(-40).join('\n'));
    await browser?.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  /** A copy of the tiny model in tmp/name, changed by `edit(dir)`. */
  function copyModel(name, edit) {
    const dir = path.join(tmp, name);
    fs.cpSync(TINY, dir, { recursive: true });
    edit?.(dir);
    return dir;
  }

  async function loadIn(page, base, model) {
    await apiPage(page, base);
    return inPage(page, async (api, m) => {
      const events = [];
      const e = await api.ZePo.load({ model: m, onProgress: (p) => events.push(p) });
      const info = e.info;
      e.dispose();
      return { info, downloads: events.filter((p) => p.stage === 'download').length };
    }, model);
  }

  function cachedUrls(page) {
    return page.evaluate(async () => (await (await caches.open('zepo-models-v1')).keys()).map((r) => r.url));
  }

  test('the second visit downloads nothing', { timeout: T }, async () => {
    const srv = await serve();
    try {
      const first = await loadIn(browser.page, srv.url, '/model');
      assert.ok(!first.error, JSON.stringify(first.error));
      assert.ok(modelRequests(srv.requests).length > 0);
      const firstBytes = first.info.bytes;
      srv.requests.length = 0;
      // A new page (same browser profile): everything from the cache.
      const page = await browser.context.newPage();
      const second = await loadIn(page, srv.url, '/model');
      await page.close();
      assert.ok(!second.error, JSON.stringify(second.error));
      assert.deepEqual(modelRequests(srv.requests), [], 'no request for the model on the second visit');
      assert.equal(second.info.requests, 0);
      assert.equal(second.info.bytes, firstBytes, 'the same bytes, from the cache');
      console.log(`first visit: ${first.info.requests} requests, ${first.info.seconds.toFixed(2)} s; second: 0 requests, ${second.info.seconds.toFixed(2)} s`);
    } finally {
      await srv.close();
    }
  });

  test('an interrupted download resumes with an HTTP Range request', { timeout: T }, async () => {
    // Breaks the first full download of the UNet half-way (the connection drops).
    const inner = createServer({ model: TINY });
    const log = [];
    let broken = false;
    const srv = http.createServer((req, res) => {
      log.push({ url: req.url, range: req.headers.range || null });
      if (!broken && req.method === 'GET' && req.url === `/model/${UNET}` && !req.headers.range) {
        broken = true;
        const file = path.join(TINY, UNET);
        const bytes = fs.readFileSync(file);
        const stat = fs.statSync(file);
        // The static server's validator, so that its If-Range check accepts the resume.
        const etag = `"${stat.size.toString(16)}-${Math.floor(stat.mtimeMs).toString(16)}"`;
        res.writeHead(200, { 'Content-Length': bytes.length, 'Content-Type': 'application/octet-stream',
          'Access-Control-Allow-Origin': '*', ETag: etag, 'Accept-Ranges': 'bytes' });
        res.write(bytes.subarray(0, bytes.length >> 1), () => setTimeout(() => res.socket.destroy(), 50));
        return;
      }
      inner.emit('request', req, res);
    });
    await new Promise((r) => srv.listen(0, '127.0.0.1', r));
    const base = `http://127.0.0.1:${srv.address().port}`;
    try {
      // A model URL this profile has not cached yet: the same files under another origin.
      const page = await browser.context.newPage();
      const out = await loadIn(page, base, '/model');
      await page.close();
      assert.ok(!out.error, JSON.stringify(out.error));
      const ranged = log.filter((r) => r.url === `/model/${UNET}` && r.range);
      assert.ok(broken, 'the first download was broken off');
      assert.equal(ranged.length, 1, `one Range request resumed it: ${JSON.stringify(log)}`);
      assert.match(ranged[0].range, /^bytes=\d+-$/);
    } finally {
      srv.closeAllConnections?.();
      await new Promise((r) => srv.close(r));
    }
  });

  test('a truncated weight file is an error naming it, and is not cached', { timeout: T }, async () => {
    const dir = copyModel('truncated', (d) => {
      const f = path.join(d, UNET);
      fs.truncateSync(f, Math.floor(fs.statSync(f).size * 0.6));
    });
    const srv = await serve({ model: dir });
    try {
      const out = await loadIn(browser.page, srv.url, '/model');
      assert.ok(out.error, 'loading fails');
      assert.match(out.error.message, /unet\/diffusion_pytorch_model\.safetensors/);
      assert.match(out.error.message, /truncated/i);
      const cached = await cachedUrls(browser.page);
      assert.ok(!cached.some((u) => u.endsWith(UNET)), `not cached: ${cached.join(', ')}`);
      console.log(`truncated: ${out.error.name}: ${out.error.message}`);
    } finally {
      await srv.close();
    }
  });

  test('a tampered weight file fails its manifest sha256, and is not cached', { timeout: T }, async () => {
    const dir = copyModel('tampered', (d) => {
      const files = {};
      for (const p of [UNET, VAE, 'text_encoder/model.safetensors']) {
        const bytes = fs.readFileSync(path.join(d, p));
        files[p] = { size: bytes.length, sha256: crypto.createHash('sha256').update(bytes).digest('hex') };
      }
      fs.writeFileSync(path.join(d, 'manifest.json'), JSON.stringify({ files }));
      // One flipped bit in the VAE's last tensor: still a valid safetensors file.
      const f = path.join(d, VAE);
      const bytes = fs.readFileSync(f);
      bytes[bytes.length - 3] ^= 0x10;
      fs.writeFileSync(f, bytes);
    });
    const srv = await serve({ model: dir });
    try {
      const out = await loadIn(browser.page, srv.url, '/model');
      assert.ok(out.error, 'loading fails');
      assert.equal(out.error.name, 'IntegrityError');
      assert.match(out.error.message, /vae\/diffusion_pytorch_model\.safetensors/);
      assert.match(out.error.message, /sha256/);
      const cached = await cachedUrls(browser.page);
      const prefix = `${srv.url}/model/`;
      assert.ok(!cached.includes(prefix + VAE), 'the tampered file is not cached');
      assert.ok(cached.includes(prefix + UNET), 'the intact UNet (verified) is');
      console.log(`tampered: ${out.error.name}: ${out.error.message}`);
    } finally {
      await srv.close();
    }
  });
});

test('without WebGPU, stylize() rejects with WebGpuUnavailable', { timeout: 120_000 }, async () => {
  const browser = await launch({ webgpu: false });
  try {
    await apiPage(browser.page);
    const out = await inPage(browser.page, async (api) => api.stylize(new Blob(['x']), new Blob(['y'])));
    assert.equal(out.error?.name, 'WebGpuUnavailable');
    assert.match(out.error.message, /WebGPU/);
  } finally {
    await browser.close();
  }
});
