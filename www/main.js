// The page: pick, drop or paste a portrait and a style image (or take the examples), press
// Stylize, watch the progress, get the result: a before/after slider over it, the run's settings
// beside it and a download link named after them. The engine runs in a Worker through the JS API
// (www/zepo.js); no image leaves the page. Before the first download of a large model the page
// says its size and waits for "Download model" (with a choice of precision); a stored or small
// model (under 64 MB: the tiny test models) loads at once, unless ?confirm=1. `window.zepo` is
// the page's handle for the browser tests.
import { ZePo, resolveModel } from './zepo.js';
import { modelSize } from './model-size.js';
import { rememberWeights, showWeightsChoice, weightsFor } from './weights-choice.js';
import { registerServiceWorker, storagePanel, takeOverUpdate } from './pwa.js';
import { setUpCamera } from './camera.js';
import { shareOrDownload } from './share.js';
import { onLaunchFiles, recentPortrait, rememberPortrait, takeShared } from './share-in.js';
import { runBatch } from './batch.js';
import { galleryPanel } from './gallery.js';
import { blobSettings, pageSettings } from './png-settings.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
// The page's model: ?model=URL, else the one a site build set (`<meta name="zepo-model">`, written
// by scripts/build-site.mjs: by default the public repository), else what scripts/serve.mjs
// serves at /model/ (weights/tiny-lcm by default) in a source checkout.
// A hub repository id (?model=owner/name, ?revision=) becomes its URL here, so that the storage
// panel and the size shown name the files the engine reads.
const MODEL = resolveModel(params.get('model') || document.querySelector('meta[name="zepo-model"]')?.content
  || new URL('../model', import.meta.url).href, { revision: params.get('revision') || 'main' });
const form = $('options-form');
const images = { content: null, style: null };
// The picked files' names (null: an example or a pasted image), for the download's file name.
const names = { content: null, style: null };
const LABELS = { content: 'Portrait', style: 'Style' };
const mib = (n) => `${(n / 2 ** 20).toFixed(1)} MB`;
/** A size for people: MB, or GB from 1 GiB (binary units, as the Storage panel). */
const size = (n) => (n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GB` : mib(n));
// A model whose first download is smaller loads without asking (the tiny test models).
const ASK_ABOVE = 64 * 2 ** 20;
const PRECISION_KEY = 'zepo-precision';
let engine = null;
let running = null;
let resultUrl = null;
let beforeUrl = null;
// Several portraits picked or dropped at once: the batch (images.content is its first).
let portraits = [];
// Settings restored from a result that the page has no field for (featureStep, tome's details…):
// sent with the next runs until an option is edited.
let extraOptions = {};
// Frees the object URLs of the last batch's grid (its portraits and results), before the next.
let releaseBatch = null;

// Options may be preset from the URL: ?resolution=64&steps=2&seed=3
for (const [k, v] of params) {
  const input = form.elements.namedItem(k);
  if (input?.type === 'checkbox') input.checked = v !== '0' && v !== 'false';
  else if (input) input.value = v;
}

function setState(state, message) {
  document.body.dataset.state = state;
  $('status').textContent = message;
}

/**
 * What became of something the visitor handed the page (a paste, a photo, a share, several
 * portraits, restored settings): a line of its own, so that the engine's state (#status),
 * which the load sets meanwhile, does not overwrite it.
 */
function sayInput(message) {
  $('input-status').textContent = message;
  $('input-status').hidden = !message;
}

// What an error means to the user, by its name (www/zepo.js lists them); its message follows.
const ERROR_TITLES = {
  StorageFull: 'Not enough storage for the model: free some space (delete a downloaded model below, or other ' +
    'sites\' data in the browser\'s settings) and try again.',
  QuotaExceededError: 'Not enough storage for the model: free some space and try again.',
  DownloadError: 'The model could not be downloaded.',
  NotFound: 'The model was not found at its URL.',
  IntegrityError: 'The model\'s files failed their integrity check (nothing corrupt was kept).',
  WeightsError: 'The model\'s files could not be read.',
  ImageError: 'That image could not be used.',
  InvalidOption: 'An option is not valid.',
  OutOfMemory: 'The GPU ran out of memory.',
  DeviceLost: 'The GPU device was lost.',
  EngineCrashed: 'The engine crashed.',
  EngineMissing: 'The engine could not be loaded.',
};

// The page's Content-Security-Policy (its <meta>, see scripts/build-site.mjs) lets it connect to
// its own origin and the model hosts the site was built for, nothing else: a model elsewhere
// (?model=) is refused before any request, by name (ModelHostBlocked), not as a failed download.
function connectSources() {
  const policy = document.querySelector('meta[http-equiv="Content-Security-Policy" i]')?.content;
  if (!policy) return null;
  const directives = new Map(policy.split(';').map((d) => d.trim().split(/\s+/)).filter((d) => d[0])
    .map(([name, ...sources]) => [name.toLowerCase(), sources]));
  return directives.get('connect-src') ?? directives.get('default-src') ?? null;
}

/** Whether `url` matches one of the CSP source expressions (no paths in ours). */
function allowedBy(url, sources) {
  const u = new URL(url);
  const ports = { 'http:': '80', 'https:': '443', 'ws:': '80', 'wss:': '443' };
  return sources.some((source) => {
    const s = source.toLowerCase();
    if (s === "'self'") return u.origin === location.origin;
    if (s === '*') return /^(https?|wss?):$/.test(u.protocol);
    if (/^[a-z][a-z0-9+.-]*:$/.test(s)) return u.protocol === s || (s === 'http:' && u.protocol === 'https:');
    const m = /^(?:([a-z][a-z0-9+.-]*):\/\/)?(\*\.)?([^:/]+)(?::(\d+|\*))?/.exec(s);
    if (!m) return false;
    const [, scheme = location.protocol.slice(0, -1), wild, host, port] = m;
    const upgraded = { http: 'https:', ws: 'wss:' }[scheme];
    if (u.protocol !== `${scheme}:` && u.protocol !== upgraded) return false;
    if (wild ? !u.hostname.endsWith(`.${host}`) : u.hostname !== host) return false;
    return port === '*' || (port || ports[`${scheme}:`]) === (u.port || ports[u.protocol]);
  });
}

/** A ModelHostBlocked error for a model at `url` (`what`: how to name it), or null where the policy allows it. */
function hostBlocked(url, what = `The model ${url}`) {
  const sources = connectSources();
  if (!sources || allowedBy(url, sources)) return null;
  const hosts = sources.filter((s) => !["'self'", 'blob:', 'data:'].includes(s.toLowerCase()));
  const list = [`this site (${location.origin})`, ...hosts].join(', ');
  return Object.assign(new Error(`${what} is on ${new URL(url).origin}, which this site's ` +
    'Content-Security-Policy does not let the page connect to (so that nothing can leave it for other hosts). ' +
    'To use that model, build the site with --model <url> (npm run build:site), or add its host with --allow-host <origin>.'),
  { name: 'ModelHostBlocked', title: `This site only loads models from ${list}.` });
}

