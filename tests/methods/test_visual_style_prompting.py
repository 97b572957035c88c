"""Visual Style Prompting: the swap itself, per-sample batching, the real reference's trajectory, the loop's rules,
StyleKeeper's negative visual query guidance, and bad input at planning."""

from __future__ import annotations

import pytest
import torch

from styleprobe.data.prompt_sets import PromptSpec
from styleprobe.data.style_sets import StyleReference
from styleprobe.errors import ConfigError
from styleprobe.methods.base import parse_entries
from styleprobe.models.layers import LayerMap
from styleprobe.run.engine import Engine
from styleprobe.run.plan import build_plan
from styleprobe.run.store import Store

TARGETS = ["a cat sitting on a chair", "a lighthouse on a rocky coast"]
MODEL = {"resolution": 64, "steps": 4, "guidance": 5.0}  # the tiny preset's sampler settings
GENERATED = {"reference_mode": "generated", "reference_seed": 42, "reference_unguided": False, "boost_steps": 3,
             "color_cal_window_size": 0, "prompt_template": "{prompt}, {style}",
             "reference_prompt_template": "{content}, {style}"}
FAST = {"steps": 8}


def _entries(model, knobs, patterns=("up_blocks.1",), sampler=None, windows=("full",)):
    return parse_entries(
        {"visual_style_prompting": knobs}, patterns=list(patterns), windows=list(windows), presets={},
        sampler=sampler or {}, model=MODEL, layer_map=lambda site: LayerMap.from_unet(model.pipe.unet, site),
        spec=model.spec)


def _items(model, reference, knobs, targets=TARGETS, seeds=(0, 1), patterns=("up_blocks.1",), sampler=None,
           windows=("full",)):
    """One item per (target, seed) pair, in order."""
    entries = _entries(model, knobs, patterns, sampler, windows)
    for e in entries:
        e.method.check_entry(e, model.spec)
    items = []
    for target, seed in zip(targets, seeds):
        items += build_plan(model=model.spec, dtype="float32", entries=entries, references=[reference],
                            prompts=[PromptSpec(target, target)], seeds=[seed])
    return items


def _latents(model, items, store, output_type="latent") -> torch.Tensor:
    engine = Engine(model, batch_size=len(items), output_type=output_type)
    engine.use(items[0].method, items[0].sampler)
    items[0].method.prepare(engine, items, store)
    out = engine.run_batch(items)
    return torch.stack([torch.as_tensor(o) for o in out])


@pytest.fixture(scope="module")
def neon(references) -> StyleReference:
    return StyleReference(references[0].image, "neon", "a circle", "neon glow")


@pytest.mark.parametrize("knobs", [{}, GENERATED], ids=["real", "generated"])
def test_an_image_does_not_depend_on_its_batch(knobs, tiny_model, references, tmp_path):
    """Mixed references, prompts, seeds, patterns and windows in one call: each image as when made alone."""
    mixed = []
    for ref, pattern, seed, target, window in [
        (references[0], "up_blocks.1", 3, TARGETS[0], "full"), (references[1], "all", 4, TARGETS[1], "full"),
        (references[0], "none", 5, TARGETS[1], "full"), (references[1], "up_blocks.1", 3, TARGETS[0], [0.0, 0.5]),
    ]:
        mixed += _items(tiny_model, ref, knobs, [target], [seed], [pattern], FAST, [window])
    store = Store(tmp_path)
    together = _latents(tiny_model, mixed, store)
    alone = torch.cat([_latents(tiny_model, [it], store) for it in mixed])
    # float32 rounding changes with the batch size: one item twice in a batch differs from itself alone by ~4e-4
    # after 8 steps on this machine; a batch-mate leaking in would move an image by more than 1e-2
    assert (together - alone).abs().max() < 2e-3
    assert (alone[0] - alone[3]).abs().max() > 1e-2


def test_the_pattern_and_the_window_select_where_and_when_the_swap_acts(tiny_model, neon, tmp_path):
    cases = [("none", "full"), ("up_blocks.1", "full"), ("all", "full"), ("up_blocks.1", [0.0, 0.5])]
    out = {}
    for pattern, window in cases:
        (item,) = _items(tiny_model, neon, {}, TARGETS[:1], [0], [pattern], FAST, [window])
        out[(pattern, str(window))] = _latents(tiny_model, [item], Store(tmp_path))
    values = list(out.values())
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            assert (values[i] - values[j]).abs().max() > 1e-3, (cases[i], cases[j])
    (item,) = _items(tiny_model, neon, {}, TARGETS[:1], [0], ["up_blocks.1"], FAST)
    assert item.row["layers"] == '["up_blocks.1.attentions.0", "up_blocks.1.attentions.1", "up_blocks.1.attentions.2"]'
