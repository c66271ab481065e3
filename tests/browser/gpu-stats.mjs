// Counting what a run costs on any GPU, in the browser: the engine Worker is served with a
// prelude (GPU_STATS_PRELUDE, prepended to www/worker.js by routeWorkerPrelude) that wraps the
// WebGPU API before the engine starts and counts compute pipelines created, dispatches, queue
// submits, GPU→CPU read-backs and buffer bytes (live, peak, largest), and tracks the wasm
// memory. The product is unchanged; the benchmark and the full-size test read the counters.
//
// Every progress event the Worker posts also takes a snapshot, so the counts split by stage
// (encode, features, one denoise step = one UNet call, decode).

export const GPU_STATS_PRELUDE = `
(() => {
  const S = self.__zepoGpuStats = {
    pipelines: 0, pipelineMs: 0, shaderModules: 0, dispatches: 0, submits: 0, commandBuffers: 0,
    readbacks: 0, readbackBytes: 0, writes: 0, writeBytes: 0,
    buffers: 0, live: 0, peakLive: 0, peakSinceMark: 0, largest: 0, largestLabel: '',
    wasmBytes: 0, marks: [], byKernel: {},
  };
  const labels = new WeakMap();
  let current = '';
  const sizes = new Map();
  const wrap = (proto, name, f) => {
    const original = proto?.[name];
    if (typeof original !== 'function') return;
    proto[name] = function (...args) { return f.call(this, original, args); };
  };
  wrap(self.GPUDevice?.prototype, 'createBuffer', function (orig, [desc]) {
    const b = orig.call(this, desc);
    const size = Number(desc.size) || 0;
    sizes.set(b, size);
    S.buffers++;
    S.live += size;
    if (S.live > S.peakLive) S.peakLive = S.live;
    if (S.live > S.peakSinceMark) S.peakSinceMark = S.live;
    if (size > S.largest) { S.largest = size; S.largestLabel = desc.label || ''; }
    return b;
  });
  wrap(self.GPUBuffer?.prototype, 'destroy', function (orig, args) {
    const size = sizes.get(this);
    if (size !== undefined) { S.live -= size; sizes.delete(this); }
    return orig.apply(this, args);
  });
  for (const name of ['createComputePipeline', 'createComputePipelineAsync']) {
    wrap(self.GPUDevice?.prototype, name, function (orig, args) {
      S.pipelines++;
      const t = performance.now();
      const out = orig.apply(this, args);
      S.pipelineMs += performance.now() - t;
      const label = String(args[0]?.label || args[0]?.compute?.entryPoint || '?').replace(/_[0-9a-f]{6,}$/, '');
      if (out instanceof Promise) out.then((p) => labels.set(p, label));
      else labels.set(out, label);
      return out;
    });
  }
  wrap(self.GPUComputePassEncoder?.prototype, 'setPipeline', function (orig, args) {
    current = labels.get(args[0]) || '?';
    return orig.apply(this, args);
  });
  wrap(self.GPUDevice?.prototype, 'createShaderModule', function (orig, args) { S.shaderModules++; return orig.apply(this, args); });
  for (const name of ['dispatchWorkgroups', 'dispatchWorkgroupsIndirect']) {
    wrap(self.GPUComputePassEncoder?.prototype, name, function (orig, args) {
      S.dispatches++;
      S.byKernel[current] = (S.byKernel[current] || 0) + 1;
      return orig.apply(this, args);
    });
  }
  wrap(self.GPUQueue?.prototype, 'submit', function (orig, [buffers]) {
    S.submits++;
    S.commandBuffers += buffers?.length || 0;
    return orig.call(this, buffers);
  });
  wrap(self.GPUQueue?.prototype, 'writeBuffer', function (orig, args) {
    S.writes++;
    const [, , data, , size] = args;
    S.writeBytes += size !== undefined ? Number(size) * (data?.BYTES_PER_ELEMENT || 1) : (data?.byteLength || 0);
    return orig.apply(this, args);
  });
  wrap(self.GPUBuffer?.prototype, 'mapAsync', function (orig, args) {
    const [mode, , size] = args;
    if (mode & 1 /* GPUMapMode.READ */) {
      S.readbacks++;
      S.readbackBytes += size !== undefined ? Number(size) : this.size;
    }
    return orig.apply(this, args);
  });
  // The wasm engine's memory (it only grows: its size is the heap's peak).
  const keep = (result) => {
    const exports = (result?.instance || result)?.exports;
    for (const v of Object.values(exports || {})) if (v instanceof WebAssembly.Memory) S.memory = v;
    return result;
  };
  for (const name of ['instantiate', 'instantiateStreaming']) {
    const original = WebAssembly[name];
    WebAssembly[name] = (...args) => original.apply(WebAssembly, args).then(keep);
  }
  const snapshot = () => {
    S.wasmBytes = S.memory ? S.memory.buffer.byteLength : 0;
    const { marks, byKernel, ...counts } = S;
    delete counts.memory;
    return counts;
  };
  // Each progress event the Worker posts marks a stage boundary; a mark holds the counters
  // then and the peak of live bytes since the mark before.
  const mark = (event) => {
    S.marks.push({ t: performance.now(), event, counts: snapshot() });
    S.peakSinceMark = S.live;
  };
  const post = self.postMessage.bind(self);
  self.postMessage = (message, ...rest) => {
    if (message?.type === 'progress' && message.event?.stage !== 'download') mark(message.event);
    return post(message, ...rest);
  };
  self.addEventListener('message', ({ data }) => {
    if (data?.type === 'gpu-stats:read') {
      mark({ stage: 'read' });
      post({ type: 'gpu-stats', stats: { ...snapshot(), marks: S.marks, byKernel: S.byKernel } });
    }
    if (data?.type === 'gpu-stats:reset') { S.marks = []; S.byKernel = {}; S.peakLive = S.live; S.peakSinceMark = S.live; }
  });
})();
`;