// A request the policy blocked (a model host's redirect elsewhere): what a download error meant.
const violations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  if (/^(connect|default)-src/.test(e.effectiveDirective)) violations.push(e.blockedURI);
});

function showError(error) {
  if (error.name === 'DownloadError' && violations.length) {
    const blocked = /^(https?|wss?):/.test(violations[0]) && hostBlocked(violations[0], `A file of the model, ${violations[0]},`);
    if (blocked) error = blocked;
  }
  const noGpu = error.name === 'WebGpuUnavailable';
  const offline = error.name === 'DownloadError' && navigator.onLine === false;
  const title = error.title || (offline ? 'You are offline, and the model is not (fully) downloaded yet: connect once to download it.'
    : ERROR_TITLES[error.name] || `Something went wrong (${error.name}).`);
  setState(noGpu ? 'no-webgpu' : 'error', noGpu ? 'WebGPU is not available.' : title);
  document.body.dataset.error = error.name;
  $('error').textContent = error.message;
  $('error').hidden = false;
  document.querySelector('.progress-row').hidden = true;
}

function showList(id, entries) {
  $(id).replaceChildren(...entries.flatMap(([k, v]) => {
    const dt = document.createElement('dt');
    const dd = document.createElement('dd');
    dt.textContent = k;
    dd.textContent = v;
    return [dt, dd];
  }));
  $(id).hidden = false;
}

const STAGES = { download: 'Downloading the model', load: 'Loading', warmup: 'Preparing the GPU', text: 'Encoding the prompt', encode: 'Encoding the images',
  features: 'Style and content features', denoise: 'Denoising', decode: 'Decoding', done: 'Done' };

const seen = [];
function showProgress(p) {
  seen.push(p);
  document.querySelector('.progress-row').hidden = false;
  const bar = $('progress');
  let text;
  if (p.stage === 'download') {
    if (p.total > 0) {
      bar.max = p.total;
      bar.value = Math.min(p.loaded, p.total);
    } else bar.removeAttribute('value');
    text = p.total > 0 ? `${mib(p.loaded)} / ${mib(p.total)}` : mib(p.loaded);
  } else if (p.stage === 'load') {
    text = p.part;
  } else {
    bar.max = 1;
    bar.value = p.fraction ?? 0;
    text = p.steps > 1 ? `step ${p.step + 1} / ${p.steps}` : '';
  }
  $('progress-text').textContent = `${STAGES[p.stage] || p.stage}${text ? ` · ${text}` : ''}`;
}

