// The page: starts the engine Worker, loads the model's UNet with a progress bar and shows the
// device. `window.zepo` is the page's handle on the engine (used by the browser tests and, later,
// by the stylization UI).
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
// scripts/serve.mjs serves the default model (weights/tiny-lcm) at /model/; ?model=URL overrides.
const MODEL = params.get('model') || new URL('model', location.href).href.replace(/\/$/, '');

function setState(state, message) {
  document.body.dataset.state = state;
  $('status').textContent = message;
}

function showError(error) {
  const noGpu = error.name === 'WebGpuUnavailable';
  setState(noGpu ? 'no-webgpu' : 'error', noGpu ? 'WebGPU is not available.' : 'Something went wrong.');
  $('error').textContent = error.message;
  $('error').hidden = false;
  document.querySelector('.progress-row').hidden = true;
}

function showList(id, entries) {
  const dl = $(id);
  dl.replaceChildren(...entries.flatMap(([k, v]) => {
    const dt = document.createElement('dt');
    const dd = document.createElement('dd');
    dt.textContent = k;
    dd.textContent = v;
    return [dt, dd];
  }));
  dl.hidden = false;
}

const LABELS = {
  backend: 'backend', device_type: 'device type', adapter: 'adapter', driver: 'driver',
  driver_info: 'driver info', gpu_vendor: 'GPU vendor', gpu_architecture: 'GPU architecture',
  gpu_description: 'GPU', max_buffer_size: 'max buffer (bytes)', max_storage_binding: 'max binding (bytes)',
};

const mib = (n) => `${(n / 2 ** 20).toFixed(1)} MiB`;

function showProgress({ loaded, total }) {
  document.querySelector('.progress-row').hidden = false;
  const bar = $('progress');
  if (total > 0) {
    bar.max = total;
    bar.value = Math.min(loaded, total);
    $('progress-text').textContent = `${mib(loaded)} / ${mib(total)}`;
  } else {
    bar.removeAttribute('value');
    $('progress-text').textContent = mib(loaded);
  }
}

// A promise-based RPC over the Worker's messages.
function startEngine() {
  const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  const pending = new Map();
  let next = 0;
  worker.onmessage = ({ data }) => {
    if (data.type === 'progress') return showProgress(data);
    const p = pending.get(data.id);
    if (!p) return;
    pending.delete(data.id);
    if (data.ok) p.resolve(data.result);
    else p.reject(Object.assign(new Error(data.error.message), { name: data.error.name }));
  };
  worker.onerror = (e) => {
    const error = new Error(`the engine worker failed: ${e.message || 'could not start'}`);
    for (const p of pending.values()) p.reject(error);
    pending.clear();
  };
  return (type, args) => new Promise((resolve, reject) => {
    const id = next++;
    pending.set(id, { resolve, reject });
    worker.postMessage({ id, type, args });
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
  const call = startEngine();
  setState('device', 'Requesting the GPU…');
  const device = await call('initDevice');
  showList('device-info', Object.entries(device).map(([k, v]) => [LABELS[k] || k, v]));
  window.zepo.device = device;

  setState('loading', 'Loading the UNet…');
  const unet = await call('loadUNet', { baseUrl: MODEL });
  showList('model-info', [
    ['UNet tensors', unet.tensors],
    ['parameters', unet.parameters.toLocaleString('en')],
    ['download', mib(unet.bytes)],
    ['load time', `${unet.seconds.toFixed(2)} s`],
  ]);
  window.zepo.unet = unet;
  setState('loaded', 'Model loaded.');
  return call;
}

window.zepo = { model: MODEL };
const started = main();
window.zepo.ready = started.then(() => true, () => false);
// Runs the UNet in the Worker: plain arrays or Float32Arrays in, { output, seconds } out.
window.zepo.unetForward = async (sample, shape, timesteps, context) => {
  const call = await started;
  return call('unetForward', { sample, shape, timesteps, context });
};
started.catch((e) => {
  console.error(e);
  showError(e);
});
