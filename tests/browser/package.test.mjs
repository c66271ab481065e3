// The npm package (pkg/, assembled by scripts/build-pkg.sh), as a user gets it:
// - `npm pack` gives a tarball of exactly the package's files (the JS, the glue, the .wasm, the
//   types, the README), whose JS is byte for byte www/'s (copies, not forks);
// - installed (offline: it has no dependencies) into two scratch projects, a plain-ESM page
//   importing node_modules/zepo-web/zepo.js and a Vite app (`vite build`, served from dist/),
//   each runs stylize() in headless Chromium on WebGPU (SwiftShader) with the tiny fp16 bundle from
//   another origin (CORS), and gets the PNG of the native pipeline (the reference and tolerance
//   of bundle.test.mjs); Vite's dev server (which pre-bundles the package) loads the model too;
// - index.d.ts type-checks a usage file (tsc --noEmit, resolving 'zepo-web' through `exports`),
//   and rejects wrong option types.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ROOT, assertMatchesNative, decodePng, launch, readSafetensors, serve } from './helpers.mjs';
import { startServer } from '../../scripts/serve.mjs';

const T = 10 * 60_000;
const PKG = path.join(ROOT, 'pkg');
const BIN = path.join(ROOT, 'node_modules/.bin');
// The tiny model as the CDN serves it (the fp16 bundle), and as in bundle.test.mjs the native
// CLI's output on it (tolerance: helpers.mjs).
const MODEL = path.join(ROOT, 'weights/tiny-lcm-bundle');
const OPTS = { resolution: 64, steps: 2, seed: 7 };
const REF = path.join(ROOT, 'tests/fixtures/web/tiny_bundle_r64_s2_seed7.safetensors');
// What the tarball must hold, and nothing else.
const FILES = ['README.md', 'engine/zepo.js', 'engine/zepo_bg.wasm', 'index.d.ts', 'package.json',
  'weights.js', 'worker.js', 'zepo.js'];

const run = (cmd, args, cwd) => execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

let tmp;
let tarball;
let packed;
let server;
before(() => {
  assert.ok(fs.existsSync(path.join(PKG, 'engine/zepo_bg.wasm')),
    'pkg/ is not assembled: run bash scripts/build-wasm.sh && bash scripts/build-pkg.sh (npm run build does both)');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'zepo-pkg-'));
  [packed] = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', tmp], PKG));
  tarball = path.join(tmp, packed.filename);
});
after(async () => {
  await server?.close();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

/** A scratch project in tmp/name with the tarball installed, and `files` written into it. */
function project(name, files) {
  const dir = path.join(tmp, name);
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: `scratch-${name}`, private: true, type: 'module' }));
  run('npm', ['install', '--offline', '--no-audit', '--no-fund', '--loglevel=error', tarball], dir);
  for (const [f, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, f), text);
  return dir;
}

test('npm pack: the package files, and www/ JS copied unchanged', () => {
  const listed = packed.files.map((f) => f.path).sort();
  assert.deepEqual(listed, FILES);
  const manifest = JSON.parse(fs.readFileSync(path.join(PKG, 'package.json'), 'utf8'));
  const crate = /^version = "(.*)"/m.exec(fs.readFileSync(path.join(ROOT, 'Cargo.toml'), 'utf8'))[1];
  assert.equal(manifest.name, 'zepo-web');
  assert.equal(manifest.version, crate, 'the package version is the crate version');
  assert.equal(manifest.type, 'module');
  assert.deepEqual(manifest.exports['.'], { types: './index.d.ts', default: './zepo.js' });
  assert.equal(manifest.dependencies, undefined, 'no dependencies');
  for (const f of ['zepo.js', 'worker.js', 'weights.js', 'engine/zepo.js', 'engine/zepo_bg.wasm']) {
    assert.ok(fs.readFileSync(path.join(PKG, f)).equals(fs.readFileSync(path.join(ROOT, 'www', f))),
      `pkg/${f} is www/${f} (a stale pkg/? run bash scripts/build-pkg.sh)`);
  }
  console.log(`tarball ${packed.filename}: ${(packed.size / 2 ** 20).toFixed(2)} MiB packed, ` +
    `${(packed.unpackedSize / 2 ** 20).toFixed(2)} MiB unpacked; ${listed.join(', ')}`);
});

