// The full-size model without the real weights: LCM_Dreamshaper_v7's structure (the configs in
// weights/lcm-dreamshaper-v7) with random weights, written by the project's own CLI
// (`zepo weights random`, no torch) and converted to the fp16 bundle the browser streams
// (`zepo weights convert`), as a user would convert the real checkpoint. Made once into a cache
// directory and reused while the configs and the generator are unchanged.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT } from './helpers.mjs';

const CONFIGS = path.join(ROOT, 'weights/lcm-dreamshaper-v7');
// Bump when the random generator or the bundle format changes.
const GENERATOR = 'zepo-random-1';

/** The zepo CLI built by cargo: $ZEPO_CLI, else the newest of the release and debug builds. */
export function zepoCli() {
  if (process.env.ZEPO_CLI) return process.env.ZEPO_CLI;
  const target = process.env.CARGO_TARGET_DIR || path.join(os.homedir(), '.cache/zepo-target');
  const built = ['release', 'debug'].map((p) => path.join(target, p, 'zepo')).filter((f) => fs.existsSync(f));
  if (!built.length) throw new Error(`no zepo CLI in ${target}/{release,debug}: build it with cargo build --release --bin zepo (or set ZEPO_CLI)`);
  return built.sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs)[0];
}

function fingerprint() {
  const h = crypto.createHash('sha256').update(GENERATOR);
  const walk = (dir) => {
    for (const name of fs.readdirSync(dir).sort()) {
      const p = path.join(dir, name);
      if (fs.statSync(p).isDirectory()) walk(p);
      else h.update(name).update(fs.readFileSync(p));
    }
  };
  walk(CONFIGS);
  return h.digest('hex').slice(0, 16);
}

/**
 * The directory of the full-size random fp16 bundle, made if missing or stale.
 * `cache`: where to keep it ($ZEPO_FULLSIZE_CACHE, else ~/.cache/zepo-fullsize).
 */
export function fullSizeBundle({ cache = process.env.ZEPO_FULLSIZE_CACHE || path.join(os.homedir(), '.cache/zepo-fullsize'), log = console.log } = {}) {
  const id = fingerprint();
  const bundle = path.join(cache, `lcm-dreamshaper-v7-random-${id}`);
  const done = path.join(bundle, '.complete');
  if (fs.existsSync(done)) return bundle;
  fs.mkdirSync(cache, { recursive: true });
  // Older versions go: each is 2 GB.
  for (const old of fs.readdirSync(cache)) fs.rmSync(path.join(cache, old), { recursive: true, force: true });
  const cli = zepoCli();
  const checkpoint = path.join(cache, 'checkpoint.tmp');
  const t0 = Date.now();
  log(`making the full-size random bundle with ${cli} (once, into ${cache}) ...`);
  const run = (...args) => execFileSync(cli, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 26 }).toString();
  run('weights', 'random', '--config', CONFIGS, '--out', checkpoint);
  run('weights', 'convert', '--model', checkpoint, '--out', bundle, '--name', 'lcm-dreamshaper-v7-random');
  fs.rmSync(checkpoint, { recursive: true, force: true });
  fs.writeFileSync(done, `${GENERATOR}\n`);
  log(`full-size random bundle made in ${((Date.now() - t0) / 1000).toFixed(0)} s: ${bundle}`);
  return bundle;
}

/**
 * What each part's weights take, from the bundle's manifest and shard headers: `elements` (the
 * weights' logical sizes), `fileBytes` (the download) and `gpuBytes` in f32 and f16 (what the
 * GPU holds, as the engine keeps it: a compact tensor's code words and its scales in the compute
 * dtype; the UNet's and VAE's f16 weights of 2+ dimensions in f16, two per 32-bit word, also
 * where the GPU computes in f32; other floats in the compute dtype). `variant`: `fp16`
 * (default) or a compact variant.
 */
export function bundleWeights(bundle, variant = 'fp16') {
  const manifest = JSON.parse(fs.readFileSync(path.join(bundle, 'manifest.json'), 'utf8'));
  const parts = variant === 'fp16' ? manifest.parts : { ...manifest.parts, ...manifest.variants?.[variant]?.parts };
  if (variant !== 'fp16' && !manifest.variants?.[variant]) throw new Error(`${bundle} has no \`${variant}\` weights`);
  const out = {};
  for (const [part, p] of Object.entries(parts)) {
    let elements = 0;
    const gpuBytes = { f32: 0, f16: 0 };
    for (const shard of p.shards) {
      const fd = fs.openSync(path.join(bundle, shard.url), 'r');
      const prefix = Buffer.alloc(8);
      fs.readSync(fd, prefix, 0, 8, 0);
      const len = Number(prefix.readBigUInt64LE(0));
      const buf = Buffer.alloc(len);
      fs.readSync(fd, buf, 0, len, 8);
      fs.closeSync(fd);
      for (const [name, t] of Object.entries(JSON.parse(buf.toString('utf8')))) {
        if (name === '__metadata__') continue;
        const q = shard.quantized?.[name];
        const shape = q ? q.shape : t.shape;
        const n = shape.reduce((a, b) => a * b, 1);
        elements += n;
        if (q) {
          const bits = Number(q.scheme.slice(1));
          const rows = shape[0];
          const k = n / rows;
          const words = rows * Math.ceil((k * bits) / 32);
          const blocks = rows * Math.ceil(k / q.block);
          gpuBytes.f32 += 4 * words + 4 * blocks;
          gpuBytes.f16 += 4 * words + 2 * blocks;
        } else if (['unet', 'vae'].includes(part) && t.dtype === 'F16' && shape.length >= 2) {
          gpuBytes.f32 += 4 * shape[0] * Math.ceil(n / shape[0] / 2);
          gpuBytes.f16 += 2 * n;
        } else {
          gpuBytes.f32 += 4 * n;
          gpuBytes.f16 += 2 * n;
        }
      }
    }
    out[part] = { elements, fileBytes: p.total_bytes, gpuBytes };
  }
  return { manifest, parts: out };
}
