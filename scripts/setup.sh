# Idempotent, quiet installation of what the build and the tests need. Sourced by test.sh and
# serve.sh; every step is skipped when its result is already there.
#   zepo_setup_wasm     rustup's wasm32 target, wasm-bindgen-cli (the version in Cargo.lock)
#   zepo_setup_node     node + npm (Debian), the npm devDependencies of package.json
#   zepo_setup_browser  Debian chromium and mesa's Vulkan drivers (lavapipe), for the tests

ZEPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/zepo-target}"
export PATH="$HOME/.cargo/bin:$PATH"

# Runs a command with its output kept in a log, shown only if it fails.
zepo_quiet() {
    local log
    log="$(mktemp)"
    if "$@" >"$log" 2>&1; then rm -f "$log"; return 0; fi
    local rc=$?
    echo "FAILED ($rc): $*" >&2
    tail -n 60 "$log" >&2
    rm -f "$log"
    return "$rc"
}

# apt-get install of the packages not yet installed (one `apt-get update` at most).
zepo_apt() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || { echo "need the packages ${missing[*]} (no apt-get here)" >&2; return 1; }
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "  apt: installing ${missing[*]}"
    if [ -z "${ZEPO_APT_UPDATED:-}" ]; then
        zepo_quiet $sudo apt-get update -qq
        ZEPO_APT_UPDATED=1
    fi
    zepo_quiet $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

zepo_need_cargo() {
    command -v cargo >/dev/null && command -v rustup >/dev/null && return 0
    echo "Rust (rustup + cargo) is needed: see https://rustup.rs, then run this again." >&2
    return 1
}

# The version of a package pinned in Cargo.lock.
zepo_lock_version() {
    awk -v n="$1" '$0 == "name = \"" n "\"" { getline; gsub(/version = |"/, ""); print; exit }' "$ZEPO_ROOT/Cargo.lock"
}

zepo_setup_wasm() {
    zepo_need_cargo || return 1
    # build-essential: a C toolchain for the native build scripts.
    command -v cc >/dev/null || zepo_apt build-essential pkg-config
    if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
        echo "  rustup: adding wasm32-unknown-unknown"
        zepo_quiet rustup target add wasm32-unknown-unknown
    fi
    local want have
    want="$(zepo_lock_version wasm-bindgen)"
    [ -n "$want" ] || { echo "wasm-bindgen is not in Cargo.lock" >&2; return 1; }
    # (|| true: missing is an answer, not a failure, under set -e -o pipefail.)
    have="$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)"
    if [ "$have" != "$want" ]; then
        echo "  cargo: installing wasm-bindgen-cli $want (a few minutes, once)"
        # Its own target dir: the shared one would be locked by / rebuild for our build.
        CARGO_TARGET_DIR="$HOME/.cache/zepo-tools-target" zepo_quiet cargo install -q wasm-bindgen-cli --version "$want" --force
    fi
}

zepo_setup_node() {
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        zepo_apt nodejs npm
    fi
    # npm ci when the lock file matches, re-done only when package-lock.json changed.
    local stamp="$ZEPO_ROOT/node_modules/.zepo-lock"
    if [ ! -f "$stamp" ] || ! cmp -s "$stamp" "$ZEPO_ROOT/package-lock.json"; then
        echo "  npm: installing the devDependencies (npm ci)"
        ( cd "$ZEPO_ROOT" && zepo_quiet npm ci --no-audit --no-fund --loglevel=error ) || return 1
        cp "$ZEPO_ROOT/package-lock.json" "$stamp"
    fi
}

zepo_setup_browser() {
    # chromium ships SwiftShader's Vulkan for WebGPU; mesa-vulkan-drivers is lavapipe for the
    # native wgpu tests; fonts so that screenshots show text.
    zepo_apt chromium mesa-vulkan-drivers libvulkan1 fonts-dejavu-core ca-certificates
}

# Chromium's binary (not the /usr/bin wrapper script, which adds flags of its own).
zepo_chromium() {
    for c in "${CHROME:-}" /usr/lib/chromium/chromium /usr/bin/chromium /usr/bin/chromium-browser; do
        [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return 0; }
    done
    return 1
}
