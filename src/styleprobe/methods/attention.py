"""The parts of diffusers' `AttnProcessor2_0` around the attention itself, shared by styleprobe's processors.

Each method's processor (IP-Adapter's per-sample image branch, StyleAligned's shared self-attention) changes only
what happens between the projections and the output layer; `project` and `finish` are the rest, step for step
as diffusers computes it, so with nothing injected or shared a processor gives the plain model's numbers.
Methods that change self-attention do not write a processor at all: one processor (`SelfAttnProcessor`) runs
project -> the method's attend step (an `AttendStep`, put in place for one call) -> finish on every attn1 layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from styleprobe.models.layers import LayerMap


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


class AttendStep(Protocol):
    """What a method computes between the projections and the output layer of a self-attention (`attn1`) layer.

    `query`, `key`, `value`: (batch, heads, tokens, head_dim) for every sample of the UNet call (CFG doubles the
    batch); `layer`: the layer's index in the UNet's attn1 layer map. Returns the attention output, same shape.
    """

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
               layer: int) -> torch.Tensor: ...


def plain_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """The attention AttnProcessor2_0 computes."""
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0)


class SelfAttention:
    """The attend step in use on one UNet's attn1 layers; `None` (no call in progress) computes plain attention.

    One per UNet, shared by every method that changes self-attention (StyleAligned's sharing, a key/value swap):
    a method puts its step in place for one pipeline call with `use`.
    """

    def __init__(self, layer_map: LayerMap):
        self.layer_map = layer_map
        self.step: AttendStep | None = None

    @contextmanager
    def use(self, step: AttendStep) -> Iterator[None]:
        previous, self.step = self.step, step
        try:
            yield
        finally:
            self.step = previous


class SelfAttnProcessor(nn.Module):
    """diffusers' AttnProcessor2_0 for one attn1 layer, its attend step the one `SelfAttention` holds.

    diffusers re-creates processors with no arguments when it loads or unloads adapters; such a copy has no
    state and computes plain attention until `install_self_attention` puts real ones back.
    """

    def __init__(self, layer_index: int = -1, state: SelfAttention | None = None):
        super().__init__()
        self.layer_index = layer_index
        self.state = state

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        p = project(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        step = self.state.step if self.state is not None else None
        if step is None:
            hidden_states = plain_attention(p.query, p.key, p.value, p.mask)
        else:
            hidden_states = step.attend(p.query, p.key, p.value, p.mask, self.layer_index)
        return finish(attn, merge_heads(hidden_states, p.batch, attn.heads, p.head_dim, p.query.dtype), p)


def install_self_attention(unet: Any) -> SelfAttention:
    """Put `SelfAttnProcessor`s on every attn1 layer of `unet` (idempotent) and return their shared state.

    The state lives on the UNet, so installing again (after another method reset the processors) reuses it.
    With no step in use, every processor computes exactly what the plain model computes.
    """
    state = getattr(unet, "styleprobe_self_attention", None)
    if state is None:
        state = SelfAttention(LayerMap.from_unet(unet, "attn1"))
        unet.styleprobe_self_attention = state
    processors = unet.attn_processors
    if not all(getattr(processors[f"{n}.processor"], "state", None) is state for n in state.layer_map.names):
        processors = dict(processors)
        for i, name in enumerate(state.layer_map.names):
            processors[f"{name}.processor"] = SelfAttnProcessor(i, state)
        unet.set_attn_processor(processors)
    return state
