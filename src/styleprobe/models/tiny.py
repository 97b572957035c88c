"""Random-weight models with SDXL's topology, built offline with fixed seeds: the tiny embedded model and
a full-size one for timing.

Their numbers check styleprobe's machinery, they are not science: the weights are random.

`ensure_tiny()` writes, once, a folder that mirrors the real Hub repositories, so that the tiny model
is loaded through exactly the code that loads the real ones (`from_pretrained`, `load_ip_adapter`):

    <cache>/tiny-v1/
      stable-diffusion-xl-base/      a diffusers StableDiffusionXLPipeline (save_pretrained)
      IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors        h94 layout and key format
      IP-Adapter/sdxl_models/image_encoder/                     "bigG" encoder (its space = text_encoder_2's)
      IP-Adapter/sdxl_models/ip-adapter_sdxl_vit-h.safetensors  adapter for the "ViT-H" encoder
      IP-Adapter/models/image_encoder/                          "ViT-H" encoder (its own space)
      CLIP-ViT-H-14-text/                                       the "ViT-H" text tower + tokenizer

The UNet keeps SDXL's block/module/layer names (DownBlock2D first, two cross-attention down blocks,
three-module up blocks, `transformer_layers_per_block` growing with depth) so InstantStyle's module
names `up_blocks.0.attentions.1` and `down_blocks.2.attentions.1` exist here too.

`ensure_random_sdxl("sdxl")` builds, with the same code, the same layout into `<cache>/random-sdxl-v1/`
with SDXL base's real UNet (2.6 B parameters, ~10 GB in fp32) and VAE, cheap text and image encoders of
SDXL's widths (768 + 1280 = 2048 text features, a 1280-d "bigG" image space) and a full-size IP-Adapter.
It exists to time the engine at real cost (see benchmarks/); it takes minutes and ~14 GB of disk, so
tests never build it. `ensure_random_sdxl("tiny")` is `ensure_tiny()`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from styleprobe.disk import build_once, default_cache_dir

if TYPE_CHECKING:  # imported where weights are made: finding an existing folder never waits for torch
    import torch

log = logging.getLogger(__name__)

TINY_VERSION = "tiny-v1"
RANDOM_SDXL_VERSION = "random-sdxl-v1"
SEED = 20240403

# SDXL: block_out_channels (320, 640, 1280), transformer_layers_per_block (1, 2, 10), heads (5, 10, 20).
UNET_CONFIG: dict = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64, 128],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 3],
    "attention_head_dim": [1, 2, 4],
    "cross_attention_dim": 64,
    "norm_num_groups": 8,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 6 * 8 + 32,
}
TEXT_HIDDEN = 32  # each of the two text encoders: 32 + 32 = cross_attention_dim 64
BIGG_DIM = 32  # text_encoder_2 projection = "bigG" image embedding dim (one shared space, as in SDXL)
VIT_H_DIM = 24  # the separate "ViT-H" space: its own image encoder and text tower
IMAGE_SIZE = 32
NUM_TOKENS = 4

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (70 attn2 layers in 11 modules).
SDXL_UNET_CONFIG: dict = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048,
    "norm_num_groups": 32,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 6 x 256 time ids + 1280 pooled text
}


@dataclass(frozen=True)
class TextDims:
    """A CLIP text tower (byte-level vocabulary, 77 positions)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int


