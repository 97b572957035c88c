#!/usr/bin/env python
"""Make the StyleAligned golden files: google/style-aligned's own code, run on styleprobe's tiny model.

    git clone https://github.com/google/style-aligned /tmp/style-aligned   # then: git -C /tmp/style-aligned checkout 2faf0af
    pip install --target /tmp/sa-deps einops                                 # the original needs it; styleprobe does not
    PYTHONPATH=/tmp/sa-deps STYLEPROBE_CACHE=$(mktemp -d) .venv/bin/python \\
        tests/data/style_aligned_golden/make_golden.py --original /tmp/style-aligned

The original is google/style-aligned at commit 2faf0af7cf89a00e334d2304ef9f43d34baa0efd (`sa_handler.py`,
`inversion.py`), called the way its notebooks call it. Nothing of it is kept in styleprobe: this script reads
the checkout, runs it, and writes `golden.safetensors` (the final latents of every case, and the inverted
latents of the real reference) next to itself. `tests/test_style_aligned.py` compares styleprobe's own
implementation with them.

What this script changes in the original, all in `inversion.py`, as text replacements applied in memory
(each must match exactly once; `sa_handler.py` runs unchanged):
  1. `_encode_image`: the VAE stays in float32 after encoding (the original casts it to float16 for a GPU).
  2. `_ddim_loop`: no `.half()` on the encoded latent (float32 on the CPU).
  3. `_encode_text_sdxl`: the time ids are built for the tiny model's 64 x 64 px in float32 (the original
     hard-codes 1024 px and float16).

Inputs (choices of this script, not changes to the original):
- the pipeline: the tiny model's folder (`styleprobe.models.tiny.ensure_tiny()`), float32 on the CPU, with the
  notebooks' scheduler `DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
  clip_sample=False, set_alpha_to_one=False)`;
- every sample's initial latents drawn as styleprobe draws them: `torch.randn((1, 4, 8, 8), generator=
  torch.Generator("cpu").manual_seed(seed))` per sample (the notebooks draw all samples from one generator);
- the real reference: the first image of `builtin:shapes` (neon grid), resized to 64 x 64 as the transfer
  notebook resizes its image to 1024 x 1024;
- prompts in styleprobe's StyleAligned convention: reference "<content>, <style>.", others "<prompt>, <style>.";
- `output_type="latent"`, so the final latents are compared, not 8-bit images.

Cases (the notebooks' settings unless named):
  generated   style_aligned_sdxl.ipynb: norms not shared, AdaIN on queries and keys, 50 steps, guidance 5;
              the reference is generated alongside from its own seed.
  inverted    style_aligned_transfer_sdxl.ipynb: norms shared, shared_score_shift = log 2, scale 1,
              DDIM inversion for 50 steps at guidance 2, replay with offset 5, generation at guidance 10.
  knobs       the generated path with adain_values=True, shared_score_scale=0.5, shared_score_shift=0.3,
              share_group_norm=True, only_self_level=0.3 (30 steps).
  full        the generated path with full_attention_share=True, one target (a group of two), 30 steps.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

COMMIT = "2faf0af7cf89a00e334d2304ef9f43d34baa0efd"
SIZE = 64
PATCHES = [
    ("model.vae.to(dtype=torch.float16)", "model.vae.to(dtype=torch.float32)"),
    ("latent = z0.clone().detach().half()", "latent = z0.clone().detach()"),
    (
        "model._get_add_time_ids((1024, 1024), (0, 0), (1024, 1024), torch.float16,",
        f"model._get_add_time_ids(({SIZE}, {SIZE}), (0, 0), ({SIZE}, {SIZE}), torch.float32,",
    ),
]
STYLE, CONTENT = "neon glow", "a circle"
TARGETS = ["a cat sitting on a chair", "a lighthouse on a rocky coast"]
SEEDS = [10, 11, 12]  # reference (generated cases), then one per target


def load_original(root: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """`sa_handler` as it is, and `inversion` with the three patches above."""
    sys.path.insert(0, str(root))
    sa_handler = importlib.import_module("sa_handler")
    source = (root / "inversion.py").read_text()
    for old, new in PATCHES:
        if source.count(old) != 1:
            raise SystemExit(f"patch target not found exactly once in inversion.py: {old!r} (is it commit {COMMIT}?)")
        source = source.replace(old, new)
    inversion = types.ModuleType("inversion")
    sys.modules["inversion"] = inversion
    exec(compile(source, str(root / "inversion.py"), "exec"), inversion.__dict__)
    return sa_handler, inversion


def pipeline():
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    from styleprobe.models.tiny import ensure_tiny

    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    pipe = StableDiffusionXLPipeline.from_pretrained(str(ensure_tiny() / "stable-diffusion-xl-base"),
                                                     torch_dtype=torch.float32, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def noise(seeds: list[int]) -> torch.Tensor:
    return torch.cat([torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=torch.Generator("cpu").manual_seed(s)) for s in seeds])


def prompts(targets: list[str]) -> list[str]:
    return [f"{CONTENT}, {STYLE}."] + [f"{t}, {STYLE}." for t in targets]


def run_generated(pipe, sa_handler, args, steps: int, guidance: float, targets: list[str]) -> torch.Tensor:
    handler = sa_handler.Handler(pipe)
    handler.register(args)
    try:
        out = pipe(prompts(targets), latents=noise(SEEDS[: 1 + len(targets)]), num_inference_steps=steps,
                   guidance_scale=guidance, output_type="latent")
    finally:
        handler.remove()
    return out.images


def run_inverted(pipe, sa_handler, inversion) -> tuple[torch.Tensor, torch.Tensor]:
    from styleprobe.data.style_sets import load_style_set

    reference = load_style_set("builtin:shapes")[0]
    x0 = np.array(reference.load().resize((SIZE, SIZE)))
    source = prompts([])[0]
    zts = inversion.ddim_inversion(pipe, x0, source, 50, 2)
    handler = sa_handler.Handler(pipe)
    handler.register(sa_handler.StyleAlignedArgs(
        share_group_norm=True, share_layer_norm=True, share_attention=True, adain_queries=True, adain_keys=True,
        adain_values=False, shared_score_shift=np.log(2), shared_score_scale=1.0))
    z_t, callback = inversion.make_inversion_callback(zts, offset=5)
    latents = noise([0] + SEEDS[1:])
    latents[0] = z_t
    try:
        out = pipe(prompts(TARGETS), latents=latents, callback_on_step_end=callback, num_inference_steps=50,
                   guidance_scale=10.0, output_type="latent")
    finally:
        handler.remove()
    return zts, out.images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", type=Path, required=True, help="a checkout of google/style-aligned")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "golden.safetensors")
    args = parser.parse_args()
    head = subprocess.run(["git", "-C", str(args.original), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if head != COMMIT:
        raise SystemExit(f"{args.original} is at {head or 'no git commit'}, not {COMMIT}")
    torch.manual_seed(0)
    sa_handler, inversion = load_original(args.original)
    pipe = pipeline()
    Args = sa_handler.StyleAlignedArgs
    tensors = {}
    tensors["generated/latents"] = run_generated(
        pipe, sa_handler, Args(share_group_norm=False, share_layer_norm=False, share_attention=True, adain_queries=True,
                               adain_keys=True, adain_values=False), 50, 5.0, TARGETS)
    tensors["inverted/zts"], tensors["inverted/latents"] = run_inverted(pipe, sa_handler, inversion)
    tensors["knobs/latents"] = run_generated(
        pipe, sa_handler, Args(share_group_norm=True, share_layer_norm=True, share_attention=True, adain_queries=True,
                               adain_keys=True, adain_values=True, shared_score_scale=0.5, shared_score_shift=0.3,
                               only_self_level=0.3), 30, 5.0, TARGETS)
    tensors["full/latents"] = run_generated(
        pipe, sa_handler, Args(share_group_norm=False, share_layer_norm=False, share_attention=True,
                               full_attention_share=True), 30, 5.0, TARGETS[:1])
    meta = {
        "original": f"google/style-aligned@{COMMIT}",
        "patches": json.dumps(PATCHES),
        "style": STYLE, "content": CONTENT, "targets": json.dumps(TARGETS), "seeds": json.dumps(SEEDS),
        "size": str(SIZE), "inverted_reference": "builtin:shapes[0]", "inverted_target_seeds": json.dumps(SEEDS[1:]),
        "shift_inverted": repr(math.log(2)),
    }
    from safetensors.torch import save_file

    save_file({k: v.contiguous().float() for k, v in tensors.items()}, str(args.out), metadata=meta)
    for k, v in tensors.items():
        print(f"{k}: {tuple(v.shape)} mean {v.float().mean():+.4f} std {v.float().std():.4f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
