"""Content subtraction: what reaches the adapter's projection is InstantStyle's formula, per sample."""

from __future__ import annotations

import pytest
import torch

from styleprobe.errors import ConfigError
from styleprobe.methods.base import method
from styleprobe.methods.ip_adapter.embeddings import check_subtraction, supports_subtraction
from styleprobe.models.loading import load
from styleprobe.run.engine import Engine


def _projection_inputs(model, items):
    """Run one batch and capture what the adapter's image projection receives."""
    seen = []
    engine = Engine(model, batch_size=len(items))
    engine.use(items[0].method, items[0].sampler)
    proj = model.pipe.unet.encoder_hid_proj.image_projection_layers[0]
    hook = proj.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    try:
        engine.run_batch(items)
    finally:
        hook.remove()
    return seen[0]


@torch.inference_mode()
def _expected_bigg(model, references, items):
    """Independently: image_encoder(ref).image_embeds - s * text_encoder_2(content).text_embeds."""
    pipe = model.pipe
    rows = []
    for it in items:
        pixels = pipe.feature_extractor(it.reference.load(), return_tensors="pt").pixel_values
        image = pipe.image_encoder(pixels).image_embeds[0]
        ids = pipe.tokenizer_2(it.reference.content, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        text = pipe.text_encoder_2(ids).text_embeds[0]
        rows.append(image - it.knobs.subtraction * text)
    return torch.stack(rows)


def test_bigg_subtraction_feeds_the_formula_to_the_projection(tiny_model, references, make_items):
    items = make_items(tiny_model, "ip_adapter", references[:2], subtraction=[0.0, 0.5, 1.0])
    fed = _projection_inputs(tiny_model, items)
    n = len(items)
    assert fed.shape == (2 * n, 32)  # CFG: unconditional half first
    assert torch.count_nonzero(fed[:n]) == 0  # the unconditional branch projects zeros, unsubtracted
    expected = _expected_bigg(tiny_model, references, items)
    torch.testing.assert_close(fed[n:], expected, atol=1e-5, rtol=1e-5)
    # and strength really matters: s=1 differs from s=0 for the same reference
    by_s = {it.knobs.subtraction: fed[n + i] for i, it in enumerate(items) if it.reference == references[0]}
    assert (by_s[1.0] - by_s[0.0]).abs().max() > 1e-3


def test_vit_h_adapter_subtracts_in_its_own_text_tower(tiny_spec, references, keep_tiny_loaded, make_items):
    """The ViT-H layout: a separate encoder and text tower, not SDXL's text_encoder_2."""
    from dataclasses import replace

    from styleprobe.models.loading import quiet_libraries

    quiet_libraries()
    spec = replace(
        tiny_spec,
        name="tiny_vit_h",
        adapter=replace(tiny_spec.adapter, weight_name="ip-adapter_sdxl_vit-h.safetensors", image_encoder_folder="models/image_encoder"),
        content_text_encoder="tiny:CLIP-ViT-H-14-text",
    )
    model = load(spec, "cpu")
    items = make_items(model, "ip_adapter", references[:1], subtraction=[0.0, 0.8])
    fed = _projection_inputs(model, items)
    assert fed.shape == (4, 24)  # the ViT-H space of the tiny model is 24-d, bigG's 32-d
    with torch.inference_mode():
        pixels = model.pipe.feature_extractor(references[0].load(), return_tensors="pt").pixel_values
        image = model.pipe.image_encoder(pixels).image_embeds[0]
        tok, tower = method("ip_adapter").state(model).text_tower
        ids = tok(references[0].content, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        text = tower(ids).text_embeds[0]
    expected = torch.stack([image - it.knobs.subtraction * text for it in items])
    torch.testing.assert_close(fed[2:], expected, atol=1e-5, rtol=1e-5)


def test_plus_adapter_with_strength_fails_clearly(tiny_ip, monkeypatch):
    tiny_model = tiny_ip
    """A patch-token adapter has no global embedding: s != 0 is an error, s == 0 is fine."""
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    unet = tiny_model.pipe.unet
    assert supports_subtraction(unet)
    plus = IPAdapterPlusImageProjection(embed_dims=32, output_dims=64, hidden_dims=32, heads=2, num_queries=4, depth=1)
    layers = unet.encoder_hid_proj.image_projection_layers
    monkeypatch.setitem(layers._modules, "0", plus)
    assert not supports_subtraction(unet)
    check_subtraction(tiny_model, [0.0])
    with pytest.raises(ConfigError, match="patch-token .'plus'. adapter; set method.ip_adapter.subtraction=\\[0\\]"):
        check_subtraction(tiny_model, [0.0, 0.5])
