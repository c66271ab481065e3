// The download question's choice of weights (index.html's #weights-choice): a bundle made with
// `zepo weights convert --variants q8,mixed` offers its fp16 weights and compact variants, each
// with its download and the PSNR against fp16 that the converter measured on the checkpoint.
// The choice is remembered; a remembered variant the model lacks falls back to 'auto' (the
// engine's pick: the smallest download).

const WEIGHTS_KEY = 'zepo-weights';

/** The weights remembered from an earlier choice ('auto' when none). */
export function rememberedWeights() {
  try {
    return localStorage.getItem(WEIGHTS_KEY) || 'auto';
  } catch {
    return 'auto';
  }
}

export function rememberWeights(weights) {
  try {
    localStorage.setItem(WEIGHTS_KEY, weights);
  } catch { /* storage disabled */ }
}

/** The weights to load for `sizes` (modelSize's answer): the remembered ones if the model has them. */
export function weightsFor(sizes) {
  const remembered = rememberedWeights();
  return sizes.variants?.some((v) => v.name === remembered) ? remembered : 'auto';
}

/** What a variant's PSNR says, in a few words: the UNet's, the least of the VAE's. */
function quality(v) {
  const p = v.psnr || {};
  const vae = Math.min(p['vae.encode'] ?? Infinity, p['vae.decode'] ?? Infinity);
  const parts = [];
  if (p.unet != null) parts.push(`UNet ${p.unet.toFixed(1)} dB`);
  if (Number.isFinite(vae)) parts.push(`VAE ${vae.toFixed(1)} dB`);
  return parts.length ? `PSNR against fp16: ${parts.join(', ')}` : 'the reference';
}

/**
 * Shows the choice in `fieldset` (hidden when the model has one kind of weights) for `sizes`;
 * `describe(bytes)` says a download size. `onChange(name, bytes)` is called with the chosen
 * variant's first download (`extra`: bytes every first run adds, the text encoder of a model
 * without precomputed prompts). Returns a function giving the chosen name.
 */
export function showWeightsChoice(fieldset, sizes, { describe, extra = 0, onChange }) {
  const list = sizes.variants || [];
  const box = fieldset.querySelector('.weights-options');
  box.replaceChildren();
  fieldset.hidden = list.length < 2;
  const initial = weightsFor(sizes) === 'auto' ? sizes.weights : weightsFor(sizes);
  for (const v of list) {
    const label = document.createElement('label');
    const input = document.createElement('input');
    Object.assign(input, { type: 'radio', name: 'weights', value: v.name, checked: v.name === initial });
    input.dataset.bytes = String(v.bytes + extra);
    input.addEventListener('change', () => onChange?.(v.name, v.bytes + extra));
    label.append(input, ` ${v.name}: ${describe(v.bytes + extra)}`);
    const note = document.createElement('span');
    note.className = 'note';
    note.textContent = ` (${quality(v)}${v.name === sizes.weights ? '; the smallest' : ''})`;
    label.append(note);
    box.append(label);
  }
  return () => fieldset.querySelector('input[name="weights"]:checked')?.value || 'auto';
}
