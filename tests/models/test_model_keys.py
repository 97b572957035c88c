"""Every model setting that changes an image is in its key, without changing the keys of earlier folders; and every
model file a job reads is found before anything is generated.

tests/fixtures/model_keys/keys.json holds the keys of one small plan per preset, as styleprobe planned them before the
image encoder folder, the adapter kind and the content text tower entered keys (see make_keys.py there).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import on_tiny
from hydra import compose, initialize_config_dir

from styleprobe.config import CONFIG_DIR
from styleprobe.errors import ConfigError, ModelUnavailableError
from styleprobe.methods.ip_adapter.plugin import KEY_BASELINES, changed_settings
from styleprobe.models import loading, presets, sources
from styleprobe.run.store import Store
from styleprobe.run.sweep import prepare, run

DATA = Path(__file__).parents[1] / "fixtures"
RECORDED = json.loads((DATA / "model_keys" / "keys.json").read_text())["plans"]
UNETS = {"sdxl": "sdxl_unet_config.json", "sdxl_vit_h": "sdxl_unet_config.json", "sd15": "sd15_unet_config.json",
         "toy": "model_keys/toy_unet_config.json"}
#: The values the presets had when these settings entered keys: the baseline an unchanged key implies.
PINNED_BASELINES = {
    "sdxl": ("image_encoder", "global", None),
    "sdxl_vit_h": ("models/image_encoder", "global", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
    "sd15": ("image_encoder", "global", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
    "tiny": ("image_encoder", "global", None),
    "tiny_vit_h": ("models/image_encoder", "global", "tiny:CLIP-ViT-H-14-text"),
    "toy": ("image_encoder", "global", None),
}
#: A small sweep: two references, one prompt, the `style` pattern, subtraction off and on (4 images).
SMALL = ["experiment=custom", "data=small", "data.prompts=[a red bicycle]", "injection.patterns=[style]",
         "method.ip_adapter.subtraction=[0.0,0.5]", "analyze=false"]


def _cfg(tmp_path: Path, *overrides: str, metrics: bool = False):
    extra = [] if metrics or any(o.startswith("metrics") for o in overrides) else ["metrics=[]"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=on_tiny([f"results_root={tmp_path}", *extra, *overrides]))


@pytest.fixture
def stored_unets(monkeypatch):
    """The UNet configs of the Hub presets and the toy from tests/fixtures: planning them needs no download or assembly."""
    real = loading.load_unet_config
    monkeypatch.setattr(loading, "load_unet_config",
                        lambda spec: json.loads((DATA / UNETS[spec.name]).read_text()) if spec.name in UNETS else real(spec))


def _keys(tmp_path: Path, *overrides: str) -> dict[str, str]:
    """Each item's key by what it is (reference, prompt, pattern, subtraction)."""
    items = prepare(_cfg(tmp_path, *overrides)).items
    return {f"{it.row['style']}|{it.row['prompt']}|{it.row['injection']}|{it.row['subtraction']}": it.key for it in items}


def _nothing_written(root: Path) -> None:
    store = Store(root)
    assert not store.row_files() and not list(root.glob("images/**/*.png")) and not list(root.glob("runs/*"))


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_every_presets_keys_are_those_planned_before(name, tmp_path, stored_unets):
    """A folder any preset wrote before resumes with nothing to make: today's plan has exactly its keys."""
    recorded = RECORDED[name]
    keys = sorted(it.key for it in prepare(_cfg(tmp_path, f"model={name}", *recorded["overrides"])).items)
    assert keys == recorded["keys"]


def test_the_presets_set_the_pinned_baselines(tmp_path):
    """The pinned baselines are what the presets set, so no preset's key holds the new fields; a preset whose image
    encoder, adapter kind or text tower is edited fails here, and its keys change (as they should: its images do)."""
    assert {n: (b["image_encoder_folder"], b["adapter_kind"], b["content_text_encoder"]) for n, b in KEY_BASELINES.items()} \
        == PINNED_BASELINES
    for name in PINNED_BASELINES:
        spec = presets.ModelSpec.from_config(_cfg(tmp_path, f"model={name}").model)
        assert changed_settings(spec) == {}, name


