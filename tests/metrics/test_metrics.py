"""Each metric's definition, checked on the tiny random scorers (the real weights cannot be downloaded here).

What random weights still let us check: an image against itself scores 1, the image-image scores are
symmetric, batches agree with one-by-one calls, each score equals the library's own computation of the
published definition, the CSD loader reads the original checkpoint format, and missing weights say what
to download.
"""

from __future__ import annotations

import builtins
import io
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from styleprobe.errors import ConfigError, ModelUnavailableError
from styleprobe.metrics import ScoreBatch, build_scorers, registry
from styleprobe.metrics import base as metrics_base
from styleprobe.metrics import csd_model as csd_module
from styleprobe.metrics.tiny_scorers import ensure_tiny_scorers, tiny_open_clip, write_csd_checkpoint

CPU = torch.device("cpu")
IMAGE_IMAGE = {
    "style_clip": {"scorer": "style_clip"},
    "style_dino": {"scorer": "style_dino", "model": "facebook/dino-vitb8"},
    "ref_dinov2": {"scorer": "style_dino", "model": "facebook/dinov2-base", "role": "reference"},
    "style_csd": {"scorer": "style_csd"},
}


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [Image.fromarray(a) for a in (skdata.chelsea(), skdata.coffee(), skdata.astronaut(), skdata.rocket())]


def _batch(images, references, *, prompts=None, contents=None, subjects=None) -> ScoreBatch:
    n = len(images)
    return ScoreBatch(
        images=list(images),
        references=list(references),
        reference_ids=[f"ref-{id(r)}" for r in references],
        prompts=prompts or ["a cat sitting on a chair"] * n,
        contents=contents or ["a rabbit"] * n,
        subjects=subjects or ["a cat"] * n,
    )


@pytest.fixture(scope="module")
def scorers():
    return {s.name: s for s in build_scorers(IMAGE_IMAGE, CPU, "tiny")}


def test_registry_names_every_scorer_kind():
    assert set(registry()) == {"style_clip", "text_clip", "leak_clip", "style_dino", "style_csd", "toy_judge",
                               "quality_imagereward", "quality_pickscore", "quality_hps", "quality_aesthetic"}


@pytest.mark.parametrize("name", list(IMAGE_IMAGE))
def test_image_against_itself_scores_one(scorers, photos, name):
    values = scorers[name].score(_batch(photos, photos))[name]
    assert values.shape == (len(photos),)
    np.testing.assert_allclose(values, 1.0, atol=1e-6)


@pytest.mark.parametrize("name", list(IMAGE_IMAGE))
def test_image_scores_are_symmetric_and_bounded(scorers, photos, name):
    a, b = photos[:2], photos[2:]
    ab = scorers[name].score(_batch(a, b))[name]
    ba = scorers[name].score(_batch(b, a))[name]
    np.testing.assert_allclose(ab, ba, atol=1e-6)
    assert np.all(np.abs(ab) <= 1 + 1e-6) and np.all(ab < 1 - 1e-4)  # different photos are not identical


@pytest.mark.parametrize("name", list(IMAGE_IMAGE))
def test_batch_agrees_with_one_by_one(scorers, photos, name):
    refs = photos[::-1]
    together = scorers[name].score(_batch(photos, refs))[name]
    alone = np.concatenate([scorers[name].score(_batch([o], [r]))[name] for o, r in zip(photos, refs, strict=True)])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def _open_clip_reference(photos, texts):
    """CLIP-T computed with open_clip's own transform, tokenizer and encoders (the library's definition)."""
    import open_clip

    name, path = tiny_open_clip()
    model, _, transform = open_clip.create_model_and_transforms(name, pretrained=path)
    model.eval()
    with torch.no_grad():
        img = model.encode_image(torch.stack([transform(p) for p in photos]))
        txt = model.encode_text(open_clip.get_tokenizer(name)(texts))
    img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
    return img, txt


