"""B-LoRA: peft LoRAs trained per reference on exactly the configured modules, stored as keyed artefacts in
diffusers' format, resumed after a kill, applied per layer pattern (style-only by default), and files trained
elsewhere (the original's own scripts) used as they are."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from styleprobe.data.style_sets import StyleReference, load_style_set
from styleprobe.errors import ConfigError
from styleprobe.methods.b_lora.lora import WEIGHT_NAME, lora_layers, state_dict_of, target_modules, transformer_layer
from styleprobe.methods.b_lora.plugin import ARTEFACT, BLoRA, save_lora
from styleprobe.methods.b_lora.training import Recipe, train
from styleprobe.models.layers import LayerMap
from styleprobe.run.engine import Engine
from styleprobe.run.store import Store

QUICK = {"train_steps": 6, "checkpoint_every": 3, "learning_rate": 1e-3, "rank": 4, "gradient_checkpointing": False}
STYLE = "up_blocks.0.attentions.1"
CONTENT = "up_blocks.0.attentions.0"


@pytest.fixture
def model(tiny_model):
    """The shared tiny pipeline set up for B-LoRA (other methods stand aside), every LoRA removed afterwards."""
    from styleprobe.methods.base import method
    from styleprobe.run.sampler import Sampler

    Engine(tiny_model).use(method("b_lora"), Sampler(steps=2, guidance=5.0, height=64, width=64))
    yield tiny_model
    if getattr(tiny_model.pipe.unet, "peft_config", None):
        tiny_model.pipe.unload_lora_weights()
    tiny_model.attached.pop("b_lora", None)
    if tiny_model.active == "b_lora":
        tiny_model.active = None


def _layer_map(model) -> LayerMap:
    return LayerMap.from_unet(model.pipe.unet, "attn1")


def _prepare(model, items, store) -> Engine:
    engine = Engine(model, batch_size=8, output_type="latent")
    engine.use(items[0].method, items[0].sampler)
    items[0].method.prepare(engine, items, store)
    return engine


def _expected_targets(layer_map: LayerMap, modules) -> set[str]:
    return {f"{layer.short}.{site}.{proj}" for layer in layer_map.layers if layer.module in modules
            for site in ("attn1", "attn2") for proj in ("to_q", "to_k", "to_v", "to_out.0")}


@pytest.mark.parametrize("train_modules, modules", [("b_lora", {CONTENT, STYLE}), ("all", None), (STYLE, {STYLE})])
def test_peft_targets_exactly_the_configured_modules(model, references, make_items, train_modules, modules):
    layer_map = _layer_map(model)
    modules = set(layer_map.modules) if modules is None else modules
    item = make_items(model, "b_lora", references[:1], train_modules=train_modules, **QUICK)[0]
    recipe = item.method._by_key[item.row["lora_key"]].recipe
    assert set(recipe.targets) == _expected_targets(layer_map, modules)
    from styleprobe.methods.b_lora.training import add_lora

    unet = model.pipe.unet
    add_lora(unet, recipe, "probe")
    try:
        wrapped = {name for name, _ in lora_layers(unet, "probe")}
        assert wrapped == set(recipe.targets)  # peft put a LoRA on exactly those linears, nowhere else
        assert len(wrapped) == 8 * sum(1 for layer in layer_map.layers if layer.module in modules)
    finally:
        unet.delete_adapters("probe")
        unet.requires_grad_(False)


def test_training_is_seeded_and_a_killed_training_resumes_to_the_same_weights(model, references, tmp_path):
    layer_map = _layer_map(model)
    recipe = Recipe(targets=tuple(target_modules([STYLE], ("to_q", "to_v"), layer_map)), rank=4, learning_rate=1e-3,
                    steps=7, resolution=64, seed=3)
    image, schedule = references[0].load(), model.default_scheduler.config

    def run(checkpoint=None, progress=None):
        return train(model.pipe, image, recipe, "t", schedule, checkpoint=checkpoint, checkpoint_every=3,
                     save_checkpoint=lambda p, s: torch.save(s, p), progress=progress)

    whole = run()
    again = run()
    assert all(torch.equal(whole.state_dict[k], again.state_dict[k]) for k in whole.state_dict)
    assert whole.losses == again.losses and len(whole.losses) == 7

    class Killed(Exception):
        pass

    def kill_at_5(step, steps, loss):
        if step == 5:
            raise Killed

    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(Killed):
        run(ckpt, kill_at_5)
    assert torch.load(ckpt, weights_only=True)["step"] == 3  # the last checkpoint before the kill
    assert "t" not in getattr(model.pipe.unet, "peft_config", {})  # the killed adapter did not stay in the UNet
    resumed = run(ckpt)
    assert resumed.resumed_from == 3
    assert resumed.losses == whole.losses and resumed.grad_norms == whole.grad_norms
    assert all(torch.equal(whole.state_dict[k], resumed.state_dict[k]) for k in whole.state_dict)

    other = train(model.pipe, image, dataclasses.replace(recipe, seed=4), "t", schedule)
    assert not torch.equal(other.state_dict[next(iter(other.state_dict))], whole.state_dict[next(iter(whole.state_dict))])


def test_save_then_load_is_bit_identical(model, references, tmp_path):
    layer_map = _layer_map(model)
    recipe = Recipe(targets=tuple(target_modules([CONTENT, STYLE], ("to_q", "to_k", "to_v", "to_out.0"), layer_map)),
                    rank=4, lora_alpha=2.0, learning_rate=1e-3, steps=2, resolution=64)
    trained = train(model.pipe, references[0].load(), recipe, "t", model.default_scheduler.config)
    path = tmp_path / WEIGHT_NAME
    save_lora(path, trained.state_dict, trained.config)
    on_disk = load_file(str(path))
    assert set(on_disk) == {f"unet.{k}" for k in trained.state_dict}  # diffusers' format: unet.-prefixed keys
    model.pipe.load_lora_weights(str(tmp_path), adapter_name="back")
    back = state_dict_of(model.pipe.unet, "back")
    assert set(back) == set(trained.state_dict)
    assert all(torch.equal(back[k], trained.state_dict[k]) for k in back)
    layer = lora_layers(model.pipe.unet, "back")[0][1]
    assert layer.scaling["back"] == pytest.approx(2.0 / 4)  # lora_alpha came back from the file's metadata


def _fused_delta(model, item, store: Store) -> dict[str, torch.Tensor]:
    """The UNet weights an item's LoRA setting changes: fuse the active adapters, diff against the base state."""
    from styleprobe.methods.b_lora.lora import set_layer_scales

    unet = model.pipe.unet
    _prepare(model, [item], store)
    scales = item.method.layer_scales(model, item)  # loads the item's LoRA(s) as adapters
    base = {k.replace(".base_layer", ""): v.clone() for k, v in unet.state_dict().items() if "lora_" not in k}
    set_layer_scales(unet, scales)
    exact = {k: v.clone() for k, v in unet.state_dict().items()}
    unet.fuse_lora(adapter_names=list(scales))
    try:
        fused = {k.replace(".base_layer", ""): v.clone() for k, v in unet.state_dict().items() if "lora_" not in k}
    finally:
        unet.unfuse_lora()
        unet.load_state_dict(exact)  # unfusing subtracts in floating point: put the shared model's weights back exactly
    return {k: fused[k] - base[k] for k in base if not torch.equal(fused[k], base[k])}


