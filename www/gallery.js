// The local gallery: every result the page makes is kept on this device (IndexedDB: the PNG, its
// file name and the settings that made it), listed offline, deletable one by one and all at once,
// with the storage it uses. A full quota is a GalleryFull error: the result is still shown and
// downloadable, only not kept. "Again" hands an item's settings back to the page.

const DB_NAME = 'zepo-gallery';
const STORE = 'results';
const mb = (n) => (n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GB` : n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MB` : `${(n / 1024).toFixed(1)} KB`);

export class GalleryError extends Error {
  constructor(name, message) {
    super(message);
    this.name = name;
  }
}

function request(r) {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onabort = () => reject(tx.error || new DOMException('the transaction was aborted', 'AbortError'));
    tx.onerror = () => reject(tx.error);
  });
}

function openDb() {
  const r = indexedDB.open(DB_NAME, 1);
  r.onupgradeneeded = () => r.result.createObjectStore(STORE, { keyPath: 'id', autoIncrement: true });
  return request(r);
}

const isQuota = (e) => e?.name === 'QuotaExceededError' || /quota/i.test(e?.message || '');

/** The stored results (IndexedDB). `Gallery.open()` fails with GalleryUnavailable where there is none. */
export class Gallery {
  constructor(db) {
    this.db = db;
  }

  static async open() {
    try {
      return new Gallery(await openDb());
    } catch (e) {
      throw new GalleryError('GalleryUnavailable', `results cannot be kept in this browser (${e?.name || 'IndexedDB'}: ${e?.message || 'unavailable'}), for example in a private window`);
    }
  }

  /**
   * Keeps a result: `{ blob, name, settings, width, height, seconds }`; resolves to its id.
   * A full quota is a GalleryFull error (nothing is half-written: the transaction aborts).
   */
  async add({ blob, name, settings, width, height, seconds }) {
    const tx = this.db.transaction(STORE, 'readwrite');
    const record = { blob, name, settings, width, height, seconds, bytes: blob.size, created: Date.now() };
    try {
      const id = await request(tx.objectStore(STORE).add(record));
      await done(tx);
      return id;
    } catch (e) {
      if (isQuota(e) || isQuota(tx.error)) {
        throw new GalleryError('GalleryFull', `the gallery is full: this device's storage for the site is used up, so this result (${mb(blob.size)}) was not kept. It is still shown: download or share it, or delete older results (or the downloaded model) to keep new ones.`);
      }
      throw e;
    }
  }

  /** Every kept result, newest first. */
  async list() {
    const all = await request(this.db.transaction(STORE).objectStore(STORE).getAll());
    return all.sort((a, b) => b.created - a.created || b.id - a.id);
  }

  async delete(id) {
    const tx = this.db.transaction(STORE, 'readwrite');
    tx.objectStore(STORE).delete(id);
    await done(tx);
  }

  async clear() {
    const tx = this.db.transaction(STORE, 'readwrite');
    tx.objectStore(STORE).clear();
    await done(tx);
  }
}

/**
 * The gallery's panel: `els` = { list, summary, clear, status }; `again(settings, record)` when an
 * item's "Again" is pressed. Returns { add(result), refresh(), state } (state: what the tests read).
 */
export function galleryPanel(els, again) {
  const state = { count: 0, bytes: 0, error: null, ready: false };
  let gallery = null;
  let urls = [];
  const opened = Gallery.open().then((g) => { gallery = g; }, (e) => { state.error = e.name; els.summary.textContent = e.message; });

  function item(record) {
    const li = document.createElement('li');
    li.className = 'gallery-item';
    li.dataset.id = String(record.id);
    const url = URL.createObjectURL(record.blob);
    urls.push(url);
    const img = document.createElement('img');
    img.src = url;
    img.alt = `result ${record.name}`;
    img.loading = 'lazy';
    const caption = document.createElement('p');
    caption.className = 'gallery-caption';
    const s = record.settings || {};
    caption.textContent = `${new Date(record.created).toLocaleString()} · ${record.width}×${record.height} · seed ${s.seed ?? '?'} · ${mb(record.bytes)}`;
    const actions = document.createElement('div');
    actions.className = 'gallery-actions';
    const button = (text, label, onClick, cls = 'secondary') => {
      const b = document.createElement('button');
      b.type = 'button';
      b.className = cls;
      b.textContent = text;
      b.setAttribute('aria-label', label);
      b.addEventListener('click', onClick);
      return b;
    };
    const download = document.createElement('a');
    download.className = 'button secondary';
    download.href = url;
    download.download = record.name;
    download.textContent = 'Download';
    download.setAttribute('aria-label', `Download ${record.name}`);
    actions.append(
      button('Again', `Again with the settings of ${record.name}`, () => again(record.settings, record)),
      download,
      button('Delete', `Delete ${record.name} from the gallery`, () => act(async () => {
        await gallery.delete(record.id);
        els.status.textContent = `Deleted ${record.name}.`;
      })),
    );
    li.append(img, caption, actions);
    return li;
  }

  async function refresh() {
    await opened;
    if (!gallery) return state;
    let records;
    try {
      records = await gallery.list();
    } catch (e) {
      els.summary.textContent = `The kept results cannot be read: ${e?.name}: ${e?.message}`;
      return state;
    }
    for (const u of urls) URL.revokeObjectURL(u);
    urls = [];
    els.list.replaceChildren(...records.map(item));
    state.count = records.length;
    state.bytes = records.reduce((n, r) => n + (r.bytes || 0), 0);
    state.ids = records.map((r) => r.id);
    let quota = '';
    try {
      const { usage, quota: q } = await navigator.storage.estimate();
      quota = ` (the site uses ${mb(usage)} of ${mb(q)} this browser allows it)`;
    } catch { /* no estimate */ }
    els.summary.textContent = records.length
      ? `${records.length} result${records.length === 1 ? '' : 's'} kept on this device, ${mb(state.bytes)}${quota}.`
      : `No results kept yet: each result is kept here, on this device only${quota}.`;
    els.clear.disabled = !records.length;
    state.ready = true;
    return state;
  }

  /** A change to the kept results, then the list again; a failure is said in the panel. */
  async function act(change) {
    try {
      await change();
    } catch (e) {
      els.status.textContent = `The gallery could not be changed: ${e?.name}: ${e?.message}`;
    }
    await refresh();
  }

  els.clear.addEventListener('click', () => act(async () => {
    await opened;
    if (!gallery) return;
    await gallery.clear();
    els.status.textContent = 'Deleted every kept result.';
  }));

  /** Keeps a result; a failure (a full quota) is thrown after the panel says it. */
  async function add(result) {
    await opened;
    if (!gallery) throw new GalleryError(state.error, els.summary.textContent);
    try {
      await gallery.add(result);
      state.error = null;
    } catch (e) {
      state.error = e.name;
      throw e;
    } finally {
      await refresh();
    }
  }

  refresh();
  return { add, refresh, state };
}