def test_text_clip_is_open_clips_cosine(photos):
    prompts = ["a cat on a chair", "a cup of coffee", "an astronaut", "a rocket on a launch pad"]
    scorer = build_scorers({"text_clip": {"scorer": "text_clip"}}, CPU, "tiny")[0]
    ours = scorer.score(_batch(photos, photos, prompts=prompts))["text_clip"]
    img, txt = _open_clip_reference(photos, prompts)
    np.testing.assert_allclose(ours, (img * txt).sum(-1).numpy(), atol=1e-5)


def test_style_clip_is_open_clips_image_cosine(scorers, photos):
    ours = scorers["style_clip"].score(_batch(photos[:2], photos[2:]))["style_clip"]
    img, _ = _open_clip_reference(photos, ["x"])
    np.testing.assert_allclose(ours, (img[:2] * img[2:]).sum(-1).numpy(), atol=1e-5)


def test_leak_clip_margin_and_leak_free(photos):
    scorer = build_scorers({"leak_clip": {"scorer": "leak_clip", "template": "a {}"}}, CPU, "tiny")[0]
    assert scorer.columns == ("leak_clip", "leak_margin", "leak_free")
    contents = ["rabbit", "a rabbit", "cat", "an owl"]
    subjects = ["a cat", "a cat", "cat", "the sea"]
    out = scorer.score(_batch(photos, photos, contents=contents, subjects=subjects))
    _, texts = _open_clip_reference(photos, ["a rabbit", "a cat", "an owl", "the sea"])
    img, _ = _open_clip_reference(photos, ["x"])
    rabbit, cat, owl, sea = texts
    expect_leak = np.array([img[0] @ rabbit, img[1] @ rabbit, img[2] @ cat, img[3] @ owl])
    expect_target = np.array([img[0] @ cat, img[1] @ cat, img[2] @ cat, img[3] @ sea])
    np.testing.assert_allclose(out["leak_clip"], expect_leak, atol=1e-5)
    margin = expect_leak - expect_target
    np.testing.assert_allclose(out["leak_margin"][[0, 1, 3]], margin[[0, 1, 3]], atol=1e-5)
    assert list(out["leak_free"][[0, 1, 3]]) == [float(m < 0) for m in margin[[0, 1, 3]]]
    # "cat" vs "cat": the texts are the same, so neither margin nor leak-free is defined
    assert np.isnan(out["leak_margin"][2]) and np.isnan(out["leak_free"][2])
    assert scorer.phrase("rabbit") == "a rabbit" and scorer.phrase("An owl") == "An owl"


def test_dinov2_embedding_is_the_normalised_cls_token(scorers, photos):
    """DINOv2's pooled output is its CLS after the final LayerNorm; the metric's cosine must be that one's."""
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(ensure_tiny_scorers() / "dinov2").eval()
    from styleprobe.metrics.preprocess import DINO

    with torch.no_grad():
        pooled = model(pixel_values=DINO(photos)).pooler_output
    expected = torch.nn.functional.cosine_similarity(pooled[:2], pooled[2:]).numpy()
    ours = scorers["ref_dinov2"].score(_batch(photos[:2], photos[2:]))["ref_dinov2"]
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_two_metrics_on_one_dinov2_give_one_number_and_share_one_model(photos):
    metrics_base.release_models()
    before = metrics_base.LOAD_COUNT["n"]
    both = build_scorers(
        {"ref_dinov2": IMAGE_IMAGE["ref_dinov2"], "dinov2_copy": {"scorer": "style_dino", "model": "facebook/dinov2-base"}},
        CPU,
        "tiny",
    )
    batch = _batch(photos[:2], photos[2:])
    a, b = (s.score(batch)[s.name] for s in both)
    assert np.array_equal(a, b)
    assert metrics_base.LOAD_COUNT["n"] == before + 1


