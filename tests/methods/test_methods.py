"""The method interface: configs mirror the code's defaults, knobs are swept, and a new method needs nothing else."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
from omegaconf import OmegaConf

from styleprobe.config import CONFIG_DIR
from styleprobe.data.prompt_sets import PromptSpec
from styleprobe.errors import ConfigError
from styleprobe.methods.base import REGISTRY, ROW_COLUMNS, Method, parse_entries, register, registry
from styleprobe.models.layers import LayerMap
from styleprobe.run.engine import Engine
from styleprobe.run.plan import build_plan
from styleprobe.run.store import Store

MODEL = {"resolution": 64, "steps": 2, "guidance": 5.0}


@pytest.mark.parametrize("name", sorted(registry()))
def test_each_method_has_a_config_file_with_the_codes_defaults(name):
    """experiments/method/<name>.yaml lists every knob at the value the code uses when the knob is not given
    (values a model preset may override are resolved for a preset without overrides)."""
    path = CONFIG_DIR / "method" / f"{name}.yaml"
    composed = OmegaConf.merge({"model": {"name": "plain"}}, {"method": OmegaConf.load(path)})
    entry = OmegaConf.to_container(composed, resolve=True)["method"][name]
    cls = REGISTRY[name]
    assert entry.pop("sampler", {}) == cls.sampler_defaults
    defaults = dataclasses.asdict(cls.Knobs())
    assert list(entry) == list(defaults)  # same knobs, same order
    for knob, value in defaults.items():
        assert entry[knob] == pytest.approx(value) if isinstance(value, float) else entry[knob] == value, knob


def _layer_maps(model):
    return lambda site: LayerMap.from_unet(model.pipe.unet, site)


def test_knobs_given_as_lists_are_crossed_with_the_shared_axes(tiny_model, references):
    entries = parse_entries({"ip_adapter": {"scale": [0.5, 1.0], "subtraction": [0.0, 0.5, 0.5]}},
                            patterns=["none", "style"], presets={}, sampler={}, model=MODEL, layer_map=_layer_maps(tiny_model))
    (entry,) = entries
    assert len(entry.variants) == 4  # the repeated 0.5 counts once
    items = build_plan(model=tiny_model.spec, dtype="float32", entries=entries, references=references[:2],
                       prompts=[PromptSpec("a cat", "a cat")], seeds=[0, 1])
    assert len(items) == 4 * 2 * 2 * 2 and len({it.key for it in items}) == len(items)
    row = items[0].row
    assert json.loads(row["knob_columns"]) == ["scale", "subtraction"]
    assert set(row) == set(ROW_COLUMNS) - {"image_path", "run_id", "replicate", "seconds", "peak_gpu_bytes",
                                            "extra_row_share"} | {"scale", "subtraction", "adapter"}


def test_method_and_knob_names_are_checked(tiny_model):
    def parse(methods):
        return parse_entries(methods, patterns=["all"], presets={}, sampler={}, model=MODEL, layer_map=_layer_maps(tiny_model))

    with pytest.raises(ConfigError, match="unknown method 'dreambooth'; choose one of b_lora, ip_adapter, style_aligned"):
        parse({"dreambooth": {}})
    with pytest.raises(ConfigError, match="unknown knob.s. strength for method.ip_adapter .ip_adapter.; valid: scale, subtraction"):
        parse({"ip_adapter": {"strength": 1.0}})
    with pytest.raises(ConfigError, match="method.ip_adapter.subtraction is -1"):
        parse({"ip_adapter": {"subtraction": [0, -1]}})
    with pytest.raises(ConfigError, match="no method chosen"):
        parse({})
    # an entry of another name says which plug-in it is
    (entry,) = parse({"instantstyle": {"type": "ip_adapter", "patterns": ["style"], "subtraction": 0.5}})
    assert entry.name == "instantstyle" and entry.method.name == "ip_adapter" and [p.name for p in entry.patterns] == ["style"]


def test_a_knob_may_not_shadow_a_shared_column():
    @dataclass(frozen=True)
    class Shadowing:
        prompt: str = "mine"

    class Bad(Method):
        name: ClassVar[str] = "bad"
        pattern_site: ClassVar[str] = "attn2"
        Knobs: ClassVar[type] = Shadowing

    with pytest.raises(TypeError, match="prompt would overwrite shared row columns"):
        register(Bad)
    assert "bad" not in REGISTRY


@dataclass(frozen=True)
class StylePromptKnobs:
    template: str = "{prompt}, in the style of {style}"


class StyleInThePrompt(Method):
    """A method written only for this test: the style named in the prompt, nothing attached to the UNet."""

    name: ClassVar[str] = "style_in_prompt_test"
    pattern_site: ClassVar[str] = "attn2"
    Knobs: ClassVar[type] = StylePromptKnobs

    def prompt_used(self, parts):
        return parts.knobs.template.format(prompt=parts.prompt.prompt, style=parts.reference.style)

    def key_fields(self, parts):
        return {**super().key_fields(parts), "prompt_used": self.prompt_used(parts)}

    def activate(self, model):
        model.attached.setdefault(self.name, "nothing to attach")

    def deactivate(self, model):
        pass

    def run_batch(self, engine, items):
        sampler = items[0].sampler
        return engine.denoise(sampler, [it.row["prompt_used"] for it in items], engine.noise([it.seed for it in items], sampler))


def test_a_new_method_is_one_class_and_the_rest_is_unchanged(tiny_model, references, tmp_path, monkeypatch):
    """Registered in a test: planned, generated in batches next to IP-Adapter and stored by the same code path."""
    monkeypatch.setitem(REGISTRY, StyleInThePrompt.name, StyleInThePrompt)
    entries = parse_entries({"ip_adapter": {}, StyleInThePrompt.name: {}}, patterns=["none", "all"], presets={},
                            sampler={}, model=MODEL, layer_map=_layer_maps(tiny_model))
    items = build_plan(model=tiny_model.spec, dtype="float32", entries=entries, references=references[:2],
                       prompts=[PromptSpec("a cat", "a cat")], seeds=[0])
    store = Store(tmp_path)
    try:
        stats = Engine(tiny_model, batch_size=3).generate(items, store, "run")
    finally:  # the shared model forgets the test's method, which leaves the registry with this test
        tiny_model.attached.pop(StyleInThePrompt.name, None)
        tiny_model.active = None
    assert stats.generated_by == {"ip_adapter": 4, StyleInThePrompt.name: 4}
    table = store.table()
    mine = table[table.method == StyleInThePrompt.name]
    assert sorted(mine.prompt_used) == ["a cat, in the style of neon_grid"] * 2 + ["a cat, in the style of pastel_dots"] * 2
    assert mine.image_path.map(lambda p: (tmp_path / p).is_file()).all()