def test_image_encoder_folder_and_adapter_kind_change_keys(tmp_path):
    base = _keys(tmp_path, *SMALL)
    assert _keys(tmp_path, *SMALL, "model.adapter.image_encoder_folder=image_encoder") == base  # the baseline, spelled out
    encoder = _keys(tmp_path, *SMALL, "model.adapter.image_encoder_folder=models/image_encoder")
    kind = _keys(tmp_path, "experiment=custom", "data=small", "data.prompts=[a red bicycle]", "injection.patterns=[style]",
                 "model.adapter.kind=plus")
    assert set(encoder) == set(base) and not set(encoder.values()) & set(base.values())
    zero = {k: v for k, v in base.items() if k.endswith("|0.0")}
    assert set(kind) == set(zero) and not set(kind.values()) & set(zero.values())


def test_content_text_encoder_counts_only_with_subtraction(tmp_path):
    base = _keys(tmp_path, "model=tiny_vit_h", *SMALL)
    other = _keys(tmp_path, "model=tiny_vit_h", *SMALL, "model.content_text_encoder=/elsewhere/CLIP-ViT-H-14-text")
    assert set(other) == set(base)
    for what, key in base.items():
        assert (other[what] == key) == what.endswith("|0.0"), what  # the tower changes only what it subtracts from


def test_another_content_text_tower_makes_new_images_in_the_same_folder(tmp_path, tiny_model):
    """An ablation of the subtraction text tower remakes the subtracted images instead of resuming them."""
    from styleprobe.models.tiny import ensure_tiny

    copy = tmp_path / "towers" / "CLIP-ViT-H-14-text"
    shutil.copytree(ensure_tiny() / "CLIP-ViT-H-14-text", copy)
    first = run(_cfg(tmp_path, "model=tiny_vit_h", *SMALL))
    assert (first.planned, first.generated) == (4, 4)
    again = run(_cfg(tmp_path, "model=tiny_vit_h", *SMALL, f"model.content_text_encoder={copy}"))
    assert again.results_dir == first.results_dir
    assert (again.planned, again.done_before, again.generated) == (4, 2, 2)  # the two with subtraction 0.5
    assert run(_cfg(tmp_path, "model=tiny_vit_h", *SMALL, f"model.content_text_encoder={copy}")).generated == 0
    assert len(Store(first.results_dir).table()) == 6


def test_vit_h_adapter_without_its_text_tower_fails_before_generating(tmp_path, tiny_model):
    """The ViT-H encoder (24-d here) minus text_encoder_2's embedding (32-d): refused from the two config files."""
    loads = loading.LOAD_COUNT["n"]
    cfg = _cfg(tmp_path, "model=tiny_vit_h", *SMALL, "model.content_text_encoder=null")
    with pytest.raises(ConfigError) as err:
        run(cfg)
    message = str(err.value)
    assert "\n" not in message and "embeds in 24 dimensions but the content text tower (text_encoder_2) in 32" in message
    assert "set model.content_text_encoder" in message
    assert loading.LOAD_COUNT["n"] == loads
    _nothing_written(Path(cfg.results_dir))
    prepare(_cfg(tmp_path, "model=tiny_vit_h", *SMALL, "model.content_text_encoder=null", "method.ip_adapter.subtraction=[0]"))


@pytest.mark.parametrize("override, expected", [
    ("model.adapter.weight_name=ip-adapter_nowhere.safetensors", "has no sdxl_models/ip-adapter_nowhere.safetensors"),
    ("model.adapter.image_encoder_folder=models/nowhere", "has no models/nowhere/config.json"),
])
def test_a_missing_adapter_file_fails_before_generating(override, expected, tmp_path, tiny_model):
    loads = loading.LOAD_COUNT["n"]
    cfg = _cfg(tmp_path, *SMALL, override)
    with pytest.raises(ModelUnavailableError) as err:
        run(cfg)
    assert "\n" not in str(err.value) and expected in str(err.value)
    assert loading.LOAD_COUNT["n"] == loads
    _nothing_written(Path(cfg.results_dir))


