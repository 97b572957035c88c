"""Per-layer, per-sample IP-Adapter injection in the UNet's cross-attention (`attn2`) layers.

diffusers' IP-Adapter processor takes one scale per layer for the whole batch. Ours takes a scale per layer
*and per sample*, so one batched UNet call can carry several injection patterns. It reuses the trained
`to_k_ip` / `to_v_ip` weights of the processor diffusers installed (replacing that processor would throw
them away) and keeps a reference to it, so `restore_native` puts diffusers' own processors back.
Layers whose scale is 0 for every sample skip the image branch, as diffusers does for a scale of 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from styleprobe.methods.attention import finish, merge_heads, project, split_heads
from styleprobe.models.layers import LayerMap


class InjectionState:
    """Per-sample, per-layer scales shared by every styleprobe processor of one UNet.

    `scales` has shape (batch, n_layers) in layer-map order. When it is None the processors use the
    native per-layer scale, so `pipe.set_ip_adapter_scale(...)` keeps working after `install`.
    `use` puts a batch's scales on the UNet's device once and decides once which layers are active, so inside
    the UNet no processor reads a tensor back to the host or copies one to the device: the CPU can run ahead.
    """

    def __init__(self, layer_map: LayerMap):
        self.layer_map = layer_map
        self.scales: torch.Tensor | None = None
        self.active: tuple[bool, ...] = ()  # per layer: does any sample inject there (decided on the host, per batch)
        self._given: torch.Tensor | None = None  # the host scales `use` was given, which `switch` masks
        self._to: tuple[Any, Any] = (None, None)  # their device and dtype

    @contextmanager
    def use(
        self, scales: torch.Tensor, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Iterator[None]:
        """Apply `scales` (batch, n_layers) for the calls inside the block, moved to `device` / `dtype` here, once."""
        if scales.ndim != 2 or scales.shape[1] != len(self.layer_map):
            raise ValueError(f"scales must have shape (batch, {len(self.layer_map)}), got {tuple(scales.shape)}")
        previous = self.scales, self.active, self._given, self._to
        self._given, self._to = scales, (device or scales.device, dtype or scales.dtype)
        self._apply(scales)
        try:
            yield
        finally:
            self.scales, self.active, self._given, self._to = previous

    def switch(self, on: torch.Tensor) -> None:
        """Inside `use`: each sample's scales where `on` (batch,) is true, zeros elsewhere (a step outside its window)."""
        if self._given is None:
            raise RuntimeError("switch() is for the calls inside use(scales)")
        self._apply(self._given * on.to(self._given.dtype)[:, None])

    def _apply(self, scales: torch.Tensor) -> None:
        self.active = tuple(bool(a) for a in (scales != 0).any(dim=0).tolist())  # host scales: no device read
        self.scales = scales.to(device=self._to[0], dtype=self._to[1])


