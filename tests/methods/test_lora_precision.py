"""B-LoRA's training precision, as the original's accelerate mixed precision: fp16 scales the loss (GradScaler,
unscaled before clipping, overflowing steps skipped), bf16 autocasts, LoRA weights stay float32; the precision is
recorded and keyed only where it changes the weights. And a manifest B-LoRA's text-encoder weights are left out, so
other methods' images do not depend on a B-LoRA having run before them."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_b_lora import GOLDEN, QUICK, STYLE, _prepare, model  # noqa: F401  (model: the B-LoRA fixture)

import styleprobe.methods.b_lora.training as lt
from styleprobe.data.prompt_sets import PromptSpec
from styleprobe.errors import ConfigError
from styleprobe.methods.b_lora.lora import WEIGHT_NAME, target_modules
from styleprobe.methods.b_lora.plugin import ARTEFACT
from styleprobe.methods.b_lora.training import Recipe, add_lora, recipe_identity, resolve_mixed_precision, train
from styleprobe.models import sources
from styleprobe.models.layers import LayerMap
from styleprobe.run.engine import Engine
from styleprobe.run.store import Store

#: LoRA and item keys planned before the precision knob existed (references[:2] of builtin:shapes, patterns style
#: and all, tiny model, float32): (lora key, content lora key, item key) per item.
BEFORE = {
    "quick": [["bfd2edeca32ad27731d5", "", "7dc8dae394e778659dfe"], ["bfd2edeca32ad27731d5", "", "add00f7ea093e189d31f"],
              ["e0cbc5d8062f398b4d8a", "", "2e5c1dcd46db052615b0"], ["e0cbc5d8062f398b4d8a", "", "e3013e175870209899c5"]],
    "defaults": [["22c59458680a217ce21e", "", "24f9fade68380676ae2c"], ["22c59458680a217ce21e", "", "d89f688db399066d85bc"],
                 ["2c2dac7b09ec31bf98ff", "", "525078756bf39b2edf80"], ["2c2dac7b09ec31bf98ff", "", "e521d681f76bbfddfd7e"]],
}
#: fp16 autocast on the CPU vs float32 on the tiny model, first step (same weights, batch, noise and timestep): measured
#: relative error of the whole gradient 4.4e-3 (worst tensor 5.8e-3), cosine 0.99999. The second step starts from
#: weights one (slightly different) update apart: 2.7e-2 (worst tensor 0.2, a small lora_A gradient), cosine 0.9996.
FP16_REL, FP16_COS = 1e-2, 0.9999
FP16_REL_AFTER_A_STEP, FP16_COS_AFTER_A_STEP = 1e-1, 0.999
#: bf16 (8 bits of mantissa), first step: measured 5.0e-2 (worst tensor 7.9e-2), cosine 0.9987.
BF16_REL, BF16_COS = 1e-1, 0.995


def _plan(model, references, dtype: str, patterns=("style", "all"), **knobs):
    """B-LoRA items as a sweep on a model of `dtype` would plan them (the dtype is what `auto` follows)."""
    from styleprobe.methods.base import parse_entries
    from styleprobe.run.plan import build_plan
    from styleprobe.run.sampler import Sampler

    sampler = Sampler(steps=2, guidance=5.0, height=64, width=64)
    fields = {f: getattr(sampler, f) for f in ("steps", "guidance", "height", "width", "scheduler", "negative_prompt")}
    fields["scheduler_options"] = {}
    entries = parse_entries({"b_lora": knobs}, patterns=list(patterns), presets={}, sampler=fields, model={},
                            layer_map=lambda site: LayerMap.from_unet(model.pipe.unet, site))
    return build_plan(model=model.spec, dtype=dtype, entries=entries, references=references,
                      prompts=[PromptSpec("a teapot", "a teapot")], seeds=[0])


def _keys(items) -> list[list[str]]:
    return sorted([it.row["lora_key"], it.row["content_lora_key"], it.key] for it in items)


# keys ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("knob", ["auto", "no"])
def test_plain_float32_training_keeps_the_keys_planned_before_the_knob(tiny_model, references, knob):
    assert _keys(_plan(tiny_model, references[:2], "float32", mixed_precision=knob, **QUICK)) == BEFORE["quick"]
    assert _keys(_plan(tiny_model, references[:2], "float32", mixed_precision=knob)) == BEFORE["defaults"]


def test_a_precision_that_changes_the_weights_is_part_of_the_lora_key_not_of_the_knob_spelling(tiny_model, references):
    plain = {it.row["lora_key"] for it in _plan(tiny_model, references[:1], "float32", **QUICK)}
    fp16 = {it.row["lora_key"] for it in _plan(tiny_model, references[:1], "float32", mixed_precision="fp16", **QUICK)}
    bf16 = {it.row["lora_key"] for it in _plan(tiny_model, references[:1], "float32", mixed_precision="bf16", **QUICK)}
    assert len(plain | fp16 | bf16) == 3  # three different LoRAs
    # on a float16 model auto is fp16 (the original's choice): the same LoRA as asking for fp16 there
    auto_half = _plan(tiny_model, references[:1], "float16", **QUICK)
    fp16_half = _plan(tiny_model, references[:1], "float16", mixed_precision="fp16", **QUICK)
    assert _keys(auto_half) == _keys(fp16_half)
    assert not {it.row["lora_key"] for it in auto_half} & (plain | fp16)  # the dtype is keyed as before
    recipe = dataclasses.replace(Recipe(targets=("a",)), mixed_precision="fp16")
    assert recipe_identity(recipe, "float32")["mixed_precision"] == "fp16"
    assert "mixed_precision" not in recipe_identity(dataclasses.replace(recipe, mixed_precision="no"), "float32")
    assert recipe_identity(dataclasses.replace(recipe, mixed_precision="no"), "bfloat16")["mixed_precision"] == "no"


def test_auto_is_the_precision_of_the_models_dtype_and_unscaled_float16_is_refused():
    assert [resolve_mixed_precision("auto", d, "w") for d in ("float32", "float16", "bfloat16")] == ["no", "fp16", "bf16"]
    assert resolve_mixed_precision("bf16", "float16", "w") == "bf16"
    with pytest.raises(ConfigError, match=r"w=no on a float16 model .* use auto or fp16") as err:
        resolve_mixed_precision("no", "float16", "w")
    assert "\n" not in str(err.value)


def test_an_unknown_precision_fails_in_one_line(tiny_model, references, make_items):
    with pytest.raises(ConfigError, match=r"mixed_precision='fp8'; choose one of auto, no, fp16, bf16") as err:
        make_items(tiny_model, "b_lora", references[:1], patterns=("style",), mixed_precision="fp8")
    assert "\n" not in str(err.value)


# float32 LoRA weights -------------------------------------------------------------------------------------------
def test_lora_weights_are_float32_and_initialised_as_on_a_float32_model_whatever_the_models_dtype(tiny_model):
    layer_map = LayerMap.from_unet(tiny_model.pipe.unet, "attn1")
    recipe = Recipe(targets=tuple(target_modules([STYLE], ("to_q", "to_k", "to_v", "to_out.0"), layer_map)), rank=4, seed=5)
    # a UNet read afresh: the session's may carry what earlier tests attached (an IP-Adapter's projection, B-LoRAs)
    from diffusers import UNet2DConditionModel

    fresh = UNet2DConditionModel.from_pretrained(sources.resolve_source(tiny_model.spec.base), subfolder="unet").eval()
    full, half = fresh, copy.deepcopy(fresh).half()
    base = {k: v.clone() for k, v in half.state_dict().items()}
    add_lora(full, recipe, "t")
    add_lora(half, recipe, "t")
    named = {n: p for n, p in full.named_parameters() if p.requires_grad}
    named_half = {n: p for n, p in half.named_parameters() if p.requires_grad}
    assert set(named) == set(named_half) and named
    for n, p in named_half.items():
        assert p.dtype == torch.float32, n
        assert torch.equal(p, named[n]), n  # not rounded to float16 on the way
    assert any(p.abs().sum() > 0 for n, p in named_half.items() if "lora_A" in n)
    after = {k.replace(".base_layer", ""): v for k, v in half.state_dict().items() if "lora_" not in k}
    assert set(after) == set(base)
    assert all(after[k].dtype == base[k].dtype and torch.equal(after[k], base[k]) for k in base)  # the model is as it was


# gradients ------------------------------------------------------------------------------------------------------
class RecordingScaler(torch.amp.GradScaler):
    """A GradScaler that keeps every step's scale and its gradients before and after unscaling."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.scales: list[float] = []
        self.before: list[list[torch.Tensor]] = []
        self.after: list[list[torch.Tensor]] = []

    def unscale_(self, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.scales.append(self.get_scale())
        self.before.append([p.grad.detach().clone() for p in params])
        super().unscale_(optimizer)
        self.after.append([p.grad.detach().clone() for p in params])


def _train_recorded(model, references, monkeypatch, mode: str, steps: int = 2, **scaler_options):
    scalers: list[RecordingScaler] = []

    def recording(m, device):
        scalers.append(RecordingScaler(device.type, enabled=m == "fp16", **scaler_options))
        return scalers[-1]

    monkeypatch.setattr(lt, "grad_scaler", recording)
    layer_map = LayerMap.from_unet(model.pipe.unet, "attn1")
    recipe = Recipe(targets=tuple(target_modules([STYLE], ("to_q", "to_k", "to_v", "to_out.0"), layer_map)), rank=4,
                    learning_rate=1e-3, steps=steps, resolution=64, seed=1, mixed_precision=mode)
    trained = train(model.pipe, references[0].load(), recipe, "t", model.default_scheduler.config)
    return trained, scalers[0]


def _agreement(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> tuple[float, float, float]:
    """(relative error of the whole gradient, its largest per-tensor relative error, cosine) of `ours` vs `theirs`."""
    a, b = torch.cat([g.flatten() for g in ours]).double(), torch.cat([g.flatten() for g in theirs]).double()
    per_tensor = [float((x - y).norm() / y.norm()) for x, y in zip(ours, theirs) if y.norm() > 0]
    return float((a - b).norm() / b.norm()), max(per_tensor), float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def test_fp16_scales_the_loss_and_its_gradients_match_float32(model, references, monkeypatch):
    plain, reference = _train_recorded(model, references, monkeypatch, "no")
    half, scaler = _train_recorded(model, references, monkeypatch, "fp16")
    assert reference.scales == [1.0, 1.0] and all(
        torch.equal(x, y) for b, a in zip(reference.before, reference.after) for x, y in zip(b, a))
    assert scaler.scales == [2.0 ** 16, 2.0 ** 16]  # accelerate's initial scale, no overflow, no growth yet
    for step in range(2):
        before, after = scaler.before[step], scaler.after[step]
        assert all(torch.equal(b, a * scaler.scales[step]) for b, a in zip(before, after))
        assert max(float(a.abs().max()) for a in after) > 0
        rel, worst, cos = _agreement(after, reference.after[step])
        print(f"fp16 vs fp32, step {step}: relative error {rel:.2e} (worst tensor {worst:.2e}), cosine {cos:.7f}")
        bound, least = (FP16_REL, FP16_COS) if step == 0 else (FP16_REL_AFTER_A_STEP, FP16_COS_AFTER_A_STEP)
        assert rel < bound and cos > least
    assert half.skipped_steps == [] and half.loss_scale == 2.0 ** 16 and plain.loss_scale is None
    assert len(half.grad_norms) == 2 and half.grad_norms[0] == pytest.approx(plain.grad_norms[0], rel=FP16_REL)
    zero = [g for g in reference.after[0] if float(g.abs().max()) == 0]  # lora_A: it multiplies lora_B's zero start
    assert len(zero) == len(reference.after[0]) // 2 and all(g.shape[0] == 4 for g in zero)  # (rank, in): lora_A's


def test_bf16_autocasts_without_a_scaler_and_its_gradients_match_float32(model, references, monkeypatch):
    _, reference = _train_recorded(model, references, monkeypatch, "no", steps=1)
    trained, scaler = _train_recorded(model, references, monkeypatch, "bf16", steps=1)
    assert scaler.scales == [1.0] and trained.loss_scale is None
    rel, worst, cos = _agreement(scaler.after[0], reference.after[0])
    print(f"bf16 vs fp32, step 0: relative error {rel:.2e} (worst tensor {worst:.2e}), cosine {cos:.7f}")
    assert 0 < rel < BF16_REL and cos > BF16_COS  # not zero: bf16 did compute differently


def test_steps_whose_scaled_gradients_overflow_are_skipped_as_the_scaler_does(model, references, monkeypatch):
    trained, scaler = _train_recorded(model, references, monkeypatch, "fp16", steps=3, init_scale=2.0 ** 120)
    assert trained.skipped_steps == [0, 1, 2]  # the scaled float16 gradients hold inf
    assert trained.loss_scale == 2.0 ** 117  # halved at each skipped step
    ups = [v for k, v in trained.state_dict.items() if "lora.up" in k]
    assert ups and all(float(v.abs().max()) == 0 for v in ups)  # no step was taken: lora_B is still its zero init
    assert all(torch.isfinite(torch.tensor(trained.losses)))


def test_a_killed_fp16_training_resumes_with_its_loss_scale(model, references, monkeypatch, tmp_path):
    """The scaler's state is in the checkpoint: with a scale that grows every step, a resumed training without it
    would end at another scale."""
    monkeypatch.setattr(lt, "grad_scaler", lambda m, device: torch.amp.GradScaler(device.type, growth_interval=1))
    layer_map = LayerMap.from_unet(model.pipe.unet, "attn1")
    recipe = Recipe(targets=tuple(target_modules([STYLE], ("to_q", "to_v"), layer_map)), rank=4, learning_rate=1e-3,
                    steps=5, resolution=64, seed=3, mixed_precision="fp16")
    image, schedule, ckpt = references[0].load(), model.default_scheduler.config, tmp_path / "checkpoint.pt"

    def run(checkpoint=None, progress=None):
        return train(model.pipe, image, recipe, "t", schedule, checkpoint=checkpoint, checkpoint_every=2,
                     save_checkpoint=lambda p, s: torch.save(s, p), progress=progress)

    whole = run()

    def kill_at_3(step, steps, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(ckpt, kill_at_3)
    resumed = run(ckpt)
    assert resumed.resumed_from == 2 and whole.loss_scale == 2.0 ** (16 + 5 - len(whole.skipped_steps) * 2)
    assert (resumed.loss_scale, resumed.skipped_steps, resumed.losses) == (whole.loss_scale, whole.skipped_steps, whole.losses)
    assert all(torch.equal(whole.state_dict[k], resumed.state_dict[k]) for k in whole.state_dict)


def test_the_training_record_holds_the_precision(model, references, make_items, tmp_path):
    store = Store(tmp_path)
    items = make_items(model, "b_lora", references[:1], patterns=("style",), mixed_precision="fp16",
                       **{**QUICK, "train_steps": 2})
    _prepare(model, items, store)
    folder = store.artefact_dir(ARTEFACT, items[0].row["lora_key"])
    record = json.loads((folder / "training.json").read_text())
    assert record["mixed_precision"] == record["recipe"]["mixed_precision"] == "fp16"
    assert record["loss_scale"] == 2.0 ** 16 and record["skipped_steps"] == [] and len(record["grad_norms"]) == 2
    assert all(v.dtype == torch.float32 for v in load_file(str(folder / WEIGHT_NAME)).values())
    assert items[0].row["mixed_precision"] == "fp16"


# a manifest B-LoRA's text-encoder weights --------------------------------------------------------------------------
def _with_text_encoder_weights(model, folder):
    """The original's LoRA of reference 0, plus text-encoder weights in the format of the original's script when it
    trains the text encoders (`text_encoder[_2].<attention>.q_proj.lora_linear_layer.{down,up}.weight`), large enough
    to change the prompt embeddings."""
    tensors = load_file(str(GOLDEN / "original_ref0" / WEIGHT_NAME))
    gen = torch.Generator().manual_seed(0)
    for prefix, encoder in (("text_encoder", model.pipe.text_encoder), ("text_encoder_2", model.pipe.text_encoder_2)):
        width = encoder.config.hidden_size
        for i in range(encoder.config.num_hidden_layers):
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                key = f"{prefix}.text_model.encoder.layers.{i}.self_attn.{proj}.lora_linear_layer"
                tensors[f"{key}.down.weight"] = torch.randn(4, width, generator=gen)
                tensors[f"{key}.up.weight"] = torch.randn(width, 4, generator=gen)
    folder.mkdir()
    save_file(tensors, str(folder / WEIGHT_NAME))
    return folder, sum(1 for k in tensors if k.startswith("text_encoder"))


def test_a_manifest_loras_text_encoder_weights_are_left_out_and_other_methods_images_do_not_change(
        model, references, make_items, tmp_path, caplog):
    from diffusers import StableDiffusionXLPipeline

    from styleprobe.run.sampler import Sampler

    folder, n_text = _with_text_encoder_weights(model, tmp_path / "lora")
    # the file's text-encoder part is real: loaded into a copy of the text encoder, it changes the embedding
    state_dict, alphas = StableDiffusionXLPipeline.lora_state_dict(str(folder))
    encoder = copy.deepcopy(model.pipe.text_encoder)
    ids = model.pipe.tokenizer(["a teapot"], padding="max_length", max_length=model.pipe.tokenizer.model_max_length,
                               return_tensors="pt").input_ids
    with torch.no_grad():
        plain = encoder(ids).last_hidden_state
        StableDiffusionXLPipeline.load_lora_into_text_encoder(state_dict, alphas, encoder, prefix="text_encoder")
        assert (encoder(ids).last_hidden_state - plain).abs().max() > 0.1

    sampler = Sampler(steps=2, guidance=5.0, height=64, width=64)
    ip = make_items(model, "ip_adapter", references[:1], patterns=["style"], prompts=("a teapot",), sampler=sampler)
    engine = Engine(model, output_type="np")
    first = engine.run_batch(ip)[0]
    ref = dataclasses.replace(references[0], b_lora=str(folder))
    b_lora = make_items(model, "b_lora", [ref], patterns=("style",), prompts=("a teapot",), sampler=sampler)
    with caplog.at_level(logging.WARNING, logger="styleprobe"):
        _prepare(model, b_lora, Store(tmp_path / "results"))
        engine.run_batch(b_lora)
    for fresh in (False, True):  # from the prompt cache, and encoded again
        if fresh:
            model.prompts.clear()
        again = engine.run_batch(ip)[0]
        assert abs(again - first).max() <= 1e-5  # float32 rounding only (kernel choices in a long test process)
    assert not getattr(model.pipe.text_encoder, "peft_config", None) and not getattr(model.pipe.text_encoder_2, "peft_config", None)
    assert [r.getMessage() for r in caplog.records if "text-encoder" in r.getMessage()] == [
        f"the B-LoRA {folder / WEIGHT_NAME}: {n_text} text-encoder weights left out (B-LoRA trains UNet blocks only; "
        f"the text encoders stay the base model's for every method)"]


# the benchmark ----------------------------------------------------------------------------------------------------
def test_the_precision_benchmark_runs_every_mode_on_the_tiny_model(model, tmp_path):
    """On the pipeline as B-LoRA's training finds it (other methods stood aside)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "lora_precision.py"
    spec = importlib.util.spec_from_file_location("lora_precision", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    report = bench.main(["--steps", "2", "--rank", "4", "--learning-rate", "1e-3", "--out", str(out)],
                        pipe=model.pipe, schedule=model.default_scheduler.config)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    by_mode = {r["mode"]: r for r in report["results"]}
    assert list(by_mode) == ["fp32", "fp16", "fp16_unscaled", "bf16"]
    assert by_mode["fp16"]["loss_scale"] == 2.0 ** 16 and by_mode["fp16_unscaled"]["loss_scale"] is None
    assert [by_mode[m]["unet_dtype"] for m in by_mode] == ["float32", "float16", "float16", "bfloat16"]
    assert all(len(r["grad_norms"]) == 2 and 0 < r["lora_B_moved"] <= r["lora_B_entries"] for r in by_mode.values())
    assert by_mode["fp32"]["lora_B_cosine_vs_fp32"] == pytest.approx(1.0)
    assert not getattr(model.pipe.unet, "peft_config", None)  # trained on copies: the shared UNet is untouched
