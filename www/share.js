// Share out: the result PNG (its file name and embedded settings as the download has them)
// through the system's share sheet where the browser can share files (Web Share API,
// `navigator.canShare({ files })`), else the download. A share the visitor cancels is no error.

/**
 * Shares `blob` as `name`. Returns 'shared', 'cancelled' or 'downloaded' (`download()` was
 * called: the browser cannot share files, or sharing failed for another reason than a cancel).
 */
export async function shareOrDownload(blob, name, download) {
  const file = new File([blob], name, { type: 'image/png' });
  const data = { files: [file], title: name };
  if (navigator.share && navigator.canShare?.(data)) {
    try {
      await navigator.share(data);
      return 'shared';
    } catch (e) {
      if (e?.name === 'AbortError') return 'cancelled';
      console.warn(`share: ${e?.name}: ${e?.message}; downloading instead`);
    }
  }
  download();
  return 'downloaded';
}
