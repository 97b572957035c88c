"""The preference-score MLP head of the LAION aesthetic predictor, which ImageReward reuses.

Both originals define it alike (christophschuhmann/improved-aesthetic-predictor 6934dd8, simple_inference.py `MLP`;
THUDM/ImageReward c1392c6, ImageReward/ImageReward.py `MLP`): five linear layers, input -> 1024 -> 128 -> 64 -> 16 -> 1,
with dropout between the first four and no activation anywhere (the ReLUs are commented out in both), under the
state-dict names `layers.0`, `.2`, `.4`, `.6`, `.7`. In evaluation the dropouts are identities, so the head is an
affine map of its input; it is kept layer by layer so that the published files load by name.
"""

from __future__ import annotations

import torch
from torch import nn


class RewardMLP(nn.Module):
    """input_size -> 1024 -> 128 -> 64 -> 16 -> 1, dropout 0.2, 0.2, 0.1 between, no activations (see the module)."""

    def __init__(self, input_size: int):
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, input_size) -> (N,)"""
        return self.layers(features).squeeze(-1)


def head_input_size(state: dict[str, torch.Tensor], prefix: str = "") -> int | None:
    """The head's input width from its first layer's weight in `state` (None when the state has no such head)."""
    weight = state.get(f"{prefix}layers.0.weight")
    return None if weight is None or weight.ndim != 2 else int(weight.shape[1])