function options() {
  const o = {};
  for (const input of form.elements) {
    if (!input.name) continue;
    if (input.type === 'checkbox') o[input.name] = input.checked;
    else if (input.type === 'number') {
      if (input.value === '') continue;
      o[input.name] = Number(input.value);
    } else o[input.name] = input.value;
  }
  return { ...o, ...extraOptions };
}
form.addEventListener('input', () => { extraOptions = {}; });

function updateButton() {
  $('stylize').disabled = !(engine && images.content && images.style) || !!running;
  $('stylize').textContent = portraits.length > 1 ? `Stylize ${portraits.length} portraits` : 'Stylize';
}

function setImage(which, blob, name = null) {
  if (!blob.type.startsWith('image/') && blob.type !== '') {
    showError(Object.assign(new Error(`${blob.name || which}: not an image (${blob.type})`), { name: 'ImageError' }));
    return;
  }
  images[which] = blob;
  names[which] = name;
  const img = $(`${which}-preview`);
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(blob);
  img.hidden = false;
  $(`${which}-drop`).classList.add('filled');
  $(`${which}-zone`).setAttribute('aria-label', `${LABELS[which]}: ${name ? `${name}; ` : ''}choose another image file`);
  if (which === 'content') {
    portraits = [];
    showCount();
    rememberPortrait(blob, name);
  }
  updateButton();
}

/** The portrait box's caption and badge: one portrait, or how many the batch has. */
function showCount() {
  const n = portraits.length;
  $('content-caption').textContent = n > 1 ? `Portraits (${n})` : 'Portrait';
  $('content-count').textContent = n > 1 ? `+${n - 1} more` : '';
  $('content-count').hidden = n < 2;
}

/** Several portraits at once (picked or dropped): a batch after one style. */
function setPortraits(files) {
  const usable = files.filter((f) => f.type.startsWith('image/') || f.type === '');
  const refused = files.filter((f) => !usable.includes(f));
  if (refused.length) {
    showNotice('ImageError', `${refused.map((f) => f.name).join(', ')}: not an image; left out of the batch.`);
  }
  if (!usable.length) return;
  setImage('content', usable[0], usable[0].name);
  portraits = usable.length > 1 ? usable.map((f) => ({ blob: f, name: f.name || null })) : [];
  showCount();
  updateButton();
  if (portraits.length) sayInput(`${portraits.length} portraits: each is stylized after the style, which is computed once.`);
}

/** A message about something the page was handed (a share, an opened file), not about the model. */
function showNotice(kind, message) {
  document.body.dataset.notice = kind;
  $('error').textContent = message;
  $('error').hidden = false;
}

/**
 * Images handed to the app (shared to it, opened with it): two are the portrait and the style;
 * one is the portrait, or the style when a portrait is already there (on this page, or kept
 * from the page a share just replaced).
 */
async function receive(items, how) {
  const [first, second] = items;
  if (second) {
    setImage('content', first.blob, first.name);
    setImage('style', second.blob, second.name);
    sayInput(`${how}: the portrait and the style image.`);
    return;
  }
  await restorePortrait();
  const which = images.content ? 'style' : 'content';
  setImage(which, first.blob, first.name);
  sayInput(`${how}: ${first.name || 'an image'} is the ${which === 'content' ? 'portrait' : 'style image'}.`);
}

/** The portrait kept from the page a share replaced, back in place (a share reloads the app). */
async function restorePortrait() {
  if (images.content) return;
  const kept = await recentPortrait();
  if (kept) setImage('content', kept.blob, kept.name);
}

// Arrivals from the system: a share (sw.js redirected it here), files opened with the app.
async function arrivals() {
  const id = params.get('shared');
  const refused = params.get('share-error');
  if (id || refused) {
    // The share's parameters go, so that a reload does not take it again.
    const url = new URL(location.href);
    url.searchParams.delete('shared');
    url.searchParams.delete('share-error');
    history.replaceState(null, '', url);
  }
  if (refused) {
    // Nothing is lost: the portrait the share interrupted is back.
    await restorePortrait();
    showNotice('ShareError', `The shared item was not taken: ${refused}.`);
  }
  if (id) {
    const got = await takeShared(id).catch(() => null);
    if (got) await receive([got], 'Shared');
    else showNotice('ShareError', 'The shared image is no longer here (it was taken already): share it again.');
  }
  onLaunchFiles((files) => receive(files.map((f) => ({ blob: f, name: f.name })), 'Opened'));
}

