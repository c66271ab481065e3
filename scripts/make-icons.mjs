// Draws the app's icons (www/icons/*.png, referenced by manifest.webmanifest): a portrait
// silhouette, half white, half in warm brush stripes (the style), on the page's accent colour.
// Node's standard library only; the PNGs are committed, this script documents how they were made.
//   node scripts/make-icons.mjs
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';

const OUT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../www/icons');
const ACCENT = [0x5b, 0x5b, 0xd6]; // --accent in www/style.css (= theme_color)
const WHITE = [0xff, 0xff, 0xff];
const STRIPES = [[0xf4, 0xa2, 0x59], [0xf2, 0x5f, 0x5c]];
const SS = 4; // supersampling per axis, for smooth edges

// The silhouette in a unit box: a head and shoulders (clipped flat at the bottom).
function glyph(x, y) {
  const head = (x - 0.5) ** 2 + (y - 0.34) ** 2 <= 0.19 ** 2;
  const shoulders = y <= 0.96 && ((x - 0.5) / 0.42) ** 2 + ((y - 1.02) / 0.42) ** 2 <= 1;
  if (!head && !shoulders) return null;
  if (x >= 0.5) return WHITE;
  return STRIPES[Math.floor((x + y) / 0.11) % 2];
}

function roundedSquare(x, y, r) {
  const dx = Math.max(r - x, x - (1 - r), 0);
  const dy = Math.max(r - y, y - (1 - r), 0);
  return dx * dx + dy * dy <= r * r;
}

// One sample: [r, g, b, a]. `maskable`: full-bleed background, the glyph inside the safe zone
// (the centred circle of radius 0.4); otherwise a rounded square on transparency.
function sample(x, y, maskable) {
  const [lo, hi] = maskable ? [0.24, 0.76] : [0.14, 0.86];
  if (!maskable && !roundedSquare(x, y, 0.2)) return [0, 0, 0, 0];
  const g = glyph((x - lo) / (hi - lo), (y - lo) / (hi - lo));
  return [...(g || ACCENT), 255];
}

function render(size, maskable) {
  const rgba = Buffer.alloc(size * size * 4);
  for (let py = 0; py < size; py++) {
    for (let px = 0; px < size; px++) {
      const acc = [0, 0, 0, 0];
      for (let sy = 0; sy < SS; sy++) {
        for (let sx = 0; sx < SS; sx++) {
          const s = sample((px + (sx + 0.5) / SS) / size, (py + (sy + 0.5) / SS) / size, maskable);
          // Premultiplied, so that transparent samples do not darken the edges.
          for (let c = 0; c < 3; c++) acc[c] += s[c] * s[3];
          acc[3] += s[3];
        }
      }
      const o = (py * size + px) * 4;
      for (let c = 0; c < 3; c++) rgba[o + c] = acc[3] ? Math.round(acc[c] / acc[3]) : 0;
      rgba[o + 3] = Math.round(acc[3] / (SS * SS));
    }
  }
  return rgba;
}

const CRC = new Int32Array(256).map((_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c;
});
function crc32(buf) {
  let c = -1;
  for (const b of buf) c = CRC[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}

function chunk(type, data) {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, 'latin1');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])), 0);
  return Buffer.concat([head, data, crc]);
}

// An 8-bit RGBA PNG, every row with the "up" filter (flat areas compress to almost nothing).
function png(size, rgba) {
  const stride = size * 4;
  const raw = Buffer.alloc(size * (stride + 1));
  for (let y = 0; y < size; y++) {
    raw[y * (stride + 1)] = 2;
    for (let x = 0; x < stride; x++) {
      const up = y > 0 ? rgba[(y - 1) * stride + x] : 0;
      raw[y * (stride + 1) + 1 + x] = (rgba[y * stride + x] - up) & 0xff;
    }
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(size, 0);
  ihdr.writeUInt32BE(size, 4);
  ihdr.set([8, 6, 0, 0, 0], 8);
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(raw, { level: 9 })), chunk('IEND', Buffer.alloc(0))]);
}

fs.mkdirSync(OUT, { recursive: true });
for (const [name, size, maskable] of [['icon-192.png', 192, false], ['icon-512.png', 512, false], ['icon-maskable-512.png', 512, true]]) {
  const bytes = png(size, render(size, maskable));
  fs.writeFileSync(path.join(OUT, name), bytes);
  console.log(`www/icons/${name}: ${size}×${size}, ${bytes.length} bytes`);
}
