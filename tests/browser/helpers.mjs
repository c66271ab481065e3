// Shared by the browser tests: the static server, headless Chromium with WebGPU (SwiftShader),
// and reading reference tensors from tests/fixtures/*.safetensors.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer } from '../../scripts/serve.mjs';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const RESULTS = path.join(ROOT, 'test-results');

/** Chromium's binary: $CHROME, else Debian's. Never a Playwright download. */
export function chromiumPath() {
  const candidates = [process.env.CHROME, '/usr/lib/chromium/chromium', '/usr/bin/chromium'];
  const found = candidates.find((c) => c && fs.existsSync(c));
  if (!found) throw new Error('no Chromium found: apt-get install chromium, or set CHROME=/path/to/chrome');
  return found;
}

const BASE_FLAGS = ['--headless=new', '--no-sandbox', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-dev-shm-usage'];

/**
 * Launches Chromium on a fresh profile. `webgpu`: add --enable-unsafe-webgpu (WebGPU through
 * SwiftShader's Vulkan on a machine without a GPU). Returns { context, page, logs, close }.
 */
export async function launch({ webgpu = true } = {}) {
  const { chromium } = await import('playwright-core');
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'zepo-chromium-'));
  const args = [...BASE_FLAGS, ...(webgpu ? ['--enable-unsafe-webgpu'] : [])];
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: chromiumPath(),
    headless: true,
    args,
    // Only our flags decide about the GPU: drop Playwright's GPU-related defaults.
    ignoreDefaultArgs: ['--disable-gpu', '--use-angle=swiftshader-webgl', '--enable-unsafe-swiftshader'],
    timeout: 60_000,
  });
  const page = context.pages()[0] || (await context.newPage());
  const logs = [];
  page.on('console', (m) => logs.push(`[${m.type()}] ${m.text()}`.slice(0, 500)));
  page.on('pageerror', (e) => logs.push(`[pageerror] ${e}`));
  page.on('worker', (w) => w.on('console', (m) => logs.push(`[worker ${m.type()}] ${m.text()}`.slice(0, 500))));
  const close = async () => {
    await context.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  };
  return { context, page, logs, close };
}

/** The static server on a free localhost port. */
export async function serve() {
  const { server, url } = await startServer({ port: 0, host: '127.0.0.1' });
  return { url: url.replace('localhost', '127.0.0.1'), close: () => new Promise((r) => server.close(r)) };
}

/** Every tensor of a safetensors file, as { shape, dtype, values: number[] }. */
export function readSafetensors(file) {
  const bytes = fs.readFileSync(file);
  const headerLen = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLen).toString('utf8'));
  const data = 8 + headerLen;
  const out = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [start, end] = t.data_offsets;
    const buf = bytes.buffer.slice(bytes.byteOffset + data + start, bytes.byteOffset + data + end);
    let values;
    switch (t.dtype) {
      case 'F32': values = Array.from(new Float32Array(buf)); break;
      case 'F64': values = Array.from(new Float64Array(buf)); break;
      case 'I64': values = Array.from(new BigInt64Array(buf), Number); break;
      case 'I32': values = Array.from(new Int32Array(buf)); break;
      default: continue;
    }
    out[name] = { shape: t.shape, dtype: t.dtype, values };
  }
  return out;
}

/** Max |a - b| relative to max |b|. */
export function relError(actual, expected) {
  if (actual.length !== expected.length) throw new Error(`${actual.length} values, expected ${expected.length}`);
  let err = 0;
  let scale = 0;
  for (let i = 0; i < expected.length; i++) {
    if (!Number.isFinite(actual[i])) return Infinity;
    err = Math.max(err, Math.abs(actual[i] - expected[i]));
    scale = Math.max(scale, Math.abs(expected[i]));
  }
  return err / Math.max(scale, 1e-12);
}

export async function screenshot(page, name) {
  fs.mkdirSync(RESULTS, { recursive: true });
  const file = path.join(RESULTS, name);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}
