// The settings a result PNG carries (its `zepo-settings` text chunk, JSON, written by the engine:
// src/zepo/options.rs `png_text`), read back for "again with these settings". Any file may be
// dropped on the page, so everything here is outside input: the PNG's chunks are bounded and
// CRC-checked, the JSON is checked key by key against what the page's options accept, and any
// fault is a SettingsError that names it. Nothing is applied unless all of it is good.
// tests/browser/page.test.mjs fuzzes `readPngSettings` and `pageSettings`.

export const KEYWORD = 'zepo-settings';
const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];
// The text chunks come before the pixels (IDAT); a ZePo PNG's are in its first kilobytes.
const HEAD_BYTES = 1 << 20;
// The most a settings text may be, once decompressed (a prompt is at most a few hundred bytes).
const MAX_TEXT = 64 * 1024;

export class SettingsError extends Error {
  constructor(message) {
    super(message);
    this.name = 'SettingsError';
  }
}

let crcTable = null;
function crc32(bytes) {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = 0xffffffff;
  for (const b of bytes) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

const latin1 = (bytes) => String.fromCharCode(...bytes);

/** Inflates zlib `data`, refusing more than MAX_TEXT bytes out. */
async function inflate(data) {
  if (typeof DecompressionStream !== 'function') throw new SettingsError('its settings are compressed, and this browser cannot decompress them');
  const stream = new Blob([data]).stream().pipeThrough(new DecompressionStream('deflate'));
  const parts = [];
  let total = 0;
  try {
    for await (const part of stream) {
      total += part.length;
      if (total > MAX_TEXT) throw new SettingsError(`its settings are larger than ${MAX_TEXT} bytes`);
      parts.push(part);
    }
  } catch (e) {
    if (e instanceof SettingsError) throw e;
    throw new SettingsError('its compressed settings are damaged');
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

/** The text of a tEXt / zTXt / iTXt chunk whose keyword is KEYWORD, else null. */
async function settingsText(type, data) {
  const nul = data.indexOf(0);
  if (nul < 0 || latin1(data.subarray(0, nul)) !== KEYWORD) return null;
  const rest = data.subarray(nul + 1);
  if (type === 'tEXt') return latin1(rest);
  if (type === 'zTXt') {
    if (rest[0] !== 0) throw new SettingsError('its settings use an unknown compression');
    return latin1(await inflate(rest.subarray(1)));
  }
  // iTXt: compression flag, method, language \0, translated keyword \0, UTF-8 text.
  const [flag, method] = rest;
  const lang = rest.indexOf(0, 2);
  const translated = lang < 0 ? -1 : rest.indexOf(0, lang + 1);
  if (translated < 0 || flag > 1 || (flag === 1 && method !== 0)) throw new SettingsError('its settings chunk is malformed');
  const text = rest.subarray(translated + 1);
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(flag === 1 ? await inflate(text) : text);
  } catch (e) {
    if (e instanceof SettingsError) throw e;
    throw new SettingsError('its settings are not valid UTF-8');
  }
}

/**
 * The `zepo-settings` object of a PNG (`bytes`: its first bytes at least, up to its pixels).
 * Throws SettingsError: not a PNG, a damaged chunk, no settings, settings that are not a JSON
 * object.
 */
export async function readPngSettings(bytes) {
  if (bytes.length < 8 || SIGNATURE.some((b, i) => bytes[i] !== b)) throw new SettingsError('it is not a PNG file');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let pos = 8; ;) {
    if (pos + 8 > bytes.length) throw new SettingsError('it has no ZePo settings (the file ends before its image data)');
    const length = view.getUint32(pos);
    const type = latin1(bytes.subarray(pos + 4, pos + 8));
    if (!/^[A-Za-z]{4}$/.test(type)) throw new SettingsError(`it is damaged (a chunk at byte ${pos} has no valid type)`);
    if (type === 'IDAT' || type === 'IEND') {
      throw new SettingsError('it has no ZePo settings: it was not made by ZePo, or an editor removed its text');
    }
    if (length > bytes.length - pos - 12) throw new SettingsError(`it is cut short (its ${type} chunk runs past the end)`);
    const body = bytes.subarray(pos + 4, pos + 8 + length);
    if (crc32(body) !== view.getUint32(pos + 8 + length)) throw new SettingsError(`it is damaged (its ${type} chunk fails its CRC check)`);
    if (type === 'tEXt' || type === 'zTXt' || type === 'iTXt') {
      const text = await settingsText(type, body.subarray(4));
      if (text != null) {
        if (text.length > MAX_TEXT) throw new SettingsError(`its settings are larger than ${MAX_TEXT} bytes`);
        let value;
        try {
          value = JSON.parse(text);
        } catch {
          throw new SettingsError('its settings are not valid JSON');
        }
        if (!value || typeof value !== 'object' || Array.isArray(value)) throw new SettingsError('its settings are not a JSON object');
        return value;
      }
    }
    pos += 12 + length;
  }
}

/** readPngSettings of a Blob or File (only its first megabyte is read). */
export async function blobSettings(blob) {
  return readPngSettings(new Uint8Array(await blob.slice(0, HEAD_BYTES).arrayBuffer()));
}

const isInt = (v, min, max) => Number.isSafeInteger(v) && v >= min && v <= max;
const isNum = (v) => typeof v === 'number' && Number.isFinite(v);
const MAX_PROMPT = 4096;

// What each key of a result's settings may be, and how it lands in the page's options.
const CHECKS = {
  width: [(v) => isInt(v, 8, 4096), 'a whole number of pixels from 8 to 4096'],
  height: [(v) => isInt(v, 8, 4096), 'a whole number of pixels from 8 to 4096'],
  fit: [(v) => ['contain', 'cover', 'stretch'].includes(v), "'contain', 'cover' or 'stretch'"],
  steps: [(v) => isInt(v, 1, 1000), 'a whole number from 1'],
  strength: [(v) => isNum(v) && v > 0 && v <= 1, 'a number in (0, 1]'],
  cfg: [isNum, 'a finite number'],
  styleGuidance: [isNum, 'a finite number'],
  featureStep: [(v) => isInt(v, 0, 1000), 'a whole number'],
  startLayer: [(v) => isInt(v, 0, 1000), 'a whole number'],
  endLayer: [(v) => isInt(v, 0, 1000), 'a whole number'],
  mixQ: [isNum, 'a finite number'],
  tome: [(v) => typeof v === 'boolean' || (v && typeof v === 'object' && !Array.isArray(v)
    && isNum(v.ratio) && isInt(v.sx, 1, 64) && isInt(v.sy, 1, 64) && typeof v.deterministic === 'boolean'),
  'false or { ratio, sx, sy, deterministic }'],
  prompt: [(v) => typeof v === 'string' && v.length <= MAX_PROMPT, `a text of at most ${MAX_PROMPT} characters`],
  negativePrompt: [(v) => typeof v === 'string' && v.length <= MAX_PROMPT, `a text of at most ${MAX_PROMPT} characters`],
  seed: [(v) => isInt(v, 0, Number.MAX_SAFE_INTEGER), 'a non-negative whole number'],
  noCfg: [(v) => typeof v === 'boolean', 'true or false'],
  model: [(v) => typeof v === 'string' && v.length <= 2048, 'a URL'],
};

/**
 * The page's options from a result's settings: `{ form, extra, model, ignored }`. `form` holds
 * the values of the page's option fields (the long side as `resolution`), `extra` the settings
 * the page has no field for (passed to the engine as they are), `ignored` unknown keys (a newer
 * version's). Throws SettingsError naming the first value that is wrong.
 */
export function pageSettings(settings) {
  for (const [key, value] of Object.entries(settings)) {
    const check = CHECKS[key];
    if (check && !check[0](value)) throw new SettingsError(`its setting \`${key}\` is ${JSON.stringify(value)?.slice(0, 60)}; it must be ${check[1]}`);
  }
  const has = (k) => Object.hasOwn(settings, k);
  for (const k of ['width', 'height', 'seed']) {
    if (!has(k)) throw new SettingsError(`its settings lack \`${k}\``);
  }
  const { width, height } = settings;
  const form = { resolution: Math.max(width, height) };
  for (const k of ['fit', 'steps', 'strength', 'cfg', 'styleGuidance', 'seed', 'startLayer', 'endLayer', 'prompt', 'negativePrompt']) {
    if (has(k)) form[k] = settings[k];
  }
  if (has('tome')) form.tome = settings.tome !== false;
  const extra = {};
  for (const k of ['featureStep', 'mixQ', 'noCfg']) if (has(k)) extra[k] = settings[k];
  // A square result of a non-stretch fit came from a square portrait; only `stretch` needs the
  // box's two sides.
  if (settings.fit === 'stretch' && width !== height) Object.assign(extra, { width, height });
  if (settings.tome && typeof settings.tome === 'object') extra.tome = settings.tome;
  const ignored = Object.keys(settings).filter((k) => !CHECKS[k]);
  return { form, extra, model: settings.model ?? null, ignored };
}
