// The fp16 bundle in the browser (headless Chromium, WebGPU on SwiftShader: f32 compute), with
// weights/tiny-lcm-bundle served from localhost:
// - stylize() matches the native pipeline on the same bundle (fixtures made by the CLI, see
//   REF_COMMANDS); the default prompt makes no request under text_encoder/ or tokenizer/ (its
//   embeddings are precomputed), a custom prompt loads them on demand and matches too;
// - compact variants (`convert --variants q8,mixed`, made at test time by the CLI): each loads
//   only its own shards and matches the native engine on the same bundle; modelSize() and the
//   page's download question list each variant's size;
// - a part left out that the run needs, and an unknown format_version, are refused by name;
// - a download broken off beyond the in-visit retries fails with a DownloadError, and the next
//   visit resumes it with `Range: bytes=N-`; a tampered stored prefix fails the whole file's
//   sha256 and is dropped; a partial file is never stored as complete;
// - a quota error while storing is a StorageFull error; nothing half-written is left;
//   storedModels() / clearCache() report and delete what is stored.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { execFileSync } from 'node:child_process';
import { bundleWeights, zepoCli } from './fullsize-model.mjs';
import { ROOT, assertEngineBuilt, assertMatchesNative, decodePng, inPage, launch, readSafetensors, serve } from './helpers.mjs';

const T = 10 * 60_000;
const BUNDLE = path.join(ROOT, 'weights/tiny-lcm-bundle');
const OPTS = { resolution: 64, steps: 2, seed: 7 };
const CUSTOM = 'a portrait, oil painting';
// How the references were made (native CPU backend, f32; a bundle's precomputed prompts are used
// natively as in the browser, any other prompt goes through the bundle's text encoder):
const REF_COMMANDS = [
  'zepo stylize --model weights/tiny-lcm-bundle --content www/examples/portrait.png --style www/examples/style.png ' +
    '--resolution 64 --steps 2 --seed 7 --save-tensor tests/fixtures/web/tiny_bundle_r64_s2_seed7.safetensors',
  `zepo stylize --model weights/tiny-lcm-bundle ... --prompt '${CUSTOM}' --save-tensor tests/fixtures/web/tiny_bundle_r64_s2_seed7_custom.safetensors`,
];
const REF = path.join(ROOT, 'tests/fixtures/web/tiny_bundle_r64_s2_seed7.safetensors');
const REF_CUSTOM = path.join(ROOT, 'tests/fixtures/web/tiny_bundle_r64_s2_seed7_custom.safetensors');

const manifest = JSON.parse(fs.readFileSync(path.join(BUNDLE, 'manifest.json'), 'utf8'));
const shards = (part) => manifest.parts[part].shards.map((s) => s.file?.url ?? s.url);

let tmp;
before(() => {
  assertEngineBuilt();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'zepo-bundle-'));
});
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A copy of the tiny bundle in tmp/name whose manifest `edit(manifest)` changes. */
function editedBundle(name, edit) {
  const dir = path.join(tmp, name);
  fs.cpSync(BUNDLE, dir, { recursive: true });
  const m = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
  edit(m);
  fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(m, null, 2));
  return dir;
}


/** Loads the model at /model in a fresh page of `browser` on `srv`, then closes the page. */
async function load(browser, srv) {
  const page = await browser.context.newPage();
  try {
    await page.goto(`${srv.url}/package.json`);
    return await inPage(page, async (api) => {
      const e = await api.ZePo.load({ model: '/model' });
      const info = e.info;
      e.dispose();
      return { info };
    });
  } finally {
    await page.close();
  }
}

function compare(png, refFile, what) {
  assertMatchesNative(png, readSafetensors(refFile).image, `${what} on the bundle (reference: ${REF_COMMANDS.join(' ; ')})`);
}

