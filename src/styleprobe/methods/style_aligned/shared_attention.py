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
Here each sample names its reference (`ref_index`, a reference row of the same batch: `methods/reference_rows.py`)
and each sample has its own set of sharing layers, so one UNet call carries several references and layer patterns, and a sample's result does not
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

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from styleprobe.methods.attention import SelfAttention, install_self_attention
from styleprobe.methods.reference_rows import ReferenceAttention

EPS = 1e-5


@dataclass
class SharingPlan(ReferenceAttention):
    """Who shares what in one pipeline call (tensors over one CFG half's samples): the attn1 layers' attend step."""

    share_norm: torch.Tensor  # (B,) bool: whether each sample's GroupNorms share the reference's statistics
    adain_queries: bool = True
    adain_keys: bool = True
    adain_values: bool = False
    score_scale: float = 1.0
    score_shift: float = 0.0
    full: bool = False  # full_attention_share: the sample and its reference attend jointly

    def __post_init__(self) -> None:
        super().__post_init__()
        self._given_norm = self.share_norm

    def switch(self, on: torch.Tensor) -> None:
        """Outside its window an item shares neither attention nor GroupNorm statistics: the plain model's step."""
        super().switch(on)
        self.share_norm = self._given_norm & self._item_mask(on)

    def share(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rows: torch.Tensor,
              refs: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Shared attention of samples `rows` with their references `refs` (batch, heads, tokens, dim)."""
        if self.full:
            # the sample and its reference as one sequence, reference first, each attending to both
            n = query.shape[-2]
            joint = F.scaled_dot_product_attention(
                torch.cat([query[refs], query[rows]], dim=-2), torch.cat([key[refs], key[rows]], dim=-2),
                torch.cat([value[refs], value[rows]], dim=-2), dropout_p=0.0,
            )
            out[refs], out[rows] = joint[..., :n, :], joint[..., n:, :]
            return torch.cat([rows, refs])
        qs, ks, vs = query[rows], key[rows], value[rows]
        q_ref, k_ref, v_ref = query[refs], key[refs], value[refs]
        if self.adain_queries:
            qs = adain(qs, q_ref)
        if self.adain_keys:
            ks = adain(ks, k_ref)
        if self.adain_values:
            vs = adain(vs, v_ref)
        keys = torch.cat([ks, k_ref * self.score_scale if self.score_scale != 1 else k_ref], dim=-2)
        values = torch.cat([vs, v_ref], dim=-2)
        bias = None
        if self.score_shift != 0:
            n = key.shape[-2]
            bias = torch.zeros(1, 1, 1, 2 * n, dtype=query.dtype, device=query.device)
            bias[..., n:] = self.score_shift
        out[rows] = F.scaled_dot_product_attention(qs, keys, values, attn_mask=bias, dropout_p=0.0)
        return rows


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


def _shared_group_norm(module: nn.GroupNorm, state: SelfAttention, x: torch.Tensor) -> torch.Tensor:
    """GroupNorm whose statistics, for sharing samples, span the sample and its reference (concatenated on dim -2)."""
    plan = state.step
    plain = F.group_norm(x, module.num_groups, module.weight, module.bias, module.eps)
    if not isinstance(plan, SharingPlan) or x.ndim < 3:
        return plain
    batch = x.shape[0]
    ref_index, share = plan.expand(plan.ref_index, batch, index=True), plan.expand(plan.share_norm, batch)
    rows = share.to(x.device).nonzero().flatten()
    if not len(rows):
        return plain
    n = x.shape[-2]
    joint = torch.cat([x[rows], x[ref_index.to(x.device)[rows]]], dim=-2)
    plain[rows] = F.group_norm(joint, module.num_groups, module.weight, module.bias, module.eps)[..., :n, :]
    return plain


def install(unet: Any) -> SelfAttention:
    """The attn1 processors (`methods.attention`) on every self-attention layer, sharing in every GroupNorm.

    Idempotent. With no sharing plan in use, every processor and norm computes exactly what the plain model computes.
    """
    state = install_self_attention(unet)
    for module in unet.modules():
        if isinstance(module, nn.GroupNorm) and "forward" not in module.__dict__:
            module.forward = (lambda m: lambda x: _shared_group_norm(m, state, x))(module)
    return state
