// Several portraits after one style: one queue on the engine (ZePo.stylizeMany, which computes
// the style's features once), one progress bar for the batch and one per item, a cancel button
// per item besides the page's Cancel for the whole batch, and the results as a grid.

const STATUS = { queued: 'queued', running: 'stylizing…', done: 'done', cancelled: 'cancelled', failed: 'failed' };

/**
 * Runs `portraits` ([{ blob, name }]) after `style` on `engine` with `options`, shown in `els`
 * ({ box, list, progress, text }). `signal` cancels the whole batch; `onDone(i, entry, portrait)`
 * sees each finished item (entry: { png, seconds, counters } or { error }) and resolves to
 * the file name to offer its PNG under. Resolves to the entries and the items' states.
 */
export async function runBatch(engine, portraits, style, options, { els, signal, onDone }) {
  const n = portraits.length;
  const controllers = portraits.map(() => new AbortController());
  const states = portraits.map(() => 'queued');
  const urls = [];
  const rows = portraits.map((p, i) => {
    const li = document.createElement('li');
    li.className = 'batch-item';
    li.dataset.state = 'queued';
    const url = URL.createObjectURL(p.blob);
    urls.push(url);
    const img = document.createElement('img');
    img.src = url;
    img.alt = `portrait ${i + 1}${p.name ? `: ${p.name}` : ''}`;
    const name = document.createElement('p');
    name.className = 'batch-name';
    name.textContent = p.name || `portrait ${i + 1}`;
    const bar = document.createElement('progress');
    bar.max = 1;
    bar.value = 0;
    bar.setAttribute('aria-label', `Progress of portrait ${i + 1}`);
    const status = document.createElement('p');
    status.className = 'batch-status';
    status.textContent = STATUS.queued;
    const cancel = document.createElement('button');
    cancel.type = 'button';
    cancel.className = 'secondary batch-cancel';
    cancel.textContent = 'Cancel';
    cancel.setAttribute('aria-label', `Cancel portrait ${i + 1}`);
    cancel.addEventListener('click', () => {
      controllers[i].abort();
      cancel.disabled = true;
      if (states[i] === 'queued') set(i, 'cancelled');
    });
    li.append(img, name, bar, status, cancel);
    return { li, img, bar, status, cancel };
  });
  els.list.replaceChildren(...rows.map((r) => r.li));
  els.box.hidden = false;

  let finished = 0;
  const overall = (fraction) => {
    els.progress.value = Math.min(1, (finished + fraction) / n);
    els.text.textContent = `${finished} of ${n} done`;
  };
  function set(i, state, detail = '') {
    states[i] = state;
    rows[i].li.dataset.state = state;
    rows[i].status.textContent = detail || STATUS[state];
  }
  overall(0);

  const pending = [];
  const entries = await engine.stylizeMany(portraits.map((p) => p.blob), style, {
    ...options,
    signal,
    itemSignals: controllers.map((c) => c.signal),
    onProgress: (p) => {
      if (states[p.item] === 'queued') set(p.item, 'running');
      if (p.fraction != null) rows[p.item].bar.value = p.fraction;
      overall(p.fraction ?? 0);
    },
    onItem: (i, entry) => pending.push((async () => {
      finished += 1;
      const row = rows[i];
      row.cancel.hidden = true;
      if (entry.png) {
        row.bar.value = 1;
        set(i, 'done', `done in ${entry.seconds.toFixed(1)} s`);
        const url = URL.createObjectURL(entry.png);
        urls.push(url);
        row.img.src = url;
        row.img.alt = `result ${i + 1}`;
        const fileName = await onDone?.(i, entry, portraits[i]);
        const a = document.createElement('a');
        a.className = 'button secondary';
        a.href = url;
        a.download = fileName || `zepo-${i + 1}.png`;
        a.textContent = 'Download';
        a.setAttribute('aria-label', `Download result ${i + 1} (${a.download})`);
        row.li.append(a);
      } else if (entry.error?.name === 'AbortError') {
        set(i, 'cancelled');
      } else {
        set(i, 'failed', `${entry.error?.name || 'Error'}: ${entry.error?.message || entry.error}`);
        await onDone?.(i, entry, portraits[i]);
      }
      overall(0);
    })()),
  });
  await Promise.all(pending);
  return { entries, states: [...states], release: () => urls.forEach((u) => URL.revokeObjectURL(u)) };
}