def test_csd_is_the_normalised_style_head_dot_product(scorers, photos):
    model = scorers["style_csd"].model()
    from styleprobe.metrics.preprocess import CLIP

    with torch.no_grad():
        feature = model.backbone(CLIP(photos))  # CLS after ln_post, no CLIP projection
        assert feature.shape[1] == csd_module.ARCHS["tiny"].width
        style = feature @ model.last_layer_style
    style = style / style.norm(dim=1, keepdim=True)
    expected = (style[:2] * style[2:]).sum(-1).numpy()
    ours = scorers["style_csd"].score(_batch(photos[:2], photos[2:]))["style_csd"]
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_csd_loader_reads_the_original_format(tmp_path):
    path = tmp_path / "checkpoint.pth"
    state = write_csd_checkpoint(path, seed=7)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"epoch", "model_state_dict"}
    assert all(k.startswith("module.") for k in raw["model_state_dict"])
    assert "module.backbone.conv1.weight" in raw["model_state_dict"] and "module.last_layer_style" in raw["model_state_dict"]
    model = csd_module.load_csd(path, csd_module.ARCHS["tiny"])
    loaded = model.state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    assert model.backbone.proj is None
    # A bare state dict without prefixes (as a re-saved model) loads too.
    bare = tmp_path / "bare.pth"
    torch.save(state, bare)
    assert torch.equal(csd_module.load_csd(bare, csd_module.ARCHS["tiny"]).last_layer_style, state["last_layer_style"])


def test_csd_loader_fails_loudly_on_a_wrong_checkpoint(tmp_path):
    import open_clip

    name, _ = tiny_open_clip()
    clip_visual = tmp_path / "clip.pth"
    torch.save({"model_state_dict": {f"module.visual.{k}": v for k, v in open_clip.create_model(name).visual.state_dict().items()}}, clip_visual)
    with pytest.raises(ConfigError, match=r"lacks \d+ of the \d+ backbone and style-head weights of the tiny model"):
        csd_module.load_csd(clip_visual, csd_module.ARCHS["tiny"])

    reshaped = tmp_path / "reshaped.pth"
    state = write_csd_checkpoint(tmp_path / "ok.pth")
    state["last_layer_style"] = torch.zeros(32, 7)
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in state.items()}}, reshaped)
    with pytest.raises(ConfigError, match=r"wrong shape \(e\.g\. last_layer_style is \(32, 7\)"):
        csd_module.load_csd(reshaped, csd_module.ARCHS["tiny"])

    deeper = tmp_path / "deeper.pth"  # one block more than the tiny tower: its scores would not be the file's model's
    good = csd_module.read_checkpoint(tmp_path / "ok.pth")
    good["backbone.transformer.resblocks.2.ln_1.weight"] = torch.ones(csd_module.ARCHS["tiny"].width)
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in good.items()}}, deeper)
    with pytest.raises(ConfigError, match=r"has 1 backbone weights the tiny model lacks \(e\.g\. backbone\.transformer"):
        csd_module.load_csd(deeper, csd_module.ARCHS["tiny"])

    with pytest.raises(ConfigError, match="weights of the vit_large model"):  # the tiny file is not the ViT-L model
        csd_module.load_csd(tmp_path / "ok.pth", csd_module.ARCHS["vit_large"])

    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read"):
        csd_module.read_checkpoint(text)
    listed = tmp_path / "list.pth"
    torch.save([1, 2, 3], listed)
    with pytest.raises(ConfigError, match="holds no state dict"):
        csd_module.read_checkpoint(listed)


@pytest.mark.parametrize(
    ("metric", "download"),
    [
        ({"style_clip": {"scorer": "style_clip"}}, "hf download timm/vit_large_patch14_clip_224.openai open_clip_pytorch_model.bin"),
        ({"text_clip": {"scorer": "text_clip", "model": "ViT-H-14", "pretrained": "laion2b_s32b_b79k"}},
         "hf download laion/CLIP-ViT-H-14-laion2B-s32B-b79K open_clip_pytorch_model.bin"),
        ({"style_dino": {"scorer": "style_dino"}}, "hf download facebook/dino-vitb8"),
        ({"style_csd": {"scorer": "style_csd"}}, "hf download tomg-group-umd/CSD-ViT-L pytorch_model.bin"),
        ({"style_csd": {"scorer": "style_csd", "checkpoint": "/nowhere/checkpoint.pth"}}, "set metrics.style_csd.checkpoint"),
    ],
)
def test_missing_weights_name_what_to_download(photos, metric, download):
    scorer = build_scorers(metric, CPU, "hub")[0]
    with pytest.raises(ModelUnavailableError) as err:
        scorer.score(_batch(photos[:1], photos[:1]))
    assert download in str(err.value) and "\n" not in str(err.value)


