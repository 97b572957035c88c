"""StyleAligned's shared attention and shared GroupNorm, with a reference per sample and a pattern per sample.

StyleAligned (Hertz et al., arXiv 2312.02133; google/style-aligned, `sa_handler.py`) makes every image of a
batch attend to a reference image in its self-attention (`attn1`) layers:
- AdaIN over tokens: a sample's queries and keys (and values, if asked) are normalised to the reference's
  per-channel statistics, adain(x) = (x - mean_x) / std_x * std_ref + mean_ref, std = sqrt(var + 1e-5) with
  torch's unbiased variance, after the head split;
- the sample attends to its own keys and values plus the reference's: K = [K, s * K_ref], V = [V, V_ref]
  (`shared_score_scale` s), and a `shared_score_shift` is added to the logits of the reference's tokens;
- with `full_attention_share`, a sample and its reference attend jointly to each other (no AdaIN);
- with shared norms, a GroupNorm's statistics are taken over the sample's features concatenated with the
  reference's (along the height axis, as the original concatenates on dim -2).
The original puts the reference at index 0 of each CFG half and shares every attn1 layer with all samples.
Here each sample names its reference (`ref_index`, a row of the same batch) and each sample has its own set of
sharing layers, so one UNet call carries several references and layer patterns, and a sample's result does not
depend on what else is in its batch. Reference rows themselves compute plain attention and plain norms: in the
original a reference attends to its own keys twice and AdaIN-normalises to itself, which gives the same numbers.

Deliberate differences from the original, each a rough edge guarded rather than copied:
- `full_attention_share`: the original lets all images of a CFG half attend to one another jointly, so an image
  depends on its batch-mates; here the group is the sample and its own reference (the original with two prompts).
  A reference shared this way is changed by its sample, so each such sample needs a reference row of its own.
- attention masks: the original's shift path builds full logits and ignores them; here a mask on a shared layer
  is an error (SDXL's pipelines never pass one to `attn1`).
- `share_layer_norm` is accepted and has no effect: LayerNorm normalises each token on its own, so concatenating
  the reference's tokens (as the original does) cannot change a sample's output. It costs nothing here.
- `only_self_level` (see `switched_off`) divides by zero in the original when level x layers < 1; here no
  layer is switched off then (or all, above 0.5, where the original flips the selection).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from styleprobe.methods.attention import finish, merge_heads, project
from styleprobe.models.layers import LayerMap

EPS = 1e-5


@dataclass
class SharingPlan:
    """Who shares what in one pipeline call; tensors over the call's samples (one CFG half)."""

    ref_index: torch.Tensor  # (B,) long: each sample's reference row (a reference row points to itself)
    layers: torch.Tensor  # (B, n_layers) bool: where each sample shares attention
    share_norm: torch.Tensor  # (B,) bool: whether each sample's GroupNorms share the reference's statistics
    adain_queries: bool = True
    adain_keys: bool = True
    adain_values: bool = False
    score_scale: float = 1.0
    score_shift: float = 0.0
    full: bool = False  # full_attention_share: the sample and its reference attend jointly

    def expanded(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ref_index, layers and share_norm for a UNet batch: CFG doubles it, [unconditional, conditional]."""
        n = self.ref_index.shape[0]
        if batch == n:
            return self.ref_index, self.layers, self.share_norm
        if batch != 2 * n:
            raise ValueError(f"a UNet batch of {batch} does not fit a sharing plan for {n} samples")
        return (torch.cat([self.ref_index, self.ref_index + n]), self.layers.repeat(2, 1), self.share_norm.repeat(2))


class SharingState:
    """The plan of the current call, read by every shared-attention processor and GroupNorm of one UNet."""

    def __init__(self, layer_map: LayerMap):
        self.layer_map = layer_map
        self.plan: SharingPlan | None = None

    @contextmanager
    def use(self, plan: SharingPlan) -> Iterator[None]:
        if plan.layers.ndim != 2 or plan.layers.shape[1] != len(self.layer_map):
            raise ValueError(f"layers must have shape (batch, {len(self.layer_map)}), got {tuple(plan.layers.shape)}")
        previous, self.plan = self.plan, plan
        try:
            yield
        finally:
            self.plan = previous


def adain(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """x normalised to ref's per-channel mean and std over tokens (dim -2), as StyleAligned's `adain`."""
    mean, std = x.mean(dim=-2, keepdim=True), (x.var(dim=-2, keepdim=True) + EPS).sqrt()
    ref_mean, ref_std = ref.mean(dim=-2, keepdim=True), (ref.var(dim=-2, keepdim=True) + EPS).sqrt()
    return (x - mean) / std * ref_std + ref_mean


def switched_off(n_layers: int, level: float) -> list[bool]:
    """StyleAligned's `only_self_level`: which of the self-attention layers (UNet order) do not share.

    The original's rule (`_get_switch_vec`): 0 none, 1 all; otherwise every (n // k)-th layer, k = int(level * n),
    the selection flipped above 0.5. Where k is 0 the original divides by zero; here no layer is switched then.
    """
    if level <= 0:
        return [False] * n_layers
    if level >= 1:
        return [True] * n_layers
    flip = level > 0.5
    k = int((1 - level if flip else level) * n_layers)
    picked = [False] * n_layers if k == 0 else [i % (n_layers // k) == 0 for i in range(n_layers)]
    return [not p for p in picked] if flip else picked


class SharedSelfAttnProcessor(nn.Module):
    """diffusers' AttnProcessor2_0 for one `attn1` layer, sharing attention with each sample's reference.

    diffusers re-creates processors with no arguments when it loads or unloads adapters; such a copy has no
    state and computes plain attention until `install` puts real ones back.
    """

    def __init__(self, layer_index: int = -1, state: SharingState | None = None):
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
        hidden_states = self._attend(p.query, p.key, p.value, p.mask)
        return finish(attn, merge_heads(hidden_states, p.batch, attn.heads, p.head_dim, p.query.dtype), p)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention per sample (batch, heads, tokens, dim): shared where the plan says so, plain elsewhere."""
        plan = self.state.plan if self.state is not None else None
        active = None
        if plan is not None:
            ref_index, layers, _ = plan.expanded(q.shape[0])
            active = layers[:, self.layer_index].to(q.device)
        if active is None or not bool(active.any()):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0)
        if mask is not None:
            raise ValueError("styleprobe's shared attention does not take attention masks on shared layers")
        out = torch.empty_like(q)
        rows = active.nonzero().flatten()
        refs = ref_index.to(q.device)[rows]
        if plan.full:
            # the sample and its reference as one sequence, reference first, each attending to both
            n = q.shape[-2]
            joint = F.scaled_dot_product_attention(
                torch.cat([q[refs], q[rows]], dim=-2), torch.cat([k[refs], k[rows]], dim=-2),
                torch.cat([v[refs], v[rows]], dim=-2), dropout_p=0.0,
            )
            out[refs], out[rows] = joint[..., :n, :], joint[..., n:, :]
            done = torch.zeros_like(active)
            done[rows], done[refs] = True, True
        else:
            qs, ks, vs = q[rows], k[rows], v[rows]
            q_ref, k_ref, v_ref = q[refs], k[refs], v[refs]
            if plan.adain_queries:
                qs = adain(qs, q_ref)
            if plan.adain_keys:
                ks = adain(ks, k_ref)
            if plan.adain_values:
                vs = adain(vs, v_ref)
            keys = torch.cat([ks, k_ref * plan.score_scale if plan.score_scale != 1 else k_ref], dim=-2)
            values = torch.cat([vs, v_ref], dim=-2)
            bias = None
            if plan.score_shift != 0:
                n = k.shape[-2]
                bias = torch.zeros(1, 1, 1, 2 * n, dtype=q.dtype, device=q.device)
                bias[..., n:] = plan.score_shift
            out[rows] = F.scaled_dot_product_attention(qs, keys, values, attn_mask=bias, dropout_p=0.0)
            done = active
        rest = (~done).nonzero().flatten()
        if len(rest):
            out[rest] = F.scaled_dot_product_attention(q[rest], k[rest], v[rest], dropout_p=0.0)
        return out