/** Serves www/worker.js with GPU_STATS_PRELUDE in front, in this Playwright context. */
export async function routeWorkerPrelude(context, prelude = GPU_STATS_PRELUDE) {
  await context.route('**/www/worker.js', async (route) => {
    const original = await route.fetch();
    await route.fulfill({ response: original, body: prelude + (await original.text()) });
  });
}

/**
 * In-page helper source: `gpuStats(worker)` resolves to the Worker's counters
 * ({ pipelines, dispatches, submits, readbacks, live, peakLive, largest, wasmBytes, marks, … }).
 * Pass it to page.evaluate as a string and `eval` it, or use readGpuStats below.
 */
export const GPU_STATS_READER = `(worker) => new Promise((resolve) => {
  const on = ({ data }) => {
    if (data?.type !== 'gpu-stats') return;
    worker.removeEventListener('message', on);
    resolve(data.stats);
  };
  worker.addEventListener('message', on);
  worker.postMessage({ type: 'gpu-stats:read' });
})`;

const COUNTS = ['pipelines', 'pipelineMs', 'shaderModules', 'dispatches', 'submits', 'commandBuffers', 'readbacks', 'readbackBytes', 'writes', 'writeBytes', 'buffers'];

/** Counter differences `b - a` (cumulative counters only). */
export function diffCounts(a, b) {
  return Object.fromEntries(COUNTS.map((k) => [k, (b?.[k] || 0) - (a?.[k] || 0)]));
}

/**
 * Splits marks (progress events with counter snapshots; the last one is the read) into the
 * work between one mark and the next: { stage, step, seconds, counts, liveAtStart, peakLive }.
 */
export function perStage(marks) {
  const out = [];
  for (let i = 0; i + 1 < marks.length; i++) {
    const [a, b] = [marks[i], marks[i + 1]];
    out.push({
      stage: a.event.stage,
      step: a.event.step,
      seconds: (b.t - a.t) / 1000,
      counts: diffCounts(a.counts, b.counts),
      liveAtStart: a.counts.live,
      peakLive: b.counts.peakSinceMark,
    });
  }
  return out;
}
