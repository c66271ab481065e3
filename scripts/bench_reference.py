#!/usr/bin/env python3
"""PyTorch side of `zepo bench`: the authors' stack (diffusers) on the same CPU, same shapes.

Full-size UNet2DConditionModel / AutoencoderKL from the configs in weights/lcm-dreamshaper-v7
with random weights, f32, batch 1; best of --repeat runs after one warm-up, per operation, so
the numbers compare with `zepo bench --backend cpu` line by line. Also prints process CPU time
per operation (user+sys), which is steadier than wall time on a shared machine.

    /tmp/tinyenv/bin/python scripts/bench_reference.py --threads 2 --sizes 256

Needs torch 2.4, diffusers==0.30.0 and transformers==4.44.2 (newer transformers refuse torch < 2.6).
"""

import argparse
import os
import resource
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel


def timed(fn, repeat):
    fn()
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(max(1, repeat)):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best_wall, best_cpu


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "weights", "lcm-dreamshaper-v7"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", default="256")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--batch", type=int, default=6, help="images per UNet call in the authors' pipeline (3 latents × CFG)")
    p.add_argument("--flush-denormal", action="store_true", help="torch.set_flush_denormal(True) (random weights may produce denormals)")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(os.path.join(args.config, "unet"))).eval()
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(os.path.join(args.config, "vae"))).eval()
    # The pipeline holds its text encoder too (for the peak RSS printed at the end).
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(os.path.join(args.config, "text_encoder"))).eval()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, mkldnn {torch.backends.mkldnn.is_available()}")

    ctx = torch.randn(1, 77, unet.config.cross_attention_dim)
    cond = None
    if unet.config.time_cond_proj_dim:
        cond = torch.randn(1, unet.config.time_cond_proj_dim)
    with torch.inference_mode():
        for size in [int(s) for s in args.sizes.split(",")]:
            lat = size // 8
            x = torch.randn(1, 3, size, size)
            z = torch.randn(1, unet.config.in_channels, lat, lat)
            t = torch.tensor([499])
            u = timed(lambda: unet(z, t, encoder_hidden_states=ctx, timestep_cond=cond).sample, args.repeat)
            b = args.batch
            zb, tb, cb = z.repeat(b, 1, 1, 1), t.repeat(b), ctx.repeat(b, 1, 1)
            condb = cond.repeat(b, 1) if cond is not None else None
            ub = timed(lambda: unet(zb, tb, encoder_hidden_states=cb, timestep_cond=condb).sample, args.repeat)
            e = timed(lambda: vae.encode(x).latent_dist.mean, args.repeat)
            d = timed(lambda: vae.decode(z).sample, args.repeat)
            print(
                f"{size}²: UNet forward (1 image) {u[0]:.3f} s (cpu {u[1]:.2f} s) | "
                f"UNet forward ({b} images, as the authors call it) {ub[0]:.3f} s (cpu {ub[1]:.2f} s), {ub[0] / b:.3f} s per image | "
                f"VAE encode {e[0]:.3f} s (cpu {e[1]:.2f} s) | VAE decode {d[0]:.3f} s (cpu {d[1]:.2f} s)"
            )
            # The authors' stylization: N UNet calls of 6 images + 3 encodes + 3 decodes.
            for n in (2, 4):
                est = n * ub[0] * 6 / b + 3 * e[0] + 3 * d[0]
                print(f"{size}², N={n}: reference stylize ≈ {est:.1f} s (sum of the above; excludes CLIP, schedulers)")
    del text_encoder
    # The largest of these calls is the batch-6 UNet call the authors' pipeline makes at each step.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MiB (UNet, VAE and text encoder held; the calls above)")


if __name__ == "__main__":
    main()
