// Hub conventions, on a tiny model laid out as a hub repository would be, served from another
// origin: `model: 'org/tiny'` with a `revision`, resolved against `env.remoteHost`; the UNet's
// `fp16` variant in shards (`diffusion_pytorch_model.fp16.safetensors.index.json`) preferred to
// its full file, which is never fetched; the VAE and text encoder only in full (the variant's
// absence is probed once, then remembered). The pixels match the native CLI on the same files.
// A second engine on the same model needs no text encoder: the default prompt's embedding was
// stored with the model (its exact f32 values: the same image).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { ROOT, assertEngineBuilt, assertMatchesNative, decodePng, inPage, launch, readSafetensors, serve } from './helpers.mjs';
import { zepoCli } from './fullsize-model.mjs';

const T = 10 * 60_000;
const TINY = path.join(ROOT, 'weights/tiny-lcm');
const BUNDLE = path.join(ROOT, 'weights/tiny-lcm-bundle');
const REPO = 'org/tiny';
const REVISION = 'r1';

let tmp;
let hub;
let page;
const requests = [];

/** The repository's files at `dir`: a hub layout (see the header). */
function makeRepo(dir, { fullUnet }) {
  fs.cpSync(TINY, dir, { recursive: true });
  const unet = path.join(dir, 'unet');
  if (!fullUnet) fs.rmSync(path.join(unet, 'diffusion_pytorch_model.safetensors'));
  // The bundle's fp16 UNet shards hold the diffusers names: they make the fp16 variant.
  const weightMap = {};
  for (const shard of fs.readdirSync(path.join(BUNDLE, 'unet')).filter((f) => f.endsWith('.safetensors')).sort()) {
    const name = `diffusion_pytorch_model.fp16-${shard.replace(/^fp16-/, '')}`;
    const bytes = fs.readFileSync(path.join(BUNDLE, 'unet', shard));
    fs.writeFileSync(path.join(unet, name), bytes);
    const header = JSON.parse(bytes.subarray(8, 8 + Number(bytes.readBigUInt64LE(0))).toString());
    for (const key of Object.keys(header)) if (key !== '__metadata__') weightMap[key] = name;
  }
  fs.writeFileSync(path.join(unet, 'diffusion_pytorch_model.fp16.safetensors.index.json'),
    JSON.stringify({ metadata: {}, weight_map: weightMap }, null, 1));
}

before(async () => {
  assertEngineBuilt();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'zepo-hub-'));
  makeRepo(path.join(tmp, 'hub', REPO, 'resolve', REVISION), { fullUnet: true });
  makeRepo(path.join(tmp, 'native'), { fullUnet: false });
  // The "hub": a plain static server on another origin, with CORS, recording requests.
  hub = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    requests.push(decodeURIComponent(url.pathname));
    res.setHeader('Access-Control-Allow-Origin', '*');
    res.setHeader('Access-Control-Expose-Headers', 'Content-Length, ETag');
    const file = path.join(tmp, decodeURIComponent(url.pathname));
    if (!file.startsWith(path.join(tmp, 'hub')) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.writeHead(404).end('Entry not found');
      return;
    }
    res.writeHead(200, { 'Content-Length': fs.statSync(file).size, 'Content-Type': 'application/octet-stream' });
    if (req.method === 'HEAD') res.end();
    else fs.createReadStream(file).pipe(res);
  });
  await new Promise((r) => hub.listen(0, '127.0.0.1', r));
  page = await serve();
});

after(async () => {
  await new Promise((r) => hub?.close(r));
  await page?.close();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

test('a hub repository id with a revision, an fp16 variant in shards, and the prompt embedding kept with the model', { timeout: T }, async () => {
  const browser = await launch({ webgpu: true });
  try {
    await browser.page.goto(`${page.url}/package.json`);
    const remoteHost = `http://localhost:${hub.address().port}/hub/`;
    const opts = { model: REPO, revision: REVISION, resolution: 64, steps: 2, seed: 7 };
    // `untilEncode`: stop the run once the images are being encoded (the prompt is done by then).
    const run = (o, untilEncode = false) => inPage(browser.page, async (api, { o, remoteHost, untilEncode }, _weights, kit) => {
      api.env.remoteHost = remoteHost;
      const [content, style] = await kit.examples();
      const stages = new Set();
      const engine = await api.ZePo.load({ model: o.model, revision: o.revision });
      const { model, revision, ...run } = o;
      const stop = new AbortController();
      const onProgress = (e) => {
        stages.add(e.stage);
        if (untilEncode && e.stage === 'encode') stop.abort();
      };
      const out = { model: engine.model, info: engine.info };
      try {
        out.bytes = await kit.bytes(await engine.stylize(content, style, { ...run, onProgress, signal: stop.signal }));
      } catch (e) {
        out.stopped = e.name;
      }
      engine.dispose();
      return { ...out, stages: [...stages] };
    }, { o, remoteHost, untilEncode });

    const first = await run(opts);
    assert.ok(!first.error && !first.stopped, JSON.stringify(first) .slice(0, 500) + browser.logs.slice(-20).join('\n'));
    const base = `/hub/${REPO}/resolve/${REVISION}`;
    assert.equal(first.model, `${remoteHost}${REPO}/resolve/${REVISION}`);
    assert.ok(first.stages.includes('text'), 'the first run encodes the prompt');
    const got = new Set(requests);
    for (let i = 1; i <= 4; i++) assert.ok(got.has(`${base}/unet/diffusion_pytorch_model.fp16-0000${i}-of-00004.safetensors`), `UNet shard ${i}`);
    assert.ok(!got.has(`${base}/unet/diffusion_pytorch_model.safetensors`), 'the full UNet is never fetched');
    assert.ok(got.has(`${base}/vae/diffusion_pytorch_model.fp16.safetensors`), 'the VAE variant is probed');
    assert.ok(got.has(`${base}/vae/diffusion_pytorch_model.safetensors`), 'then the full VAE is read');
    console.log(`first load: ${requests.length} requests (${requests.filter((r) => r.includes('fp16')).length} for fp16 files or probes)`);

    const png = decodePng(Buffer.from(first.bytes));
    const ref = path.join(tmp, 'ref.safetensors');
    execFileSync(zepoCli(), ['stylize', '--quiet', '--model', path.join(tmp, 'native'), '--content', path.join(ROOT, 'www/examples/portrait.png'),
      '--style', path.join(ROOT, 'www/examples/style.png'), '--resolution', '64', '--steps', '2', '--seed', '7', '--save-tensor', ref],
    { stdio: ['ignore', 'pipe', 'pipe'] });
    assertMatchesNative(png, readSafetensors(ref).image, 'hub layout (fp16 UNet shards) vs the native CLI on the same files');

    // A new engine on the same model: nothing from the network, no text encoder (the run is
    // stopped once the images are being encoded: the prompts are done by then).
    requests.length = 0;
    const second = await run(opts, true);
    assert.ok(!second.error, JSON.stringify(second.error));
    assert.equal(second.stopped, 'AbortError');
    assert.deepEqual(requests, [], 'the second engine reads everything from the browser\'s storage');
    assert.ok(second.stages.includes('encode') && !second.stages.includes('text'), `no text encoding (stages: ${second.stages})`);
  } finally {
    await browser.close();
  }
});