def test_style_only_inference_changes_only_the_style_module(model, references, make_items, tmp_path):
    items = make_items(model, "b_lora", references[:1], patterns=("style", "all"), **QUICK)
    style = next(it for it in items if it.pattern.name == "style")
    changed = _fused_delta(model, style, Store(tmp_path))
    assert changed and all(k.startswith(STYLE + ".") for k in changed)
    touched = {k.rsplit(".", 1)[0] for k in changed}
    assert touched == _expected_targets(_layer_map(model), {STYLE})  # every target of the style module, nothing else
    whole = next(it for it in items if it.pattern.name == "all")
    both = {k.rsplit(".", 1)[0] for k in _fused_delta(model, whole, Store(tmp_path))}
    assert both == _expected_targets(_layer_map(model), {STYLE, CONTENT})


def test_alpha_original_squares_the_update_and_linear_does_not(model, references, make_items, tmp_path):
    refs, store = references[:1], Store(tmp_path)
    one = make_items(model, "b_lora", refs, patterns=("style",), alpha=1.0, **QUICK)[0]
    delta_1 = _fused_delta(model, one, store)
    original = make_items(model, "b_lora", refs, patterns=("style",), alpha=0.5, alpha_mode="original", **QUICK)[0]
    linear = make_items(model, "b_lora", refs, patterns=("style",), alpha=0.25, alpha_mode="linear", **QUICK)[0]
    assert original.row["update_scale"] == linear.row["update_scale"] == 0.25
    assert original.row["lora_key"] == linear.row["lora_key"] == one.row["lora_key"]  # same LoRA, not retrained
    assert original.key != linear.key
    for item in (original, linear):
        delta = _fused_delta(model, item, store)
        assert set(delta) == set(delta_1)
        for k in delta:
            torch.testing.assert_close(delta[k], 0.25 * delta_1[k], rtol=1e-4, atol=1e-7)


