"""StyleAligned: the same numbers as google/style-aligned's own code, per-sample batching, inversion as an artefact.

The golden file was written by the original code on the tiny model (tests/fixtures/style_aligned_golden/make_golden.py
says exactly how). Measured differences to it: about 3e-5 absolute on final latents of magnitude ~40 (float32
summation order), and 0.0 on the inverted trajectory.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import batch_outputs, on_tiny
from safetensors import safe_open

from styleprobe.data.prompt_sets import PromptSpec
from styleprobe.data.style_sets import StyleReference
from styleprobe.errors import ConfigError
from styleprobe.methods.base import parse_entries
from styleprobe.methods.style_aligned.shared_attention import switched_off
from styleprobe.models.layers import LayerMap
from styleprobe.run.engine import Engine
from styleprobe.run.plan import build_plan
from styleprobe.run.store import Store

GOLDEN = Path(__file__).parents[1] / "fixtures" / "style_aligned_golden" / "golden.safetensors"
TARGETS = ["a cat sitting on a chair", "a lighthouse on a rocky coast"]
MODEL = {"resolution": 64, "steps": 4, "guidance": 5.0}  # the tiny preset's sampler settings
GENERATED = {"reference_mode": "generated", "share_group_norm": False, "shared_score_shift": 0.0, "reference_seed": 10}


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    with safe_open(str(GOLDEN), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def neon(references) -> StyleReference:
    """The golden files' reference: builtin:shapes' first image, described as make_golden.py describes it."""
    return StyleReference(references[0].image, "neon", "a circle", "neon glow")


def _items(model, reference, knobs, targets=TARGETS, seeds=(11, 12), patterns=("all",), sampler=None, windows=("full",)):
    """One item per (target, seed) pair, in order, for the `style_aligned` method with `knobs`."""
    entries = parse_entries(
        {"style_aligned": knobs}, patterns=list(patterns), windows=list(windows), presets={}, sampler=sampler or {},
        model=MODEL,
        layer_map=lambda site: LayerMap.from_unet(model.pipe.unet, site),
    )
    items = []
    for target, seed in zip(targets, seeds):
        items += build_plan(model=model.spec, dtype="float32", entries=entries, references=[reference],
                            prompts=[PromptSpec(target, target)], seeds=[seed])
    return items


@pytest.mark.parametrize(
    "case, knobs, steps, guidance, targets",
    [
        ("generated", GENERATED, 50, 5.0, TARGETS),
        ("knobs", {**GENERATED, "adain_values": True, "shared_score_scale": 0.5, "shared_score_shift": 0.3,
                   "share_group_norm": True, "only_self_level": 0.3}, 30, 5.0, TARGETS),
        ("full", {**GENERATED, "full_attention_share": True}, 30, 5.0, TARGETS[:1]),
        ("inverted", {}, 50, 10.0, TARGETS),
    ],
)
def test_matches_the_original_code(case, knobs, steps, guidance, targets, tiny_model, neon, golden, tmp_path):
    items = _items(tiny_model, neon, knobs, targets, sampler={"steps": steps, "guidance": guidance})
    ours = batch_outputs(tiny_model, items, Store(tmp_path))
    theirs = golden[f"{case}/latents"][1:]  # row 0 is the reference sample
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=1e-4)
    assert (ours - golden["generated/latents"][1 : 1 + len(targets)]).abs().max() > 1.0 or case == "generated"


def test_inversion_equals_the_original_and_is_stored_once(tiny_model, neon, golden, tmp_path, monkeypatch):
    store = Store(tmp_path)
    items = _items(tiny_model, neon, {}, sampler={"steps": 50})
    engine = Engine(tiny_model)
    engine.use(items[0].method, items[0].sampler)
    items[0].method.prepare(engine, items, store)
    key = items[0].row["inversion_key"]
    assert key and {it.row["inversion_key"] for it in items} == {key}  # one reference, one inversion
    zts, meta = store.read_tensors("inversion", key)
    # float32 over 50 steps: the CPU's vector width changes the rounding (1.9e-5 seen on another machine), not the method
    torch.testing.assert_close(zts["zts"], golden["inverted/zts"], atol=1e-4, rtol=1e-4)
    assert meta["steps"] == 50 and meta["guidance"] == 2.0 and meta["caption"] == "a circle, neon glow." and meta["seconds"] > 0
    # a new process (empty memory) reads it back instead of inverting again
    tiny_model.attached["style_aligned"].inversions.clear()
    import styleprobe.methods.style_aligned.inversion as inversion

    monkeypatch.setattr(inversion, "ddim_invert", lambda *a, **k: pytest.fail("inverted twice"))
    items[0].method.prepare(engine, items, store)
    assert torch.equal(tiny_model.attached["style_aligned"].inversions[key][0], zts["zts"])
    # and another results folder gets its own copy from memory, still without inverting again
    other = Store(tmp_path / "other")
    items[0].method.prepare(engine, items, other)
    assert torch.equal(other.read_tensors("inversion", key)[0]["zts"], zts["zts"])


def test_an_image_does_not_depend_on_its_batch(tiny_model, references, tmp_path):
    """Mixed references, prompts, seeds and patterns in one call: each image as when made alone."""
    sampler = {"steps": 8}
    mixed = []
    for ref, pattern, seed, target in [(references[0], "all", 3, TARGETS[0]), (references[1], "style", 4, TARGETS[1]),
                                       (references[0], "none", 5, TARGETS[1]), (references[1], "all", 3, TARGETS[0])]:
        mixed += _items(tiny_model, ref, {}, [target], [seed], [pattern], sampler)
    store = Store(tmp_path)
    together = batch_outputs(tiny_model, mixed, store, "np")
    alone = torch.cat([batch_outputs(tiny_model, [it], store, "np") for it in mixed])
    assert (together - alone).abs().max() < 1e-4
    assert (alone[0] - alone[3]).abs().max() > 1e-2  # the two references really differ


def test_the_layer_pattern_selects_where_attention_is_shared(tiny_model, references, tmp_path):
    items = _items(tiny_model, references[2], {}, [TARGETS[0]] * 3, [0] * 3, ["none", "style", "all"], {"steps": 8})
    by_pattern = {}
    for it in items:
        by_pattern[it.pattern.name] = batch_outputs(tiny_model, [it], Store(tmp_path), "np")
    assert items[1].row["layers"] == '["up_blocks.0.attentions.1"]'  # attn1 sites, named like IP-Adapter's
    for a, b in (("none", "style"), ("style", "all"), ("none", "all")):
        assert (by_pattern[a] - by_pattern[b]).abs().max() > 1e-3, (a, b)


def test_without_a_plan_the_processors_compute_the_plain_model(tiny_model, tmp_path):
    """StyleAligned's processors and norms, installed but with nothing shared, leave the base model's numbers."""
    from diffusers import StableDiffusionXLPipeline

    from styleprobe.methods.base import method
    from styleprobe.models.sources import resolve_source
    from styleprobe.run.sampler import Sampler

    engine = Engine(tiny_model, output_type="np")
    sampler = Sampler(3, 5.0, 64, 64)
    engine.use(method("style_aligned"), sampler)
    ours = engine.denoise(sampler, ["a teapot"], engine.noise([7], sampler))[0]
    plain = StableDiffusionXLPipeline.from_pretrained(resolve_source(tiny_model.spec.base))
    plain.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        theirs = plain("a teapot", latents=engine.noise([7], sampler), num_inference_steps=3, guidance_scale=5.0,
                       height=64, width=64, output_type="np").images[0]
    assert abs(ours - theirs).max() <= 1e-5  # float32 rounding only: kernel choices in a long test process move last bits


def test_methods_take_turns_on_one_pipeline(tiny_model, references, make_items, tmp_path):
    """IP-Adapter, then StyleAligned, then IP-Adapter again: the same IP-Adapter image both times."""
    ip = make_items(tiny_model, "ip_adapter", references[:1], patterns=["style"])
    sa = _items(tiny_model, references[1], {}, [TARGETS[0]], [0], ["all"], {"steps": 8})
    engine = Engine(tiny_model, output_type="np")
    first = engine.run_batch(ip)[0]
    batch_outputs(tiny_model, sa, Store(tmp_path), "np")
    assert tiny_model.pipe.unet.encoder_hid_proj is None  # the adapter stood aside for StyleAligned
    assert abs(engine.run_batch(ip)[0] - first).max() == 0.0


def test_only_self_level_follows_the_original_rule_and_guards_its_division():
    # the original's _get_switch_vec: every (n // int(level * n))-th layer, flipped above one half
    assert switched_off(10, 0.3) == [i % 3 == 0 for i in range(10)]
    assert switched_off(10, 0.75) == [i % 5 != 0 for i in range(10)]
    assert switched_off(10, 0.8) == [i != 0 for i in range(10)]  # 1 - 0.8 = 0.1999..: one layer kept, as the original
    assert switched_off(10, 0.0) == [False] * 10 and switched_off(10, 1.0) == [True] * 10
    assert switched_off(28, 0.01) == [False] * 28  # the original divides by zero here
    assert switched_off(28, 0.99) == [True] * 28


def test_prompts_follow_the_original_convention(tiny_model, neon):
    (item,) = _items(tiny_model, neon, {}, [TARGETS[0]], [0])
    assert item.row["prompt_used"] == "a cat sitting on a chair, neon glow."
    assert item.row["reference_prompt"] == "a circle, neon glow."
    assert item.row["prompt"] == TARGETS[0]  # the target prompt stays the unit and text alignment's text
    assert (item.row["steps"], item.row["guidance"]) == (50, 10.0)
    assert item.row["scheduler"] == "DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=0)"
    assert math.isclose(item.row["shared_score_shift"], math.log(2))
    plain_style = replace(neon, style_prompt="")
    (other,) = _items(tiny_model, plain_style, {}, [TARGETS[0]], [0])
    assert other.row["prompt_used"] == "a cat sitting on a chair, neon." and other.key != item.key


def test_share_layer_norm_is_recorded_not_keyed(tiny_model, neon):
    (on,) = _items(tiny_model, neon, {"share_layer_norm": True}, [TARGETS[0]], [0])
    (off,) = _items(tiny_model, neon, {"share_layer_norm": False}, [TARGETS[0]], [0])
    assert on.key == off.key and (on.row["share_layer_norm"], off.row["share_layer_norm"]) == (True, False)


@pytest.mark.parametrize(
    "knobs, sampler, patterns, fragment",
    [
        ({"adain_query": True}, {}, ["all"], "unknown knob(s) adain_query for method.style_aligned (style_aligned); valid: reference_mode, adain_queries"),
        ({"reference_mode": "copied"}, {}, ["all"], "reference_mode='copied'; choose one of inversion, generated"),
        ({"inversion_steps": 30}, {}, ["all"], "inverted in 30 steps but generated in 50"),
        ({}, {"scheduler": "EulerDiscreteScheduler"}, ["all"], "must use DDIMScheduler, not EulerDiscreteScheduler"),
        ({"inversion_offset": 8}, {"steps": 8}, ["all"], "inversion_offset=8 needs more than 8 steps"),
        ({}, {}, [{"name": "half", "scales": {"mid_block": 0.5}}], "shares a layer or not"),
        ({"adain_keys": "yes"}, {}, ["all"], "adain_keys='yes'; give true/false"),
        ({"prompt_template": "{prompt} in {mood}"}, {}, ["all"], "prompt_template='{prompt} in {mood}' cannot be filled"),
    ],
)
def test_bad_settings_fail_in_one_line(tiny_model, neon, knobs, sampler, patterns, fragment):
    with pytest.raises(ConfigError) as err:
        _items(tiny_model, neon, knobs, [TARGETS[0]], [0], patterns, sampler)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_reference_without_content_label_is_named(tiny_model, neon):
    with pytest.raises(ConfigError, match=r"has no content label, which style_aligned's reference caption for DDIM "
                                          r"inversion .* fill in the manifest's content column"):
        _items(tiny_model, replace(neon, content=""), {}, [TARGETS[0]], [0])
    (item,) = _items(tiny_model, replace(neon, content=""), {"reference_prompt_template": "{style}"}, [TARGETS[0]], [0])
    assert item.row["reference_prompt"] == "neon glow"  # a caption without {content} needs no label


def _sweep_cfg(tmp_path, *overrides):
    from hydra import compose, initialize_config_dir

    from styleprobe.config import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=on_tiny([f"results_root={tmp_path}", *overrides]))


def test_a_sweep_of_both_methods_is_scored_analysed_and_resumes(tmp_path, tiny_model, monkeypatch):
    """method=[ip_adapter,style_aligned] on one folder: one table, one inversion per reference, a verdict per method."""
    from styleprobe.run import sweep

    cfg = _sweep_cfg(tmp_path, "method=[ip_adapter,style_aligned]", "experiment=custom", "injection=presets", "data=small",
                     "data.prompts=[a red bicycle]", "method.style_aligned.sampler.steps=8", "analysis.bootstrap.n_boot=200")
    first = sweep.run(cfg)
    assert (first.planned, first.generated) == (16, 16)  # 2 methods x 4 patterns x 2 references x 1 prompt
    store = Store(first.results_dir)
    table = store.table()
    by_method = table.groupby("method")
    assert by_method.size().to_dict() == {"ip_adapter": 8, "style_aligned": 8}
    sa = table[table.method == "style_aligned"]
    assert set(sa.steps) == {8} and set(sa.guidance) == {10.0} and set(table[table.method == "ip_adapter"].steps) == {4}
    assert sa.subtraction.isna().all() and table[table.method == "ip_adapter"].share_group_norm.isna().all()
    assert sa.style_csd.notna().all() and sa.prompt_used.str.endswith(".").all()
    inversions = sorted(store.artefacts.rglob("*.safetensors"))
    assert len(inversions) == 2 and set(sa.inversion_key) == {p.stem for p in inversions}
    report = first.report
    assert sorted(v.title() for v in report.verdicts) == [
        "style (method=ip_adapter)", "style (method=style_aligned)",
        "style_layout (method=ip_adapter)", "style_layout (method=style_aligned)",
    ]
    names = {p.name for p in report.figures}
    assert {"grid_styles_method=ip_adapter.png", "grid_styles_method=style_aligned.png"} <= names
    assert "method(s): ip_adapter, style_aligned" in report.path.read_text()
    from omegaconf import OmegaConf

    costs = OmegaConf.load(store.runs / first.run_id / "costs.yaml")  # what each method cost in this run
    assert {k: v.images for k, v in costs.methods.items()} == {"ip_adapter": 8, "style_aligned": 8}
    assert costs.methods.style_aligned.prepare_seconds > 0 and costs.methods.style_aligned.seconds_per_image > 0

    import styleprobe.methods.style_aligned.inversion as inversion

    monkeypatch.setattr(inversion, "ddim_invert", lambda *a, **k: pytest.fail("inverted again"))
    tiny_model.attached["style_aligned"].inversions.clear()
    again = sweep.run(cfg)
    assert (again.done_before, again.generated, sum(again.scored.values())) == (16, 0, 0)


def test_bad_style_aligned_input_fails_before_loading(tmp_path, monkeypatch):
    from PIL import Image

    from styleprobe.models import loading
    from styleprobe.run import sweep

    monkeypatch.setattr(loading, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "red.png")
    (folder / "manifest.csv").write_text("image,style,content\nred.png,red paint,\n")
    cases = [
        ([f"data.style_set={folder}"], "has no content label, which style_aligned's reference caption"),
        (["sampler.steps=30", "method.style_aligned.inversion_steps=50"], "inverted in 50 steps but generated in 30"),
        (["+method.style_aligned.adain_value=true"], "unknown knob(s) adain_value for method.style_aligned"),
        (["model=sd15"], "StyleAligned runs on SDXL-family models"),
    ]
    for overrides, fragment in cases:
        with pytest.raises(ConfigError) as err:
            sweep.run(_sweep_cfg(tmp_path / "results", "method=style_aligned", "metrics=[]", *overrides))
        assert fragment in str(err.value) and "\n" not in str(err.value), overrides
        assert not (tmp_path / "results").exists()


def test_windows_switch_sharing_and_shared_norms_per_sample(tiny_model, references, tmp_path):
    """Mixed windows in one call, each image as alone; outside its window an item shares nothing (attention and
    GroupNorm), so a window that ends at the first step is nearly the plain image and `none` keeps its window
    (its norms are shared)."""
    sampler = {"steps": 8}
    items = _items(tiny_model, references[0], {}, [TARGETS[0]], [3], ["all", "none"], sampler,
                   windows=["full", [0.0, 0.5], [0.5, 1.0]])
    assert len(items) == 6  # shared norms: `none` differs per window
    store = Store(tmp_path)
    together = batch_outputs(tiny_model, items, store, "np")
    alone = torch.cat([batch_outputs(tiny_model, [it], store, "np") for it in items])
    assert (together - alone).abs().max() < 1e-4
    by = {(it.pattern.name, it.window.name): a for it, a in zip(items, alone)}
    for a, b in ((("all", "0.00-1.00"), ("all", "0.00-0.50")), (("all", "0.00-0.50"), ("all", "0.50-1.00")),
                 (("none", "0.00-1.00"), ("none", "0.50-1.00"))):
        assert (by[a] - by[b]).abs().max() > 1e-3, (a, b)
    off = _items(tiny_model, references[0], {"share_group_norm": False}, [TARGETS[0]], [3], ["none"], sampler,
                 windows=[[0.0, 0.5]])
    assert off[0].window.full  # without shared norms `none` is the plain model at every step: one image