/** A file's name without its extension, as a file-name part: lower case, [a-z0-9-], ≤ 40 chars. */
function fileStem(name) {
  const stem = String(name || '').replace(/\.[^./\\]*$/, '').normalize('NFKD').replace(/[\u0300-\u036f]/g, '')
    .toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '');
  return stem.slice(0, 40).replace(/-+$/, '');
}

/** zepo-<content>-<style>-seed<seed>-<w>x<h>.png */
function downloadName({ content, style, seed, width, height }) {
  return `zepo-${fileStem(content) || 'portrait'}-${fileStem(style) || 'style'}-seed${seed}-${width}x${height}.png`;
}

for (const which of ['content', 'style']) {
  const input = $(`${which}-file`);
  input.addEventListener('change', (e) => {
    const files = [...e.target.files];
    if (which === 'content' && files.length > 1) setPortraits(files);
    else if (files[0]) setImage(which, files[0], files[0].name);
    input.value = ''; // the same file again is a change too
  });
  const drop = $(`${which}-drop`);
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('dragover'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('dragover'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('dragover');
    const files = [...e.dataTransfer.files];
    if (which === 'content' && files.length > 1) setPortraits(files);
    else if (files[0]) setImage(which, files[0], files[0].name);
  });
  // The zone is a button: a click, Enter or Space opens the file picker.
  const zone = $(`${which}-zone`);
  zone.addEventListener('click', () => input.click());
  zone.addEventListener('keydown', (e) => {
    if (e.target !== zone || (e.key !== 'Enter' && e.key !== ' ')) return;
    e.preventDefault();
    input.click();
  });
}
for (const button of document.querySelectorAll('button.example[data-src]')) {
  button.addEventListener('click', async () => {
    const r = await fetch(button.dataset.src);
    setImage(button.dataset.for, await r.blob());
  });
}

// The camera: the system's on a phone, a live preview with a shutter elsewhere.
const camera = setUpCamera({
  dialog: $('camera-dialog'), video: $('camera-video'), shutter: $('camera-shutter'), cancel: $('camera-cancel'),
  message: $('camera-message'), capture: $('camera-capture'),
}, (which, blob, name) => {
  setImage(which, blob, name);
  sayInput(`Took the ${which === 'content' ? 'portrait' : 'style image'} with the camera.`);
});

// Paste (Ctrl+V / Cmd+V) an image: into the focused drop zone, else the first empty one, else
// the portrait. A text field keeps its paste.
document.addEventListener('paste', (e) => {
  const data = e.clipboardData;
  const file = [...(data?.files || [])].find((f) => f.type.startsWith('image/'))
    || [...(data?.items || [])].find((i) => i.kind === 'file' && i.type.startsWith('image/'))?.getAsFile();
  if (!file) return;
  const active = document.activeElement;
  if (active?.matches?.('input:not([type=range]):not([type=checkbox]):not([type=radio]):not([type=file]), textarea, [contenteditable]')) return;
  const zone = active?.closest?.('figure.drop');
  const which = zone?.dataset.which || (!images.content ? 'content' : !images.style ? 'style' : 'content');
  e.preventDefault();
  setImage(which, file);
  sayInput(`Pasted the ${which === 'content' ? 'portrait' : 'style image'}.`);
});

// The before/after slider: the portrait, as the engine saw it, over the result, revealed from
// the left up to the handle.
const compare = $('compare');
function reveal() {
  const v = Number($('compare-slider').value);
  compare.style.setProperty('--reveal', `${v}%`);
  compare.dataset.reveal = String(v);
  $('compare-slider').setAttribute('aria-valuetext', `${v}% original portrait, ${100 - v}% result`);
}
$('compare-slider').addEventListener('input', reveal);
reveal();

/**
 * The content image at the result's size, as the engine maps it there (the `fit` option: cover
 * crops the centre to the result's shape; otherwise the whole image is scaled), transparent
 * parts on white: a PNG Blob.
 */
