#!/usr/bin/env python3
"""zepo against PyTorch on this CPU, call for call, in one sitting (`npm run bench:cpu`).

Runs `zepo bench --backend cpu` and `scripts/bench_reference.py` (diffusers, the authors'
stack) at each thread count, alternating, on the full-size structure with random weights, and
prints one table: UNet (1 image), VAE encode and VAE decode per size, the whole stylization
against the sum of the calls the authors' pipeline makes, and the peak RSS of a 512²
stylization against the authors' calls at 512². Ratios are zepo / PyTorch: below 1 is faster.

    python3 scripts/bench_cpu.py --python /tmp/tinyenv/bin/python --sizes 256,512 --threads 1,2

PyTorch (torch 2.4, diffusers==0.30.0, transformers==4.44.2) is a comparison only: pass the Python that has
it. Numbers only; nothing here asserts a time.
"""

import argparse
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, env=None):
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    sys.stderr.write(out)
    return out


def seconds(text, size, what):
    """The first `<what> <s> s` on the `<size>²:` line."""
    for line in text.splitlines():
        if line.startswith(f"{size}²:"):
            m = re.search(re.escape(what) + r" ([0-9.]+) s", line)
            if m:
                return float(m.group(1))
    return float("nan")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--python", default=sys.executable, help="a Python with torch and diffusers==0.30.0")
    p.add_argument("--zepo", help="the zepo binary (default: built with cargo, release)")
    p.add_argument("--sizes", default="256,512")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--steps", type=int, default=2)
    args = p.parse_args()

    zepo = args.zepo
    if not zepo:
        target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/zepo-target"))
        run(["cargo", "build", "--release", "--quiet", "--no-default-features", "--features", "cpu,cli"])
        zepo = os.path.join(target, "release", "zepo")
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for t in [int(t) for t in args.threads.split(",")]:
        env = dict(os.environ, RAYON_NUM_THREADS=str(t), OMP_NUM_THREADS=str(t))
        ours = run([zepo, "bench", "--backend", "cpu", "--sizes", args.sizes, "--steps", str(args.steps), "--repeat", str(args.repeat)], env)
        ref = run([args.python, "scripts/bench_reference.py", "--threads", str(t), "--sizes", args.sizes, "--repeat", str(args.repeat)], env)
        for size in sizes:
            for what in ["UNet forward (1 image)", "VAE encode", "VAE decode"]:
                rows.append((what, size, t, seconds(ref, size, what), seconds(ours, size, what)))
            m = re.search(rf"{size}², N={args.steps}: stylize ([0-9.]+) s", ours)
            r = re.search(rf"{size}², N={args.steps}: reference stylize ≈ ([0-9.]+) s", ref)
            rows.append((f"stylization, N = {args.steps} (authors: sum of their calls)", size, t, float(r.group(1)) if r else float("nan"), float(m.group(1)) if m else float("nan")))

    # Peak memory of a 512² (or the largest size) stylization, each in a fresh process.
    big = max(sizes)
    ours = run([zepo, "bench", "--backend", "cpu", "--sizes", str(big), "--steps", str(args.steps), "--parts", "none"])
    ref = run([args.python, "scripts/bench_reference.py", "--sizes", str(big), "--repeat", "0"])
    rss = lambda text, pat: float(re.search(pat, text).group(1)) if re.search(pat, text) else float("nan")
    ours_rss = rss(ours, rf"N={args.steps}: .*peak RSS ([0-9]+) MiB")
    ref_rss = rss(ref, r"peak RSS ([0-9]+) MiB")

    print(f"\n| call | size | threads | PyTorch (s) | zepo (s) | ratio |")
    print("|---|---|---|---|---|---|")
    for what, size, t, a, b in rows:
        print(f"| {what} | {size}² | {t} | {a:.3f} | {b:.3f} | {b / a:.2f} |")
    print(f"| peak RSS, {big}² stylization (MiB) | {big}² | all | {ref_rss:.0f} | {ours_rss:.0f} | {ours_rss / ref_rss:.2f} |")


if __name__ == "__main__":
    main()
