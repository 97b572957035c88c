"""What each metric measures and which way is better: one role per column, declared by its scorer kind.

Analysis takes roles and directions from here (as recorded in each metric's `_metric.yaml` when it was scored),
never from a column's name. A metric config may relabel its own column with `role:` (and `better:`): DINOv2
similarity to the reference is `role: reference`, a number without a better side. This module imports nothing
heavy, so analysis and planning read roles without loading a scorer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from styleprobe.errors import ConfigError

#: What a metric can measure. Analysis takes each column's role and better direction from its scorer (or its
#: metric config's `role:`), never from the column's name.
ROLES: dict[str, str] = {
    "style": "style similarity to the reference",
    "leakage": "content leakage from the reference",
    "text": "alignment with the text prompt",
    "reference": "similarity to the reference, style and content mixed",
    "quality": "image quality",
    "unknown": "not declared",
}
#: Which way is better, by default, for each role (a leak-free rate is a leakage metric that is better higher).
DEFAULT_BETTER: dict[str, str] = {
    "style": "higher", "leakage": "lower", "text": "higher", "reference": "none", "quality": "higher", "unknown": "none",
}
BETTER = ("higher", "lower", "none")


@dataclass(frozen=True)
class MetricRole:
    """What one metric column measures and which direction is better ("none": a number without a better side)."""

    role: str
    better: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"metric role {self.role!r}; choose one of {', '.join(r for r in ROLES if r != 'unknown')}")
        if not self.better:
            object.__setattr__(self, "better", DEFAULT_BETTER[self.role])
        if self.better not in BETTER:
            raise ConfigError(f"metric direction better={self.better!r}; choose higher, lower or none")

    @property
    def sign(self) -> int:
        """+1 where higher is better, -1 where lower is, 0 where neither (a difference then gets no better or worse)."""
        return {"higher": 1, "lower": -1, "none": 0}[self.better]

    @property
    def has_direction(self) -> bool:
        return self.better != "none"

    def describe(self) -> str:
        """E.g. 'content leakage from the reference, lower is better'."""
        return ROLES[self.role] + ("" if not self.has_direction else f", {self.better} is better")

    def __str__(self) -> str:
        return f"{self.role}:{self.better}"

    @classmethod
    def parse(cls, text: str) -> MetricRole:
        """The inverse of `str()`: 'leakage:lower' (a bare role takes its default direction)."""
        role, _, better = str(text).partition(":")
        return cls(role.strip(), better.strip())


UNKNOWN_ROLE = MetricRole("unknown")

#: Each scorer kind's main column.
KIND_ROLES: dict[str, MetricRole] = {
    "style_clip": MetricRole("style"),
    "style_csd": MetricRole("style"),
    "style_dino": MetricRole("style"),  # DINO v1 as StyleAligned and B-LoRA read it; DINOv2 configs say `role: reference`
    "text_clip": MetricRole("text"),
    "leak_clip": MetricRole("leakage"),
    "toy_judge": MetricRole("style"),  # the toy world's judge: the output's style class is the reference's (a rate)
    "quality_imagereward": MetricRole("quality"),  # preference and aesthetic scores of the output (and its prompt)
    "quality_pickscore": MetricRole("quality"),
    "quality_hps": MetricRole("quality"),
    "quality_aesthetic": MetricRole("quality"),
}


def kind_roles(kind: str, name: str, options: Mapping[str, Any]) -> dict[str, MetricRole]:
    """The columns a metric of `kind` named `name` fills -> their roles; `role:`/`better:` in `options` relabel `name`."""
    own = MetricRole(str(options["role"]), str(options.get("better", ""))) if "role" in options else KIND_ROLES.get(kind, UNKNOWN_ROLE)
    out = {name: own}
    if kind == "leak_clip":  # the margin is leakage too; the leak-free rate counts it the other way round
        out[str(options.get("margin_column", "leak_margin"))] = MetricRole("leakage")
        out[str(options.get("free_column", "leak_free"))] = MetricRole("leakage", "higher")
    if kind == "toy_judge":  # the prompted shape drawn (the prompt followed); the reference's shape drawn instead
        out[str(options.get("shape_column", "judge_shape"))] = MetricRole("text")
        out[str(options.get("leak_column", "judge_leak"))] = MetricRole("leakage")
    return out


#: Metric columns renamed because their old name said the wrong thing: old -> (new name, its role). DINOv2
#: similarity to the reference mixes style and content; it was scored as `leak_dino` (leakage) and `style_dinov2`.
RENAMED: dict[str, tuple[str, MetricRole]] = {
    "leak_dino": ("ref_dinov2", MetricRole("reference")),
    "style_dinov2": ("ref_dinov2", MetricRole("reference")),
}
RENAMED_WHY = "DINOv2 similarity to the reference mixes style and content, so it is reported as reference similarity"