async function beforeImage(blob, width, height, fit) {
  const bitmap = await createImageBitmap(blob);
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingQuality = 'high';
  // On white, as the engine composites a transparent portrait (src/zepo/image.rs).
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, width, height);
  let [sx, sy, sw, sh] = [0, 0, bitmap.width, bitmap.height];
  if (fit === 'cover') {
    const scale = Math.min(bitmap.width / width, bitmap.height / height);
    sw = Math.round(width * scale);
    sh = Math.round(height * scale);
    sx = Math.floor((bitmap.width - sw) / 2);
    sy = Math.floor((bitmap.height - sh) / 2);
  }
  ctx.drawImage(bitmap, sx, sy, sw, sh, 0, 0, width, height);
  bitmap.close();
  return new Promise((resolve, reject) => canvas.toBlob((b) => (b ? resolve(b) : reject(new Error('toBlob failed'))), 'image/png'));
}

/** What a settings list shows of a value. */
const shown = (v) => (typeof v === 'string' || (v && typeof v === 'object') ? JSON.stringify(v) : String(v));

/**
 * The page's one run at a time: `work(signal)` with the Cancel button for `signal`; an error
 * or a cancel said, the engine dropped if it died, the buttons and storage panel after.
 */
async function asRun(work) {
  stopWarmUp();
  const controller = new AbortController();
  running = controller;
  updateButton();
  $('cancel').hidden = false;
  $('error').hidden = true;
  delete document.body.dataset.notice;
  sayInput('');
  try {
    await work(controller.signal);
  } catch (e) {
    if (e.name === 'AbortError') setState('cancelled', 'Cancelled.');
    else showError(e);
    if (engine?.dead) engine = null;
  } finally {
    running = null;
    $('cancel').hidden = true;
    updateButton();
    storage.refresh();
  }
}

function run() {
  if (!engine || running) return;
  asRun(portraits.length > 1 ? runMany : runOne);
}

/** One portrait: the result with its before/after slider, settings, download and share. */
async function runOne(signal) {
  setState('running', 'Stylizing…');
  // What this run is made of, as it starts (the inputs may change meanwhile).
  const o = options();
  const content = images.content;
  const named = { content: names.content, style: names.style };
  const t0 = performance.now();
  const blob = await engine.stylize(content, images.style, { ...o, onProgress: showProgress, signal });
  const seconds = (performance.now() - t0) / 1000;
  if (resultUrl) URL.revokeObjectURL(resultUrl);
  resultUrl = URL.createObjectURL(blob);
  const img = $('result');
  img.src = resultUrl;
  await img.decode();
  const [width, height] = [img.naturalWidth, img.naturalHeight];
  // The portrait under the slider, at the result's size.
  let before = null;
  try {
    before = await beforeImage(content, width, height, o.fit);
  } catch (e) {
    console.warn(`before/after: ${e.message}`);
  }
  if (beforeUrl) URL.revokeObjectURL(beforeUrl);
  beforeUrl = before && URL.createObjectURL(before);
  if (beforeUrl) $('compare-before').src = beforeUrl;
  $('compare-before').hidden = !beforeUrl;
  $('compare-slider').hidden = !beforeUrl;
  compare.classList.toggle('single', !beforeUrl);
  compare.style.setProperty('--aspect', `${width} / ${height}`);
  img.hidden = false;
  compare.hidden = false;
  $('result-hint').hidden = true;

  // The run's settings: every option sent to the engine, the model, its weights, the
  // precision, the time.
  const settings = [
    ...Object.entries(o).map(([k, v]) => [k, shown(v)]),
    ['model', MODEL],
    ['weights', engine.info?.weights ?? 'fp16'],
    ['precision', engine.info?.precision ?? engine.device?.precision ?? 'auto'],
    ['size', `${width}×${height}`],
    ['time', `${seconds.toFixed(1)} s`],
  ];
  showList('run-settings', settings);
  $('run-info').hidden = false;

  const a = $('download');
  a.href = resultUrl;
  a.download = downloadName({ ...named, seed: o.seed ?? 0, width, height });
  a.setAttribute('aria-label', `Download the result as PNG (${a.download})`);
  a.hidden = false;
  $('share').hidden = false;
  $('share').setAttribute('aria-label', `Share the result (${a.download})`);
  shared = { blob, name: a.download };
  warmed.add(o.resolution);
  window.zepo.result = { width, height, bytes: blob.size, seconds, ...engine.last,
    settings: Object.fromEntries(settings), fileName: a.download };
  setState('done', `Done in ${seconds.toFixed(1)} s.`);
  storage.downloaded(engine.last.downloaded);
  await keep(blob, a.download, { ...o, width, height }, seconds);
}

/**
 * Keeps a result in the gallery, with the settings its PNG carries (those of the run where it
 * carries none). A full gallery is said, and the result stays shown.
 */
async function keep(blob, name, fallback, seconds) {
  const [width, height] = [fallback.width, fallback.height];
  const settings = await blobSettings(blob).catch(() => fallback);
  try {
    await gallery.add({ blob, name, settings, width, height, seconds });
  } catch (e) {
    showNotice(e.name, e.message);
  }
}