describe('a bundle on WebGPU', () => {
  let browser;
  let srv;
  before(async () => {
    browser = await launch({ webgpu: true });
    srv = await serve({ model: BUNDLE });
    await browser.page.goto(`${srv.url}/package.json`);
  });
  after(async () => {
    if (browser?.logs.length) console.log(browser.logs.slice(-40).join('\n'));
    await browser?.close();
    await srv?.close();
  });

  test('default prompt: no text encoder, pixels match native; a custom prompt loads it on demand and matches', { timeout: T }, async () => {
    srv.requests.length = 0;
    const out = await inPage(browser.page, async (api, { opts, custom }, _weights, kit) => {
      const [content, style] = await kit.examples();
      const events = [];
      const engine = await api.ZePo.load({ model: '/model', onProgress: (e) => events.push(e) });
      const blob = await engine.stylize(content, style, { ...opts, onProgress: (e) => events.push(e) });
      const mark = performance.now();
      const first = await kit.bytes(blob);
      const second = await kit.bytes(await engine.stylize(content, style, { ...opts, prompt: custom }));
      engine.dispose();
      return { info: engine.info, device: engine.device, first, second, mark, stages: [...new Set(events.map((e) => e.stage))],
        download: events.filter((e) => e.stage === 'download').pop() };
    }, { opts: OPTS, custom: CUSTOM });
    assert.ok(!out.error, JSON.stringify(out.error));
    assert.equal(out.info.layout, 'bundle');
    assert.equal(out.device.precision, 'f32', 'SwiftShader has no shader-f16: the f16 weights are cast to f32');
    assert.deepEqual([...out.info.precomputed_prompts].sort(), ['', 'face']);

    // Requests up to the custom prompt: the first stylize() came before the second's requests.
    const reqs = srv.requests.filter((r) => r.url.startsWith('/model/')).map((r) => r.url.slice('/model/'.length));
    const firstText = reqs.findIndex((u) => /^(text_encoder|tokenizer)\//.test(u));
    const defaultRun = firstText < 0 ? reqs : reqs.slice(0, firstText);
    console.log(`default-prompt run: ${defaultRun.length} requests: ${defaultRun.join(', ')}`);
    for (const u of [...shards('unet'), ...shards('vae'), 'prompt_embeddings.safetensors', 'manifest.json']) {
      assert.ok(defaultRun.includes(u), `${u} requested`);
    }
    assert.ok(!defaultRun.some((u) => /^(text_encoder|tokenizer)\//.test(u)), 'nothing under text_encoder/ or tokenizer/ for the default prompt');
    assert.equal(out.download.loaded, out.download.total, 'the download total is known up front and reached');
    const weights = [...manifest.parts.unet.shards, ...manifest.parts.vae.shards].reduce((a, s) => a + s.size, 0) + manifest.prompt_embeddings.size;
    assert.equal(out.download.total, weights);

    const png = decodePng(Buffer.from(out.first));
    assert.deepEqual([png.width, png.height, png.channels], [64, 64, 3]);
    compare(png, REF, 'default prompt');

    // The custom prompt needed the text encoder and tokenizer: fetched on demand.
    const later = reqs.slice(defaultRun.length);
    console.log(`custom prompt: ${later.length} more requests: ${later.join(', ')}`);
    for (const u of [...shards('text_encoder'), 'tokenizer/vocab.json', 'tokenizer/merges.txt']) {
      assert.ok(later.includes(u), `${u} requested for the custom prompt`);
    }
    compare(decodePng(Buffer.from(out.second)), REF_CUSTOM, 'custom prompt');
    assert.notDeepEqual(out.second, out.first, 'the prompt changed the image');
  });

  test('compact variants: q8 and mixed stream only their own shards and match the native engine on the same bundle', { timeout: T }, async () => {
    // The compact bundle and the native references, made by the CLI as a user would.
    const dir = path.join(tmp, 'compact');
    const cli = zepoCli();
    const run = (...args) => execFileSync(cli, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 26 }).toString();
    run('weights', 'convert', '--model', 'weights/tiny-lcm', '--out', dir, '--shard-mb', '2', '--variants', 'q8,mixed');
    const m = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
    const refs = {};
    for (const w of ['q8', 'mixed']) {
      refs[w] = path.join(tmp, `compact-${w}.safetensors`);
      run('stylize', '--model', dir, '--weights', w, '--content', 'www/examples/portrait.png', '--style', 'www/examples/style.png',
        '--resolution', String(OPTS.resolution), '--steps', String(OPTS.steps), '--seed', String(OPTS.seed), '--save-tensor', refs[w], '--quiet');
    }
    const s = await serve({ model: dir });
    const page = await browser.context.newPage();
    try {
      await page.goto(`${s.url}/package.json`);
      const out = await inPage(page, async (api, opts, _weights, kit) => {
        const { modelSize } = await import(new URL('/www/model-size.js', location.href).href);
        const sizes = await modelSize('/model');
        const [content, style] = await kit.examples();
        // One engine (one GPU device: its pipelines compile once), its model loaded twice.
        const engine = await api.ZePo.load({ model: '/model', weights: 'q8' });
        const q8 = { info: engine.info, png: await kit.bytes(await engine.stylize(content, style, opts)) };
        const info = await engine.call('load', { model: engine.model, weights: 'mixed' });
        const mixed = { info, png: await kit.bytes(await engine.stylize(content, style, opts)) };
        engine.dispose();
        return { sizes, q8, mixed };
      }, OPTS);
      assert.ok(!out.error, JSON.stringify(out.error));
      assert.equal(out.q8.info.weights, 'q8');
      assert.equal(out.mixed.info.weights, 'mixed');
      for (const w of ['q8', 'mixed']) {
        const made = `zepo stylize --model <compact bundle> --weights ${w} --resolution ${OPTS.resolution} --steps ${OPTS.steps} --seed ${OPTS.seed}`;
        assertMatchesNative(decodePng(Buffer.from(out[w].png)), readSafetensors(refs[w]).image, `${w} weights (reference: ${made})`);
      }
      // Each load asked for its own variant's shards, never the fp16 ones.
      const asked = s.requests.map((r) => r.url.replace(/^\/model\//, ''));
      for (const w of ['q8', 'mixed']) {
        for (const part of ['unet', 'vae']) {
          for (const shard of m.variants[w].parts[part].shards) assert.ok(asked.includes(shard.url), `${shard.url} requested`);
        }
      }
      assert.ok(!asked.some((u) => /^(unet|vae)\/fp16-/.test(u)), `no fp16 shard requested: ${asked.join(', ')}`);
      // On the GPU the compact weights stay compact: what the engine says it holds is the code
      // words and scales of each compact tensor plus the rest in f32 (SwiftShader), counted
      // here from the shards' headers, not the weights expanded.
      for (const w of ['q8', 'mixed']) {
        const held = bundleWeights(dir, w).parts;
        const want = held.unet.gpuBytes[out[w].info.precision] + held.vae.gpuBytes[out[w].info.precision];
        const expanded = (held.unet.elements + held.vae.elements) * (out[w].info.precision === 'f16' ? 2 : 4);
        console.log(`${w} on the GPU: ${out[w].info.weight_bytes} bytes of weights (${(out[w].info.weight_bytes / expanded).toFixed(3)} of them expanded)`);
        assert.equal(out[w].info.weight_bytes, want, `${w}: GPU bytes of the weights`);
        assert.ok(want < 0.8 * expanded);
      }
      // The download question's sizes: each variant's, auto's pick the smallest.
      const names = out.sizes.variants.map((v) => v.name);
      assert.deepEqual(names, ['fp16', 'mixed', 'q8']);
      const bytes = Object.fromEntries(out.sizes.variants.map((v) => [v.name, v.bytes]));
      assert.ok(bytes.q8 < 0.7 * bytes.fp16 && bytes.mixed < bytes.fp16, JSON.stringify(bytes));
      // (On these random weights mixed's 70 dB target keeps most tensors f16: q8 is smaller.)
      const smallest = Object.entries(bytes).sort((a, b) => a[1] - b[1])[0][0];
      assert.equal(out.sizes.weights, smallest);
      assert.equal(out.sizes.bytes, bytes[smallest]);
      assert.ok(out.sizes.variants.find((v) => v.name === 'q8').psnr.unet > 0);
      console.log(`compact variants' downloads: ${JSON.stringify(bytes)}; PSNR ${JSON.stringify(out.sizes.variants.map((v) => [v.name, v.psnr]))}`);

      // The page's download question offers them, with their sizes (no engine is made).
      const ask = await browser.context.newPage();
      try {
        await ask.goto(`${s.url}/?model=/model&confirm=1`);
        await ask.waitForSelector('#confirm:not([hidden])', { timeout: 60_000 });
        const shown = await ask.$$eval('#weights-choice input[name="weights"]', (els) => els.map((e) => [e.value, e.checked, Number(e.dataset.bytes)]));
        assert.deepEqual(shown.map((x) => x[0]), ['fp16', 'mixed', 'q8']);
        assert.deepEqual(shown.filter((x) => x[1]).map((x) => x[0]), [smallest], 'the smallest is chosen first');
        assert.equal(await ask.$eval('#confirm', (e) => Number(e.dataset.bytes)), shown.find((x) => x[0] === smallest)[2]);
        await ask.check('#weights-choice input[value="fp16"]');
        const said = await ask.$eval('#confirm', (e) => Number(e.dataset.bytes));
        assert.equal(said, shown.find((x) => x[0] === 'fp16')[2], 'the question says the chosen variant\'s download');
        assert.equal(await ask.$eval('#weights-choice', (e) => e.hidden), false);
      } finally {
        await ask.close();
      }
    } finally {
      await page.close();
      await s.close();
    }
  });

  test('a part left out that the run needs, and an unknown format_version, are refused by name', { timeout: T }, async () => {
    const noEncoder = editedBundle('no-vae-encoder', (m) => {
      m.omitted = ['vae.encoder'];
      m.parts.vae.omitted = ['encoder.', 'quant_conv.'];
    });
    const version3 = editedBundle('version-3', (m) => { m.format_version = 3; });
    const noText = editedBundle('no-text-encoder', (m) => {
      delete m.parts.text_encoder;
      m.tokenizer = [];
      m.omitted = ['text_encoder', 'tokenizer'];
    });
    for (const [dir, pattern, what] of [[noEncoder, /vae\.encoder.*left out/s, 'VAE encoder'], [version3, /format_version.*not supported/s, 'version']]) {
      const s = await serve({ model: dir });
      try {
        const out = await load(browser, s);
        assert.equal(out.error?.name, 'WeightsError', `${what}: ${JSON.stringify(out)}`);
        assert.match(out.error.message, pattern);
        assert.ok(!s.requests.some((r) => r.url.endsWith('.safetensors')), `${what}: refused before any weight is fetched`);
        console.log(`${what}: ${out.error.name}: ${out.error.message}`);
      } finally {
        await s.close();
      }
    }
    // Without a text encoder the default prompt works, a custom one is refused naming the part.
    const s = await serve({ model: noText });
    const page = await browser.context.newPage();
    try {
      await page.goto(`${s.url}/package.json`);
      const out = await inPage(page, async (api, opts, _weights, kit) => {
        const [content, style] = await kit.examples();
        const engine = await api.ZePo.load({ model: '/model' });
        try {
          await engine.stylize(content, style, { ...opts, prompt: 'something else' });
          return { refused: null };
        } catch (e) {
          return { refused: { name: e.name, message: e.message } };
        } finally {
          engine.dispose();
        }
      }, OPTS);
      assert.ok(!out.error, JSON.stringify(out.error));
      assert.equal(out.refused?.name, 'WeightsError', JSON.stringify(out.refused));
      assert.match(out.refused.message, /"something else".*text_encoder was left out/s);
      console.log(`custom prompt without a text encoder: ${out.refused.message}`);
    } finally {
      await page.close();
      await s.close();
    }
  });
});

describe('bundle downloads: resume across visits, storage', () => {
  let browser;
  before(async () => { browser = await launch({ webgpu: true }); });
  after(async () => {
    if (browser?.logs.length) console.log(browser.logs.slice(-40).join('\n'));
    await browser?.close();
  });

  const SHARD = shards('unet')[1];
  const SHARD_SIZE = manifest.parts.unet.shards[1].size;
  const CUT = 1_000_000;

  /** storedModels() and the cached URLs, from a page of the origin. */
  async function stored(srv) {
    const page = await browser.context.newPage();
    try {
      await page.goto(`${srv.url}/package.json`);
      return await inPage(page, async (api, _, weights) => ({
        models: await weights.storedModels(),
        cached: (await (await caches.open(weights.CACHE_NAME)).keys()).map((r) => r.url),
      }));
    } finally {
      await page.close();
    }
  }

  test('a download broken off beyond the retries resumes on the next visit with a Range request', { timeout: T }, async () => {
    const cut = [{ path: `/model/${SHARD}`, at: CUT, times: Infinity }];
    const srv = await serve({ model: BUNDLE, cut });
    try {
      const first = await load(browser, srv);
      assert.equal(first.error?.name, 'DownloadError', JSON.stringify(first));
      assert.match(first.error.message, new RegExp(`${SHARD}.*broke off at ${CUT} of ${SHARD_SIZE} bytes`, 's'));
      console.log(`first visit: ${first.error.name}: ${first.error.message}`);
      const shardRequests = srv.requests.filter((r) => r.url === `/model/${SHARD}`);
      assert.ok(shardRequests.length > 1, 'retried within the visit');
      let s = await stored(srv);
      assert.ok(!s.cached.some((u) => u.endsWith(SHARD)), 'the partial shard is not in the cache');
      const model = s.models.find((m) => m.base.endsWith('/model'));
      assert.equal(model?.complete, false, JSON.stringify(s.models));
      assert.ok(model.bytes >= CUT, `the prefix is stored: ${JSON.stringify(s.models)}`);

      // The network is back: the next visit asks for the rest only.
      cut[0].times = 0;
      srv.requests.length = 0;
      const second = await load(browser, srv);
      assert.ok(!second.error, JSON.stringify(second.error));
      const again = srv.requests.filter((r) => r.url === `/model/${SHARD}`);
      assert.deepEqual(again.map((r) => [r.range, r.status]), [[`bytes=${CUT}-`, 206]], JSON.stringify(srv.requests));
      assert.ok(!srv.requests.some((r) => r.url === `/model/${shards('unet')[0]}`), 'the complete shard came from the cache');
      s = await stored(srv);
      assert.ok(s.cached.some((u) => u.endsWith(SHARD)), 'the resumed shard is stored');
      assert.equal(s.models.find((m) => m.base.endsWith('/model'))?.complete, true, JSON.stringify(s.models));
    } finally {
      await srv.close();
    }
  });

  test('a tampered stored prefix fails the whole file\'s sha256 and is dropped', { timeout: T }, async () => {
    const cut = [{ path: `/model/${SHARD}`, at: CUT, times: Infinity }];
    const srv = await serve({ model: BUNDLE, cut });
    try {
      const first = await load(browser, srv);
      assert.equal(first.error?.name, 'DownloadError', JSON.stringify(first));
      // One byte of the stored prefix changed (as a faulty disk or a meddling extension might).
      const page = await browser.context.newPage();
      await page.goto(`${srv.url}/package.json`);
      const flipped = await page.evaluate(async () => {
        const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle('zepo-partial');
        for await (const [name, handle] of dir.entries()) {
          if (!name.endsWith('.part')) continue;
          const file = await handle.getFile();
          if (file.size === 0) continue;
          const byte = new Uint8Array(await file.slice(500_000, 500_001).arrayBuffer());
          const w = await handle.createWritable({ keepExistingData: true });
          await w.write({ type: 'write', position: 500_000, data: new Uint8Array([byte[0] ^ 0x40]) });
          await w.close();
          return name;
        }
        return null;
      });
      await page.close();
      assert.ok(flipped, 'a stored prefix to tamper with');

      cut[0].times = 0;
      srv.requests.length = 0;
      const second = await load(browser, srv);
      assert.equal(second.error?.name, 'IntegrityError', JSON.stringify(second));
      assert.match(second.error.message, new RegExp(`${SHARD}.*sha256`, 's'));
      assert.deepEqual(srv.requests.filter((r) => r.url === `/model/${SHARD}`).map((r) => r.range), [`bytes=${CUT}-`]);
      assert.ok(!(await stored(srv)).cached.some((u) => u.endsWith(SHARD)), 'not stored');

      // The bad prefix is gone: the third visit downloads the shard whole, and works.
      srv.requests.length = 0;
      const third = await load(browser, srv);
      assert.ok(!third.error, JSON.stringify(third.error));
      assert.deepEqual(srv.requests.filter((r) => r.url === `/model/${SHARD}`).map((r) => r.range), [null]);
    } finally {
      await srv.close();
    }
  });

  test('a full storage quota is a StorageFull error; nothing half-written is left; clearCache', { timeout: T }, async () => {
    const srv = await serve({ model: BUNDLE });
    const page = await browser.context.newPage();
    const cdp = await browser.context.newCDPSession(page);
    try {
      await page.goto(`${srv.url}/package.json`);
      const quotaSize = 3_000_000;
      await cdp.send('Storage.overrideQuotaForOrigin', { origin: srv.url, quotaSize });
      const out = await inPage(page, async (api) => {
        const e = await api.ZePo.load({ model: '/model' });
        e.dispose();
        return { loaded: true };
      });
      assert.equal(out.error?.name, 'StorageFull', JSON.stringify(out));
      assert.match(out.error.message, /MB/);
      assert.match(out.error.message, /clearCache|free/);
      console.log(`quota ${quotaSize} bytes: ${out.error.name}: ${out.error.message}`);

      const after = await inPage(page, async (api, _, weights) => {
        const cache = await caches.open(weights.CACHE_NAME);
        const entries = [];
        for (const req of await cache.keys()) {
          const res = await cache.match(req);
          entries.push({ url: req.url, complete: res.headers.get('x-zepo-complete'), size: Number(res.headers.get('x-zepo-size')), bytes: (await res.arrayBuffer()).byteLength });
        }
        const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle('zepo-partial', { create: true });
        const partial = [];
        for await (const [name, h] of dir.entries()) partial.push({ name, size: (await h.getFile()).size });
        return { entries, partial, models: await weights.storedModels() };
      });
      assert.ok(!after.error, JSON.stringify(after.error));
      for (const e of after.entries) {
        // Whatever is stored is whole: its bytes are the size it was stored with.
        if (e.complete === '1') assert.equal(e.bytes, e.size, `${e.url} stored whole`);
      }
      const stored = new Set(after.entries.map((e) => e.url.slice(`${srv.url}/model/`.length)));
      const missing = [...shards('unet'), ...shards('vae')].filter((u) => !stored.has(u));
      assert.ok(missing.length > 0, 'some shard did not fit');
      assert.deepEqual(after.partial.filter((p) => p.size > 0), [], 'no partial download left');
      const model = after.models.find((m) => m.base.endsWith('/model'));
      assert.equal(model?.complete, false, JSON.stringify(after.models));

      // With the quota back, the load completes; clearCache empties the model's storage.
      await cdp.send('Storage.overrideQuotaForOrigin', { origin: srv.url });
      const retry = await inPage(page, async (api, _, weights) => {
        const e = await api.ZePo.load({ model: '/model' });
        e.dispose();
        const before = await weights.storedModels();
        const deleted = await weights.clearCache(new URL('/model', location.href).href);
        return { before, deleted, after: await weights.storedModels() };
      });
      assert.ok(!retry.error, JSON.stringify(retry.error));
      const m = retry.before.find((x) => x.base.endsWith('/model'));
      assert.equal(m?.complete, true, JSON.stringify(retry.before));
      const files = [...manifest.parts.unet.shards, ...manifest.parts.vae.shards].reduce((a, s) => a + s.size, 0);
      assert.ok(m.bytes >= files, `${m.bytes} bytes stored, the weights alone are ${files}`);
      assert.ok(retry.deleted > 0);
      assert.deepEqual(retry.after.filter((x) => x.base.endsWith('/model')), []);
    } finally {
      await cdp.detach().catch(() => {});
      await page.close();
      await srv.close();
    }
  });
});