def _shared_group_norm(module: nn.GroupNorm, state: SharingState, x: torch.Tensor) -> torch.Tensor:
    """GroupNorm whose statistics, for sharing samples, span the sample and its reference (concatenated on dim -2)."""
    plan = state.plan
    plain = F.group_norm(x, module.num_groups, module.weight, module.bias, module.eps)
    if plan is None or x.ndim < 3:
        return plain
    ref_index, _, share = plan.expanded(x.shape[0])
    rows = share.to(x.device).nonzero().flatten()
    if not len(rows):
        return plain
    n = x.shape[-2]
    joint = torch.cat([x[rows], x[ref_index.to(x.device)[rows]]], dim=-2)
    plain[rows] = F.group_norm(joint, module.num_groups, module.weight, module.bias, module.eps)[..., :n, :]
    return plain


def _is_installed(unet: Any, state: SharingState) -> bool:
    processors = unet.attn_processors
    return all(getattr(processors[f"{n}.processor"], "state", None) is state for n in state.layer_map.names)


def install(unet: Any) -> SharingState:
    """Put shared-attention processors on every attn1 layer and sharing into every GroupNorm (idempotent).

    The state lives on the UNet, so installing again (after another method reset the processors) reuses it.
    With no plan in use, every processor and norm computes exactly what the plain model computes.
    """
    state = getattr(unet, "styleprobe_sharing", None)
    if state is None:
        state = SharingState(LayerMap.from_unet(unet, "attn1"))
        unet.styleprobe_sharing = state
    if not _is_installed(unet, state):
        processors = dict(unet.attn_processors)
        for i, name in enumerate(state.layer_map.names):
            processors[f"{name}.processor"] = SharedSelfAttnProcessor(i, state)
        unet.set_attn_processor(processors)
    for module in unet.modules():
        if isinstance(module, nn.GroupNorm) and "forward" not in module.__dict__:
            module.forward = (lambda m: lambda x: _shared_group_norm(m, state, x))(module)
    return state