@dataclass(frozen=True)
class VisionDims:
    """A CLIP vision tower (its projection dim is the adapter's image-embedding space)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    image_size: int
    patch_size: int


@dataclass(frozen=True)
class ModelDims:
    """Everything that differs between the random-weight sizes; the build code is shared."""

    version: str  # the cache folder's name
    unet: dict[str, Any]
    text_encoder: TextDims  # its hidden size + text_encoder_2's = unet cross_attention_dim
    text_encoder_2: TextDims
    vit_h_text: TextDims
    vision: VisionDims  # both image encoders ("bigG" and "ViT-H"), projections aside
    bigg_dim: int  # text_encoder_2 projection = "bigG" image embedding dim
    vit_h_dim: int
    vae_block_out_channels: tuple[int, ...]
    vae_layers_per_block: int
    vae_norm_groups: int
    vae_sample_size: int
    num_tokens: int = NUM_TOKENS


_TINY_TEXT = TextDims(hidden=TEXT_HIDDEN, intermediate=2 * TEXT_HIDDEN, layers=2, heads=2)

SIZES: dict[str, ModelDims] = {
    "tiny": ModelDims(
        version=TINY_VERSION,
        unet=UNET_CONFIG,
        text_encoder=_TINY_TEXT,
        text_encoder_2=_TINY_TEXT,
        vit_h_text=_TINY_TEXT,
        vision=VisionDims(hidden=32, intermediate=64, layers=2, heads=2, image_size=IMAGE_SIZE, patch_size=8),
        bigg_dim=BIGG_DIM,
        vit_h_dim=VIT_H_DIM,
        vae_block_out_channels=(16, 16, 32, 32),
        vae_layers_per_block=1,
        vae_norm_groups=8,
        vae_sample_size=64,
    ),
    # SDXL's real UNet and VAE; text and image towers with SDXL's widths but 2 layers (their cost is small
    # in SDXL too, except the 1.8 B-parameter bigG image encoder, which this stand-in makes cheap).
    "sdxl": ModelDims(
        version=RANDOM_SDXL_VERSION,
        unet=SDXL_UNET_CONFIG,
        text_encoder=TextDims(hidden=768, intermediate=3072, layers=2, heads=12),  # CLIP ViT-L's width
        text_encoder_2=TextDims(hidden=1280, intermediate=5120, layers=2, heads=20),  # OpenCLIP bigG's width
        vit_h_text=TextDims(hidden=1024, intermediate=4096, layers=2, heads=16),
        vision=VisionDims(hidden=256, intermediate=1024, layers=2, heads=4, image_size=224, patch_size=14),
        bigg_dim=1280,
        vit_h_dim=1024,
        vae_block_out_channels=(128, 256, 512, 512),
        vae_layers_per_block=2,
        vae_norm_groups=32,
        vae_sample_size=1024,
    ),
}


def ensure_tiny(cache_dir: Path | None = None) -> Path:
    """Return the tiny model folder, building it first if absent (atomic: temp dir, then rename)."""
    return ensure_random_sdxl("tiny", cache_dir)


def ensure_random_sdxl(size: str = "sdxl", cache_dir: Path | None = None) -> Path:
    """Return the folder of the random-weight model of `size` ("tiny" or "sdxl"), building it first if absent.

    The build is atomic (temp dir, then rename); "sdxl" takes minutes, ~20 GB of RAM and ~14 GB of disk.
    """
    if size not in SIZES:
        raise ValueError(f"unknown random model size {size!r}; use one of {', '.join(SIZES)}")
    dims = SIZES[size]
    root = (cache_dir or default_cache_dir()) / dims.version
    if size != "tiny" and not (root / "COMPLETE").exists():
        log.info("building the random-weight %s model into %s (minutes)", size, root)
    return build_once(root, lambda tmp: _build(tmp, dims), {"version": dims.version, "seed": SEED})


def _byte_alphabet() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values (byte-level BPE's base alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _tokenizer(pad_token: str):
    """A CLIP tokenizer whose vocabulary is bytes only (no merges): every word splits into characters."""
    from transformers import CLIPTokenizer

    chars = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    tok = CLIPTokenizer(vocab=vocab, merges=[], pad_token=pad_token)
    tok.model_max_length = 77
    return tok


def _text_config(dims: TextDims, projection_dim: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=2 * 256 + 2,
        hidden_size=dims.hidden,
        intermediate_size=dims.intermediate,
        num_hidden_layers=dims.layers,
        num_attention_heads=dims.heads,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )


def _vision_encoder(dims: VisionDims, projection_dim: int):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(
        hidden_size=dims.hidden,
        intermediate_size=dims.intermediate,
        num_hidden_layers=dims.layers,
        num_attention_heads=dims.heads,
        image_size=dims.image_size,
        patch_size=dims.patch_size,
        projection_dim=projection_dim,
    )
    return CLIPVisionModelWithProjection(cfg).eval()


def _ip_adapter_state_dict(unet, image_embed_dim: int, num_tokens: int = NUM_TOKENS) -> dict[str, torch.Tensor]:
    """An IP-Adapter checkpoint in h94's key format, keyed by index in `unet.attn_processors` order.

    Like IP-Adapter's training init, to_k_ip / to_v_ip start from the layer's own to_k / to_v (here with
    noise added so image and text branches differ).
    """
    import torch

    cross = unet.config.cross_attention_dim
    sd: dict[str, torch.Tensor] = {
        "image_proj.proj.weight": torch.randn(num_tokens * cross, image_embed_dim) / image_embed_dim**0.5,
        "image_proj.proj.bias": torch.randn(num_tokens * cross) * 0.1,
        "image_proj.norm.weight": 1.0 + 0.1 * torch.randn(cross),
        "image_proj.norm.bias": 0.1 * torch.randn(cross),
    }
    modules = dict(unet.named_modules())
    for index, name in enumerate(unet.attn_processors):
        if not name.endswith("attn2.processor"):
            continue
        attn = modules[name.removesuffix(".processor")]
        for ours, theirs in (("to_k_ip", attn.to_k), ("to_v_ip", attn.to_v)):
            w = theirs.weight.detach()
            sd[f"ip_adapter.{index}.{ours}.weight"] = (w + w.std() * torch.randn_like(w)).contiguous()
    return sd


def _build(root: Path, dims: ModelDims = SIZES["tiny"]) -> None:
    """Build every component with fixed seeds and save it in the real repositories' layouts.

    The order of random draws is fixed: changing it changes every weight of the tiny model.
    """
    import torch
    import transformers
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    transformers.utils.logging.disable_progress_bar()  # the first build is part of a run: no "Writing model shards"

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(**dims.unet).eval()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=list(dims.vae_block_out_channels),
        layers_per_block=dims.vae_layers_per_block,
        latent_channels=4,
        norm_num_groups=dims.vae_norm_groups,
        sample_size=dims.vae_sample_size,
        scaling_factor=0.13025,
    ).eval()
    text_encoder = CLIPTextModel(_text_config(dims.text_encoder, dims.bigg_dim)).eval()
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(dims.text_encoder_2, dims.bigg_dim)).eval()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=_tokenizer("<|endoftext|>"),
        tokenizer_2=_tokenizer("!"),
        unet=unet,
        scheduler=scheduler,
    )
    pipe.save_pretrained(root / "stable-diffusion-xl-base", safe_serialization=True)
    del pipe, vae, text_encoder, text_encoder_2  # the UNet stays: the adapters start from its to_k / to_v

    adapter_root = root / "IP-Adapter"
    bigg = _vision_encoder(dims.vision, dims.bigg_dim)
    bigg.save_pretrained(adapter_root / "sdxl_models" / "image_encoder", safe_serialization=True)
    save_file(
        _ip_adapter_state_dict(unet, dims.bigg_dim, dims.num_tokens),
        adapter_root / "sdxl_models" / "ip-adapter_sdxl.safetensors",
    )

    vit_h = _vision_encoder(dims.vision, dims.vit_h_dim)
    vit_h.save_pretrained(adapter_root / "models" / "image_encoder", safe_serialization=True)
    save_file(
        _ip_adapter_state_dict(unet, dims.vit_h_dim, dims.num_tokens),
        adapter_root / "sdxl_models" / "ip-adapter_sdxl_vit-h.safetensors",
    )

    vit_h_text = root / "CLIP-ViT-H-14-text"
    CLIPTextModelWithProjection(_text_config(dims.vit_h_text, dims.vit_h_dim)).eval().save_pretrained(
        vit_h_text, safe_serialization=True
    )
    _tokenizer("!").save_pretrained(vit_h_text)
