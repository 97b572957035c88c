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

Keys also hold the model settings that change an image but were once left out of them (`KEYED_SETTINGS`): the image
encoder folder, the adapter kind and the content text tower. Each enters a key only where its value differs from
the one every key made before implied for that preset (`KEY_BASELINES`), so old folders keep resuming while a changed
setting makes new images; the text tower counts only for items with subtraction > 0, the only ones it changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from styleprobe.errors import ConfigError
from styleprobe.methods.base import Method, MethodEntry, Parts, register

if TYPE_CHECKING:  # torch is imported where it is used, so planning a sweep never waits for it
    import torch


#: The model settings keyed only where they differ from their baseline (name in the key -> where ModelSpec holds it).
KEYED_SETTINGS = {
    "image_encoder_folder": lambda spec: spec.adapter.image_encoder_folder,
    "adapter_kind": lambda spec: spec.adapter.kind,
    "content_text_encoder": lambda spec: spec.content_text_encoder,
}
VIT_H_TEXT = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
#: What each preset (by `model.name`) set when these settings were not yet keyed, pinned here and by
#: tests/models/test_model_keys.py. Pinned in code rather than read from experiments/model/ so that editing a preset file
#: changes the keys of what it changes, as any other setting does, and never silently keeps them. A preset of
#: another name is compared with the dataclass defaults (global adapter, `image_encoder`, text_encoder_2).
KEY_BASELINES: dict[str, dict[str, Any]] = {
    "sdxl": {"image_encoder_folder": "image_encoder", "adapter_kind": "global", "content_text_encoder": None},
    "sdxl_vit_h": {"image_encoder_folder": "models/image_encoder", "adapter_kind": "global", "content_text_encoder": VIT_H_TEXT},
    "sd15": {"image_encoder_folder": "image_encoder", "adapter_kind": "global", "content_text_encoder": VIT_H_TEXT},
    "tiny": {"image_encoder_folder": "image_encoder", "adapter_kind": "global", "content_text_encoder": None},
    "tiny_vit_h": {"image_encoder_folder": "models/image_encoder", "adapter_kind": "global",
                   "content_text_encoder": "tiny:CLIP-ViT-H-14-text"},
    "toy": {"image_encoder_folder": "image_encoder", "adapter_kind": "global", "content_text_encoder": None},
}
DEFAULT_BASELINE = {"image_encoder_folder": "image_encoder", "adapter_kind": "global", "content_text_encoder": None}


def changed_settings(spec: Any, names: Sequence[str] = tuple(KEYED_SETTINGS)) -> dict[str, Any]:
    """The keyed model settings whose values differ from the preset's baseline: what a key adds for them."""
    baseline = KEY_BASELINES.get(spec.name, DEFAULT_BASELINE)
    values = {n: KEYED_SETTINGS[n](spec) for n in names}
    return {n: v for n, v in values.items() if v != baseline[n]}


def image_encoder_subfolder(spec: Any) -> str:
    """The image encoder's folder inside the adapter's source, as diffusers' `load_ip_adapter` finds it: a bare name
    is inside the checkpoint's subfolder, a path (with a /) starts at the source's top."""
    folder = spec.adapter.image_encoder_folder or ""
    return folder if "/" in folder else f"{spec.adapter.subfolder}/{folder}".strip("/")


@dataclass(frozen=True)
class IPAdapterKnobs:
    scale: float = 1.0  # adapter scale: multiplies the layer pattern
    subtraction: float = 0.0  # content subtraction strength s: image_embeds - s * text_embeds(content)


@dataclass
class IPAdapterState:
    """What the adapter adds to one loaded pipeline, and its encode-once caches."""

    injection: Any  # injection.InjectionState shared by styleprobe's attn2 processors
    encoder_hid_proj: Any  # the adapter's projection, set aside while another method runs
    text_tower: tuple[Any, Any] | None = None  # (tokenizer, encoder) of model.content_text_encoder, on first use
    references: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    contents: dict[str, torch.Tensor] = field(default_factory=dict)


