"""The toy world's scoring models, trained on the world and saved for the real scorers' loaders.

- a CLIP in open_clip's format (its own config, open_clip's tokenizer) for CLIP-I, CLIP-T and the CLIP leak,
  trained contrastively on the captions as the toy CLIP is;
- a CSD model (CSD's architecture and head names at toy width): the style head trained to bring images of one
  style together (supervised contrastive on the style labels), the content head likewise on the content labels,
  as CSD's two heads are meant;
- a DINO-format content model (a Hugging Face ViT read through its CLS token, as the DINO scorer reads it),
  trained on the content labels: in the toy, as DINO is used in the literature, it sees what is drawn.

Every model sees its inputs through the scorer's own preprocessing (`styleprobe.metrics.preprocess`: 224 px crops
upsampled from the world's 64 px, CLIP or ImageNet statistics), so training and scoring agree.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from styleprobe.metrics import preprocess
from styleprobe.models.toy import world
from styleprobe.models.toy.clip import _captions, _matches, _soft_clip_loss
from styleprobe.models.toy.loop import optimise

OPEN_CLIP_NAME = "styleprobe-toy-clip"
OPEN_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 64, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
DINO_CONFIG: dict[str, Any] = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
                               "intermediate_size": 128, "image_size": 224, "patch_size": 32}


@dataclass
class ScorerTraining:
    steps: int = 1000
    batch_size: int = 128
    learning_rate: float = 2e-3
    train_images: int = 12_800
    temperature: float = 0.1  # of the supervised contrastive losses (CSD, DINO)
    seed: int = 20261205


def scorer_pixels(pre: preprocess.Preprocess, images: torch.Tensor) -> torch.Tensor:
    """World images in [-1, 1] through a scorer's preprocessing, as `Preprocess.tensors` does it for PNGs."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    x = ((images + 1) * 127.5).round().clamp(0, 255)
    x = TF.resize(x, [pre.resize], interpolation=InterpolationMode(pre.interpolation), antialias=True)
    x = TF.center_crop(x.round().clamp(0, 255), [pre.crop, pre.crop])
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
    return (x / 255.0 - mean) / std


def supervised_contrastive(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon (Khosla et al. 2020): each image's other same-label images are its positives."""
    z = F.normalize(features, dim=-1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool)
    logits = logits.masked_fill(self_mask, -1e9)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    log_prob = logits.log_softmax(dim=1)
    return -(log_prob * positives).sum(1).div(positives.sum(1).clamp(min=1)).mean()


def build_open_clip() -> Any:
    import open_clip

    register_open_clip()
    logging.disable(logging.WARNING)  # open_clip warns that a model built without weights is random: it is, untrained
    try:
        return open_clip.create_model(OPEN_CLIP_NAME)
    finally:
        logging.disable(logging.NOTSET)


def register_open_clip() -> None:
    """Make the toy config known to open_clip (as a config file would, without one)."""
    from open_clip.factory import _MODEL_CONFIGS

    _MODEL_CONFIGS.setdefault(OPEN_CLIP_NAME, OPEN_CLIP_CONFIG)


def build_csd() -> Any:
    from styleprobe.metrics.csd_model import ARCHS, CSDModel

    return CSDModel(ARCHS["toy"])


def build_dino() -> Any:
    from transformers import ViTConfig, ViTModel

    return ViTModel(ViTConfig(**DINO_CONFIG), add_pooling_layer=False)


def _train(name: str, model: torch.nn.Module, loss_fn: Any, recipe: ScorerTraining, log_every: int) -> dict[str, Any]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.learning_rate, total_steps=recipe.steps, pct_start=0.1)
    start, losses = time.perf_counter(), []
    model.train()
    for step in range(1, recipe.steps + 1):
        optimise(optimizer, schedule, loss_fn(), losses, step, recipe.steps, name, log_every)
    model.eval().requires_grad_(False)
    return {"seconds": round(time.perf_counter() - start, 1), "final_loss": float(np.mean(losses[-50:]))}


