"""The parts of diffusers' `AttnProcessor2_0` around the attention itself, shared by styleprobe's processors.

Each method's processor (IP-Adapter's per-sample image branch, StyleAligned's shared self-attention) changes only
what happens between the projections and the output layer; `project` and `finish` are the rest, step for step
as diffusers computes it, so with nothing injected or shared a processor gives the plain model's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Projected:
    """Queries, keys and values split into heads (batch, heads, tokens, head_dim), and what `finish` needs."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None
    residual: torch.Tensor
    image_shape: tuple[int, int, int, int] | None  # (batch, channels, height, width) when the input was 4-D
    batch: int
    head_dim: int


def project(
    attn: Any,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    temb: torch.Tensor | None = None,
) -> Projected:
    """Norms, the q/k/v projections and the head split, as AttnProcessor2_0 does them."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    image_shape = None
    if hidden_states.ndim == 4:
        image_shape = tuple(hidden_states.shape)
        b, c, h, w = image_shape
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    batch, sequence_length, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch)
        attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key = attn.to_k(encoder_hidden_states)
    value = attn.to_v(encoder_hidden_states)
    head_dim = key.shape[-1] // attn.heads
    return Projected(
        query=split_heads(query, batch, attn.heads, head_dim),
        key=split_heads(key, batch, attn.heads, head_dim),
        value=split_heads(value, batch, attn.heads, head_dim),
        mask=attention_mask,
        residual=residual,
        image_shape=image_shape,
        batch=batch,
        head_dim=head_dim,
    )


def split_heads(x: torch.Tensor, batch: int, heads: int, head_dim: int) -> torch.Tensor:
    return x.view(batch, -1, heads, head_dim).transpose(1, 2)


def merge_heads(x: torch.Tensor, batch: int, heads: int, head_dim: int, dtype: torch.dtype) -> torch.Tensor:
    return x.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(dtype)


def finish(attn: Any, hidden_states: torch.Tensor, p: Projected) -> torch.Tensor:
    """Output projection, dropout, reshape, residual and rescale, as AttnProcessor2_0 does them.

    `hidden_states` has the heads merged: (batch, tokens, heads * head_dim).
    """
    hidden_states = attn.to_out[0](hidden_states)
    hidden_states = attn.to_out[1](hidden_states)
    if p.image_shape is not None:
        hidden_states = hidden_states.transpose(-1, -2).reshape(*p.image_shape)
    if attn.residual_connection:
        hidden_states = hidden_states + p.residual
    return hidden_states / attn.rescale_output_factor
