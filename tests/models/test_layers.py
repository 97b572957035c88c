"""The layer map is derived from the UNet, and patterns mean what diffusers means by them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from styleprobe.errors import ConfigError
from styleprobe.models.layers import LAYOUT_MODULE, STYLE_MODULE, LayerMap, expand_patterns, native_scale_config
from styleprobe.models.loading import build_unet_structure

DATA = Path(__file__).parents[1] / "fixtures"


def _meta_map(name: str) -> LayerMap:
    config = json.loads((DATA / name).read_text())
    unet = build_unet_structure(config)
    assert next(unet.parameters()).device.type == "meta"  # structure only, no memory for weights
    return LayerMap.from_unet(unet)


@pytest.fixture(scope="module")
def sdxl_map() -> LayerMap:
    return _meta_map("sdxl_unet_config.json")


def test_sdxl_full_size_map_has_70_layers_in_11_modules(sdxl_map):
    assert len(sdxl_map) == 70
    assert len(sdxl_map.modules) == 11
    assert STYLE_MODULE in sdxl_map.modules and LAYOUT_MODULE in sdxl_map.modules
    per_block = {b: sum(1 for layer in sdxl_map.layers if layer.block == b) for b in sdxl_map.blocks}
    assert per_block == {"down_blocks.1": 4, "down_blocks.2": 20, "up_blocks.0": 30, "up_blocks.1": 6, "mid_block": 10}
    assert "up_blocks.0.attentions.1.transformer_blocks.3.attn2" in sdxl_map.names
    # ComfyUI_IPAdapter_plus indexes the 11 modules in execution order (down, mid, up), 0-based:
    # composition (layout) = 3, style = 6.
    unet_order = [m for m in sdxl_map.modules if m.startswith("down")] + ["mid_block.attentions.0"] + [
        m for m in sdxl_map.modules if m.startswith("up")
    ]
    assert unet_order.index(LAYOUT_MODULE) == 3
    assert unet_order.index(STYLE_MODULE) == 6


def test_sd15_full_size_map_has_16_single_layer_modules():
    lm = _meta_map("sd15_unet_config.json")
    assert len(lm) == 16 and len(lm.modules) == 16
    assert all(layer.index == 0 for layer in lm.layers)
    assert "up_blocks.0" not in lm.blocks  # SD1.5's first up block has no attention
    with pytest.raises(ConfigError, match="unknown layer name 'up_blocks.0.attentions.1'"):
        expand_patterns(["style"], lm)


def test_tiny_map_keeps_sdxl_names_with_varying_depth(tiny_model):
    lm = LayerMap.from_unet(tiny_model.pipe.unet)
    assert len(lm.modules) == 11
    assert STYLE_MODULE in lm.modules and LAYOUT_MODULE in lm.modules
    depth = {m: sum(1 for layer in lm.layers if layer.module == m) for m in lm.modules}
    assert len(set(depth.values())) > 1  # transformer depth varies per block, as in SDXL
    assert depth[STYLE_MODULE] > depth["down_blocks.1.attentions.0"]


def _configs() -> dict[str, dict]:
    from styleprobe.models.tiny import UNET_CONFIG as TINY
    from styleprobe.models.toy.unet import UNET_CONFIG as TOY

    configs = {n: json.loads((DATA / f"{n}_unet_config.json").read_text()) for n in ("sdxl", "sd15")}
    configs.update(tiny=dict(TINY), toy=dict(TOY))
    # per-layer depths, with the reverse list diffusers then asks for, and a different module count per block
    configs["asymmetric"] = {**TINY, "layers_per_block": [1, 2, 3], "transformer_layers_per_block": [1, [1, 2], [3, 1, 2]],
                             "reverse_transformer_layers_per_block": [[2, 1, 3, 1], [1, 2, 1], [1, 1]]}
    configs["no_mid"] = {**TINY, "mid_block_type": None}
    return configs


@pytest.mark.parametrize("name", ["sdxl", "sd15", "tiny", "toy", "asymmetric", "no_mid"])
@pytest.mark.parametrize("site", ["attn1", "attn2"])
def test_map_from_config_is_the_map_of_the_built_unet(name, site):
    config = _configs()[name]
    expected = LayerMap.from_unet(build_unet_structure(config), site)
    got = LayerMap.from_config(config, site)
    assert got is not None and got.layers == expected.layers  # names, modules, blocks, order
    assert got.blocks == expected.blocks and got.modules == expected.modules


def test_map_from_config_declines_blocks_it_does_not_know():
    tiny = _configs()["tiny"]
    assert LayerMap.from_config({**tiny, "mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}) is None
    assert LayerMap.from_config({**tiny, "down_block_types": ["DownBlock2D", "SimpleCrossAttnDownBlock2D", "CrossAttnDownBlock2D"]}) is None
    assert LayerMap.from_config({**tiny, "dual_cross_attention": True}) is None


def test_presets_and_generated_sweeps(sdxl_map):
    pats = {p.name: p for p in expand_patterns(["all", "none", "style", "style_layout"], sdxl_map)}
    assert sum(pats["all"].scales) == 70 and sum(pats["none"].scales) == 0
    assert sum(pats["style"].scales) == 10 and sum(pats["style_layout"].scales) == 20
    on = [sdxl_map.layers[i].module for i, s in enumerate(pats["style_layout"].scales) if s]
    assert set(on) == {STYLE_MODULE, LAYOUT_MODULE}
    assert sdxl_map.active_names(pats["style_layout"].scales) == [LAYOUT_MODULE, STYLE_MODULE]

    modules = expand_patterns(["one_hot:module"], sdxl_map)
    assert len(modules) == 11 and all(p.sweep == "one_hot_module" for p in modules)
    assert [p.target for p in modules] == list(sdxl_map.modules)
    layers = expand_patterns(["one_hot:layer"], sdxl_map)
    assert len(layers) == 70 and all(sum(p.scales) == 1 for p in layers)
    loo = expand_patterns(["leave_one_out:module"], sdxl_map)
    assert len(loo) == 11
    style_loo = next(p for p in loo if p.target == STYLE_MODULE)
    assert sum(style_loo.scales) == 60 and sdxl_map.layers_in(STYLE_MODULE)[0] not in [
        i for i, s in enumerate(style_loo.scales) if s
    ]


def test_explicit_lists_and_scales(sdxl_map):
    pats = expand_patterns(
        [
            "mid_block",
            {"name": "two", "layers": ["down_blocks.1", "up_blocks.0.attentions.1.transformer_blocks.3"]},
            {"name": "graded", "scales": {"up_blocks.0.attentions.1": 0.5, "up_blocks.0.attentions.1.transformer_blocks.0.attn2": 1.0}},
        ],
        sdxl_map,
    )
    mid, two, graded = pats
    assert sum(mid.scales) == 10
    assert sum(two.scales) == 5
    assert two.scales[sdxl_map.index("up_blocks.0.attentions.1.transformer_blocks.3.attn2")] == 1.0
    assert graded.scales[sdxl_map.index("up_blocks.0.attentions.1.transformer_blocks.0.attn2")] == 1.0
    assert graded.scales[sdxl_map.index("up_blocks.0.attentions.1.transformer_blocks.1.attn2")] == 0.5
    assert sdxl_map.active_names(graded.scales)[0] == "up_blocks.0.attentions.1.transformer_blocks.0"


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("up_blocks.7", "unknown layer name 'up_blocks.7'"),
        ("up_blocks.0.attentions.1.transformer_blocks.10", "unknown layer name"),
        ("one_hot:modules", "unknown sweep 'one_hot:modules'"),
        ({"name": "x"}, "needs exactly one of layers"),
        ({"layers": ["mid_block"]}, "has no name"),
        ({"name": "neg", "scales": {"mid_block": -1}}, "finite number >= 0"),
        ({"name": "nan", "scales": {"mid_block": float("nan")}}, "finite number >= 0"),
    ],
)
def test_bad_names_fail_with_one_line_listing_valid_names(sdxl_map, spec, fragment):
    with pytest.raises(ConfigError) as err:
        expand_patterns([spec], sdxl_map)
    message = str(err.value)
    assert fragment in message and "\n" not in message
    if "unknown layer name" in fragment:
        assert "valid presets: all, none, style, style_layout" in message
        assert "up_blocks.0.attentions.1 (10 layers)" in message


def test_duplicate_and_empty_patterns(sdxl_map):
    with pytest.raises(ConfigError, match="repeat the name"):
        expand_patterns(["style", "style"], sdxl_map)
    with pytest.raises(ConfigError, match="empty"):
        expand_patterns([], sdxl_map)


def test_native_scale_config_matches_diffusers_expansion(tiny_ip):
    """Every module one-hot, written in diffusers' form, sets exactly the same layers in diffusers itself."""
    from styleprobe.methods.ip_adapter.injection import native_processors

    pipe = tiny_ip.pipe
    lm = pipe.unet.styleprobe_state.layer_map
    patterns = expand_patterns(["style", "style_layout", "all", "none", "one_hot:module"], lm)
    with native_processors(pipe.unet):
        processors = pipe.unet.attn_processors
        try:
            for p in patterns:
                pipe.set_ip_adapter_scale(native_scale_config(p.scales, lm))
                got = tuple(float(processors[f"{n}.processor"].scale[0]) for n in lm.names)
                assert got == p.scales, p.name
        finally:
            pipe.set_ip_adapter_scale(1.0)
    style = next(p for p in patterns if p.name == "style")
    assert native_scale_config(style.scales, lm) == {
        "down": {"block_1": [0.0, 0.0], "block_2": [0.0, 0.0]},
        "up": {"block_0": [0.0, 1.0, 0.0], "block_1": [0.0, 0.0, 0.0]},
        "mid": 0.0,
    }
    with pytest.raises(ValueError, match="different scales per transformer layer"):
        native_scale_config(expand_patterns(["one_hot:layer"], lm)[-1].scales, lm)