/** The batch: every portrait after the style, one queue (www/batch.js), results as a grid. */
async function runMany(signal) {
  const o = options();
  const batch = portraits;
  const style = images.style;
  const styleName = names.style;
  setState('running', `Stylizing ${batch.length} portraits…`);
  const t0 = performance.now();
  releaseBatch?.();
  releaseBatch = null;
  const { entries, states, release } = await runBatch(engine, batch, style, o, {
    els: { box: $('batch'), list: $('batch-items'), progress: $('batch-progress'), text: $('batch-text') },
    signal,
    onDone: async (i, entry, portrait) => {
      if (!entry.png) return null;
      const bitmap = await createImageBitmap(entry.png);
      const dims = { width: bitmap.width, height: bitmap.height };
      bitmap.close();
      const name = downloadName({ content: portrait.name, style: styleName, seed: o.seed ?? 0, ...dims });
      await keep(entry.png, name, { ...o, ...dims }, entry.seconds);
      return name;
    },
  });
  releaseBatch = release;
  const seconds = (performance.now() - t0) / 1000;
  const count = (s) => states.filter((x) => x === s).length;
  window.zepo.batch = {
    states, seconds,
    items: entries.map((e) => (e.png ? { bytes: e.png.size, seconds: e.seconds, counters: e.counters } : { error: e.error?.name })),
    pngs: entries.map((e) => e.png || null),
  };
  const failed = count('failed');
  const summary = `${count('done')} stylized${count('cancelled') ? `, ${count('cancelled')} cancelled` : ''}${failed ? `, ${failed} failed` : ''}`;
  if (signal.aborted) setState('cancelled', `Batch cancelled after ${seconds.toFixed(1)} s: ${summary}.`);
  else setState('done', `Batch done in ${seconds.toFixed(1)} s: ${summary}.`);
}

/**
 * "Again with these settings": a result's settings (its PNG's `zepo-settings`) into the page's
 * options and seed. Nothing changes unless every setting is good (png-settings.js says which is
 * not).
 */
function restoreSettings(settings, source) {
  let restored;
  try {
    restored = pageSettings(settings);
  } catch (e) {
    showNotice(e.name, `${source}: ${e.message}. The options are unchanged.`);
    return false;
  }
  for (const [k, v] of Object.entries(restored.form)) {
    const input = form.elements.namedItem(k);
    if (!input) continue;
    if (input.type === 'checkbox') input.checked = !!v;
    else input.value = String(v);
  }
  extraOptions = restored.extra;
  $('error').hidden = true;
  delete document.body.dataset.notice;
  const other = restored.model && restored.model !== MODEL ? ` It was made with another model (${restored.model}); this page uses ${MODEL}.` : '';
  const ignored = restored.ignored.length ? ` Not known here, left out: ${restored.ignored.join(', ')}.` : '';
  sayInput(`Settings of ${source} restored: ${settings.width}×${settings.height}, ${restored.form.steps ?? '?'} steps, seed ${restored.form.seed}.${other}${ignored}`);
  window.zepo.restored = { source, form: restored.form, extra: restored.extra };
  $('options').open = true;
  warmUp();
  return true;
}

// A result PNG dropped on the page, outside the two image boxes: its settings are restored.
document.addEventListener('dragover', (e) => {
  if (!e.target.closest?.('figure.drop') && e.dataTransfer?.types.includes('Files')) e.preventDefault();
});
document.addEventListener('drop', async (e) => {
  if (e.target.closest?.('figure.drop')) return;
  const file = e.dataTransfer?.files[0];
  if (!file) return;
  e.preventDefault();
  try {
    restoreSettings(await blobSettings(file), file.name || 'the dropped file');
  } catch (err) {
    showNotice(err.name, `${file.name || 'The dropped file'}: ${err.message}. The options are unchanged.`);
  }
});

$('stylize').addEventListener('click', run);
// Share the result through the system's share sheet, or download it where files cannot be shared.
let shared = null;
$('share').addEventListener('click', async () => {
  if (!shared) return;
  const how = await shareOrDownload(shared.blob, shared.name, () => $('download').click());
  window.zepo.shared = how;
  if (how === 'downloaded') $('status').textContent = 'This browser cannot share files here: the result was downloaded instead.';
  else if (how === 'shared') $('status').textContent = 'Shared.';
});
$('cancel').addEventListener('click', () => running?.abort());

