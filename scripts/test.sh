#!/usr/bin/env bash
# The one test command: bash scripts/test.sh
#
# Installs what it needs (idempotent, quiet; see scripts/setup.sh), then runs
#   1. cargo test                      every Rust test on burn's CPU backend
#   1b. fuzz                           tests/fuzz.rs: every parser of outside input, for a fixed
#                                      budget ($ZEPO_FUZZ_SECONDS per target, 10 here)
#   2. parity on wgpu                  tests/parity again on wgpu, on lavapipe (Mesa's CPU Vulkan),
#                                      the f16 compute path (tests/f16_wgpu.rs) and the GPU
#                                      kernels against burn's plain paths (tests/gpu_ops.rs)
#   3. wasm build                      the browser engine into www/engine (scripts/build-wasm.sh)
#   3b. npm package                    pkg/ assembled from it (scripts/build-pkg.sh)
#   4. browser tests                   node --test tests/browser/*.test.mjs (the page, the API, the
#                                      offline app: pwa.test.mjs) in headless Chromium
#                                      on WebGPU (SwiftShader)
# Every stage runs even if an earlier one failed (the browser tests need the wasm build); the
# exit status is non-zero if any failed. Cargo's target dir: $CARGO_TARGET_DIR, by default
# ~/.cache/zepo-target (outside the clone, shared between clones).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ZEPO_ROOT"

declare -a SUMMARY=()
FAILED=0
if [ -t 1 ]; then B=$'\033[1m' N=$'\033[0m'; else B='' N=''; fi
section() { printf '\n%s==== %s ====%s\n' "$B" "$*" "$N"; }
# stage NAME CMD...: runs CMD under a header, records its time and result.
stage() {
    local name="$1"; shift
    section "$name"
    local t0=$SECONDS rc=0
    "$@" || rc=$?
    local took=$((SECONDS - t0))
    if [ $rc -eq 0 ]; then
        SUMMARY+=("$(printf 'ok     %-28s %4ds' "$name" "$took")")
    else
        SUMMARY+=("$(printf 'FAILED %-28s %4ds (exit %d)' "$name" "$took" "$rc")")
        FAILED=1
    fi
    return $rc
}

setup_all() {
    zepo_setup_browser && zepo_setup_wasm && zepo_setup_node || return 1
    echo "  rustc $(rustc --version | awk '{print $2}'), node $(node --version), wasm-bindgen $(wasm-bindgen --version | awk '{print $2}'), $("$(zepo_chromium)" --version 2>/dev/null)"
}

cpu_tests() {
    cargo test --quiet -- --skip fuzz_every_parser
}

fuzz() {
    ZEPO_FUZZ_SECONDS="${ZEPO_FUZZ_SECONDS:-10}" cargo test --quiet --test fuzz -- --nocapture
}

wgpu_parity() {
    # Only lavapipe's Vulkan driver is visible, and the tests check that it is the adapter used.
    local icd
    icd="$(ls /usr/share/vulkan/icd.d/lvp_icd.*.json 2>/dev/null | head -n 1)"
    [ -n "$icd" ] || { echo "lavapipe's Vulkan driver is missing (apt-get install mesa-vulkan-drivers)" >&2; return 1; }
    if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
        XDG_RUNTIME_DIR="$(mktemp -d /tmp/zepo-xdg.XXXXXX)"
        chmod 700 "$XDG_RUNTIME_DIR"
        export XDG_RUNTIME_DIR
    fi
    echo "  Vulkan driver: $icd"
    cargo test --quiet --no-run --test parity --test f16_wgpu --test gpu_ops || return 1
    # Built first, so that the limit is on the tests (a few minutes), not on a cold build.
    # gpu_ops: the GPU kernels against burn's plain compositions and the compact kernels against
    # the CPU's dequantization (ignored without a GPU backend).
    VK_DRIVER_FILES="$icd" VK_ICD_FILENAMES="$icd" ZEPO_TEST_WGPU=1 ZEPO_TEST_WGPU_ADAPTER=llvmpipe \
        timeout --kill-after=30s 25m cargo test --quiet --test parity --test f16_wgpu --test gpu_ops -- --include-ignored
}

browser_tests() {
    [ -f www/engine/zepo_bg.wasm ] || { echo "no wasm build: skipped" >&2; return 1; }
    local chrome
    chrome="$(zepo_chromium)" || { echo "no chromium" >&2; return 1; }
    # --test-force-exit: a file whose tests are over exits even if something it started (a server,
    # a browser) is still running. timeout: a hang still ends the stage (its tests took 38 min on 2
    # cores on 2026-12-07; the README's "Tests" section has each file's share).
    CHROME="$chrome" ZEPO_TEST_WEBGPU_ARCH=swiftshader \
        timeout --kill-after=30s 55m node --test --test-force-exit tests/browser/*.test.mjs
}

T0=$SECONDS
stage "setup" setup_all || { section "summary"; printf '%s\n' "${SUMMARY[@]}"; exit 1; }
stage "cargo test (CPU)" cpu_tests
stage "fuzz (7 parsers)" fuzz
stage "parity on wgpu (lavapipe)" wgpu_parity
if stage "wasm build" bash scripts/build-wasm.sh; then
    # (tests/browser/package.test.mjs fails on its own if this did.)
    stage "npm package (pkg/)" bash scripts/build-pkg.sh
    stage "browser tests (WebGPU)" browser_tests
else
    SUMMARY+=("$(printf 'FAILED %-28s   (skipped: no wasm build)' "browser tests (WebGPU)")")
fi

section "summary"
printf '%s\n' "${SUMMARY[@]}"
echo "total $((SECONDS - T0))s"
if [ $FAILED -ne 0 ]; then
    echo "FAILED"
    exit 1
fi
echo "all passed"