def test_bad_metric_configs_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown scorer 'style_clips'; choose one of leak_clip, quality_aesthetic"):
        build_scorers({"x": {"scorer": "style_clips"}}, CPU, "tiny")
    with pytest.raises(ConfigError, match="needs a `scorer:`"):
        build_scorers({"x": {"model": "ViT-L-14"}}, CPU, "tiny")
    with pytest.raises(ConfigError, match=r"metrics.x: unknown option\(s\) modle; style_clip takes model, pretrained"):
        build_scorers({"x": {"scorer": "style_clip", "modle": "ViT-L-14"}}, CPU, "tiny")
    with pytest.raises(ConfigError, match="both write column 'leak_margin'"):
        build_scorers({"a": {"scorer": "leak_clip"}, "b": {"scorer": "leak_clip"}}, CPU, "tiny")
    with pytest.raises(ConfigError, match="has no {} for the content"):
        build_scorers({"leak_clip": {"scorer": "leak_clip", "template": "a rabbit"}}, CPU, "tiny")
    with pytest.raises(ConfigError, match="arch='vit_huge'; choose one of vit_large, tiny"):
        build_scorers({"style_csd": {"scorer": "style_csd", "arch": "vit_huge"}}, CPU, "hub")


def test_tiny_scorers_are_deterministic(tmp_path):
    a = ensure_tiny_scorers(tmp_path / "a")
    b = ensure_tiny_scorers(tmp_path / "b")
    for rel in ("clip/open_clip_model.bin", "csd/checkpoint.pth"):
        sa, sb = torch.load(a / rel, weights_only=True), torch.load(b / rel, weights_only=True)
        sa, sb = sa.get("model_state_dict", sa), sb.get("model_state_dict", sb)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    for rel in ("dino/model.safetensors", "dinov2/model.safetensors"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()


def test_tiny_scorers_say_so_in_the_table(scorers):
    for s in scorers.values():
        assert "tiny random" in s.describe_model() and "not science" in s.describe_model()
        assert s.identity()["weights"] == "tiny"


def test_openai_weights_are_built_with_quickgelu(monkeypatch):
    """open_clip's plain ViT-L-14 config uses GELU; OpenAI's weights need QuickGELU or every CLIP score drifts."""
    import open_clip

    from styleprobe.metrics.clip import OpenCLIP, open_clip_options

    assert open_clip_options("ViT-L-14", "openai") == {"force_quick_gelu": True}
    assert open_clip_options("ViT-H-14", "laion2b_s32b_b79k") == {}
    assert open_clip_options("ViT-L-14", None) == {}
    seen = {}

    def capture(name, **kwargs):
        seen.update(kwargs, name=name)
        raise RuntimeError("Failed to download weights (captured)")

    monkeypatch.setattr(open_clip, "create_model", capture)
    with pytest.raises(ModelUnavailableError):
        OpenCLIP.load("ViT-L-14", "openai", CPU)
    assert seen["name"] == "ViT-L-14" and seen["pretrained"] == "openai" and seen["force_quick_gelu"] is True


def test_outputs_are_preprocessed_once_per_preprocessing(photos, monkeypatch):
    """CLIP and CSD share CLIP's preprocessing; the batch does it once for both."""
    from styleprobe.metrics import preprocess
    from styleprobe.metrics.base import release_models

    release_models()  # reference embeddings cached by another test on this worker would hide the references' calls
    calls = []
    real = preprocess.Preprocess.__call__
    monkeypatch.setattr(preprocess.Preprocess, "__call__", lambda self, images: calls.append(self) or real(self, images))
    scorers = build_scorers({"style_clip": {"scorer": "style_clip"}, "style_csd": {"scorer": "style_csd"}}, CPU, "tiny")
    batch = _batch(photos[:2], photos[:2])
    for s in scorers:
        s.score(batch)
    assert calls.count(preprocess.CLIP) == 3  # the outputs once; the references once per model (each caches its own)
    batch2 = ScoreBatch(photos[2:], photos[:2], [f"ref-{id(r)}" for r in photos[:2]], ["p"] * 2, ["c"] * 2, ["s"] * 2)
    calls.clear()
    for s in scorers:
        s.score(batch2)
    assert calls == [preprocess.CLIP]  # references cached from the first batch: only the outputs, once


def test_random_weight_scorers_say_they_time_only():
    for s in build_scorers(IMAGE_IMAGE, CPU, "random"):
        assert s.describe_model().startswith("random-weight ") and s.describe_model().endswith("(timing only, not science)")
        assert s.identity()["weights"] == "random"


class _Payload:
    """Unpickling this object would call `call(*args)`: the shape of a checkpoint crafted to run code."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return (self.call, self.args)


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        (lambda marker: _Payload(os.system, f"touch {marker}"), r"(posix|nt|os)\.system"),  # a blocked module
        (lambda marker: _Payload(builtins.eval, f"open({str(marker)!r}, 'w')"), r"builtins\.eval"),  # torch says `eval`
        (lambda marker: _Payload(io.open, str(marker), "w"), r"_?io\.open"),  # io.open on Python 3.11, _io.open from 3.12
    ],
    ids=["os.system", "builtins.eval", "io.open"],
)
def test_csd_loader_runs_no_code_from_a_crafted_checkpoint(tmp_path, payload, named):
    marker = tmp_path / "pwned"
    crafted = tmp_path / "checkpoint.pth"
    state = write_csd_checkpoint(tmp_path / "ok.pth")
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in state.items()}, "extra": payload(marker)}, crafted)
    with pytest.raises(ConfigError) as err:
        csd_module.load_csd(crafted, csd_module.ARCHS["tiny"])
    assert "does not run code from checkpoints" in str(err.value)
    assert re.search(rf"it asks for {named}\)", str(err.value)), str(err.value)
    assert "\n" not in str(err.value) and not marker.exists()


@pytest.mark.parametrize(
    ("message", "named"),
    [  # torch's other wordings of a refusal (torch/_weights_only_unpickler.py), each naming what was asked for
        ("Can only create new object for nn.Parameter or classes allowlisted via `add_safe_globals` but got "
         "<class 'evil.Thing'>", "evil.Thing"),
        ("Can only build Tensor, Parameter, OrderedDict or types allowlisted via `add_safe_globals`, but got "
         "<class 'evil.State'>", "evil.State"),
        ("Trying to call reduce for unrecognized function <built-in function exec> which belongs to <module 'builtins'>",
         "<built-in function exec>"),
        ("``torch.nested`` and ``torch._dynamo`` must be imported to load nested jagged tensors (NJTs)",
         "torch.nested and torch._dynamo"),
        ("Weights only load failed.\n\nUnsupported operand 110", None),  # a text file: nothing asked for
    ],
)
def test_every_wording_of_a_refusal_names_what_was_asked_for(message, named):
    assert csd_module.refused_global(message) == named


class _ContentMLP(torch.nn.Module):
    """The content head of CSD's `content_proj_head=custom` training: an MLP in place of the projection matrix."""

    def __init__(self, width: int, dim: int):
        super().__init__()
        self.projection = torch.nn.Linear(width, dim)
        self.fc = torch.nn.Linear(dim, dim)
        self.layer_norm = torch.nn.LayerNorm(dim)


def _csd_training_checkpoint(path: Path, state: dict[str, torch.Tensor], content_head: str, extra: dict | None = None) -> None:
    """A checkpoint as CSD's train_csd.py writes one: the wrapped model's state dict (`module.` prefixes, the content
    head its run chose), both SGD optimizers' states with momentum buffers, the iteration, the run's argparse
    Namespace and the fp16 scaler's state."""
    import argparse

    arch = csd_module.ARCHS["tiny"]
    model = csd_module.CSDModel(arch)
    model.load_state_dict(state)
    if content_head == "custom":
        del model.last_layer_content  # a parameter in the default head, a module in the custom one
        model.last_layer_content = _ContentMLP(arch.width, arch.style_dim)
    wrapped = torch.nn.DataParallel(model)
    opt_bb = torch.optim.SGD(model.backbone.parameters(), lr=0.0, momentum=0.9, weight_decay=1e-4)
    heads = [model.last_layer_style, *model.last_layer_content.parameters()] if content_head == "custom" else [
        model.last_layer_style, model.last_layer_content]
    opt_proj = torch.optim.SGD(heads, lr=0.0, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt_bb.step()
    opt_proj.step()  # lr 0 (the schedule's start): momentum buffers written, weights unchanged
    model_state = {**wrapped.state_dict(), **(extra or {})}
    torch.save({"model_state_dict": model_state, "opt_bb": opt_bb.state_dict(), "opt_proj": opt_proj.state_dict(),
                "iter": 120000, "args": argparse.Namespace(arch="vit_large", content_proj_head=content_head, lr=3e-4),
                "fp16_scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                                "_growth_tracker": 12}}, path)


def _raw(path: Path) -> dict:
    """A training checkpoint as torch reads it, its argparse Namespace allowed."""
    import argparse

    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, weights_only=True, map_location="cpu")


def _csd_scores(checkpoint: Path, photos) -> np.ndarray:
    scorer = build_scorers({"style_csd": {"scorer": "style_csd", "arch": "tiny", "checkpoint": str(checkpoint)}}, CPU, "hub")[0]
    return scorer.score(_batch(photos[:2], photos[2:]))["style_csd"]


@pytest.mark.parametrize("content_head", ["default", "custom"])
def test_csd_loader_reads_a_checkpoint_as_csds_training_writes_it(tmp_path, photos, caplog, content_head):
    """The published file's layout (training state beside the model, `module.` prefixes, either content head) loads
    quietly, and scores as styleprobe's own file of the same weights does."""
    ours = tmp_path / "ours.pth"
    state = write_csd_checkpoint(ours, seed=7)
    theirs = tmp_path / "checkpoint.pth"
    _csd_training_checkpoint(theirs, state, content_head)
    raw = _raw(theirs)
    assert raw["opt_bb"]["state"] and all(k.startswith("module.") for k in raw["model_state_dict"])
    assert ("module.last_layer_content.projection.weight" in raw["model_state_dict"]) is (content_head == "custom")
    with caplog.at_level(logging.WARNING):
        model = csd_module.load_csd(theirs, csd_module.ARCHS["tiny"])
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert torch.equal(model.last_layer_style, state["last_layer_style"])
    assert torch.equal(model.backbone.conv1.weight, state["backbone.conv1.weight"])
    expected = _csd_scores(ours, photos)
    assert np.array_equal(_csd_scores(theirs, photos), expected)


def test_csd_loader_warns_about_keys_outside_the_backbone_and_style_head(tmp_path, photos, caplog):
    ours = tmp_path / "ours.pth"
    state = write_csd_checkpoint(ours, seed=7)
    theirs = tmp_path / "checkpoint.pth"
    extra = {f"module.domain_classifier.{i}.weight": torch.zeros(2, 2) for i in range(4)} | {"module.queue": torch.zeros(8, 4)}
    _csd_training_checkpoint(theirs, state, "default", extra)
    with caplog.at_level(logging.WARNING):
        scores = _csd_scores(theirs, photos)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "5 keys outside CSD's backbone and style head are ignored" in warnings[0]
    assert "domain_classifier.0.weight, domain_classifier.1.weight, domain_classifier.2.weight" in warnings[0]
    assert np.array_equal(scores, _csd_scores(ours, photos))


def test_csd_loader_fails_on_missing_backbone_weights(tmp_path):
    state = write_csd_checkpoint(tmp_path / "ok.pth", seed=7)
    gone = ["backbone.ln_post.bias", "backbone.ln_post.weight", "backbone.transformer.resblocks.1.mlp.c_fc.weight"]
    path = tmp_path / "checkpoint.pth"
    _csd_training_checkpoint(path, state, "default")
    raw = _raw(path)
    for key in gone:
        del raw["model_state_dict"][f"module.{key}"]
    torch.save(raw, path)
    with pytest.raises(ConfigError) as err:
        csd_module.load_csd(path, csd_module.ARCHS["tiny"])
    message = str(err.value)
    assert f"lacks 3 of the {len([k for k in state if k != 'last_layer_content'])} backbone and style-head weights" in message
    assert ", ".join(gone) in message and "give CSD's checkpoint.pth or tomg-group-umd/CSD-ViT-L/pytorch_model.bin" in message
    assert "\n" not in message


def test_csd_loader_reads_the_training_state_the_published_file_holds(tmp_path):
    """Numpy scalars, dtypes and the argparse Namespace of the training run are allowed, nothing else."""
    import argparse

    state = write_csd_checkpoint(tmp_path / "ok.pth")
    path = tmp_path / "checkpoint.pth"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": np.int64(19),
                "best_map": np.float64(0.646), "dtype": np.dtype(np.float32),
                "args": argparse.Namespace(lr=3e-4, arch="vit_large", eval_k=[1, 10, 100])}, path)
    model = csd_module.load_csd(path, csd_module.ARCHS["tiny"])
    assert torch.equal(model.last_layer_style, state["last_layer_style"])


def test_no_unsafe_load_remains_in_the_code():
    root = Path(__file__).resolve().parents[2]
    files = [*(root / "src").rglob("*.py"), *(root / "benchmarks").glob("*.py"), *(root / "tests").rglob("*.py")]
    unsafe = "weights_only=" + "False"  # split so this test does not find itself
    assert [str(f) for f in files if unsafe in f.read_text()] == []


def test_scores_with_tensor_preprocessing_match_the_pil_reference(scorers, photos):
    """Every default metric, scored once through PIL and once through the batched tensor path: the same numbers up to
    the resize's rounding (references go through the same path; their cache is per path, so it is emptied between)."""
    from styleprobe.metrics.base import release_models

    def scores(on_device: bool) -> dict[str, np.ndarray]:
        release_models()
        batch = _batch(photos[:2], photos[2:])
        batch.preprocess_on_device, batch.device = on_device, CPU
        out: dict[str, np.ndarray] = {}
        for s in build_scorers(IMAGE_IMAGE, CPU, "tiny"):
            out.update({k: np.asarray(v, dtype=float) for k, v in s.score(batch).items()})
        return out

    pil, tensor = scores(False), scores(True)
    assert set(pil) == set(tensor) and len(pil) >= 4
    for name in pil:
        np.testing.assert_allclose(tensor[name], pil[name], atol=5e-3, err_msg=name)
    release_models()


def test_scoring_dtype_runs_the_models_in_it_and_says_so(photos):
    """bfloat16 scorers: the same numbers as float32 up to bfloat16's precision; the identity records the dtype, so a
    float32 column refuses them (scoring.check_identities), and a float32 identity is what it always was."""
    from styleprobe.metrics.base import release_models
    from styleprobe.run.scoring import scoring_dtype

    def run(dtype):
        release_models()
        scorers = build_scorers(IMAGE_IMAGE, CPU, "tiny", dtype=dtype)
        batch = _batch(photos[:2], photos[2:])
        return scorers, {k: np.asarray(v, dtype=float) for s in scorers for k, v in s.score(batch).items()}

    full, f32 = run("float32")
    half, bf16 = run("bfloat16")
    kinds = {s.kind: s for s in half}
    modules = [kinds["style_csd"].model(), kinds["style_clip"].clip().model, kinds["style_dino"].backbone().model]
    assert all(p.dtype == torch.bfloat16 for m in modules for p in m.parameters())
    for name in f32:
        np.testing.assert_allclose(bf16[name], f32[name], atol=0.05, err_msg=name)
    assert all("dtype" not in s.identity() for s in full)
    assert all(s.identity()["dtype"] == "bfloat16" for s in half)
    assert scoring_dtype("bfloat16") == "bfloat16" and half[0].settings.torch_dtype is torch.bfloat16
    old_style = build_scorers(IMAGE_IMAGE, CPU, "tiny", dtype=torch.bfloat16)  # a torch.dtype is taken as its name
    assert [s.identity() for s in old_style] == [s.identity() for s in half]
    with pytest.raises(ConfigError, match="scoring.dtype='fp8'; choose float32, bfloat16 or float16"):
        scoring_dtype("fp8")
    release_models()
