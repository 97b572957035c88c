"""The toy world's shipped weights, laid out as the real repositories are, so `model=toy` loads through the code
that loads SDXL (`from_pretrained`, `load_ip_adapter`) and its scorers through the real scorers' loaders.

    <cache>/toy-<digest>/
      stable-diffusion-xl-base/                                  StableDiffusionXLPipeline (save_pretrained)
      IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors         h94's layout and key format
      IP-Adapter/sdxl_models/image_encoder/                      the image encoder (its space = text_encoder_2's)
      scorers/clip/styleprobe-toy-clip.json, open_clip_model.bin open_clip's model config and checkpoint
      scorers/dino/                                              a Hugging Face ViT folder (DINO's format)
      scorers/csd/checkpoint.pth                                 CSD's training-checkpoint format

The folder is named by a digest of the shipped weights, so new weights never reuse an old assembly. Building it
takes a few seconds, once; it is atomic (temp folder, then rename).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

from styleprobe.models.toy.weights import FOLDER, records


@functools.lru_cache(maxsize=None)
def weights_digest(folder: Path = FOLDER) -> str:
    """A short digest of every shipped weight file and the training record (read once per process)."""
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")) + [folder / "training.json"]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def weights_folder() -> Path:
    """The shipped weights, or `$STYLEPROBE_TOY_WEIGHTS` (e.g. weights retrained with `--out`, tried before shipping)."""
    return Path(os.environ.get("STYLEPROBE_TOY_WEIGHTS") or FOLDER)


def ensure_toy(cache_dir: Path | None = None, folder: Path | None = None) -> Path:
    """The assembled toy model folder, built from the weights first if absent."""
    from styleprobe.disk import default_cache_dir
    from styleprobe.models.tiny import build_once

    folder = folder or weights_folder()
    missing = [n for n in ("unet", "adapter", "scorer_open_clip") if not (folder / f"{n}.safetensors").is_file()]
    if missing:
        from styleprobe.errors import ModelUnavailableError

        raise ModelUnavailableError(f"the toy world's {missing[0]} weights are not in {folder}; "
                                    "run `python -m styleprobe.models.toy.train` (or reinstall styleprobe)")
    digest = weights_digest(folder)
    root = (cache_dir or default_cache_dir()) / f"toy-{digest}"
    return build_once(root, lambda tmp: _build(tmp, folder), {"weights": digest})


def _build(root: Path, folder: Path) -> None:
    import transformers

    transformers.utils.logging.disable_progress_bar()  # "Writing model shards" bars for a few small files
    try:
        _write(root, folder)
    finally:
        transformers.utils.logging.enable_progress_bar()


def _write(root: Path, folder: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from styleprobe.metrics.csd_model import save_checkpoint
    from styleprobe.models.toy import scorers
    from styleprobe.models.toy.pipeline import build_pipeline, load_half, load_towers
    from styleprobe.models.toy.unet import build_unet

    pipe = build_pipeline(folder, load_half(build_unet(), folder / "unet.safetensors"))
    pipe.save_pretrained(root / "stable-diffusion-xl-base", safe_serialization=True)
    models = root / "IP-Adapter" / "sdxl_models"
    load_towers(folder)["image_encoder"].save_pretrained(models / "image_encoder", safe_serialization=True)
    state = {k: v.float().contiguous() for k, v in load_file(str(folder / "adapter.safetensors")).items()}
    save_file(state, str(models / "ip-adapter_sdxl.safetensors"))

    clip_dir = root / "scorers" / "clip"
    clip_dir.mkdir(parents=True)
    (clip_dir / f"{scorers.OPEN_CLIP_NAME}.json").write_text(json.dumps(scorers.OPEN_CLIP_CONFIG, indent=1))
    torch.save(load_half(scorers.build_open_clip(), folder / "scorer_open_clip.safetensors").state_dict(),
               clip_dir / "open_clip_model.bin")
    load_half(scorers.build_dino(), folder / "scorer_dino.safetensors").save_pretrained(root / "scorers" / "dino")
    save_checkpoint(load_half(scorers.build_csd(), folder / "scorer_csd.safetensors").state_dict(),
                    root / "scorers" / "csd" / "checkpoint.pth")
    (root / "training.json").write_text(json.dumps(records(folder), indent=1, sort_keys=True))


def toy_open_clip(cache_dir: Path | None = None) -> tuple[str, str]:
    """(model name, checkpoint path) of the toy world's open_clip scorer, its config registered with open_clip."""
    import open_clip

    from styleprobe.models.toy.scorers import OPEN_CLIP_NAME

    root = ensure_toy(cache_dir) / "scorers" / "clip"
    if OPEN_CLIP_NAME not in open_clip.list_models():
        open_clip.add_model_config(root / f"{OPEN_CLIP_NAME}.json")
    return OPEN_CLIP_NAME, str(root / "open_clip_model.bin")


def scorer_folder(cache_dir: Path | None = None) -> Path:
    return ensure_toy(cache_dir) / "scorers"