def test_a_rerun_trains_nothing_and_a_killed_one_leaves_no_half_written_lora(model, references, make_items, tmp_path,
                                                                            monkeypatch):
    items = make_items(model, "b_lora", references[:2], patterns=("style",), **QUICK)
    store = Store(tmp_path)
    import styleprobe.methods.b_lora.training as lt

    real = lt.train

    def killed_after_step_4(*args, progress=None, **kwargs):
        def stop(step, steps, loss):
            progress(step, steps, loss)
            if step == 4:
                raise KeyboardInterrupt

        return real(*args, progress=stop, **kwargs)

    monkeypatch.setattr(lt, "train", killed_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        _prepare(model, items, store)
    folder = store.artefact_dir(ARTEFACT, items[0].row["lora_key"])
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt"]  # no weights, no record, no temp file
    monkeypatch.setattr(lt, "train", real)
    method = items[0].method
    records = method.prepare(Engine(model), items, store)
    assert [r["reused"] for r in records] == [False, False]
    first = json.loads((folder / "training.json").read_text())
    assert first["resumed_from"] == 3 and first["steps"] == 6 and len(first["losses"]) == 6
    assert not (folder / "checkpoint.pt").exists()
    assert load_file(str(folder / WEIGHT_NAME))  # diffusers' file, complete
    calls = []
    monkeypatch.setattr(lt, "train", lambda *a, **k: calls.append(1))
    again = method.prepare(Engine(model), items, store)
    assert calls == [] and [r["reused"] for r in again] == [True, True]


def test_the_training_seed_is_a_replicate_not_a_condition(model, references, make_items):
    items = make_items(model, "b_lora", references[:1], patterns=("style",), train_seed=[0, 1], **QUICK)
    assert sorted(it.row["replicate"] for it in items) == ["train_seed=0", "train_seed=1"]
    assert len({it.row["lora_key"] for it in items}) == 2
    assert all("train_seed" not in json.loads(it.row["knob_columns"]) for it in items)
    import pandas as pd

    from styleprobe.analysis.load import condition_columns, unit_columns

    table = pd.DataFrame([it.row for it in items])
    assert "replicate" in unit_columns(table) and "train_seed" not in condition_columns(table)


def _write_manifest(folder: Path, reference: StyleReference, lora: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.csv").write_text(f"image,style,content,b_lora\n{reference.image},{reference.style},{reference.content},{lora}\n")
    return folder


def test_manifest_names_a_lora_file_a_folder_or_a_hub_repository(references, tmp_path):
    ref = references[0]
    (tmp_path / "loras").mkdir()
    save_file({"unet.x.lora.down.weight": torch.zeros(1)}, str(tmp_path / "loras" / WEIGHT_NAME))
    assert load_style_set(_write_manifest(tmp_path, ref, "loras"))[0].b_lora == str((tmp_path / "loras").resolve())
    assert load_style_set(_write_manifest(tmp_path, ref, "owner/style-lora"))[0].b_lora == "hub:owner/style-lora"
    assert load_style_set(_write_manifest(tmp_path, ref, "owner/repo/w.safetensors"))[0].b_lora == "hub:owner/repo/w.safetensors"
    with pytest.raises(ConfigError, match="neither a file or folder") as err:
        load_style_set(_write_manifest(tmp_path, ref, "missing/lora.safetensors"))
    assert "\n" not in str(err.value)


def test_a_lora_for_modules_the_model_lacks_fails_before_anything_is_written(model, references, make_items, tmp_path):
    bad = tmp_path / "bad.safetensors"
    save_file({"unet.up_blocks.0.attentions.7.transformer_blocks.0.attn1.to_q.lora.down.weight": torch.zeros(4, 128),
               "unet.up_blocks.0.attentions.7.transformer_blocks.0.attn1.to_q.lora.up.weight": torch.zeros(128, 4)}, str(bad))
    ref = StyleReference(references[0].image, "x", "a circle", b_lora=str(bad))
    with pytest.raises(ConfigError, match=r"up_blocks.0.attentions.7.transformer_blocks.0, which this model lacks") as err:
        make_items(model, "b_lora", [ref], patterns=("style",))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("knobs, message", [
    ({"train_modules": "up_blocks.0.attentions.9"}, "train_modules='up_blocks.0.attentions.9': unknown layer name"),
    ({"train_modules": "b_lora+mid_blok"}, "unknown layer name 'mid_blok'"),
    ({"rank": 0}, r"rank=0; give a positive integer"),
    ({"train_steps": 0}, r"train_steps=0; give a positive integer"),
    ({"train_targets": "to_q,to_x"}, "choose projections among"),
    ({"alpha_mode": "squared"}, "alpha_mode='squared'; choose one of original, linear"),
    ({"content_reference": "no_such_style"}, "content_reference='no_such_style' is not a style"),
])
def test_bad_knobs_fail_in_one_line_before_any_training(model, references, make_items, knobs, message):
    with pytest.raises(ConfigError, match=message) as err:
        make_items(model, "b_lora", references[:1], patterns=("style",), **knobs)
    assert "\n" not in str(err.value)


def test_transformer_layer_names_from_any_key_format():
    assert transformer_layer("unet.up_blocks.0.attentions.1.transformer_blocks.2.attn1.to_q.lora.down.weight") == \
        "up_blocks.0.attentions.1.transformer_blocks.2"
    assert transformer_layer("lora_unet_down_blocks_2_attentions_1_transformer_blocks_9_attn2_to_k.lora_up.weight") == \
        "down_blocks.2.attentions.1.transformer_blocks.9"
    assert transformer_layer("unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0.lora_A.weight") == \
        "mid_block.attentions.0.transformer_blocks.0"
    assert transformer_layer("unet.up_blocks.0.resnets.0.conv1.lora.down.weight") is None


def test_plugin_is_registered():
    assert BLoRA.name == "b_lora" and BLoRA.replicate_knobs == frozenset({"train_seed"})


# --- against the original's own code (tests/fixtures/b_lora_golden/make_golden.py says how these were made) ---
GOLDEN = Path(__file__).parents[1] / "fixtures" / "b_lora_golden"


@pytest.fixture(scope="module")
def golden() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(GOLDEN / "golden.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _original_style_set(references) -> list[StyleReference]:
    """builtin:shapes[0] and [1] with the LoRAs the original's training script made of them, as a manifest names them."""
    return [dataclasses.replace(references[i], b_lora=str(GOLDEN / f"original_ref{i}")) for i in (0, 1)]


@pytest.mark.parametrize("case, knobs", [
    ("style", {}),
    ("style_half", {"alpha": 0.5}),
    ("content_style", {"content_reference": "pastel_dots", "prompt_template": "A [v] in [v] style"}),
])
def test_loras_trained_by_the_original_give_the_original_inference_images(model, references, make_items, golden, tmp_path,
                                                                          case, knobs):
    from styleprobe.run.sampler import Sampler

    tensors, meta = golden
    assert json.loads(meta["prompts"])[case].startswith(("a cat sitting on a chair", "A [v]"))
    style_set = _original_style_set(references)
    sampler = Sampler(steps=4, guidance=5.0, height=64, width=64)
    items = make_items(model, "b_lora", style_set, patterns=("style",), prompts=("a cat sitting on a chair",),
                       seeds=(10, 11), sampler=sampler, **knobs)
    items = sorted((it for it in items if it.reference == style_set[0]), key=lambda it: it.seed)
    assert [it.row["prompt_used"] for it in items] == [json.loads(meta["prompts"])[case]] * 2
    assert {it.row["lora_source"] for it in items} == {"file"}
    engine = _prepare(model, items, Store(tmp_path))
    ours = torch.stack([torch.as_tensor(x) for x in engine.run_batch(items)])
    theirs = tensors[f"{case}/latents"]
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)
    base = tensors[f"{json.loads(meta['bases'])[case]}/latents"]
    assert (theirs - base).abs().max() > 0.04  # the LoRA changed the image: the match is not a match of base images
    assert not any(Path(tmp_path).glob("artefacts/b_lora/*/*"))  # nothing trained for LoRAs named in the manifest


def test_our_lora_files_have_the_originals_format(model, references, make_items, tmp_path):
    """Same recipe (rank 4, the two B-LoRA modules): our file and the original's hold the same keys and shapes."""
    theirs = load_file(str(GOLDEN / "original_ref0" / WEIGHT_NAME))
    items = make_items(model, "b_lora", references[:1], patterns=("style",), **{**QUICK, "train_steps": 1})
    store = Store(tmp_path)
    _prepare(model, items, store)
    ours = load_file(str(store.artefact_dir(ARTEFACT, items[0].row["lora_key"]) / WEIGHT_NAME))
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


def test_a_hub_lora_is_fetched_through_diffusers_and_used_as_is(model, references, make_items, golden, tmp_path, monkeypatch):
    """A manifest's `owner/name` goes to diffusers' `lora_state_dict` (the Hub's loader); here it answers offline with
    the original's file, and the images are the original inference's."""
    from styleprobe.run.sampler import Sampler

    asked = []

    real = model.pipe.__class__.lora_state_dict

    def from_hub(source, **kwargs):
        asked.append((source, kwargs.pop("weight_name", None)))
        return real(str(GOLDEN / "original_ref0"), **kwargs)

    monkeypatch.setattr(model.pipe, "lora_state_dict", from_hub)
    ref = dataclasses.replace(references[0], b_lora="hub:someone/b-lora-neon/pytorch_lora_weights.safetensors")
    items = make_items(model, "b_lora", [ref], patterns=("style",), prompts=("a cat sitting on a chair",), seeds=(10, 11),
                       sampler=Sampler(steps=4, guidance=5.0, height=64, width=64))
    assert {it.row["lora_source"] for it in items} == {"hub"}
    engine = _prepare(model, items, Store(tmp_path))
    ours = torch.stack([torch.as_tensor(x) for x in engine.run_batch(sorted(items, key=lambda it: it.seed))])
    assert asked == [("someone/b-lora-neon", "pytorch_lora_weights.safetensors")]
    torch.testing.assert_close(ours, golden[0]["style/latents"], atol=2e-5, rtol=1e-5)


@pytest.mark.slow
def test_cli_b_lora_trains_generates_scores_and_a_rerun_does_nothing(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "STYLEPROBE_RESULTS": str(tmp_path / "results")}
    args = [sys.executable, "-m", "styleprobe.cli", "model=tiny", "method=b_lora", "data=small", "injection=presets",
            "method.b_lora.train_steps=4", "method.b_lora.checkpoint_every=2"]
    first = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    results = tmp_path / "results" / "tiny" / "layer_probe"
    trained = sorted(results.glob("artefacts/b_lora/*/*/" + WEIGHT_NAME))
    assert len(trained) == 2  # one LoRA per reference of the small set
    assert (results / "analysis" / "report.md").is_file()
    table = Store(results).table()
    assert len(table) == 16 and table["style_csd"].notna().all() and (table["lora_train_steps"] == 4).all()
    import yaml

    costs = yaml.safe_load(next((results / "runs").glob("*/costs.yaml")).read_text())
    assert [p["steps"] for p in costs["methods"]["b_lora"]["prepared"]] == [4, 4]
    again = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "16 already done, 0 to generate" in again.stdout and "B-LoRA 1/" not in again.stdout + again.stderr
    assert sorted(results.glob("artefacts/b_lora/*/*/" + WEIGHT_NAME)) == trained


def test_a_batch_holds_one_window_and_the_lora_acts_only_inside_it(model, references, make_items, tmp_path):
    """peft scales a layer for the whole call, so each window is its own batch; inside the window the pattern's
    scales, outside it the item's `none` (the plain model here: no content LoRA)."""
    from styleprobe.run.engine import batch_order

    items = make_items(model, "b_lora", references[:1], patterns=("all",), windows=["full", [0.0, 0.5], [0.5, 1.0],
                                                                                  [0.0, 0.99]], **QUICK)
    items += make_items(model, "b_lora", references[:1], patterns=("none",), **QUICK)
    groups = batch_order(items)
    assert sorted(len({it.window for it in g}) for g in groups) == [1] * 5
    engine = _prepare(model, items, Store(tmp_path))
    engine.output_type = "np"
    out = {(it.pattern.name, it.window.name): np.asarray(engine.run_batch([it])[0]) for it in items}
    full, none = out[("all", "0.00-1.00")], out[("none", "0.00-1.00")]
    assert np.abs(out[("all", "0.00-0.99")] - full).max() == 0.0  # a window holding every step is the full one
    for w in ("0.00-0.50", "0.50-1.00"):
        assert np.abs(out[("all", w)] - full).max() > 1e-4 and np.abs(out[("all", w)] - none).max() > 1e-4, w
