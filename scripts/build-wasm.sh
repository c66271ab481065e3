#!/usr/bin/env bash
# Builds the browser engine into www/engine/: cargo (wasm32, release) → wasm-bindgen (--target
# web) → wasm-opt (npm's binaryen, when installed). Used by serve.sh and test.sh. When cargo's
# output has not changed, the existing www/engine is kept (wasm-opt takes minutes).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ZEPO_ROOT"

zepo_setup_wasm
# No default features: those are the native backends (flex CPU, wgpu on Vulkan); the wasm32
# target table of Cargo.toml gives burn `webgpu` + `fusion` (never `autotune`, see cubek#654).
cargo build --release --target wasm32-unknown-unknown --lib --no-default-features
wasm="$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/zepo.wasm"

out="$ZEPO_ROOT/www/engine"
opt="$ZEPO_ROOT/node_modules/binaryen/bin/wasm-opt"
# ZEPO_WASM_OPT=0 skips wasm-opt (minutes on 2 cores): for quick local iterations only.
[ "${ZEPO_WASM_OPT:-1}" = "0" ] && opt=/nonexistent
# What the package is made from: the wasm, the bindgen version, whether wasm-opt ran.
stamp="$(sha256sum "$wasm" | cut -c1-64) $(wasm-bindgen --version) opt=$([ -x "$opt" ] && echo 1 || echo 0)"
if [ -f "$out/zepo_bg.wasm" ] && [ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "  www/engine is up to date"
else
    rm -rf "$out.tmp" && mkdir -p "$out.tmp"
    wasm-bindgen --target web --no-typescript --out-dir "$out.tmp" --out-name zepo "$wasm"
    if [ -x "$opt" ]; then
        echo "  wasm-opt -O2 (a few minutes)"
        # Exactly the wasm features rustc enables by default for wasm32-unknown-unknown.
        "$opt" -O2 --enable-bulk-memory --enable-mutable-globals --enable-nontrapping-float-to-int \
            --enable-sign-ext --enable-reference-types --enable-multivalue \
            "$out.tmp/zepo_bg.wasm" -o "$out.tmp/zepo_bg.opt.wasm"
        mv "$out.tmp/zepo_bg.opt.wasm" "$out.tmp/zepo_bg.wasm"
    else
        echo "  (npm's binaryen is not installed: wasm-opt skipped; npm ci gives a smaller wasm)"
    fi
    echo "$stamp" > "$out.tmp/.stamp"
    rm -rf "$out" && mv "$out.tmp" "$out"
fi
raw=$(stat -c %s "$out/zepo_bg.wasm")
gz=$(gzip -6 -c "$out/zepo_bg.wasm" | wc -c)
echo "  www/engine/zepo_bg.wasm: $((raw / 1024)) KiB, $((gz / 1024)) KiB gzipped"
node "$ZEPO_ROOT/scripts/build-shell.mjs"