class LayerScaledIPAttnProcessor(nn.Module):
    """diffusers' IPAdapterAttnProcessor2_0 computation with a scale per sample for this layer."""

    def __init__(self, layer_index: int, state: InjectionState, native: nn.Module):
        super().__init__()
        if len(native.to_k_ip) != 1:
            raise ValueError("styleprobe injects one IP-Adapter at a time; load a single adapter")
        self.layer_index = layer_index
        self.state = state
        self.to_k_ip = native.to_k_ip  # the trained weights, shared with the native processor
        self.to_v_ip = native.to_v_ip
        self._native = [native]  # a list, so the native processor is not registered a second time

    @property
    def native(self) -> nn.Module:
        return self._native[0]

    def _sample_scales(self, batch: int, like: torch.Tensor) -> torch.Tensor | None:
        """This layer's scale per sample (None where every sample has 0): CFG's doubled batch repeats it."""
        if self.state.scales is None:
            s = self.native.scale[0]
            return None if s == 0 else torch.full((batch,), float(s), dtype=like.dtype, device=like.device)
        if not self.state.active[self.layer_index]:
            return None
        s = self.state.scales[:, self.layer_index]  # a view of the batch's device tensor: no copy, no sync
        if batch != s.shape[0]:
            if batch % s.shape[0]:
                raise ValueError(f"batch of {batch} is not a multiple of the {s.shape[0]} per-sample scales")
            s = s.repeat(batch // s.shape[0])  # CFG: [uncond, cond] halves carry the same pattern (on the device)
        return s if (s.device, s.dtype) == (like.device, like.dtype) else s.to(device=like.device, dtype=like.dtype)

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Any = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        scale: float = 1.0,
        ip_adapter_masks: Any = None,
    ) -> torch.Tensor:
        if ip_adapter_masks is not None:
            raise ValueError("styleprobe's processor does not take ip_adapter_masks")
        ip_hidden_states = None
        if isinstance(encoder_hidden_states, tuple):
            encoder_hidden_states, ip_hidden_states = encoder_hidden_states
        p = project(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        heads, dtype = attn.heads, p.query.dtype
        hidden_states = F.scaled_dot_product_attention(p.query, p.key, p.value, attn_mask=p.mask, dropout_p=0.0)
        hidden_states = merge_heads(hidden_states, p.batch, heads, p.head_dim, dtype)

        s = None if ip_hidden_states is None else self._sample_scales(p.batch, hidden_states)
        if s is not None:
            ip_states = ip_hidden_states[0]
            ip_key = split_heads(self.to_k_ip[0](ip_states), p.batch, heads, p.head_dim)
            ip_value = split_heads(self.to_v_ip[0](ip_states), p.batch, heads, p.head_dim)
            ip_out = F.scaled_dot_product_attention(p.query, ip_key, ip_value, attn_mask=None, dropout_p=0.0)
            hidden_states = hidden_states + s[:, None, None] * merge_heads(ip_out, p.batch, heads, p.head_dim, dtype)
        return finish(attn, hidden_states, p)


def _is_native_ip(processor: Any) -> bool:
    from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

    return isinstance(processor, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0))


def _installed(unet: Any) -> bool:
    return any(isinstance(p, LayerScaledIPAttnProcessor) for p in unet.attn_processors.values())


def install(unet: Any) -> InjectionState:
    """Swap the adapter's attn2 processors for styleprobe's (idempotent); returns the shared state.

    The state lives on the UNet for its lifetime, so it survives `native_processors` round trips.
    """
    state = getattr(unet, "styleprobe_state", None)
    if state is None:
        state = InjectionState(LayerMap.from_unet(unet))
    if _installed(unet):
        return state
    processors = dict(unet.attn_processors)
    names = state.layer_map.names
    missing = [n for n in names if not _is_native_ip(processors.get(f"{n}.processor"))]
    if missing:
        raise ValueError(f"no IP-Adapter processor on {missing[0]} ({len(missing)} layers): load the adapter first")
    for i, name in enumerate(names):
        key = f"{name}.processor"
        processors[key] = LayerScaledIPAttnProcessor(i, state, processors[key])
    unet.set_attn_processor(processors)
    unet.styleprobe_state = state
    return state


def restore_native(unet: Any) -> None:
    """Put diffusers' own IP-Adapter processors back (weights untouched)."""
    if not _installed(unet):
        return
    processors = {
        k: (p.native if isinstance(p, LayerScaledIPAttnProcessor) else p) for k, p in unet.attn_processors.items()
    }
    unet.set_attn_processor(processors)


@contextmanager
def native_processors(unet: Any) -> Iterator[None]:
    """Run a block with diffusers' native processors (for comparisons and baselines), then reinstall ours."""
    installed = _installed(unet)
    restore_native(unet)
    try:
        yield
    finally:
        if installed:
            install(unet)


@contextmanager
def per_sample_adapter_inputs(pipe: Any, embeds: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Give each sample of a pipeline call its own adapter input.

    diffusers' pipelines treat `ip_adapter_image_embeds` as one reference for the whole call and repeat it
    batch-size times; styleprobe's batches mix references and subtraction strengths, so for the duration of
    the call the pipeline takes the (2B, 1, dim) tensor as it is.
    """
    pipe.prepare_ip_adapter_image_embeds = lambda *args, **kwargs: [e.to(pipe.device) for e in embeds]
    try:
        yield embeds
    finally:
        del pipe.prepare_ip_adapter_image_embeds
