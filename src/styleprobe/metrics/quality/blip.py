"""ImageReward v1.0's network (Xu et al. 2023, THUDM/ImageReward c1392c6), built here so its published file loads.

ImageReward is BLIP's image-grounded text encoder with a reward head: the prompt's tokens attend to themselves and,
in every layer, to the image's ViT tokens; the [CLS] state goes through the `RewardMLP` head and is standardised with
the training set's mean and std (ImageReward/ImageReward.py `ImageReward.score`).

Why not the `image-reward` package: its BLIP text encoder (ImageReward/models/BLIP/med.py) imports
`apply_chunking_to_forward`, `find_pruneable_heads_and_indices` and `prune_linear_layer` from
`transformers.modeling_utils`, which transformers 5 no longer has, and it pulls in fairscale. The same weights go into
the same architecture here, under the same state-dict names:

- `blip.visual_encoder`: BLIP's ViT (models/BLIP/vit.py; `create_vit('large')`: patch 16, width 1024, 24 blocks,
  16 heads, qkv bias, LayerNorm eps 1e-6, exact GELU; the patch tokens after the final norm). timm's
  VisionTransformer is that network with the same parameter names, so it is built from timm.
- `blip.text_encoder`: BLIP's BERT (models/BLIP/med.py, `BertModel(add_pooling_layer=False)`, `mode='multimodal'`):
  word + absolute position embeddings (no token types) and LayerNorm; per layer bidirectional self-attention with the
  padding mask as -10000 logits, cross-attention to the image tokens (keys and values from `encoder_width`), each
  followed by dense + residual + LayerNorm, then the GELU feed-forward with residual + LayerNorm. `BlipTextEncoder`.
- `mlp`: `RewardMLP` on the 768-d [CLS] state; the score is (mlp(cls) - 0.16717362830052426) / 1.0333394966054072.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from styleprobe.errors import ConfigError
from styleprobe.metrics.quality.arch import VIT_ARCHS, VitArch
from styleprobe.metrics.quality.heads import RewardMLP, head_input_size
from styleprobe.metrics.safe_load import read_weights, tensor_dict

log = logging.getLogger("styleprobe")

#: ImageReward.py's standardisation of the head's output (`self.mean`, `self.std`).
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
#: ImageReward.py `score`: the prompt is padded to, and cut at, 35 tokens.
MAX_TOKENS = 35


@dataclass(frozen=True)
class TextConfig:
    """The fields of BLIP's `med_config.json` its text encoder reads (`encoder_width` set to the ViT's width)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    layer_norm_eps: float
    hidden_act: str
    encoder_width: int
    pad_token_id: int = 0

    @classmethod
    def read(cls, path: Path, encoder_width: int) -> TextConfig:
        """`med_config.json` as BLIP_Pretrain reads it (`encoder_config.encoder_width = vision_width`)."""
        try:
            raw = json.loads(Path(path).read_text())
            if raw.get("hidden_act", "gelu") != "gelu" or not raw.get("add_cross_attention", False):
                raise ConfigError(f"{path} is not a BLIP med config (needs hidden_act gelu and add_cross_attention true)")
            return cls(int(raw["vocab_size"]), int(raw["hidden_size"]), int(raw["num_hidden_layers"]),
                       int(raw["num_attention_heads"]), int(raw["intermediate_size"]), int(raw["max_position_embeddings"]),
                       float(raw["layer_norm_eps"]), "gelu", encoder_width, int(raw.get("pad_token_id", 0)))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"ImageReward's med_config {path} cannot be read ({type(err).__name__}: {err}); "
                              "download THUDM/ImageReward's med_config.json again") from err