/** The precision remembered from an earlier choice ('auto' | 'f16' | 'f32'). */
function rememberedPrecision() {
  try {
    const p = localStorage.getItem(PRECISION_KEY);
    return ['auto', 'f16', 'f32'].includes(p) ? p : 'auto';
  } catch {
    return 'auto';
  }
}

/** Whether the GPU can compute in f16 (WebGPU's `shader-f16`). */
async function hasF16() {
  try {
    const adapter = await navigator.gpu.requestAdapter();
    return !!adapter?.features.has('shader-f16');
  } catch {
    return false;
  }
}

/** The model's download size, as the Engine panel and the confirmation say it. */
function describeSize(s) {
  if (s.bytes == null) return `unknown (the server did not say${s.unknown?.length ? ` for ${s.unknown.join(', ')}` : ''})`;
  if (s.layout === 'diffusers') {
    return s.textEncoderBytes != null ? `${size(s.bytes + s.textEncoderBytes)} (UNet and VAE ${size(s.bytes)}, text encoder ${size(s.textEncoderBytes)})`
      : `${size(s.bytes)} (UNet and VAE; the text encoder's size is unknown)`;
  }
  return s.textEncoderBytes != null ? `${size(s.bytes)} (+ ${size(s.textEncoderBytes)} for a custom prompt)` : size(s.bytes);
}

/** What the first run downloads: the load, and the text encoder where every prompt needs it. */
function firstDownload(s) {
  if (s.bytes == null) return null;
  return s.bytes + (s.textEncoderAlways ? (s.textEncoderBytes ?? 0) : 0);
}

/**
 * Before the first download of a large model: says how much it downloads and waits for the
 * "Download model" button, with the choice of weights (a bundle with compact variants) and of
 * precision. Resolves to `{ precision, weights }`.
 */
async function confirmDownload(s) {
  const extra = !s.textEncoderAlways && s.textEncoderBytes != null ? ` (${size(s.textEncoderBytes)} more for a custom prompt)` : '';
  const partly = s.storedBytes > 0 ? ` ${size(s.storedBytes)} of it is already stored: only the rest is downloaded.` : '';
  const say = (total) => {
    $('confirm-text').textContent = total == null
      ? `This model's download size could not be determined; it downloads once, then works offline.${partly}`
      : `This model downloads ${size(total)} once${extra}, then works offline.${partly}`;
    $('confirm').dataset.bytes = String(total ?? '');
  };
  const chosenWeights = showWeightsChoice($('weights-choice'), s, {
    describe: size,
    extra: s.textEncoderAlways ? (s.textEncoderBytes ?? 0) : 0,
    onChange: (_name, bytes) => say(bytes),
  });
  const initial = s.variants?.find((v) => v.name === chosenWeights());
  say(initial ? initial.bytes + (s.textEncoderAlways ? (s.textEncoderBytes ?? 0) : 0) : firstDownload(s));
  $('confirm').dataset.textEncoderBytes = String(s.textEncoderBytes ?? '');
  const f16 = await hasF16();
  const f16Input = document.querySelector('input[name="precision"][value="f16"]');
  f16Input.disabled = !f16;
  $('precision-f16-label').hidden = !f16;
  $('precision-note').textContent = f16
    ? 'auto: f16 where the model is an fp16 bundle and the GPU supports it (faster, half the memory); f32 is the exact reference.'
    : 'This GPU has no f16 support (shader-f16): f32 is used.';
  let chosen = rememberedPrecision();
  if (chosen === 'f16' && !f16) chosen = 'auto';
  document.querySelector(`input[name="precision"][value="${chosen}"]`).checked = true;
  $('confirm').hidden = false;
  setState('confirm', 'The model is not downloaded yet.');
  document.body.dataset.f16 = String(f16);
  return new Promise((resolve) => {
    $('confirm-download').addEventListener('click', () => {
      const precision = document.querySelector('input[name="precision"]:checked')?.value || 'auto';
      try {
        localStorage.setItem(PRECISION_KEY, precision);
      } catch { /* storage disabled */ }
      const weights = chosenWeights();
      if (s.variants?.length > 1) rememberWeights(weights);
      $('confirm').hidden = true;
      resolve({ precision, weights });
    }, { once: true });
  });
}