@register
class IPAdapter(Method):
    """IP-Adapter's image branch in the cross-attention layers a pattern selects, with content subtraction."""

    name: ClassVar[str] = "ip_adapter"
    pattern_site: ClassVar[str] = "attn2"
    window_support: ClassVar[str] = "per_sample"  # per-sample scales, switched per step
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
        return {"adapter": spec.adapter_id, **changed_settings(spec, ("image_encoder_folder", "adapter_kind"))}

    def key_fields(self, parts: Parts) -> dict[str, Any]:
        """The knobs, and the content text tower where it changes the image: with subtraction, if not the baseline's."""
        fields = super().key_fields(parts)
        if parts.knobs.subtraction:
            fields.update(changed_settings(parts.spec, ("content_text_encoder",)))
        return fields

    def needed_files(self, spec: Any, items: Sequence[Any]) -> list[Any]:
        """The checkpoint, its image encoder, and the content text tower when some item subtracts."""
        from styleprobe.models.files import ModelFile, model_folder

        a, encoder = spec.adapter, image_encoder_subfolder(spec)
        files = [ModelFile(f"the IP-Adapter {a.weight_name}", a.source, (f"{a.subfolder}/{a.weight_name}".strip("/"),),
                           "model.adapter.source")]
        if a.image_encoder_folder:
            files += model_folder(f"the IP-Adapter's image encoder {encoder}", a.source,
                                  "model.adapter.image_encoder_folder", encoder)
        if spec.content_text_encoder and _subtracts(items):
            tower = spec.content_text_encoder
            files += model_folder(f"the content text tower {tower}", tower, "model.content_text_encoder")
        return files

    def check_files(self, spec: Any, items: Sequence[Any]) -> None:
        """Subtraction takes text embeddings from the image encoder's space: the two projections must be one size
        (a ViT-H encoder's 1024 against SDXL's text_encoder_2's 1280 would fail in the middle of the first batch)."""
        from styleprobe.models.files import read_json

        if spec.adapter.kind != "global" or not spec.adapter.image_encoder_folder or not _subtracts(items):
            return
        encoder = image_encoder_subfolder(spec)
        image_dim = read_json(spec.adapter.source, f"{encoder}/config.json", "model.adapter.image_encoder_folder").get("projection_dim")
        if spec.content_text_encoder:
            tower, text = spec.content_text_encoder, read_json(spec.content_text_encoder, "config.json", "model.content_text_encoder")
        else:
            tower, text = "text_encoder_2", read_json(spec.base, "text_encoder_2/config.json", "model.base", spec.revision)
        text_dim = text.get("projection_dim")
        if image_dim is not None and text_dim is not None and image_dim != text_dim:
            raise ConfigError(
                f"content subtraction on model {spec.name}: its image encoder ({encoder}) embeds in {image_dim} "
                f"dimensions but the content text tower ({tower}) in {text_dim}; set model.content_text_encoder to the "
                f"CLIP text tower of the image encoder's space (e.g. {VIT_H_TEXT} for ViT-H), or "
                f"method.ip_adapter.subtraction=[0]"
            )

    def row_fields(self, parts: Parts) -> dict[str, Any]:
        return {**super().row_fields(parts), "adapter": parts.spec.adapter_id}

    # generation -------------------------------------------------------------------------------------------
    def state(self, model: Any) -> IPAdapterState:
        """The adapter on this pipeline, loaded (through diffusers' `load_ip_adapter`) on first use."""
        if self.name not in model.attached:
            model.attached[self.name] = _attach(model)
        return model.attached[self.name]

    def activate(self, model: Any) -> None:
        from styleprobe.methods.ip_adapter.injection import install

        state = self.state(model)
        model.pipe.unet.encoder_hid_proj = state.encoder_hid_proj
        install(model.pipe.unet)  # idempotent; puts ours back if another method reset the processors

    def deactivate(self, model: Any) -> None:
        # Without the projection the UNet takes no image embeds, and the attn2 processors see no image
        # tokens, so they compute plain attention: the base model, with nothing unloaded.
        if self.name in model.attached:
            model.pipe.unet.encoder_hid_proj = None

    def prepare(self, engine: Any, items: Sequence[Any], store: Any) -> None:
        from styleprobe.methods.ip_adapter.embeddings import check_subtraction

        check_subtraction(engine.model, [it.knobs.subtraction for it in items])
        for it in {it.reference.digest: it for it in items}.values():
            self._reference(engine.model, it.reference)

    def _reference(self, model: Any, reference: Any) -> tuple[torch.Tensor, torch.Tensor]:
        from styleprobe.methods.ip_adapter.embeddings import encode_references

        cache = self.state(model).references
        if reference.digest not in cache:
            cond, uncond = encode_references(model, [reference.load()])
            cache[reference.digest] = (cond[0], uncond[0])
        return cache[reference.digest]

    def _content(self, model: Any, text: str) -> torch.Tensor:
        from styleprobe.methods.ip_adapter.embeddings import encode_content
        from styleprobe.models.loading import load_text_tower
        from styleprobe.models.sources import resolve_source

        state, tower = self.state(model), model.spec.content_text_encoder
        if tower and state.text_tower is None:  # read only when some item subtracts: `needed_files` asks for it then
            state.text_tower = load_text_tower(resolve_source(tower), model.device, model.dtype)
        if text not in state.contents:
            state.contents[text] = encode_content(model, [text], state.text_tower)[0]
        return state.contents[text]

    def adapter_embeds(self, model: Any, items: Sequence[Any], guided: bool) -> list[torch.Tensor]:
        """Per-sample adapter inputs: reference embedding minus s x content embedding (cond half only)."""
        import torch

        from styleprobe.methods.ip_adapter.embeddings import adapter_inputs, subtract

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
        from styleprobe.methods.ip_adapter.injection import per_sample_adapter_inputs

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


    def at_step(self, engine: Any, items: Sequence[Any], on: Sequence[bool]) -> None:
        """Items outside their window get scale 0 on every layer for the coming step (the layers no sample uses
        skip the image branch, as diffusers does for a scale of 0)."""
        import torch

        self.state(engine.model).injection.switch(torch.tensor(on))


def _attach(model: Any) -> IPAdapterState:
    """Load the preset's adapter into the pipeline and swap in styleprobe's per-sample attn2 processors."""
    from styleprobe.methods.ip_adapter.injection import install
    from styleprobe.models.sources import resolve_source, unavailable

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
    injection = install(pipe.unet)
    return IPAdapterState(injection=injection, encoder_hid_proj=pipe.unet.encoder_hid_proj)


def _subtracts(items: Sequence[Any]) -> bool:
    return any(it.knobs.subtraction for it in items)
