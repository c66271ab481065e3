// The page: pick or drop a portrait and a style image (or take the examples), press Stylize,
// watch the progress, get the result with a download link. The engine runs in a Worker through
// the JS API (www/zepo.js); no image leaves the page. `window.zepo` is the page's handle for
// the browser tests.
import { ZePo } from './zepo.js';
import { registerServiceWorker, storagePanel, takeOverUpdate } from './pwa.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
// The page's model: ?model=URL, else the one a site build set (`<meta name="zepo-model">`, written
// by scripts/build-site.mjs: by default the public repository), else what scripts/serve.mjs
// serves at /model/ (weights/tiny-lcm by default) in a source checkout.
const MODEL = params.get('model') || document.querySelector('meta[name="zepo-model"]')?.content
  || new URL('../model', import.meta.url).href;
const form = $('options-form');
const images = { content: null, style: null };
const mib = (n) => `${(n / 2 ** 20).toFixed(1)} MB`;
let engine = null;
let running = null;
let resultUrl = null;

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

function showError(error) {
  const noGpu = error.name === 'WebGpuUnavailable';
  const offline = error.name === 'DownloadError' && navigator.onLine === false;
  const title = offline ? 'You are offline, and the model is not (fully) downloaded yet: connect once to download it.'
    : ERROR_TITLES[error.name] || `Something went wrong (${error.name}).`;
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
  return o;
}

function updateButton() {
  $('stylize').disabled = !(engine && images.content && images.style) || !!running;
}

function setImage(which, blob) {
  if (!blob.type.startsWith('image/') && blob.type !== '') {
    showError(Object.assign(new Error(`${blob.name || which}: not an image (${blob.type})`), { name: 'ImageError' }));
    return;
  }
  images[which] = blob;
  const img = $(`${which}-preview`);
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(blob);
  img.hidden = false;
  img.parentElement.querySelector('.hint').hidden = true;
  updateButton();
}

for (const which of ['content', 'style']) {
  $(`${which}-file`).addEventListener('change', (e) => e.target.files[0] && setImage(which, e.target.files[0]));
  const drop = $(`${which}-drop`);
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('dragover'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('dragover'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('dragover');
    const file = e.dataTransfer.files[0];
    if (file) setImage(which, file);
  });
}
for (const button of document.querySelectorAll('button.example')) {
  button.addEventListener('click', async () => {
    const r = await fetch(button.dataset.src);
    setImage(button.dataset.for, await r.blob());
  });
}

async function run() {
  if (!engine || running) return;
  stopWarmUp();
  const controller = new AbortController();
  running = controller;
  updateButton();
  $('cancel').hidden = false;
  $('error').hidden = true;
  setState('running', 'Stylizing…');
  const t0 = performance.now();
  try {
    const blob = await engine.stylize(images.content, images.style, {
      ...options(), onProgress: showProgress, signal: controller.signal,
    });
    if (resultUrl) URL.revokeObjectURL(resultUrl);
    resultUrl = URL.createObjectURL(blob);
    const img = $('result');
    img.src = resultUrl;
    await img.decode();
    img.hidden = false;
    $('result-hint').hidden = true;
    const a = $('download');
    a.href = resultUrl;
    a.hidden = false;
    const seconds = (performance.now() - t0) / 1000;
    warmed.add(options().resolution);
    window.zepo.result = { width: img.naturalWidth, height: img.naturalHeight, bytes: blob.size, seconds, ...engine.last };
    setState('done', `Done in ${seconds.toFixed(1)} s.`);
    storage.downloaded(engine.last.downloaded);
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

$('stylize').addEventListener('click', run);
$('cancel').addEventListener('click', () => running?.abort());

async function main() {
  $('model-url').textContent = MODEL;
  if (!('gpu' in navigator)) {
    throw Object.assign(new Error(
      'This browser does not expose WebGPU (navigator.gpu is missing). ZePo runs entirely on your ' +
      'GPU through WebGPU: use a recent Chrome or Edge (113+), Safari 26+ or Firefox 141+ on Windows; ' +
      'on Linux, enable chrome://flags/#enable-unsafe-webgpu. The page must be served from localhost ' +
      'or over https.'), { name: 'WebGpuUnavailable' });
  }
  setState('loading', 'Loading the model…');
  const t0 = performance.now();
  engine = await ZePo.load({ model: MODEL, onProgress: showProgress });
  const seconds = (performance.now() - t0) / 1000;
  showList('device-info', Object.entries(engine.device));
  showList('model-info', [
    ['downloaded', mib(engine.info.bytes)],
    ['requests', engine.info.requests],
    ['load time', `${seconds.toFixed(2)} s`],
    ['precision', engine.info.precision],
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

window.zepo = { model: MODEL, progress: seen };
// The Storage panel and the offline app (www/pwa.js). A page that hands over to a waiting new
// version reloads before its engine starts.
const storage = storagePanel(MODEL, () => !!running || document.body.dataset.state === 'loading');
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
