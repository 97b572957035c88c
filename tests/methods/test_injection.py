"""styleprobe's per-layer, per-sample processor against diffusers' own IP-Adapter and plain text-to-image.

Tolerances: same pattern, same call shape -> bit-identical (0.0). Batched vs one call per pattern: the
batched matmuls sum in another order, so float32 images on [0, 1] agree to BATCH_TOL (measured ~1.5e-6).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from styleprobe.methods.ip_adapter.embeddings import adapter_inputs, encode_references
from styleprobe.methods.ip_adapter.injection import (
    LayerScaledIPAttnProcessor,
    native_processors,
    per_sample_adapter_inputs,
)
from styleprobe.models.layers import expand_patterns, native_scale_config
from styleprobe.run.engine import Engine
from styleprobe.run.sampler import Sampler

BATCH_TOL = 1e-4
STEPS, SIZE, GUIDANCE = 3, 64, 5.0


@pytest.fixture
def setup(tiny_ip, references):
    pipe = tiny_ip.pipe
    cond, uncond = encode_references(tiny_ip, [references[0].load()])
    embeds = pipe.encode_prompt(["a cat on a chair"], device=tiny_ip.device, num_images_per_prompt=1, do_classifier_free_guidance=True)
    return pipe, cond, uncond, embeds


def _generate(pipe, embeds, ip_embeds=None, n=1, seed=7):
    kwargs = dict(
        prompt_embeds=embeds[0].repeat(n, 1, 1),
        negative_prompt_embeds=embeds[1].repeat(n, 1, 1),
        pooled_prompt_embeds=embeds[2].repeat(n, 1),
        negative_pooled_prompt_embeds=embeds[3].repeat(n, 1),
        generator=[torch.Generator().manual_seed(seed) for _ in range(n)],
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        height=SIZE,
        width=SIZE,
        output_type="np",
    )
    if ip_embeds is None:
        with torch.inference_mode():
            return pipe(**kwargs).images
    with torch.inference_mode(), per_sample_adapter_inputs(pipe, ip_embeds) as embeds:
        return pipe(ip_adapter_image_embeds=embeds, **kwargs).images


@pytest.mark.parametrize("preset", ["style", "style_layout", "all"])
def test_presets_equal_diffusers_native_set_ip_adapter_scale(setup, preset):
    pipe, cond, uncond, embeds = setup
    state = pipe.unet.styleprobe_state
    pattern = expand_patterns([preset], state.layer_map)[0]
    ip = adapter_inputs(cond, uncond, True)
    with state.use(torch.tensor([pattern.scales])):
        ours = _generate(pipe, embeds, ip)
    native_config = {"style": {"up": {"block_0": [0.0, 1.0, 0.0]}}}.get(preset) or native_scale_config(pattern.scales, state.layer_map)
    with native_processors(pipe.unet):
        try:
            pipe.set_ip_adapter_scale(native_config)
            native = _generate(pipe, embeds, ip)
        finally:
            pipe.set_ip_adapter_scale(1.0)
    assert np.abs(ours - native).max() == 0.0
    with state.use(torch.tensor([expand_patterns(["none"], state.layer_map)[0].scales])):
        assert np.abs(_generate(pipe, embeds, ip) - ours).max() > 1e-3  # injection changes the image


def test_batched_patterns_equal_one_call_per_pattern(setup):
    pipe, cond, uncond, embeds = setup
    state = pipe.unet.styleprobe_state
    patterns = expand_patterns(["none", "all", "style", "style_layout", "mid_block"], state.layer_map)
    singles = []
    for p in patterns:
        with state.use(torch.tensor([p.scales])):
            singles.append(_generate(pipe, embeds, adapter_inputs(cond, uncond, True))[0])
    n = len(patterns)
    with state.use(torch.tensor([p.scales for p in patterns])):
        batched = _generate(pipe, embeds, adapter_inputs(cond.repeat(n, 1), uncond.repeat(n, 1), True), n=n)
    diffs = [float(np.abs(b - s).max()) for b, s in zip(batched, singles)]
    assert max(diffs) < BATCH_TOL, diffs
    # the patterns really differ from one another, so agreement is not trivial
    assert min(float(np.abs(singles[0] - s).max()) for s in singles[1:]) > 1e-3


def test_batch_mixing_references_equals_one_call_per_reference(tiny_ip, references, setup):
    """Each sample keeps its own reference: diffusers alone would repeat one reference over the batch."""
    pipe, _, _, embeds = setup
    state = pipe.unet.styleprobe_state
    all_ = expand_patterns(["all"], state.layer_map)[0]
    cond, uncond = encode_references(tiny_ip, [r.load() for r in references[:3]])
    with state.use(torch.tensor([all_.scales])):
        singles = [_generate(pipe, embeds, adapter_inputs(cond[i : i + 1], uncond[i : i + 1], True))[0] for i in range(3)]
    with state.use(torch.tensor([all_.scales] * 3)):
        batched = _generate(pipe, embeds, adapter_inputs(cond, uncond, True), n=3)
    assert max(float(np.abs(b - s).max()) for b, s in zip(batched, singles)) < BATCH_TOL
    assert float(np.abs(singles[0] - singles[1]).max()) > 1e-3


def test_none_equals_plain_text_to_image(setup, tiny_spec):
    """`none` on the adapter-loaded pipeline gives the base pipeline's own output (no adapter loaded)."""
    from diffusers import StableDiffusionXLPipeline

    from styleprobe.models.sources import resolve_source

    pipe, cond, uncond, embeds = setup
    state = pipe.unet.styleprobe_state
    with state.use(torch.tensor([expand_patterns(["none"], state.layer_map)[0].scales])):
        ours = _generate(pipe, embeds, adapter_inputs(cond, uncond, True))
    plain = StableDiffusionXLPipeline.from_pretrained(resolve_source(tiny_spec.base))
    plain.set_progress_bar_config(disable=True)
    reference = _generate(plain, embeds)
    # float32 rounding only (a CPU kernel choice can move the last bits in a long test process); the adapter's smallest
    # contribution is orders of magnitude larger
    assert np.abs(ours - reference).max() <= 1e-5


