// The page as an installable offline app: registers the service worker (../sw.js), runs the
// update flow, and drives the Storage panel. main.js calls `takeOverUpdate()` before starting
// the engine, `registerServiceWorker()`, and `storage.refresh()` / `storage.downloaded()`.
//
// Updates: a new build installs in the background into a cache of its own (sw.js) and waits.
// A page opened while a new version waits hands over to it and reloads at once, when it is the
// app's only window (so the next load runs the new version); otherwise, and when the new
// version arrives while a page is open, the page says "a new version is ready" with a Reload
// button. A page never runs on files of two builds: the service worker serves each page (and
// its engine Worker) the version it loaded with, also after a newer version took over.
import { clearCache, storedModels } from './weights.js';

const $ = (id) => document.getElementById(id);
const SW_URL = new URL('../sw.js', import.meta.url);
const sw = navigator.serviceWorker;
const mb = (n) => (n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GB` : `${(n / 2 ** 20).toFixed(1)} MB`);

/** What the page knows about its offline copy, for the panel and the tests. */
export const offline = { state: sw ? 'registering' : 'unsupported', version: null, error: null };

function setOffline(state, detail = '') {
  Object.assign(offline, { state }, state === 'failed' ? { error: detail } : {});
  document.body.dataset.offline = state;
  const text = {
    unsupported: 'not available: this browser has no service workers (or the page is not served over https / localhost)',
    registering: 'preparing…',
    installing: 'saving the app for offline use…',
    ready: `ready${offline.version ? ` (version ${offline.version})` : ''}: the page opens without a network`,
    bypassed: 'ready, but this load bypassed it (a forced reload): reload to use it',
    failed: `not available: ${detail}`,
  }[state];
  $('offline-state').textContent = text;
}

/** A request to a service worker, answered through a MessageChannel. */
function ask(worker, message) {
  return new Promise((resolve, reject) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = ({ data }) => resolve(data);
    setTimeout(() => reject(new Error('the service worker did not answer')), 10_000);
    worker.postMessage(message, [channel.port2]);
  });
}

const SWITCH_WAIT_MS = 8000;

const NUDGE_URL = new URL('../__zepo/nudge', import.meta.url);

/**
 * Gets a version that skipped waiting activated in Chromium. Chromium asks the active worker to
 * stop as soon as it is idle, and activates the new one when it has stopped; but this page's
 * own requests (its icon, a message) may start the old worker again before that, and a restarted
 * worker is not asked again: the switch then waits up to 5 minutes, or for the next
 * navigation or Worker script request, which asks again. So this page starts a tiny Worker
 * (answered by the service worker itself) now and then until the switch. Returns the function
 * that stops.
 */
function nudge() {
  const once = () => {
    const worker = new Worker(NUDGE_URL);
    const end = () => worker.terminate();
    worker.onmessage = end;
    worker.onerror = (e) => {
      e.preventDefault();
      end();
    };
    setTimeout(end, 2000);
  };
  once();
  const timer = setInterval(once, 400);
  return () => clearInterval(timer);
}

// Set when this page asked a waiting version to take over: its activation reloads the page.
let switching = false;

function showUpdate(kind) {
  document.body.dataset.update = kind;
  $('update-text').textContent = kind === 'outdated'
    ? 'A new version of the app took over (from another window, or late): reload to use it.'
    : 'A new version is ready.';
  $('update').hidden = false;
}

/**
 * Before the engine starts: if a new version is installed and waiting, and this is the app's
 * only window, let it take over and reload into it. Resolves to true when the page reloads.
 */
export async function takeOverUpdate() {
  if (!sw?.controller) return false;
  try {
    const reg = await sw.getRegistration(SW_URL);
    if (!reg?.waiting) return false;
    switching = true;
    const { activating, others } = await ask(reg.waiting, { type: 'zepo-activate' });
    console.info(`a new version of the app is ready: ${activating ? 'switching to it' : `${others} other windows use this one`}`);
    if (activating) {
      $('status').textContent = 'Updating to the new version…';
      // controllerchange reloads the page. Should the activation still be late (the old version
      // has work in flight), this page starts on its version: the service worker keeps serving
      // it that version's files, and the page asks for a reload once the new one is active.
      const stop = nudge();
      const switched = await new Promise((resolve) => {
        sw.addEventListener('controllerchange', () => resolve(true), { once: true });
        setTimeout(() => resolve(false), SWITCH_WAIT_MS);
      });
      stop();
      if (switched) return true;
      console.info('the new version is not active yet: starting this one');
    }
    switching = false;
    showUpdate('ready');
  } catch (e) {
    switching = false;
    console.warn(`update check: ${e.message}`);
  }
  return false;
}

async function showVersion() {
  try {
    const { version } = await ask(sw.controller, { type: 'zepo-version' });
    offline.version = version;
    $('app-version').textContent = `app ${version}`;
    setOffline('ready');
  } catch (e) {
    setOffline('failed', e.message);
  }
}

// Listening from the start: a take-over asked before registration ends must still reload.
let hadController = !!sw?.controller;
sw?.addEventListener('controllerchange', () => {
  if (switching) return location.reload();
  if (hadController) return showUpdate('outdated');
  hadController = true; // the first install claimed this page
  showVersion();
});
sw?.addEventListener('message', ({ data }) => {
  if (data?.type === 'zepo-install-failed') {
    console.warn(`offline copy: version ${data.version} was not installed: ${data.message}`);
    if (!sw.controller) setOffline('failed', data.message);
  }
});
$('update-reload').addEventListener('click', async () => {
  const reg = await sw?.getRegistration(SW_URL);
  if (!reg?.waiting) return location.reload();
  switching = true;
  await ask(reg.waiting, { type: 'zepo-activate', force: true }).catch(() => location.reload());
  nudge();
});

/** Registers ../sw.js and follows its installs. Never throws: offline use is a bonus. */
export async function registerServiceWorker() {
  if (!sw) return setOffline('unsupported');
  let reg;
  try {
    // updateViaCache 'none': update checks bypass the HTTP cache, for sw.js and its imports.
    reg = await sw.register(SW_URL, { updateViaCache: 'none' });
  } catch (e) {
    return setOffline('failed', `the service worker could not be registered (${e.message})`);
  }
  const follow = (worker) => {
    if (!worker) return;
    if (!sw.controller) setOffline('installing');
    worker.addEventListener('statechange', () => {
      // A version installed while this page runs another: it waits for a reload.
      if (worker.state === 'installed' && sw.controller) showUpdate('ready');
    });
  };
  follow(reg.installing);
  reg.addEventListener('updatefound', () => follow(reg.installing));
  if (reg.waiting && sw.controller) showUpdate('ready');
  if (sw.controller) showVersion();
  else if (reg.active && !reg.installing && !reg.waiting) setOffline('bypassed');
}

/** What is stored for the model at `base` (www/weights.js's storedModels): { bytes, complete }. */
async function modelStored(base) {
  const m = (await storedModels()).find((x) => x.base === base.replace(/\/+$/, ''));
  return m || { bytes: 0, complete: false };
}

/** The Storage panel for the model at `model` (a URL). `busy()`: whether the engine is working. */
export function storagePanel(model, busy) {
  const base = new URL(model, location.href).href;
  let asked = false;

  async function refresh() {
    try {
      const { bytes, complete } = await modelStored(base);
      $('storage-model').textContent = !bytes ? 'nothing stored'
        : `${mb(bytes)}${complete ? '' : ' (partly: the next load downloads the rest)'}`;
      $('storage').dataset.modelBytes = String(bytes);
      $('delete-model').disabled = !bytes || busy();
      if (navigator.storage?.estimate) {
        const { usage, quota } = await navigator.storage.estimate();
        $('storage-used').textContent = `${mb(usage)} of ${mb(quota)} this browser allows the site`;
      } else $('storage-used').textContent = 'unknown (no StorageManager)';
      if (!asked) {
        const persisted = await navigator.storage?.persisted?.();
        $('storage-persist').textContent = persisted
          ? 'persistent: the browser keeps the model until you delete it'
          : 'best-effort: the browser may evict the model when the disk runs low';
      }
    } catch (e) {
      $('storage-model').textContent = `unknown (${e.message})`;
    }
  }

  /** After a download completed: asks once for persistent storage, and shows the answer. */
  async function downloaded(bytes) {
    if (bytes > 0 && !asked && navigator.storage?.persist) {
      asked = true;
      let granted = false;
      try {
        granted = (await navigator.storage.persisted()) || (await navigator.storage.persist());
      } catch (e) {
        console.warn(`storage.persist(): ${e.message}`);
      }
      $('storage').dataset.persist = granted ? 'granted' : 'denied';
      $('storage-persist').textContent = granted
        ? 'persistent (granted): the browser keeps the model until you delete it'
        : 'best-effort (persistence not granted): the browser may evict the model when the disk runs low';
    }
    await refresh();
  }

  $('delete-model').addEventListener('click', async () => {
    if (busy()) return;
    $('delete-model').disabled = true;
    try {
      const n = await clearCache(base);
      $('storage-status').textContent = `Deleted (${n} stored entries): the next load downloads the model again.`;
    } catch (e) {
      $('storage-status').textContent = `Could not delete the model: ${e.message}`;
    }
    await refresh();
  });

  refresh();
  return { refresh, downloaded };
}
