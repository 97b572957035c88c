"""The toy world's CLIP: SDXL's two text encoders and the IP-Adapter's image encoder, trained contrastively.

As in SDXL with the ViT-bigG adapter, the image encoder's projection and `text_encoder_2`'s pooled projection are
one space, so InstantStyle's content subtraction (image embedding minus the content label's text embedding) means
here what it means there. `text_encoder` (no projection in SDXL) is aligned through its pooled output. Captions are
drawn whole ("a star in hatched ink style"), content only ("a star") or style only ("something in hatched ink
style"); every image a caption describes counts as its match, so a partial caption is not pushed away from the
other images it describes. Images are preprocessed as the IP-Adapter pipeline's CLIPImageProcessor does (64 px,
CLIP's mean and standard deviation), text as `encode_prompt` tokenizes it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from styleprobe.models.tiny import TextDims, VisionDims, _text_config, _tokenizer, _vision_encoder
from styleprobe.models.toy import world
from styleprobe.models.toy.loop import optimise

TEXT = TextDims(hidden=32, intermediate=64, layers=2, heads=2)
VISION = VisionDims(hidden=64, intermediate=128, layers=4, heads=4, image_size=world.SIZE, patch_size=8)
EMBED_DIM = 32  # text_encoder_2's projection = the image encoder's projection = the adapter's image-embedding space
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
TOKENS = 48  # training pads captions to this many tokens; causal attention makes the pooled output the same at 77


@dataclass
class ClipTraining:
    steps: int = 3000
    batch_size: int = 128
    learning_rate: float = 2e-3
    train_images: int = 12_800
    seed: int = 20261202


def build() -> dict[str, Any]:
    """The three towers and the two tokenizers, untrained."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    return {
        "text_encoder": CLIPTextModel(_text_config(TEXT, EMBED_DIM)),
        "text_encoder_2": CLIPTextModelWithProjection(_text_config(TEXT, EMBED_DIM)),
        "image_encoder": _vision_encoder(VISION, EMBED_DIM).train(),
        "tokenizer": _tokenizer("<|endoftext|>"),
        "tokenizer_2": _tokenizer("!"),
    }


def clip_pixels(images: torch.Tensor) -> torch.Tensor:
    """World images in [-1, 1] -> the image encoder's input (CLIPImageProcessor at the world's size)."""
    return ((images + 1) / 2 - CLIP_MEAN) / CLIP_STD


def _captions(contents: np.ndarray, styles: np.ndarray, rng: np.random.Generator) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A caption per image: whole, content only or style only; and which attributes it names (-1: not named)."""
    kind = rng.choice(3, size=len(contents), p=[0.5, 0.25, 0.25])
    named_c = np.where(kind == 2, -1, contents)
    named_s = np.where(kind == 1, -1, styles)
    texts = [world.caption(world.CONTENTS[c] if c >= 0 else None, world.STYLES[s] if s >= 0 else None)
             for c, s in zip(named_c, named_s)]
    return texts, named_c, named_s


def _matches(named_c: np.ndarray, named_s: np.ndarray, contents: np.ndarray, styles: np.ndarray) -> torch.Tensor:
    """(captions, images): 1 where the image has every attribute the caption names."""
    c_ok = (named_c[:, None] < 0) | (named_c[:, None] == contents[None, :])
    s_ok = (named_s[:, None] < 0) | (named_s[:, None] == styles[None, :])
    return torch.from_numpy((c_ok & s_ok).astype(np.float32))


def _soft_clip_loss(text: torch.Tensor, image: torch.Tensor, matches: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy with every described image (and every describing caption) a target."""
    logits = scale.exp() * F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T
    t2i = -(matches / matches.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    i2t = -(matches.T / matches.T.sum(1, keepdim=True) * logits.T.log_softmax(1)).sum(1).mean()
    return (t2i + i2t) / 2


def tokenize(tokenizer: Any, texts: list[str], length: int = TOKENS) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids


def train_clip(recipe: ClipTraining = ClipTraining(), log_every: int = 100) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the towers together; returns them (eval mode) and a record."""
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    images, contents, styles = world.batch(world.samples(recipe.train_images, recipe.seed))
    pixels = clip_pixels(torch.from_numpy(images))
    towers = build()
    te1, te2, vis = towers["text_encoder"].train(), towers["text_encoder_2"].train(), towers["image_encoder"]
    scales = torch.nn.Parameter(torch.full((2,), float(np.log(10.0))))
    params = [*te1.parameters(), *te2.parameters(), *vis.parameters(), scales]
    optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.learning_rate, total_steps=recipe.steps, pct_start=0.1)
    start, losses = time.perf_counter(), []
    for step in range(1, recipe.steps + 1):
        idx = rng.choice(len(pixels), recipe.batch_size, replace=False)
        texts, named_c, named_s = _captions(contents[idx], styles[idx], rng)
        matches = _matches(named_c, named_s, contents[idx], styles[idx])
        image = vis(pixels[idx]).image_embeds
        pooled_1 = te1(tokenize(towers["tokenizer"], texts)).pooler_output
        embeds_2 = te2(tokenize(towers["tokenizer_2"], texts)).text_embeds
        loss = _soft_clip_loss(embeds_2, image, matches, scales[0]) + _soft_clip_loss(pooled_1, image, matches, scales[1])
        optimise(optimizer, schedule, loss, losses, step, recipe.steps, "clip", log_every)
        with torch.no_grad():
            scales.clamp_(0, float(np.log(100.0)))
    for name in ("text_encoder", "text_encoder_2", "image_encoder"):
        towers[name].eval()
    record = {"seconds": round(time.perf_counter() - start, 1), "final_loss": float(np.mean(losses[-50:])),
              "logit_scales": [round(float(s.detach().exp()), 2) for s in scales], "recipe": asdict(recipe)}
    return towers, record


@torch.no_grad()
def zero_shot(towers: dict[str, Any], items: list[world.ToySample]) -> dict[str, float]:
    """Zero-shot accuracy of image embeddings against `text_encoder_2`'s embeddings of every content label and every
    style label; and of the same after subtracting the image's content label embedding (content should drop to
    chance, style stay)."""
    images, contents, styles = world.batch(items)
    image = F.normalize(towers["image_encoder"](clip_pixels(torch.from_numpy(images))).image_embeds, dim=-1)

    def embed(texts: list[str]) -> torch.Tensor:
        return towers["text_encoder_2"](tokenize(towers["tokenizer_2"], texts)).text_embeds

    content_text = embed([world.caption(c, None) for c in world.CONTENTS])
    style_text = embed([world.caption(None, s) for s in world.STYLES])
    cn, sn = F.normalize(content_text, dim=-1), F.normalize(style_text, dim=-1)
    raw = towers["image_encoder"](clip_pixels(torch.from_numpy(images))).image_embeds
    subtracted = F.normalize(raw - content_text[torch.from_numpy(contents)], dim=-1)
    return {
        "content_accuracy": float(((image @ cn.T).argmax(1).numpy() == contents).mean()),
        "style_accuracy": float(((image @ sn.T).argmax(1).numpy() == styles).mean()),
        "content_accuracy_after_subtraction": float(((subtracted @ cn.T).argmax(1).numpy() == contents).mean()),
        "style_accuracy_after_subtraction": float(((subtracted @ sn.T).argmax(1).numpy() == styles).mean()),
    }