def test_scale_zero_sample_in_mixed_batch_is_untouched(setup):
    """A sample whose layers are all 0 gets no image branch even when its batch-mates do."""
    pipe, cond, uncond, embeds = setup
    state = pipe.unet.styleprobe_state
    none, all_ = expand_patterns(["none", "all"], state.layer_map)
    with state.use(torch.tensor([none.scales])):
        alone = _generate(pipe, embeds, adapter_inputs(cond, uncond, True))[0]
    with state.use(torch.tensor([all_.scales, none.scales])):
        mixed = _generate(pipe, embeds, adapter_inputs(cond.repeat(2, 1), uncond.repeat(2, 1), True), n=2)
    assert np.abs(mixed[1] - alone).max() < BATCH_TOL
    assert np.abs(mixed[0] - alone).max() > 1e-3


def test_processors_reuse_the_adapters_trained_weights(tiny_ip):
    pipe = tiny_ip.pipe
    ours = [p for p in pipe.unet.attn_processors.values() if isinstance(p, LayerScaledIPAttnProcessor)]
    assert len(ours) == len(pipe.unet.styleprobe_state.layer_map)
    for p in ours:
        assert p.to_k_ip is p.native.to_k_ip and p.to_v_ip is p.native.to_v_ip
    with native_processors(pipe.unet):
        assert not any(isinstance(p, LayerScaledIPAttnProcessor) for p in pipe.unet.attn_processors.values())
    assert sum(isinstance(p, LayerScaledIPAttnProcessor) for p in pipe.unet.attn_processors.values()) == len(ours)


def test_scales_of_wrong_shape_are_rejected(tiny_ip):
    state = tiny_ip.pipe.unet.styleprobe_state
    with pytest.raises(ValueError, match="scales must have shape"):
        with state.use(torch.ones(2, len(state.layer_map) + 1)):
            pass


@contextmanager
def _no_host_reads(where: str):
    """Any read of a tensor's value back to the host (bool, item, tolist, cpu, numpy, int, float) raises."""
    reads = ("__bool__", "item", "tolist", "cpu", "numpy", "__int__", "__float__")
    saved = {name: getattr(torch.Tensor, name) for name in reads}

    def refuse(name):
        def read(*_a, **_k):
            raise AssertionError(f"Tensor.{name} {where}")
        return read

    for name in reads:
        setattr(torch.Tensor, name, refuse(name))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


def test_processors_read_nothing_back_from_the_device_inside_the_unet(setup, monkeypatch):
    """On a GPU each host read inside a processor would be a synchronisation per layer and step, so none may happen:
    the batch's scales and its active layers are settled in `use`, before the UNet runs."""
    from styleprobe.methods.ip_adapter import injection

    pipe, cond, uncond, embeds = setup
    state = pipe.unet.styleprobe_state
    patterns = expand_patterns(["all", "style", "none"], state.layer_map)
    original_call = injection.LayerScaledIPAttnProcessor.__call__
    calls = []

    def guarded(self, *args, **kwargs):
        calls.append(self.layer_index)
        with _no_host_reads(f"inside layer {self.layer_index}'s processor"):
            return original_call(self, *args, **kwargs)

    monkeypatch.setattr(injection.LayerScaledIPAttnProcessor, "__call__", guarded)
    with state.use(torch.tensor([p.scales for p in patterns]), pipe.device, pipe.unet.dtype):
        assert state.active == tuple(bool(v) for v in torch.tensor(patterns[0].scales) != 0)
        _generate(pipe, embeds, adapter_inputs(cond.repeat(3, 1), uncond.repeat(3, 1), True), n=3)
    assert len(set(calls)) == len(state.layer_map)  # the guard saw every layer
    with _no_host_reads("in the check"), pytest.raises(AssertionError, match="Tensor.__bool__ in the check"):
        bool(torch.any(torch.ones(2) != 0))  # what the processors did per layer before: the guard catches it