class _Attention(nn.Module):
    """BertAttention of med.py: query / key / value (key and value from `kv_width`), then dense + residual + LayerNorm."""

    def __init__(self, cfg: TextConfig, kv_width: int):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.self = nn.Module()
        self.self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.self.key = nn.Linear(kv_width, cfg.hidden_size)
        self.self.value = nn.Linear(kv_width, cfg.hidden_size)
        self.output = nn.Module()
        self.output.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.output.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        n, length, width = hidden.shape

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(n, -1, self.heads, width // self.heads).transpose(1, 2)

        q, k, v = split(self.self.query(hidden)), split(self.self.key(context)), split(self.self.value(context))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # softmax(qk/sqrt(d) + mask) v, as med.py
        out = out.transpose(1, 2).reshape(n, length, width)
        return self.output.LayerNorm(self.output.dense(out) + hidden)


class _Layer(nn.Module):
    """BertLayer of med.py in `multimodal` mode: self-attention, cross-attention to the image, feed-forward."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.attention = _Attention(cfg, cfg.hidden_size)
        self.crossattention = _Attention(cfg, cfg.encoder_width)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output = nn.Module()
        self.output.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.output.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        hidden = self.attention(hidden, hidden, text_mask)
        hidden = self.crossattention(hidden, image, None)  # every image token is attended (ImageReward's image_atts)
        return self.output.LayerNorm(self.output.dense(F.gelu(self.intermediate.dense(hidden))) + hidden)


class BlipTextEncoder(nn.Module):
    """BLIP's image-grounded text encoder (med.py `BertModel`, no pooler), with its parameter names."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.embeddings.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.embeddings.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """The last hidden states, (N, tokens, hidden)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        emb = self.embeddings.word_embeddings(input_ids) + self.embeddings.position_embeddings(positions)[None]
        hidden = self.embeddings.LayerNorm(emb)
        # med.py get_extended_attention_mask: (1 - mask) * -10000, broadcast over heads and query positions
        text_mask = ((1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * -10000.0)
        for layer in self.encoder.layer:
            hidden = layer(hidden, text_mask, image)
        return hidden


def build_vit(arch: VitArch) -> nn.Module:
    """BLIP's ViT as timm builds it (same network and parameter names as models/BLIP/vit.py)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=arch.image_size, patch_size=arch.patch, embed_dim=arch.width, depth=arch.depth,
                             num_heads=arch.heads, mlp_ratio=4.0, qkv_bias=True, num_classes=0, global_pool="token")


class ImageRewardModel(nn.Module):
    """BLIP's ViT + image-grounded text encoder + reward head, under ImageReward.pt's names (`blip.*`, `mlp.*`)."""

    def __init__(self, arch: VitArch, text: TextConfig):
        super().__init__()
        self.blip = nn.Module()
        self.blip.visual_encoder = build_vit(arch)
        self.blip.text_encoder = BlipTextEncoder(text)
        self.mlp = RewardMLP(text.hidden_size)

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """ImageReward scores, (N,): one per (image, prompt) pair."""
        image = self.blip.visual_encoder.forward_features(pixels)
        cls = self.blip.text_encoder(input_ids, attention_mask, image)[:, 0, :]
        return (self.mlp(cls).float() - REWARD_MEAN) / REWARD_STD


#: Keys of the published file that the score does not use: BLIP's contrastive projections, and the position-id buffer.
UNUSED = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")

FIX = "download THUDM/ImageReward's ImageReward.pt again (hf download THUDM/ImageReward ImageReward.pt)"


def load_imagereward(path: Path, med_config: Path, arch: VitArch) -> ImageRewardModel:
    """ImageReward.pt into `ImageRewardModel`, as ImageReward's `load` does (`load_state_dict(strict=False)`), with the
    checks strictness would give: every weight of the ViT, the text encoder and the head must be there with its shape
    (else one line naming a few); other keys are ignored, with a warning for those outside `UNUSED`."""
    state = tensor_dict(read_weights(path, "ImageReward checkpoint", FIX), "ImageReward checkpoint", path, FIX)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    width = head_input_size(state, "mlp.")
    model = ImageRewardModel(arch, TextConfig.read(med_config, arch.width))
    if width is not None and width != model.mlp.input_size:
        raise ConfigError(f"ImageReward checkpoint {path}: its head reads {width}-d features, the med_config's text "
                          f"encoder gives {model.mlp.input_size}; give the med_config.json of the same release")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ConfigError(f"ImageReward checkpoint {path} lacks {len(missing)} of the {len(expected)} weights of the "
                          f"{_arch_name(arch)} ImageReward model (e.g. {', '.join(missing[:3])}); {FIX}")
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        k, got, want = wrong[0]
        raise ConfigError(f"ImageReward checkpoint {path}: {len(wrong)} tensors have the wrong shape (e.g. {k} is {got}, "
                          f"the {_arch_name(arch)} model needs {want}); is metrics.<name>.arch right?")
    ignored = sorted(k for k in state if k not in expected and not k.startswith(UNUSED))
    if ignored:
        log.warning("ImageReward checkpoint %s: %d keys outside the scored model are ignored (e.g. %s)", path,
                    len(ignored), ", ".join(ignored[:3]))
    model.load_state_dict({k: state[k].float() for k in expected})
    return model.eval()


def _arch_name(arch: VitArch) -> str:
    return next(n for n, a in VIT_ARCHS.items() if a == arch)


def save_imagereward(model: ImageRewardModel, path: Path) -> None:
    """A model's weights in ImageReward.pt's format: a bare state dict with the `blip.` / `mlp.` names (torch.save)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)


def med_config_dict(cfg: TextConfig) -> dict[str, Any]:
    """A med_config.json for `cfg`, with the fields of THUDM/ImageReward's file."""
    return {
        "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": cfg.hidden_act,
        "hidden_dropout_prob": 0.1, "hidden_size": cfg.hidden_size, "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size, "layer_norm_eps": cfg.layer_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings, "model_type": "bert",
        "num_attention_heads": cfg.num_attention_heads, "num_hidden_layers": cfg.num_hidden_layers,
        "pad_token_id": cfg.pad_token_id, "type_vocab_size": 2, "vocab_size": cfg.vocab_size,
        "encoder_width": 768, "add_cross_attention": True,
    }


#: THUDM/ImageReward's med_config.json (train/src/config/med_config.json at c1392c6): BERT-base with cross-attention.
BERT_BASE = TextConfig(30524, 768, 12, 12, 3072, 512, 1e-12, "gelu", 1024)
