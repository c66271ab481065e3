#!/usr/bin/env bash
# Assembles the npm package in pkg/ from the browser build: run after scripts/build-wasm.sh
# (`npm run build` runs both). pkg/ holds the committed package sources (package.json,
# index.d.ts, README.md); this copies in the JS API and everything it loads, following the
# relative imports and `new URL('…', import.meta.url)` references from www/zepo.js: the worker,
# the weights module, the wasm-bindgen glue and the .wasm. Copies, never edits: www/*.js stay
# the one source of the JS. Then `cd pkg && npm pack` makes the tarball.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[ -f www/engine/zepo_bg.wasm ] || { echo "build-pkg: www/engine is not built: run bash scripts/build-wasm.sh first" >&2; exit 1; }

# The package's version is the crate's.
crate="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
package="$(node -p 'JSON.parse(require("fs").readFileSync("pkg/package.json", "utf8")).version')"
if [ "$crate" != "$package" ]; then
    echo "build-pkg: pkg/package.json has version $package, Cargo.toml $crate: make them equal" >&2
    exit 1
fi

# Only the committed sources stay (an earlier build's copies and tarballs go).
find pkg -mindepth 1 -maxdepth 1 ! -name package.json ! -name index.d.ts ! -name README.md -exec rm -rf {} +

node - <<'JS'
const fs = require('fs');
const path = require('path');
// import … from './x'; import './x'; export … from './x'; import('./x'); new URL('x', import.meta.url)
const REFS = /\b(?:from|import)\s*\(?\s*(['"])(\.{1,2}\/[^'"]+)\1|new URL\(\s*(['"])([^'"]+)\3\s*,\s*import\.meta\.url\s*\)/g;
const todo = ['zepo.js'];
const seen = new Set();
while (todo.length) {
  const rel = todo.pop();
  if (seen.has(rel)) continue;
  seen.add(rel);
  const src = path.join('www', rel);
  if (!fs.existsSync(src)) throw new Error(`build-pkg: ${src} is referenced but missing`);
  fs.mkdirSync(path.dirname(path.join('pkg', rel)), { recursive: true });
  fs.copyFileSync(src, path.join('pkg', rel));
  if (!rel.endsWith('.js')) continue;
  // Comments (usage examples) name no files.
  const code = fs.readFileSync(src, 'utf8').replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
  for (const m of code.matchAll(REFS)) {
    const spec = m[2] || m[4];
    if (/^[a-z][a-z0-9+.-]*:/i.test(spec)) continue; // an absolute URL
    const next = path.posix.normalize(path.posix.join(path.posix.dirname(rel), spec));
    if (next.startsWith('..')) throw new Error(`build-pkg: www/${rel} refers to ${spec}, outside www/`);
    todo.push(next);
  }
}
for (const f of [...seen].sort()) console.log(`  pkg/${f}: ${(fs.statSync(path.join('pkg', f)).size / 1024).toFixed(0)} KiB`);
JS
