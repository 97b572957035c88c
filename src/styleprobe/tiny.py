"""The tiny embedded model: SDXL's topology in miniature, built offline with fixed random weights.

Its numbers check styleprobe's machinery, they are not science: the weights are random.

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
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from styleprobe.data import default_cache_dir

TINY_VERSION = "tiny-v1"
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


def ensure_tiny(cache_dir: Path | None = None) -> Path:
    """Return the tiny model folder, building it first if absent (atomic: temp dir, then rename)."""
    root = (cache_dir or default_cache_dir()) / TINY_VERSION
    if (root / "COMPLETE").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{TINY_VERSION}-", dir=root.parent))
    try:
        _build(tmp)
        (tmp / "COMPLETE").write_text(json.dumps({"version": TINY_VERSION, "seed": SEED}))
        try:
            os.rename(tmp, root)
        except OSError:
            if not (root / "COMPLETE").exists():  # a stale, incomplete folder: replace it
                shutil.rmtree(root, ignore_errors=True)
                os.rename(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


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


def _text_config(projection_dim: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=2 * 256 + 2,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=2 * TEXT_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )


def _vision_encoder(projection_dim: int):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=8,
        projection_dim=projection_dim,
    )
    return CLIPVisionModelWithProjection(cfg).eval()


def _ip_adapter_state_dict(unet, image_embed_dim: int) -> dict[str, torch.Tensor]:
    """An IP-Adapter checkpoint in h94's key format, keyed by index in `unet.attn_processors` order.

    Like IP-Adapter's training init, to_k_ip / to_v_ip start from the layer's own to_k / to_v (here with
    noise added so image and text branches differ).
    """
    cross = unet.config.cross_attention_dim
    sd: dict[str, torch.Tensor] = {
        "image_proj.proj.weight": torch.randn(NUM_TOKENS * cross, image_embed_dim) / image_embed_dim**0.5,
        "image_proj.proj.bias": torch.randn(NUM_TOKENS * cross) * 0.1,
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


def _build(root: Path) -> None:
    """Build every component with fixed seeds and save it in the real repositories' layouts."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(**UNET_CONFIG).eval()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[16, 16, 32, 32],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.13025,
    ).eval()
    text_encoder = CLIPTextModel(_text_config(BIGG_DIM)).eval()
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(BIGG_DIM)).eval()
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

    adapter_root = root / "IP-Adapter"
    bigg = _vision_encoder(BIGG_DIM)
    bigg.save_pretrained(adapter_root / "sdxl_models" / "image_encoder", safe_serialization=True)
    save_file(_ip_adapter_state_dict(unet, BIGG_DIM), adapter_root / "sdxl_models" / "ip-adapter_sdxl.safetensors")

    vit_h = _vision_encoder(VIT_H_DIM)
    vit_h.save_pretrained(adapter_root / "models" / "image_encoder", safe_serialization=True)
    save_file(
        _ip_adapter_state_dict(unet, VIT_H_DIM), adapter_root / "sdxl_models" / "ip-adapter_sdxl_vit-h.safetensors"
    )

    vit_h_text = root / "CLIP-ViT-H-14-text"
    CLIPTextModelWithProjection(_text_config(VIT_H_DIM)).eval().save_pretrained(vit_h_text, safe_serialization=True)
    _tokenizer("!").save_pretrained(vit_h_text)
