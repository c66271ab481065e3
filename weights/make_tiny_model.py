"""Writes a tiny random-weight LCM model in diffusers layout, sized unlike `weights/tiny-lcm`, so
that the engine is never tuned to one shape; then `zepo weights convert` makes its bundle:

    python weights/make_tiny_model.py /tmp/tiny-lcm-2
    cargo run --release --bin zepo -- weights convert --model /tmp/tiny-lcm-2 \
        --out weights/tiny-lcm-2-bundle

Needs torch, diffusers 0.30.0 and transformers 4.44.0 from PyPI (the CPU is enough). Every
weight (norm scales and biases included, so a dropped affine term shows) is random, then rounded
to fp16 and stored as f32: the bundle then holds exactly the weights that PyTorch ran, and
`reference.safetensors` (PyTorch outputs of the UNet, text encoder and VAE on fixed inputs) is
the ground truth for the bundle loaded anywhere, up to f32 arithmetic.

`--full-size CONFIG_DIR` instead writes random weights for the configs of a full-size model
(e.g. weights/lcm-dreamshaper-v7), to measure the converter on a checkpoint of the real size.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, LCMScheduler, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

HERE = Path(__file__).resolve().parent

# Other widths, head counts (per block), group counts, text width / depth and guidance-embedding
# width than tiny-lcm; the block structure (4 + mid + 4 blocks, 2 layers each, 16 transformer
# blocks) stays LCM_Dreamshaper_v7's, which ZePo's layer indices assume.
UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    block_out_channels=[16, 32, 48, 48],
    layers_per_block=2,
    attention_head_dim=[1, 2, 4, 4],
    norm_num_groups=16,
    cross_attention_dim=24,
    time_cond_proj_dim=64,
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[16, 16, 32, 32],
    layers_per_block=1,
    norm_num_groups=8,
    latent_channels=4,
    sample_size=64,
)
TEXT = dict(
    hidden_size=24,
    intermediate_size=40,
    num_attention_heads=3,
    num_hidden_layers=3,
    max_position_embeddings=77,
    vocab_size=49408,
    hidden_act="quick_gelu",
    projection_dim=24,
)


def randomize(model, gen):
    """Fan-in scaled weights, norm scales near one, biases small; all rounded to fp16."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                v = torch.randn(p.shape, generator=gen) / (p[0].numel() ** 0.5)
            elif name.endswith("weight"):
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
            else:
                v = 0.05 * torch.randn(p.shape, generator=gen)
            p.copy_(v.half().float())


def save(model, out, part, filename):
    (out / part).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / part, safe_serialization=True)
    assert (out / part / filename).exists(), f"{part}: {filename} not written"


def tiny(out: Path):
    gen = torch.Generator().manual_seed(2)
    unet = UNet2DConditionModel(**UNET).eval()
    vae = AutoencoderKL(**VAE).eval()
    text = CLIPTextModel(CLIPTextConfig(**TEXT)).eval()
    for m in (unet, vae, text):
        randomize(m, gen)
    save(unet, out, "unet", "diffusion_pytorch_model.safetensors")
    save(vae, out, "vae", "diffusion_pytorch_model.safetensors")
    save(text, out, "text_encoder", "model.safetensors")
    shutil.copytree(HERE / "tiny-lcm" / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    shutil.copytree(HERE / "tiny-lcm" / "scheduler", out / "scheduler", dirs_exist_ok=True)
    shutil.copy(HERE / "tiny-lcm" / "model_index.json", out / "model_index.json")

    # Reference outputs on fixed inputs.
    tok = CLIPTokenizer.from_pretrained(out / "tokenizer")
    ids = tok(["face", ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        ehs = text(ids).last_hidden_state
        sample = torch.randn(2, 4, 8, 8, generator=gen)
        w = torch.randn(2, UNET["time_cond_proj_dim"], generator=gen)
        unet_out = unet(sample, torch.tensor([499.0, 99.0]), ehs).sample
        unet_out_cond = unet(sample, torch.tensor([499.0, 99.0]), ehs, timestep_cond=w).sample
        latent = torch.randn(1, 4, 8, 8, generator=gen)
        decoded = vae.decode(latent).sample
        image = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
        posterior = vae.encode(image).latent_dist
    ref = {
        "clip_input_ids": ids.to(torch.int64),
        "text_embeds": ehs,
        "unet_in_sample": sample,
        "unet_in_timestep": torch.tensor([499.0, 99.0]),
        "unet_in_ehs": ehs.clone(),
        "unet_in_timestep_cond": w,
        "unet_out": unet_out,
        "unet_out_timestep_cond": unet_out_cond,
        "vae_in_latent": latent,
        "vae_decoded": decoded,
        "vae_in_image": image,
        "vae_posterior_mean": posterior.mean,
        "vae_posterior_std": posterior.std,
    }
    save_file({k: v.contiguous() for k, v in ref.items()}, out / "reference.safetensors")
    print(f"wrote {out}")


def full_size(config_dir: Path, out: Path):
    """Random weights for a full-size model's configs (f32, as diffusers saves them)."""
    gen = torch.Generator().manual_seed(0)
    for part, cls, filename in [
        ("text_encoder", None, "model.safetensors"),
        ("vae", AutoencoderKL, "diffusion_pytorch_model.safetensors"),
        ("unet", UNet2DConditionModel, "diffusion_pytorch_model.safetensors"),
    ]:
        if cls is None:
            model = CLIPTextModel(CLIPTextConfig.from_pretrained(config_dir / part))
        else:
            model = cls.from_config(cls.load_config(config_dir / part))
        randomize(model, gen)
        save(model, out, part, filename)
        del model
    for part in ["tokenizer", "scheduler"]:
        shutil.copytree(config_dir / part, out / part, dirs_exist_ok=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--full-size", type=Path, metavar="CONFIG_DIR")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.full_size:
        full_size(args.full_size, args.out)
    else:
        tiny(args.out)