test('index.d.ts type-checks a usage file and rejects wrong options', { timeout: 120_000 }, () => {
  const dir = project('types', {
    'usage.ts': `import { stylize, ZePo, DEFAULT_MODEL, type ProgressEvent, type ZePoErrorName } from 'zepo-web';
export async function demo(content: Blob, style: File, signal: AbortSignal): Promise<string> {
  const seen: ProgressEvent[] = [];
  const png: Blob = await stylize(content, style, {
    resolution: 64, steps: 2, seed: 7, tome: { ratio: 0.5, deterministic: true }, precision: 'f16',
    onProgress: (e) => {
      seen.push(e);
      if (e.stage === 'download') console.log(e.file, e.loaded / e.total);
      else if (e.stage === 'load') console.log(e.part);
      else console.log(e.stage, e.step, e.steps, e.fraction);
    },
    signal, model: DEFAULT_MODEL,
  });
  const engine = await ZePo.load({ model: new URL('https://example.org/m'), onProgress: (e) => seen.push(e) });
  const again = await engine.stylize(new Uint8Array(await png.arrayBuffer()), await style.arrayBuffer(), { noCfg: true });
  const kept: boolean = await engine.hasStyle(style, { seed: 7 });
  const many = await engine.stylizeMany([png, style], style, { seed: 7, onItem: (i, e) => console.log(i, e.png ? e.png.size : e.error.name),
    onProgress: (e) => console.log(e.item, e.items, e.stage), itemSignals: [undefined, signal] });
  const first = many[0];
  const evals: number | undefined = first.png ? first.counters.unet_evals : engine.last?.counters.unet_evals;
  const warmed: number = await engine.warmup({ resolution: 256 }, { signal, onProgress: (e) => seen.push(e) });
  (await ZePo.load({ warmup: { resolution: 256 } })).dispose();
  const name: ZePoErrorName = 'WebGpuUnavailable';
  const line = [engine.device.precision, engine.info.self_attentions, engine.last?.stages.denoise, kept, warmed, name, again.size, evals];
  engine.dispose();
  await ZePo.clearCache(engine.model);
  return line.join(' ');
}
`,
    'wrong.ts': `import { stylize, ZePo } from 'zepo-web';
declare const b: Blob;
// @ts-expect-error steps is a number
stylize(b, b, { steps: 'two' });
// @ts-expect-error no such option
stylize(b, b, { colour: 1 });
// @ts-expect-error precision is 'auto' | 'f16' | 'f32'
ZePo.load({ precision: 'f64' });
// @ts-expect-error a string is not an image
stylize('face.png', b);
// @ts-expect-error the engine's run options take no model
ZePo.load().then((e) => e.stylize(b, b, { model: 'x' }));
`,
  });
  const tsc = path.join(BIN, 'tsc');
  const args = ['--noEmit', '--strict', '--target', 'es2022', '--module', 'esnext', '--moduleResolution', 'bundler',
    '--lib', 'es2022,dom'];
  try {
    run(tsc, [...args, 'usage.ts', 'wrong.ts'], dir);
  } catch (e) {
    assert.fail(`tsc: ${e.stdout}${e.stderr}`);
  }
  // Each @ts-expect-error above is needed: without the comments, five errors.
  fs.writeFileSync(path.join(dir, 'wrong.ts'), fs.readFileSync(path.join(dir, 'wrong.ts'), 'utf8').replace(/^\/\/ @ts-expect-error.*$/gm, ''));
  let out = '';
  try {
    run(tsc, [...args, 'wrong.ts'], dir);
  } catch (e) {
    out = e.stdout;
  }
  assert.equal((out.match(/error TS/g) || []).length, 5, out);
});

