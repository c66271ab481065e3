// "Take a photo" for the portrait or the style image. On a phone (a coarse pointer) the system
// camera through the file input's `capture` attribute: the photo arrives as a file, as if
// picked. Elsewhere a live preview in a dialog with a shutter (getUserMedia); the stream stops
// when the photo is taken or the dialog closes, however it closes. A denied permission, a
// missing or busy camera, or a page without camera access gets a message that says which and
// what to do; nothing else changes.

/** What a getUserMedia failure means to the visitor. */
export function cameraMessage(error) {
  switch (error?.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'The camera permission was denied. Allow the camera for this site in the browser\'s settings, or pick a photo instead.';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'No camera was found on this device. Connect one, or pick a photo instead.';
    case 'NotReadableError':
    case 'AbortError':
      return 'The camera could not be started: another app may be using it. Close it and try again, or pick a photo instead.';
    case 'NoMediaDevices':
      return 'This browser gives the page no camera access (it needs https, or localhost). Pick a photo instead.';
    default:
      return `The camera could not be started (${error?.name || 'Error'}: ${error?.message || error}). Pick a photo instead.`;
  }
}

/** Whether the system camera (the file input's `capture`) is the way: phones and tablets. */
export function usesSystemCamera() {
  return matchMedia('(pointer: coarse)').matches;
}

/**
 * Wires the camera buttons (`button.camera[data-for]`) to `onPhoto(which, blob, name)`.
 * `els`: { dialog, video, shutter, cancel, message, capture } (capture: a file input with
 * `capture` set, for phones).
 */
export function setUpCamera(els, onPhoto) {
  let stream = null;
  let which = 'content';
  const state = { active: false, photos: 0 };

  const stop = () => {
    for (const track of stream?.getTracks() || []) track.stop();
    stream = null;
    els.video.srcObject = null;
    state.active = false;
    els.shutter.disabled = true;
  };
  const fail = (error) => {
    stop();
    els.message.textContent = cameraMessage(error);
    els.message.hidden = false;
    els.video.hidden = true;
  };

  async function open(target) {
    which = target;
    els.message.hidden = true;
    els.video.hidden = false;
    els.shutter.disabled = true;
    els.dialog.dataset.for = which;
    els.dialog.querySelector('h2').textContent = which === 'content' ? 'Take the portrait' : 'Take the style photo';
    if (!els.dialog.open) els.dialog.showModal();
    if (!navigator.mediaDevices?.getUserMedia) {
      fail({ name: 'NoMediaDevices' });
      return;
    }
    try {
      const got = await navigator.mediaDevices.getUserMedia({
        video: { facingMode: which === 'content' ? 'user' : 'environment', width: { ideal: 1280 }, height: { ideal: 1280 } },
        audio: false,
      });
      // Closed while the permission was asked: the stream is not wanted any more.
      if (!els.dialog.open) {
        for (const track of got.getTracks()) track.stop();
        return;
      }
      stream = got;
      state.active = true;
      els.video.srcObject = stream;
      await els.video.play().catch(() => {});
      els.shutter.disabled = false;
      els.shutter.focus();
    } catch (e) {
      fail(e);
    }
  }

  async function shoot() {
    const { video } = els;
    if (!stream || !video.videoWidth) return;
    const canvas = document.createElement('canvas');
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext('2d').drawImage(video, 0, 0);
    stop();
    els.dialog.close();
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
    if (!blob) return;
    state.photos++;
    const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\..*$/, '').replace('T', '-');
    onPhoto(which, blob, `camera-${stamp}.png`);
  }

  els.shutter.addEventListener('click', shoot);
  els.cancel.addEventListener('click', () => els.dialog.close());
  // Escape, the cancel button, a photo taken: every way the dialog closes stops the stream.
  els.dialog.addEventListener('close', stop);
  els.capture.addEventListener('change', () => {
    const file = els.capture.files[0];
    if (file) onPhoto(els.capture.dataset.for || 'content', file, file.name);
    els.capture.value = '';
  });
  for (const button of document.querySelectorAll('button.camera[data-for]')) {
    button.addEventListener('click', () => {
      if (usesSystemCamera()) {
        els.capture.dataset.for = button.dataset.for;
        els.capture.setAttribute('capture', button.dataset.for === 'content' ? 'user' : 'environment');
        els.capture.click();
      } else {
        open(button.dataset.for);
      }
    });
  }
  return state;
}
