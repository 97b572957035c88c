"""The self-attention swap of Visual Style Prompting, per sample, and StyleKeeper's query-swapped pass.

Visual Style Prompting (Jeong et al., ICCV 2025; naver-ai/Visual-Style-Prompting, `CrossFrameAttnProcessor` and
`swapping_attention` in pipelines/inverted_ve_pipeline.py) denoises a reference sample at index 0 of each CFG half
and, in the chosen self-attention (`attn1`) layers, lets every sample attend with its own queries to the
reference's keys and values:  out = softmax(Q_x K_ref^T / sqrt(d)) V_ref.  Cross-attention is untouched.

Here each sample names its own reference row (`methods/reference_rows.py`) and its own layers, so one call carries
several references, layer patterns and denoising windows and an image does not depend on its batch-mates; the
reference row itself attends to its own keys and values, as in the original (index 0 maps to itself).

StyleKeeper's negative visual query guidance (arXiv 2510.06827) needs one more pass per image, a *negative row*:
the same latent and prompt as its image, but in the same layers it takes the reference's queries and keeps its
own keys and values (`query_swap`), so it simulates content leakage; `guidance.py` combines its score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from styleprobe.methods.reference_rows import ReferenceAttention


@dataclass
class SwapPlan(ReferenceAttention):
    """Who swaps what in one pipeline call (tensors over one CFG half's samples): the attn1 layers' attend step.

    Samples are [reference rows, items, negative rows]; `query_swap[j]` marks a negative row, which takes its
    reference's queries instead of its keys and values. `item_of[j]` is the item a negative row belongs to (-1 for
    the others): it follows that item in and out of its window.
    """

    query_swap: torch.Tensor | None = None  # (B,) bool
    item_of: torch.Tensor | None = None  # (B,) long: a negative row's item (its index among the items), else -1

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.ref_index.shape[0]
        if self.query_swap is None:
            self.query_swap = torch.zeros(n, dtype=torch.bool)
        if self.item_of is None:
            self.item_of = torch.full((n,), -1, dtype=torch.long)

    def switch(self, on: torch.Tensor) -> None:
        """For the coming steps: items whose `on` is false, and their negative rows, swap nothing."""
        on = on.to(torch.bool)
        negatives = self.query_swap.nonzero().flatten()
        n_items = on.shape[0]
        first_item = self.ref_index.shape[0] - negatives.shape[0] - n_items
        mask = torch.ones(self.ref_index.shape[0], dtype=torch.bool)
        mask[first_item:first_item + n_items] = on
        mask[negatives] = on[self.item_of[negatives]]
        self.layers = self._given_layers & mask[:, None]

    def share(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rows: torch.Tensor,
              refs: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Rows attend with their own queries to their references' keys and values; negative rows the other way."""
        swap_q = self.expand(self.query_swap, query.shape[0]).to(query.device)[rows]
        kv, qs = rows[~swap_q], rows[swap_q]
        if len(kv):
            r = refs[~swap_q]
            out[kv] = F.scaled_dot_product_attention(query[kv], key[r], value[r], dropout_p=0.0)
        if len(qs):
            r = refs[swap_q]
            out[qs] = F.scaled_dot_product_attention(query[r], key[qs], value[qs], dropout_p=0.0)
        return rows