describe('the installed package in headless Chromium', () => {
  let browser;
  const pages = {};
  before(async () => {
    // The model and the example images, on the repository's server: another origin than the pages'.
    server = await serve({ model: MODEL });
    browser = await launch({ webgpu: true });
    // The plain-ESM page: no bundler, the package's module straight from node_modules.
    pages.esm = project('esm', {
      'index.html': `<!doctype html><meta charset="utf-8"><title>zepo-web (ESM)</title>
<script type="module">
  import * as api from './node_modules/zepo-web/zepo.js';
  window.api = api;
</script>
`,
    });
    // The Vite app: imports the bare name; `vite build` bundles the Worker and emits the wasm.
    const vite = project('vite', {
      'index.html': `<!doctype html><meta charset="utf-8"><title>zepo-web (Vite)</title>
<script type="module" src="./main.js"></script>
`,
      'main.js': `import { stylize, ZePo, DEFAULT_MODEL } from 'zepo-web';
window.api = { stylize, ZePo, DEFAULT_MODEL };
`,
    });
    run(path.join(BIN, 'vite'), ['build', '--logLevel', 'warn'], vite);
    pages.viteApp = vite;
    pages.vite = path.join(vite, 'dist');
  });
  // A dev server left running would keep this file's process alive after a failure.
  const devServers = [];
  after(async () => {
    for (const dev of devServers) dev.kill('SIGKILL');
    if (browser?.logs.length) console.log(browser.logs.slice(-30).join('\n'));
    await browser?.close();
  });

  for (const kind of ['esm', 'vite']) {
    test(`${kind}: stylize() gives the native pipeline's PNG`, { timeout: T }, async () => {
      // Each page on its own origin (its own weight cache): it downloads the model itself.
      const site = await startServer({ port: 0, host: '127.0.0.1', root: pages[kind] });
      const requests = [];
      site.server.prependListener('request', (req) => requests.push(req.url));
      const page = await browser.context.newPage();
      try {
        const base = site.url.replace('localhost', '127.0.0.1');
        await page.goto(`${base}/index.html`);
        await page.waitForFunction(() => window.api, null, { timeout: 30_000 });
        const out = await page.evaluate(async ([repo, opts]) => {
          const get = async (p) => (await fetch(`${repo}${p}`)).blob();
          const [content, style] = await Promise.all([get('/www/examples/portrait.png'), get('/www/examples/style.png')]);
          const stages = new Set();
          const t = performance.now();
          try {
            const blob = await window.api.stylize(content, style, { ...opts, model: `${repo}/model`, onProgress: (e) => stages.add(e.stage) });
            return { type: blob.type, bytes: Array.from(new Uint8Array(await blob.arrayBuffer())), stages: [...stages],
              seconds: (performance.now() - t) / 1000, defaultModel: window.api.DEFAULT_MODEL };
          } catch (e) {
            return { error: { name: e.name, message: e.message } };
          }
        }, [server.url, OPTS]);
        assert.ok(!out.error, JSON.stringify(out.error));
        assert.equal(out.type, 'image/png');
        assert.equal(out.defaultModel, 'https://huggingface.co/SimianLuo/LCM_Dreamshaper_v7/resolve/main');
        for (const s of ['download', 'load', 'denoise', 'decode', 'done']) assert.ok(out.stages.includes(s), `stage ${s}: ${out.stages}`);
        const png = decodePng(Buffer.from(out.bytes));
        assert.deepEqual([png.width, png.height, png.channels], [64, 64, 3]);
        const { max, mean } = assertMatchesNative(png, readSafetensors(REF).image, `${kind} page`);
        console.log(`${kind} page: stylize() ${out.seconds.toFixed(1)} s; max |Δ| ${(max * 255).toFixed(2)}/255, ` +
          `mean |Δ| ${(mean * 255).toFixed(3)}/255; engine files from the page's origin: ${requests.filter((u) => /\.(js|wasm)$/.test(u)).join(', ')}`);
        // The engine came from the installed package, not from the repository's www/.
        assert.ok(requests.some((u) => u.endsWith('.wasm')), `the wasm from the page's origin: ${requests}`);
        const fromRepo = server.requests.map((r) => r.url).filter((u) => !u.startsWith('/model/') && !u.startsWith('/www/examples/'));
        assert.deepEqual(fromRepo, [], 'only the model and the images from the repository server');
      } finally {
        await page.close();
        site.server.closeAllConnections?.();
        await new Promise((r) => site.server.close(r));
        server.requests.length = 0;
      }
    });
  }

  test('vite dev server, no configuration: the engine starts and loads the model', { timeout: T }, async () => {
    // Vite pre-bundles the package into node_modules/.vite/deps: the Worker and the wasm must
    // still be found.
    const port = await new Promise((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
    });
    // NO_COLOR: with CI set, Vite colours its banner even into a pipe, and `:PORT/` would not
    // appear as such in it.
    const dev = spawn(path.join(BIN, 'vite'), ['--host', '127.0.0.1', '--port', String(port), '--strictPort', '--clearScreen', 'false'],
      { cwd: pages.viteApp, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } });
    devServers.push(dev);
    let log = '';
    const ready = new Promise((resolve, reject) => {
      const on = (d) => { log += d; if (log.includes(`:${port}/`)) resolve(); };
      dev.stdout.on('data', on);
      dev.stderr.on('data', on);
      dev.once('exit', (code) => reject(new Error(`vite exited (${code}): ${log}`)));
      setTimeout(() => reject(new Error(`vite did not report its address in 60 s: ${log}`)), 60_000).unref();
    });
    const page = await browser.context.newPage();
    try {
      await ready;
      await page.goto(`http://127.0.0.1:${port}/index.html`);
      await page.waitForFunction(() => window.api, null, { timeout: 60_000 });
      const out = await page.evaluate(async (model) => {
        try {
          const engine = await window.api.ZePo.load({ model });
          const { device, info } = engine;
          engine.dispose();
          return { precision: device.precision, layers: info.self_attentions };
        } catch (e) {
          return { error: { name: e.name, message: e.message } };
        }
      }, `${server.url}/model`);
      assert.ok(!out.error, JSON.stringify(out.error));
      assert.ok(out.layers > 0, JSON.stringify(out));
      const deps = JSON.parse(fs.readFileSync(path.join(pages.viteApp, 'node_modules/.vite/deps/_metadata.json'), 'utf8'));
      console.log(`vite dev: engine loaded (${JSON.stringify(out)}); pre-bundled: ${Object.keys(deps.optimized)}`);
    } finally {
      await page.close();
      dev.kill();
      server.requests.length = 0;
    }
  });
});
