"""IP-Adapter (h94) with InstantStyle's two controls: per-layer injection and content subtraction.

The reference's CLIP image embedding goes through the adapter's projection into the image branch of every
cross-attention (`attn2`) layer the pattern switches on, at `scale` (InstantStyle, arXiv 2404.02733: only
`up_blocks.0.attentions.1` for style, plus `down_blocks.2.attentions.1` for layout). `subtraction` s
removes s x the CLIP text embedding of the reference's content label before the projection.

Items that differ in pattern, scale, strength, reference, prompt or seed share one pipeline call:
per-sample layer scales go to styleprobe's attn2 processors (`injection.py`), per-sample adapter inputs
(with subtraction applied, `subtraction.py`) go to the pipeline as precomputed embeddings. Each reference
and content label is encoded once per loaded model. Keys and rows are those styleprobe wrote before methods
were plug-ins, so earlier results folders resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from styleprobe.errors import ConfigError
from styleprobe.methods.base import Method, MethodEntry, Parts, register

if TYPE_CHECKING:  # torch is imported where it is used, so planning a sweep never waits for it
    import torch


@dataclass(frozen=True)
class IPAdapterKnobs:
    scale: float = 1.0  # adapter scale: multiplies the layer pattern
    subtraction: float = 0.0  # content subtraction strength s: image_embeds - s * text_embeds(content)


@dataclass
class IPAdapterState:
    """What the adapter adds to one loaded pipeline, and its encode-once caches."""

    injection: Any  # injection.InjectionState shared by styleprobe's attn2 processors
    encoder_hid_proj: Any  # the adapter's projection, set aside while another method runs
    text_tower: tuple[Any, Any] | None  # (tokenizer, encoder) for content text of ViT-H adapters
    references: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    contents: dict[str, torch.Tensor] = field(default_factory=dict)


@register
class IPAdapter(Method):
    """IP-Adapter's image branch in the cross-attention layers a pattern selects, with content subtraction."""

    name: ClassVar[str] = "ip_adapter"
    site: ClassVar[str] = "attn2"
    Knobs: ClassVar[type] = IPAdapterKnobs

    def check_knobs(self, knobs: IPAdapterKnobs, where: str) -> None:
        from styleprobe.config import non_negative_number

        non_negative_number(knobs.scale, f"{where}.scale")
        non_negative_number(knobs.subtraction, f"{where}.subtraction")

    def check_entry(self, entry: MethodEntry, spec: Any) -> None:
        if spec.adapter.kind == "plus" and any(k.subtraction for k in entry.variants):
            raise ConfigError(
                f"model {spec.name} uses a patch-token ('plus') adapter, which has no global embedding to subtract "
                f"from; set method.{entry.name}.subtraction=[0]"
            )

    def content_label_use(self, knobs: IPAdapterKnobs) -> str:
        return f"content subtraction (strength {knobs.subtraction:g})" if knobs.subtraction else ""

    def model_identity(self, spec: Any) -> dict[str, Any]:
        return {"adapter": spec.adapter_id}

    def row_fields(self, parts: Parts) -> dict[str, Any]:
        return {**super().row_fields(parts), "adapter": parts.spec.adapter_id}

    # generation -------------------------------------------------------------------------------------------
    def state(self, model: Any) -> IPAdapterState:
        """The adapter on this pipeline, loaded (through diffusers' `load_ip_adapter`) on first use."""
        if self.name not in model.attached:
            model.attached[self.name] = _attach(model)
        return model.attached[self.name]

    def activate(self, model: Any) -> None:
        from styleprobe.injection import install

        state = self.state(model)
        model.pipe.unet.encoder_hid_proj = state.encoder_hid_proj
        install(model.pipe.unet)  # idempotent; puts ours back if another method reset the processors

    def deactivate(self, model: Any) -> None:
        # Without the projection the UNet takes no image embeds, and the attn2 processors see no image
        # tokens, so they compute plain attention: the base model, with nothing unloaded.
        if self.name in model.attached:
            model.pipe.unet.encoder_hid_proj = None

    def prepare(self, engine: Any, items: Sequence[Any], store: Any) -> None:
        from styleprobe.subtraction import check_subtraction

        check_subtraction(engine.model, [it.knobs.subtraction for it in items])
        for it in {it.reference.digest: it for it in items}.values():
            self._reference(engine.model, it.reference)

    def _reference(self, model: Any, reference: Any) -> tuple[torch.Tensor, torch.Tensor]:
        from styleprobe.subtraction import encode_references

        cache = self.state(model).references
        if reference.digest not in cache:
            cond, uncond = encode_references(model, [reference.load()])
            cache[reference.digest] = (cond[0], uncond[0])
        return cache[reference.digest]

    def _content(self, model: Any, text: str) -> torch.Tensor:
        from styleprobe.subtraction import encode_content

        state = self.state(model)
        if text not in state.contents:
            state.contents[text] = encode_content(model, [text], state.text_tower)[0]
        return state.contents[text]

    def adapter_embeds(self, model: Any, items: Sequence[Any], guided: bool) -> list[torch.Tensor]:
        """Per-sample adapter inputs: reference embedding minus s x content embedding (cond half only)."""
        import torch

        from styleprobe.subtraction import adapter_inputs, subtract

        refs = [self._reference(model, it.reference) for it in items]
        cond = torch.stack([r[0] for r in refs])
        uncond = torch.stack([r[1] for r in refs])
        strengths = torch.tensor([it.knobs.subtraction for it in items])
        if bool(torch.any(strengths != 0)):
            text = torch.stack([self._content(model, it.reference.content) for it in items])
            cond = subtract(cond, text, strengths)
        return adapter_inputs(cond, uncond, guided)

    @staticmethod
    def layer_scales(items: Sequence[Any]) -> torch.Tensor:
        """(batch, n_layers): each item's pattern times its adapter scale."""
        import torch

        return torch.tensor([[s * it.knobs.scale for s in it.pattern.scales] for it in items], dtype=torch.float32)

    def run_batch(self, engine: Any, items: Sequence[Any]) -> list[Any]:
        from styleprobe.injection import per_sample_adapter_inputs

        model = engine.model
        sampler = items[0].sampler
        state = self.state(model)
        with (
            state.injection.use(self.layer_scales(items), model.device, model.dtype),  # on the device once per batch
            per_sample_adapter_inputs(model.pipe, self.adapter_embeds(model, items, sampler.guided)) as embeds,
        ):
            return engine.denoise(
                sampler, [it.prompt.prompt for it in items], engine.noise([it.seed for it in items], sampler),
                ip_adapter_image_embeds=embeds,
            )


def _attach(model: Any) -> IPAdapterState:
    """Load the preset's adapter into the pipeline and swap in styleprobe's per-sample attn2 processors."""
    from styleprobe.injection import install
    from styleprobe.models import load_text_tower, resolve_source, unavailable

    spec, pipe = model.spec, model.pipe
    source = resolve_source(spec.adapter.source)
    try:
        pipe.load_ip_adapter(
            source,
            subfolder=spec.adapter.subfolder,
            weight_name=spec.adapter.weight_name,
            image_encoder_folder=spec.adapter.image_encoder_folder,
        )
    except (OSError, ValueError) as err:
        raise unavailable(f"the IP-Adapter {spec.adapter.weight_name}", source, spec.adapter.subfolder, err) from err
    pipe.to(model.device)
    tower = load_text_tower(resolve_source(spec.content_text_encoder), model.device, model.dtype) if spec.content_text_encoder else None
    injection = install(pipe.unet)
    return IPAdapterState(injection=injection, encoder_hid_proj=pipe.unet.encoder_hid_proj, text_tower=tower)
