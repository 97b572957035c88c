"""Reference encoding and InstantStyle's content subtraction, in the CLIP space of the adapter's image encoder.

InstantStyle (arXiv 2404.02733, ip_adapter/ip_adapter.py):
    clip_image_embeds = image_encoder(ref).image_embeds - s * text_embeds(content_prompt)
then `image_proj_model(clip_image_embeds)`; the unconditional branch projects zeros, unsubtracted.
For SDXL with the ViT-bigG encoder the text side is `text_encoder_2`'s pooled projection (the same bigG
space; InstantStyle takes it from `pipe.encode_prompt(...)[2]`); for ViT-H adapters it is the ViT-H text
tower. Only global-embedding adapters have such a vector; "plus" adapters (patch tokens) do not.
Here `s` is per sample, so one batch can carry several strengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from styleprobe.errors import ConfigError
from styleprobe.models.loading import LoadedModel


def supports_subtraction(unet) -> bool:
    """True where the adapter projects one global CLIP embedding (diffusers' `ImageProjection`)."""
    from diffusers.models.embeddings import ImageProjection

    layers = getattr(getattr(unet, "encoder_hid_proj", None), "image_projection_layers", None)
    return bool(layers) and all(isinstance(layer, ImageProjection) for layer in layers)


def check_subtraction(model: LoadedModel, strengths: Sequence[float]) -> None:
    """A non-zero strength on a patch-token ("plus") adapter is an error, not a silent no-op."""
    if any(s != 0 for s in strengths) and not supports_subtraction(model.pipe.unet):
        raise ConfigError(
            f"content subtraction needs a global-embedding IP-Adapter, but {model.spec.adapter.weight_name} is a "
            f"patch-token ('plus') adapter; set method.ip_adapter.subtraction=[0] or use a non-plus adapter"
        )


@torch.inference_mode()
def encode_references(model: LoadedModel, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    """(conditional, unconditional) adapter inputs per image, as diffusers' `encode_image` makes them.

    Global adapters: `image_embeds` (n, dim) and zeros. "plus" adapters: the penultimate hidden states
    (n, tokens, dim) of the image and of an all-zero image.
    """
    pipe = model.pipe
    pixels = pipe.feature_extractor(list(images), return_tensors="pt").pixel_values
    pixels = pixels.to(device=model.device, dtype=next(pipe.image_encoder.parameters()).dtype)
    if supports_subtraction(pipe.unet):
        embeds = pipe.image_encoder(pixels).image_embeds
        return embeds, torch.zeros_like(embeds)
    cond = pipe.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]
    uncond = pipe.image_encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
    return cond, uncond


@torch.inference_mode()
def encode_content(model: LoadedModel, texts: Sequence[str], text_tower: tuple[Any, Any] | None = None) -> torch.Tensor:
    """CLIP text embeddings of content labels, in the adapter's image-embedding space: (n, dim).

    `text_tower` is (tokenizer, encoder) of a separate tower in the image encoder's space (ViT-H adapters);
    None uses the pipeline's `text_encoder_2` pooled projection (SDXL with the bigG encoder).
    """
    if text_tower is not None:
        tok, encoder = text_tower
        ids = tok(list(texts), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        return encoder(ids.input_ids.to(model.device)).text_embeds
    pipe = model.pipe
    if getattr(pipe, "text_encoder_2", None) is None:
        raise ConfigError(
            f"model {model.spec.name} has no text_encoder_2 for content subtraction; "
            f"set model.content_text_encoder to the CLIP text tower matching its image encoder"
        )
    pooled = pipe.encode_prompt(list(texts), device=model.device, num_images_per_prompt=1, do_classifier_free_guidance=False)[2]
    return pooled


def subtract(image_embeds: torch.Tensor, text_embeds: torch.Tensor, strengths: torch.Tensor) -> torch.Tensor:
    """InstantStyle's formula with a strength per row: image_embeds - s * text_embeds."""
    s = strengths.to(device=image_embeds.device, dtype=image_embeds.dtype)
    return image_embeds - s.view(-1, *([1] * (image_embeds.ndim - 1))) * text_embeds.to(image_embeds.dtype)


def adapter_inputs(cond: torch.Tensor, uncond: torch.Tensor, guidance: bool) -> list[torch.Tensor]:
    """`ip_adapter_image_embeds` for a diffusers pipeline: (2B, 1, ...) with the unconditional half first."""
    cond = cond.unsqueeze(1)
    if not guidance:
        return [cond]
    return [torch.cat([uncond.unsqueeze(1), cond], dim=0)]