def train_scorers(recipe: ScorerTraining = ScorerTraining(), log_every: int = 100) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the three scoring models on one set of world images; returns them and a record per model."""
    import open_clip

    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    images, contents, styles = world.batch(world.samples(recipe.train_images, recipe.seed))
    x = torch.from_numpy(images)

    def draw() -> np.ndarray:
        return rng.choice(len(x), recipe.batch_size, replace=False)

    clip_model = build_open_clip()
    tokenizer = open_clip.get_tokenizer(OPEN_CLIP_NAME)

    def clip_loss() -> torch.Tensor:
        idx = draw()
        texts, named_c, named_s = _captions(contents[idx], styles[idx], rng)
        image = clip_model.encode_image(scorer_pixels(preprocess.CLIP, x[idx]))
        text = clip_model.encode_text(tokenizer(texts))
        scale = clip_model.logit_scale.clamp(0, float(np.log(100.0)))
        return _soft_clip_loss(text, image, _matches(named_c, named_s, contents[idx], styles[idx]), scale)

    csd = build_csd()

    def csd_loss() -> torch.Tensor:
        idx = draw()
        feature = csd.backbone(scorer_pixels(preprocess.CLIP, x[idx]))
        return (supervised_contrastive(feature @ csd.last_layer_style, torch.from_numpy(styles[idx]), recipe.temperature)
                + supervised_contrastive(feature @ csd.last_layer_content, torch.from_numpy(contents[idx]), recipe.temperature))

    dino = build_dino()

    def dino_loss() -> torch.Tensor:
        idx = draw()
        cls = dino(pixel_values=scorer_pixels(preprocess.DINO, x[idx])).last_hidden_state[:, 0]
        return supervised_contrastive(cls, torch.from_numpy(contents[idx]), recipe.temperature)

    records = {"open_clip": _train("scorer clip", clip_model, clip_loss, recipe, log_every),
               "csd": _train("scorer csd", csd, csd_loss, recipe, log_every),
               "dino": _train("scorer dino", dino, dino_loss, recipe, log_every)}
    return {"open_clip": clip_model, "csd": csd, "dino": dino}, {"recipe": asdict(recipe), **records}


def pair_auc(features: torch.Tensor, labels: np.ndarray) -> float:
    """How often a same-label pair is more similar (cosine) than a different-label pair (ROC AUC over all pairs)."""
    z = F.normalize(features.float(), dim=-1)
    sims = (z @ z.T).numpy()
    upper = np.triu_indices(len(labels), k=1)
    same = (labels[:, None] == labels[None, :])[upper]
    scores = sims[upper]
    order = scores.argsort(kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    n_pos, n_neg = same.sum(), (~same).sum()
    return float((ranks[same].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@torch.no_grad()
def evaluate(models: dict[str, Any], items: list[world.ToySample]) -> dict[str, Any]:
    """Held-out checks: pair AUCs of each image model by style and by content; the CLIP's zero-shot accuracies."""
    import open_clip

    images, contents, styles = world.batch(items)
    x = torch.from_numpy(images)
    clip_image = models["open_clip"].encode_image(scorer_pixels(preprocess.CLIP, x))
    csd_style = models["csd"](scorer_pixels(preprocess.CLIP, x))
    dino_cls = models["dino"](pixel_values=scorer_pixels(preprocess.DINO, x)).last_hidden_state[:, 0]
    tokenizer = open_clip.get_tokenizer(OPEN_CLIP_NAME)
    content_text = models["open_clip"].encode_text(tokenizer([world.caption(c, None) for c in world.CONTENTS]))
    style_text = models["open_clip"].encode_text(tokenizer([world.caption(None, s) for s in world.STYLES]))
    z = F.normalize(clip_image, dim=-1)
    out: dict[str, Any] = {"images": len(items)}
    for name, feats in (("open_clip", clip_image), ("csd", csd_style), ("dino", dino_cls)):
        out[name] = {"style_pair_auc": round(pair_auc(feats, styles), 4), "content_pair_auc": round(pair_auc(feats, contents), 4)}
    out["open_clip"]["zero_shot_content"] = float(((z @ F.normalize(content_text, dim=-1).T).argmax(1).numpy() == contents).mean())
    out["open_clip"]["zero_shot_style"] = float(((z @ F.normalize(style_text, dim=-1).T).argmax(1).numpy() == styles).mean())
    return out
