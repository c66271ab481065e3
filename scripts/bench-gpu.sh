#!/usr/bin/env bash
# The native benchmark on a GPU: `zepo bench` (full-size LCM_Dreamshaper_v7 structure, random
# weights) on wgpu (Vulkan) and, when built with the `cuda` feature, on burn's CUDA backend, in
# f32 and f16, at 512², N = 2 and 4; prints one table. It prints numbers; it asserts nothing.
#
#   bash scripts/bench-gpu.sh [--sizes 512] [--steps 2,4] [--backends wgpu,cuda]
#                             [--precisions f32,f16] [--cuda] [--binary PATH] [--build-only]
#
# --cuda builds with the `cuda` feature (needs the CUDA driver at run time; cudarc loads it).
# --binary runs a zepo CLI built elsewhere (a GPU machine without a Rust toolchain: build here
# with --build-only, copy the binary and weights/lcm-dreamshaper-v7 over, run with --binary).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
sizes=512 steps=2,4 backends="" precisions=f32,f16 cuda=0 binary="" build_only=0
while [ $# -gt 0 ]; do
    case "$1" in
        --sizes) sizes="$2"; shift 2 ;;
        --steps) steps="$2"; shift 2 ;;
        --backends) backends="$2"; shift 2 ;;
        --precisions) precisions="$2"; shift 2 ;;
        --cuda) cuda=1; shift ;;
        --binary) binary="$2"; shift 2 ;;
        --build-only) build_only=1; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ -z "$binary" ]; then
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/zepo-target}"
    features="cli,wgpu,cpu"
    [ "$cuda" = 1 ] && features="$features,cuda"
    echo "building the zepo CLI (release, features $features) ..." >&2
    cargo build --quiet --release --bin zepo --no-default-features --features "$features" || exit 1
    binary="$CARGO_TARGET_DIR/release/zepo"
    [ "$build_only" = 1 ] && { echo "$binary"; exit 0; }
fi
[ -z "$backends" ] && { backends=wgpu; [ "$cuda" = 1 ] && backends=wgpu,cuda; }

if command -v nvidia-smi >/dev/null; then
    gpu="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1)"
else
    gpu="(no nvidia-smi: see the adapter line of each run)"
fi
echo "GPU: $gpu"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//') ($(nproc) threads)"

log="$(mktemp)"
for backend in ${backends//,/ }; do
    for precision in ${precisions//,/ }; do
        echo "== $backend $precision" >&2
        # One process per backend and precision: a device's float dtype is set once.
        if ! "$binary" bench --config weights/lcm-dreamshaper-v7 --backend "$backend" --precision "$precision" \
            --sizes "$sizes" --steps "$steps" --repeat 3 2>&1 | tee /dev/stderr | sed "s/^/$backend $precision | /" >> "$log"; then
            echo "$backend $precision | failed" >> "$log"
        fi
    done
done

# One table: per backend, precision and size, the parts and the whole stylizations.
echo
echo "| backend | precision | size | UNet (1 image) | VAE encode | VAE decode | $(for n in ${steps//,/ }; do printf 'stylize N=%s | ' "$n"; done)"
echo "|---|---|---|---|---|---|$(for n in ${steps//,/ }; do printf -- '---|'; done)"
awk -F' [|] ' -v steps="$steps" '
    function secs(s, key,   m) { if (match(s, key " [0-9.]+ s")) { m = substr(s, RSTART + length(key) + 1, RLENGTH - length(key) - 3); return m " s" } return "-" }
    /adapter|== backend/ { next }
    {
        split($1, bp, " "); id = bp[1] " | " bp[2]
        line = $0
        if (line ~ /²: UNet forward/) {
            match(line, /[0-9]+²/); size = substr(line, RSTART, RLENGTH)
            key = id " | " size; order[++n] = key
            unet[key] = secs(line, "UNet forward \\(1 image\\)"); enc[key] = secs(line, "VAE encode"); dec[key] = secs(line, "VAE decode")
        } else if (line ~ /², N=[0-9]+: stylize/) {
            match(line, /[0-9]+²/); size = substr(line, RSTART, RLENGTH)
            match(line, /N=[0-9]+/); nn = substr(line, RSTART + 2, RLENGTH - 2)
            key = id " | " size
            if (!(key in unet)) { order[++n] = key; unet[key] = enc[key] = dec[key] = "-" }
            run[key, nn] = secs(line, "stylize")
        } else if (line ~ /failed/) { print "| " id " | failed | | | |" }
    }
    END {
        ns = split(steps, st, ",")
        for (i = 1; i <= n; i++) {
            k = order[i]; row = "| " k " | " unet[k] " | " enc[k] " | " dec[k] " |"
            for (j = 1; j <= ns; j++) row = row " " ((k, st[j]) in run ? run[k, st[j]] : "-") " |"
            print row
        }
    }' "$log"
rm -f "$log"