async function main() {
  $('model-url').textContent = MODEL;
  if (!('gpu' in navigator)) {
    throw Object.assign(new Error(
      'This browser does not expose WebGPU (navigator.gpu is missing). ZePo runs entirely on your ' +
      'GPU through WebGPU: use a recent Chrome or Edge (113+), Safari 26+ or Firefox 141+ on Windows; ' +
      'on Linux, enable chrome://flags/#enable-unsafe-webgpu. The page must be served from localhost ' +
      'or over https.'), { name: 'WebGpuUnavailable' });
  }
  // A model on a host the policy does not allow: said before any request.
  const blocked = hostBlocked(resolveModel(MODEL));
  if (blocked) throw blocked;
  setState('sizing', 'Checking the model…');
  // A network failure here (offline, before the model is stored) is the load's error.
  const s = await modelSize(MODEL);
  window.zepo.size = s;
  const sizeRows = [['model size', describeSize(s)], ['layout', s.layout === 'fp16-bundle' ? 'fp16 bundle' : 'diffusers'],
    ['stored', s.stored ? 'yes (downloads nothing)' : s.storedBytes ? `partly (${size(s.storedBytes)})` : 'no']];
  showList('model-info', sizeRows);
  const total = firstDownload(s);
  const ask = params.get('confirm') === '1' || (!s.stored && (total == null || total >= ASK_ABOVE));
  let precision = rememberedPrecision();
  let weights = weightsFor(s);
  if (ask) ({ precision, weights } = await confirmDownload(s));
  setState('loading', 'Loading the model…');
  const t0 = performance.now();
  engine = await ZePo.load({ model: MODEL, precision, weights, onProgress: showProgress });
  const seconds = (performance.now() - t0) / 1000;
  showList('device-info', Object.entries(engine.device));
  showList('model-info', [
    ...sizeRows.slice(0, 2),
    ['downloaded', mib(engine.info.bytes)],
    ['requests', engine.info.requests],
    ['load time', `${seconds.toFixed(2)} s`],
    ['precision', engine.info.precision],
    ['weights', engine.info.weights],
    ['GPU memory for weights', mib(engine.info.weight_bytes)],
  ]);
  Object.assign(window.zepo, { device: engine.device, info: { ...engine.info, seconds }, engine });
  document.querySelector('.progress-row').hidden = true;
  setState('loaded', 'Model loaded. Pick a portrait and a style.');
  updateButton();
  storage.downloaded(engine.info.bytes && engine.info.requests ? engine.info.bytes : 0);
  warmUp();
}

// While the visitor picks images, the GPU compiles what a stylization at the chosen size needs,
// so that the first run is as fast as later ones. Again when the resolution changes. A run
// started meanwhile stops it (the run compiles what is left itself and waits at most for the
// model call under way). ?warmup=0 skips it.
const warmed = new Set();
let warming = null;
function stopWarmUp() {
  warming?.abort();
  warming = null;
}
function warmUp() {
  const o = options();
  stopWarmUp();
  if (!engine || params.get('warmup') === '0' || warmed.has(o.resolution)) return;
  warmed.add(o.resolution);
  const note = $('warmup-status');
  note.textContent = `Preparing the GPU for ${o.resolution}×${o.resolution}…`;
  note.hidden = false;
  const controller = new AbortController();
  warming = controller;
  engine.warmup(o, { signal: controller.signal }).then((seconds) => {
    note.textContent = `GPU ready for ${o.resolution}×${o.resolution} (${seconds.toFixed(1)} s).`;
    window.zepo.warmup = { ...window.zepo.warmup, [o.resolution]: seconds };
  }, (e) => {
    warmed.delete(o.resolution);
    if (!warming || warming === controller) note.hidden = true;
    if (e.name !== 'AbortError' && e.name !== 'EngineDisposed') console.warn('warm-up:', e);
  });
}
form.elements.namedItem('resolution')?.addEventListener('change', warmUp);

window.zepo = { model: MODEL, progress: seen, camera };
window.zepo.arrived = arrivals().catch((e) => showNotice('ShareError', `A shared image could not be taken: ${e.message}`));
// The Storage panel and the offline app (www/pwa.js). A page that hands over to a waiting new
// version reloads before its engine starts.
const storage = storagePanel(MODEL, () => !!running || document.body.dataset.state === 'loading');
// The gallery (www/gallery.js): every result kept on this device; "Again" restores its settings.
const gallery = galleryPanel({ list: $('gallery-list'), summary: $('gallery-summary'), clear: $('gallery-clear'), status: $('gallery-status') },
  (settings, record) => restoreSettings(settings, record.name));
window.zepo.gallery = gallery.state;
const started = takeOverUpdate().then((reloading) => (reloading ? new Promise(() => {}) : main()));
registerServiceWorker();
window.zepo.ready = started.then(() => true, () => false);
window.zepo.unetForward = async (...args) => {
  await started;
  stopWarmUp();
  return engine.unetForward(...args);
};
started.catch((e) => {
  console.error(e);
  showError(e);
  storage.refresh();
});
