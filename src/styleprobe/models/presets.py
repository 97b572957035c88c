"""A model preset (the `model` config group): the base pipeline, its IP-Adapter checkpoint and the text tower
whose CLIP space matches the adapter's image encoder. Plain data, checked without torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from styleprobe.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where it is used: planning and config errors never wait for it
    pass
log = logging.getLogger(__name__)


FAMILIES = ("sdxl", "sd15")


ADAPTER_KINDS = ("global", "plus")


DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class AdapterSpec:
    """Where an IP-Adapter checkpoint lives, in h94/IP-Adapter's layout."""

    source: str
    subfolder: str
    weight_name: str
    image_encoder_folder: str = "image_encoder"
    kind: str = "global"  # "global": pooled CLIP image embedding; "plus": patch tokens (Resampler)


@dataclass(frozen=True)
class ModelSpec:
    """A model preset, as the `model` config group gives it."""

    name: str
    family: str
    base: str
    adapter: AdapterSpec
    content_text_encoder: str | None = None  # None: the pipeline's own text_encoder_2 (SDXL + bigG)
    variant: str | None = None
    revision: str | None = None
    dtype: str = "auto"

    @classmethod
    def from_config(cls, cfg: Any) -> "ModelSpec":
        """Build from a config mapping (sampler defaults in it are ignored); bad values fail with a one-line fix."""
        d = dict(cfg)
        adapter = AdapterSpec(**dict(d.pop("adapter")))
        known = {"name", "family", "base", "content_text_encoder", "variant", "revision", "dtype"}
        spec = cls(adapter=adapter, **{k: d[k] for k in known if k in d})
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"model.family={self.family!r} is unknown; use one of {', '.join(FAMILIES)}")
        if self.adapter.kind not in ADAPTER_KINDS:
            raise ConfigError(f"model.adapter.kind={self.adapter.kind!r} is unknown; use one of {', '.join(ADAPTER_KINDS)}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype={self.dtype!r} is unknown; use auto or one of {', '.join(DTYPES)}")
        if self.family == "sd15" and self.content_text_encoder is None and self.adapter.kind == "global":
            raise ConfigError(
                "model.content_text_encoder is required for sd15 (its adapter's image encoder is ViT-H): "
                "set it to laion/CLIP-ViT-H-14-laion2B-s32B-b79K or a local copy"
            )

    @property
    def base_identity(self) -> dict[str, Any]:
        """What about the base pipeline determines an image: part of every item's key."""
        return {"name": self.name, "base": self.base, "variant": self.variant, "revision": self.revision}

    @property
    def adapter_id(self) -> str:
        return f"{self.adapter.source}/{self.adapter.subfolder}/{self.adapter.weight_name}"

    @property
    def identity(self) -> dict[str, Any]:
        """The base pipeline's identity with the IP-Adapter checkpoint's: what IP-Adapter items are keyed by."""
        return {**self.base_identity, "adapter": self.adapter_id}
