"""The real SDXL + IP-Adapter components' configs, in one place: what the memory estimate is checked against.

From the public configs: stabilityai/stable-diffusion-xl-base-1.0 (`unet`, `vae`, `text_encoder` CLIP ViT-L,
`text_encoder_2` OpenCLIP ViT-bigG) and h94/IP-Adapter `sdxl_models/image_encoder` (OpenCLIP ViT-bigG vision,
1.84 B parameters). `build` makes any of them with random weights: on the `meta` device (no memory: tests sum
their parameters) or on a GPU (`benchmarks/memory_estimate.py` measures their real peak).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from styleprobe.models.tiny import SDXL_UNET_CONFIG

if TYPE_CHECKING:
    import torch

UNET: dict[str, Any] = SDXL_UNET_CONFIG

# stabilityai/stable-diffusion-xl-base-1.0 vae/config.json (force_upcast: decoded in float32 under fp16)
VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}

_TEXT = {"vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 49406, "eos_token_id": 49407}
# text_encoder: CLIP ViT-L/14's text tower (123 M parameters)
TEXT_ENCODER: dict[str, Any] = {**_TEXT, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                                "num_attention_heads": 12, "projection_dim": 768, "hidden_act": "quick_gelu"}
# text_encoder_2: OpenCLIP ViT-bigG/14's text tower with its projection (695 M parameters)
TEXT_ENCODER_2: dict[str, Any] = {**_TEXT, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                                  "num_attention_heads": 20, "projection_dim": 1280, "hidden_act": "gelu"}
# h94/IP-Adapter sdxl_models/image_encoder: OpenCLIP ViT-bigG/14's vision tower (1.84 B parameters)
IMAGE_ENCODER: dict[str, Any] = {"hidden_size": 1664, "intermediate_size": 8192, "num_hidden_layers": 48,
                                 "num_attention_heads": 16, "patch_size": 14, "image_size": 224, "projection_dim": 1280,
                                 "hidden_act": "gelu"}

#: The components a loaded SDXL + IP-Adapter pipeline keeps resident, by their pipeline names.
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "image_encoder")


def build(name: str, device: str | torch.device = "meta", dtype: torch.dtype | None = None) -> Any:
    """One real-size component with random weights on `device` (`meta`: structure only), cast to `dtype`."""
    import torch

    from styleprobe.models.loading import quiet_libraries

    quiet_libraries()
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    makers = {
        "unet": lambda: UNet2DConditionModel.from_config(UNET),
        "vae": lambda: AutoencoderKL.from_config(VAE),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER)),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_ENCODER_2)),
        "image_encoder": lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**IMAGE_ENCODER)),
    }
    with torch.device(device):
        module = makers[name]()
    return module.to(dtype=dtype).eval() if dtype is not None else module.eval()


def ip_adapter_parameters(unet: Any, image_embed_dim: int = 1280, num_tokens: int = 4) -> int:
    """Parameters of h94's global IP-Adapter on `unet` (ip-adapter_sdxl: 351 M): its image projection (a linear
    layer to `num_tokens` context tokens and a LayerNorm) and a key and a value projection per `attn2` layer."""
    cross = unet.config.cross_attention_dim
    layers = [m for name, m in unet.named_modules() if name.endswith("attn2")]
    projection = image_embed_dim * num_tokens * cross + num_tokens * cross + 2 * cross
    return projection + sum(2 * cross * attn.to_k.out_features for attn in layers)