def test_a_batch_whose_patterns_skip_a_layer_skips_its_image_branch(setup):
    pipe, *_ = setup
    state = pipe.unet.styleprobe_state
    style = expand_patterns(["style"], state.layer_map)[0]
    with state.use(torch.tensor([style.scales, style.scales])):
        assert sum(state.active) == sum(1 for s in style.scales if s) and state.scales.shape == (2, len(state.layer_map))
    assert state.scales is None and state.active == ()


def test_processors_leave_the_unet_one_graph_for_torch_compile(tiny_ip):
    """torch.compile must not fall back to Python inside our processors: dynamo traces the whole UNet call, with
    per-sample scales on, as one graph (a host read such as `bool(torch.any(...))` would break it)."""
    unet = tiny_ip.pipe.unet
    state = unet.styleprobe_state
    cfg = unet.config
    text = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    image_dim = unet.encoder_hid_proj.image_projection_layers[0].image_embeds.in_features
    added = {"text_embeds": torch.randn(2, text), "time_ids": torch.randn(2, 6),
             "image_embeds": [torch.randn(2, 1, 1, image_dim)]}
    style = expand_patterns(["style"], state.layer_map)[0]
    with state.use(torch.tensor([style.scales, [1.0] * len(state.layer_map)])):
        explained = torch._dynamo.explain(unet)(torch.randn(2, 4, 8, 8), torch.tensor(10),
                                                encoder_hidden_states=torch.randn(2, 77, cfg.cross_attention_dim),
                                                added_cond_kwargs=added)
    torch._dynamo.reset()
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), [b.reason for b in explained.break_reasons]


# --- denoising windows -------------------------------------------------------------------------------------------
WINDOW_SAMPLER = Sampler(steps=5, guidance=GUIDANCE, height=SIZE, width=SIZE)


@pytest.mark.parametrize("cutoff", [0, 2])
def test_a_window_from_the_start_equals_diffusers_cutoff_callback(tiny_ip, references, make_items, cutoff):
    """`IPAdapterScaleCutoffCallback(cutoff_step_index=c)` zeroes the scale after step c, so steps 0..c inject: the
    window [0, (c + 1) / n] here."""
    from diffusers.callbacks import IPAdapterScaleCutoffCallback

    n = WINDOW_SAMPLER.steps
    (item,) = make_items(tiny_ip, "ip_adapter", references[:1], patterns=["all"], sampler=WINDOW_SAMPLER,
                         windows=[[0.0, (cutoff + 1) / n]])
    assert list(item.window.steps(n)) == list(range(cutoff + 1))
    engine = Engine(tiny_ip, output_type="np")
    ours = engine.run_batch([item])[0]
    pipe, ip = tiny_ip.pipe, item.method
    with native_processors(pipe.unet):
        try:
            pipe.set_ip_adapter_scale(1.0)
            with per_sample_adapter_inputs(pipe, ip.adapter_embeds(tiny_ip, [item], True)) as embeds:
                native = engine.denoise(WINDOW_SAMPLER, [item.prompt.prompt], engine.noise([item.seed], WINDOW_SAMPLER),
                                        ip_adapter_image_embeds=embeds,
                                        callback_on_step_end=IPAdapterScaleCutoffCallback(cutoff_step_ratio=None,
                                                                                                cutoff_step_index=cutoff))[0]
        finally:
            pipe.set_ip_adapter_scale(1.0)
    assert np.abs(ours - native).max() == 0.0
    (full,) = make_items(tiny_ip, "ip_adapter", references[:1], patterns=["all"], sampler=WINDOW_SAMPLER)
    assert np.abs(engine.run_batch([full])[0] - ours).max() > 1e-3  # the window really cuts the injection


def test_an_image_does_not_depend_on_the_windows_beside_it(tiny_ip, references, make_items):
    items = make_items(tiny_ip, "ip_adapter", references[:2], patterns=["all", "style"], sampler=WINDOW_SAMPLER,
                       windows=["full", [0.0, 0.4], [0.6, 1.0]])
    assert len(items) == 2 * 2 * 3
    engine = Engine(tiny_ip, batch_size=len(items), output_type="np")
    together = np.stack(engine.run_batch(items))
    alone = np.stack([engine.run_batch([it])[0] for it in items])
    assert np.abs(together - alone).max() < BATCH_TOL
    by = {(it.reference.style, it.pattern.name, it.window.name): a for it, a in zip(items, alone)}
    first = references[0].style
    assert np.abs(by[(first, "all", "0.00-0.40")] - by[(first, "all", "0.60-1.00")]).max() > 1e-3