def test_missing_scorer_weights_fail_before_generating(tmp_path, tiny_model, monkeypatch):
    """Scorer weights are looked for before the first image: a local folder that is not there, and Hub ids that are
    not in the cache of an offline machine."""
    loads = loading.LOAD_COUNT["n"]
    cfg = _cfg(tmp_path, *SMALL, "metrics=[style_dino]", f"metrics.style_dino.model={tmp_path / 'no-dino'}", "scoring.weights=hub")
    with pytest.raises(ModelUnavailableError) as err:
        run(cfg)
    assert "\n" not in str(err.value) and f"{tmp_path / 'no-dino'} does not exist; set metrics.style_dino.model" in str(err.value)
    _nothing_written(Path(cfg.results_dir))

    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    cfg = _cfg(tmp_path, *SMALL, "metrics=[style_csd,default]", "scoring.weights=hub")
    with pytest.raises(ModelUnavailableError) as err:
        run(cfg)
    message = str(err.value)
    assert "\n" not in message and message.startswith("cannot find the CSD checkpoint of style_csd")
    assert "hf download tomg-group-umd/CSD-ViT-L pytorch_model.bin" in message and "HF_HUB_OFFLINE is set" in message
    assert "(5 more model files are missing too)" in message  # CLIP's three share one file; DINO's two models
    assert loading.LOAD_COUNT["n"] == loads
    _nothing_written(Path(cfg.results_dir))


def test_score_command_finds_weights_before_recording_a_run(tmp_path, tiny_model, monkeypatch):
    import huggingface_hub.constants as hc

    from styleprobe.run import scoring

    folder = run(_cfg(tmp_path, *SMALL)).results_dir
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    runs = sorted(p.name for p in (folder / "runs").iterdir())
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="score", overrides=[f"results_dir={folder}", "metrics=[style_clip_vit_h]", "scoring.weights=hub"])
    with pytest.raises(ModelUnavailableError, match="hf download laion/CLIP-ViT-H-14-laion2B-s32B-b79K open_clip_model.safetensors"):
        scoring.run(cfg)
    assert sorted(p.name for p in (folder / "runs").iterdir()) == runs and not (folder / "scores" / "style_clip_vit_h").exists()


def test_a_file_is_found_locally_in_the_hub_cache_or_on_a_reachable_hub(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    from styleprobe.models.files import ModelFile, check_found, locate

    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--weights" / "snapshots" / ("0" * 40)
    (snapshot / "sub").mkdir(parents=True)
    (snapshot / "sub" / "model.bin").write_bytes(b"x")
    (cache / "models--someone--weights" / "refs").mkdir()
    (cache / "models--someone--weights" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    wanted = ModelFile("the weights", "someone/weights", ("sub/model.safetensors", "sub/model.bin"), "metrics.x.model")
    assert locate(wanted) == snapshot / "sub" / "model.bin"  # the second name will do
    absent = ModelFile("other weights", "someone/else", ("model.bin",), "metrics.y.model")
    with pytest.raises(ModelUnavailableError, match=r"someone/else/model.bin is not in the Hugging Face cache .* and "
                                                    r"HF_HUB_OFFLINE is set; run `hf download someone/else model.bin`"):
        check_found([wanted, absent])
    monkeypatch.setattr(sources, "hub_offline", lambda: False)
    assert locate(absent) == "hub"  # reachable: diffusers or open_clip downloads it when the job loads it
    local = tmp_path / "folder"
    local.mkdir()
    with pytest.raises(ModelUnavailableError, match="the local folder .* has no model.bin; point metrics.y.model at"):
        locate(ModelFile("local weights", str(local), ("model.bin",), "metrics.y.model"))


def test_a_base_pipeline_folder_without_a_components_weights_fails_before_generating(tmp_path, tiny_model):
    from styleprobe.models.tiny import ensure_tiny

    base = tmp_path / "base"
    shutil.copytree(ensure_tiny() / "stable-diffusion-xl-base", base)
    (base / "text_encoder_2" / "model.safetensors").unlink()
    cfg = _cfg(tmp_path, *SMALL, f"model.base={base}")
    with pytest.raises(ModelUnavailableError, match=r"the text_encoder_2 weights of model tiny: the local folder .* has no "
                                                    r"text_encoder_2/model.safetensors or"):
        run(cfg)
    _nothing_written(Path(cfg.results_dir))


def test_a_b_lora_on_the_hub_is_looked_for_before_generating(tmp_path, tiny_model, references, make_items, monkeypatch):
    import dataclasses

    import huggingface_hub.constants as hc

    from styleprobe.models.files import check_found

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    ref = dataclasses.replace(references[0], b_lora="hub:someone/b-lora-neon")
    items = make_items(tiny_model, "b_lora", [ref], patterns=("style",))
    with pytest.raises(ModelUnavailableError, match=r"the B-LoRA of .*: someone/b-lora-neon/pytorch_lora_weights.safetensors "
                                                    r"is not in the Hugging Face cache"):
        check_found(items[0].method.needed_files(tiny_model.spec, items))
