"""The quality scorers against their reference code's formulas, on their tiny stand-ins, and their safe loading.

Each expected value is computed here from the original's recipe (preprocessing, forward pass, scoring rule), with
the library calls the original makes or with the operations written out, never through the scorer under test:
ImageReward's BLIP as med.py and vit.py compute it, PickScore as its README does with transformers, HPS as
hpsv2/img_score.py does with open_clip, the aesthetic predictor as simple_inference.py does.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from styleprobe.errors import ConfigError, ModelUnavailableError
from styleprobe.metrics import ScoreBatch, build_scorers
from styleprobe.metrics import base as metrics_base
from styleprobe.metrics.quality.stand_ins import AESTHETIC_FILE, HPS_FILE, ensure_tiny_quality, tiny_hps_model
from styleprobe.metrics.tiny_scorers import tiny_open_clip

CPU = "cpu"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROMPTS = ["a cat sitting on a chair", "a cup of coffee", "an astronaut, oil painting"]
QUALITY = {
    "quality_imagereward": {"scorer": "quality_imagereward"},
    "quality_pickscore": {"scorer": "quality_pickscore"},
    "quality_hps": {"scorer": "quality_hps"},
    "quality_aesthetic": {"scorer": "quality_aesthetic"},
}


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """Three photographs of different sizes and aspect ratios (so resizing, cropping and padding all happen)."""
    return [Image.fromarray(a) for a in (skdata.chelsea(), skdata.coffee(), skdata.astronaut())]


@pytest.fixture(scope="module")
def folder():
    return ensure_tiny_quality()


def _batch(images, prompts=PROMPTS, tensor=False) -> ScoreBatch:
    n = len(images)
    return ScoreBatch(images=list(images), references=list(images), reference_ids=[str(i) for i in range(n)],
                      prompts=list(prompts[:n]), contents=["a rabbit"] * n, subjects=["a cat"] * n, device="cpu",
                      preprocess_on_device=tensor)


def _score(name: str, images, weights: str = "tiny", tensor: bool = False, prompts=PROMPTS) -> np.ndarray:
    scorer = build_scorers({name: QUALITY[name]}, CPU, weights)[0]
    return scorer.score(_batch(images, prompts, tensor))[name]


def _clip_transform(size: int = 224):
    """CLIP's preprocessing as ImageReward.py `_transform`, open_clip and the `clip` package write it."""
    return transforms.Compose([transforms.Resize(size, interpolation=InterpolationMode.BICUBIC), transforms.CenterCrop(size),
                               lambda im: im.convert("RGB"), transforms.ToTensor(), transforms.Normalize(CLIP_MEAN, CLIP_STD)])


# ImageReward -----------------------------------------------------------------------------------------------------
def _layer_norm(x, state, prefix, eps):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps)


def _linear(x, state, prefix):
    return x @ state[f"{prefix}.weight"].T + state[f"{prefix}.bias"]


def _blip_vit(pixels, s, heads):
    """models/BLIP/vit.py VisionTransformer.forward, written out: patches, [CLS], positions, blocks, final norm."""
    p = "blip.visual_encoder"
    x = torch.nn.functional.conv2d(pixels, s[f"{p}.patch_embed.proj.weight"], s[f"{p}.patch_embed.proj.bias"], stride=16)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([s[f"{p}.cls_token"].expand(len(x), -1, -1), x], 1) + s[f"{p}.pos_embed"][:, : x.shape[1] + 1]
    n_blocks = len({k.split(".")[3] for k in s if k.startswith(f"{p}.blocks.")})
    for i in range(n_blocks):
        b = f"{p}.blocks.{i}"
        B, N, C = x.shape
        qkv = _linear(_layer_norm(x, s, f"{b}.norm1", 1e-6), s, f"{b}.attn.qkv").reshape(B, N, 3, heads, C // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (C // heads) ** -0.5).softmax(-1)
        x = x + _linear((attn @ v).transpose(1, 2).reshape(B, N, C), s, f"{b}.attn.proj")
        h = _linear(_layer_norm(x, s, f"{b}.norm2", 1e-6), s, f"{b}.mlp.fc1")
        x = x + _linear(torch.nn.functional.gelu(h), s, f"{b}.mlp.fc2")
    return _layer_norm(x, s, f"{p}.norm", 1e-6)


def _med_attention(h, context, mask, s, prefix, heads):
    """med.py BertSelfAttention + BertSelfOutput: scores / sqrt(d) + mask, softmax, dense, residual, LayerNorm."""
    B, L, C = h.shape
    d = C // heads

    def split(x):
        return x.view(B, -1, heads, d).permute(0, 2, 1, 3)

    q, k, v = (split(_linear(x, s, f"{prefix}.self.{n}")) for x, n in ((h, "query"), (context, "key"), (context, "value")))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if mask is not None:
        scores = scores + mask
    ctx = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(B, L, C)
    return _layer_norm(_linear(ctx, s, f"{prefix}.output.dense") + h, s, f"{prefix}.output.LayerNorm", 1e-12)


def _imagereward_by_hand(images, prompts, folder):
    """ImageReward.score: BLIP tokenizer (35 tokens), `_transform(224)`, ViT, BERT in multimodal mode, MLP, standardise."""
    from transformers import BertTokenizer

    s = torch.load(folder / "imagereward" / "ImageReward.pt", map_location="cpu", weights_only=True)
    med = json.loads((folder / "imagereward" / "med_config.json").read_text())
    tokenizer = BertTokenizer.from_pretrained(str(folder / "imagereward" / "bert-base-uncased"))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    out = []
    for image, prompt in zip(images, prompts, strict=True):
        text = tokenizer(prompt, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        embeds = _blip_vit(_clip_transform()(image)[None], s, heads=2)
        p = "blip.text_encoder"
        ids = text.input_ids
        h = s[f"{p}.embeddings.word_embeddings.weight"][ids] + s[f"{p}.embeddings.position_embeddings.weight"][: ids.shape[1]]
        h = _layer_norm(h, s, f"{p}.embeddings.LayerNorm", med["layer_norm_eps"])
        mask = (1.0 - text.attention_mask[:, None, None, :].float()) * -10000.0
        for i in range(med["num_hidden_layers"]):
            layer = f"{p}.encoder.layer.{i}"
            h = _med_attention(h, h, mask, s, f"{layer}.attention", med["num_attention_heads"])
            h = _med_attention(h, embeds, None, s, f"{layer}.crossattention", med["num_attention_heads"])
            ff = _linear(torch.nn.functional.gelu(_linear(h, s, f"{layer}.intermediate.dense")), s, f"{layer}.output.dense")
            h = _layer_norm(ff + h, s, f"{layer}.output.LayerNorm", med["layer_norm_eps"])
        y = h[:, 0]
        for i in (0, 2, 4, 6, 7):
            y = _linear(y, s, f"mlp.layers.{i}")
        out.append(((y - 0.16717362830052426) / 1.0333394966054072).item())
    return np.array(out)


def test_imagereward_equals_the_reference_formula(photos, folder):
    with torch.no_grad():
        expected = _imagereward_by_hand(photos, PROMPTS, folder)
    got = _score("quality_imagereward", photos)
    assert np.abs(expected).max() > 0.05 and np.ptp(expected) > 0.01  # the stand-in's scores differ between images
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    one_by_one = np.concatenate([_score("quality_imagereward", [im], prompts=[p]) for im, p in zip(photos, PROMPTS)])
    np.testing.assert_allclose(got, one_by_one, rtol=1e-5, atol=1e-6)  # padding to 35 tokens: batches do not interact
    swapped = _score("quality_imagereward", photos, prompts=PROMPTS[::-1])
    assert not np.allclose(swapped, got)  # the prompt matters


# PickScore -------------------------------------------------------------------------------------------------------
def test_pickscore_equals_the_readme_formula(photos, folder):
    from transformers import AutoModel, AutoProcessor

    squares = [im.resize((256, 256)) for im in photos]  # the processor's and torchvision's crops agree to the pixel here
    # the PIL image processor, which the README's transformers 4 ran; transformers 5's default torchvision one resizes
    # differently (by up to 0.03 in normalised pixels), and styleprobe follows the original
    processor = AutoProcessor.from_pretrained(folder / "pickscore" / "processor", backend="pil")
    model = AutoModel.from_pretrained(folder / "pickscore" / "model").eval()
    expected = []
    with torch.no_grad():
        for image, prompt in zip(squares, PROMPTS, strict=True):
            image_inputs = processor(images=[image], padding=True, truncation=True, max_length=77, return_tensors="pt")
            text_inputs = processor(text=prompt, padding=True, truncation=True, max_length=77, return_tensors="pt")
            image_embs = model.visual_projection(model.vision_model(pixel_values=image_inputs["pixel_values"]).pooler_output)
            text_embs = model.text_projection(model.text_model(**text_inputs).pooler_output)
            image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
            text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
            expected.append((model.logit_scale.exp() * (text_embs @ image_embs.T)[0]).item())
    got = _score("quality_pickscore", squares)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # the batched tensor path (on a GPU by default) approximates PIL's resize, as for every CLIP-preprocessed metric
    np.testing.assert_allclose(_score("quality_pickscore", squares, tensor=True), expected, atol=5e-3)


# HPS v2.1 --------------------------------------------------------------------------------------------------------
def _hps_preprocess(image: Image.Image) -> torch.Tensor:
    """hpsv2's preprocess_val: ToTensor, ResizeMaxSize(224) on the tensor (bicubic), zero padding, Normalize."""
    t = transforms.ToTensor()(image.convert("RGB"))
    h, w = t.shape[1:]
    scale = 224 / float(max(h, w))
    new = [round(h * scale), round(w * scale)]
    t = TF.resize(t, new, InterpolationMode.BICUBIC)
    pad_h, pad_w = 224 - new[0], 224 - new[1]
    t = TF.pad(t, padding=[pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return transforms.Normalize(CLIP_MEAN, CLIP_STD)(t)


def test_hps_equals_img_score(photos):
    import open_clip

    name, path = tiny_hps_model()
    model = open_clip.create_model(name, output_dict=True)  # as create_model_and_transforms(..., output_dict=True)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    expected = []
    with torch.no_grad():
        for image, prompt in zip(photos, PROMPTS, strict=True):
            outputs = model(_hps_preprocess(image)[None], tokenizer([prompt]))
            image_features, text_features = outputs["image_features"], outputs["text_features"]
            expected.append(torch.diagonal(image_features @ text_features.T).item())
    np.testing.assert_allclose(_score("quality_hps", photos), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_score("quality_hps", photos, tensor=True), expected, rtol=1e-4, atol=1e-6)


# LAION aesthetic -------------------------------------------------------------------------------------------------
def test_aesthetic_equals_simple_inference(photos, folder):
    import open_clip

    name, checkpoint = tiny_open_clip()
    clip, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=checkpoint)
    clip.eval()
    state = {k: v.numpy().astype(np.float64) for k, v in
             torch.load(folder / "aesthetic" / AESTHETIC_FILE, map_location="cpu", weights_only=True).items()}
    expected = []
    for image in photos:
        with torch.no_grad():
            features = clip.encode_image(preprocess(image)[None]).numpy()
        l2 = np.atleast_1d(np.linalg.norm(features, 2, -1))  # simple_inference.py `normalized`
        l2[l2 == 0] = 1
        x = features / np.expand_dims(l2, -1)
        for i in (0, 2, 4, 6, 7):
            x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
        expected.append(float(x[0, 0]))
    got = _score("quality_aesthetic", photos)
    assert np.ptp(expected) > 1e-3
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_the_aesthetic_score_shares_style_clips_embeddings(photos):
    scorers = build_scorers({"style_clip": {"scorer": "style_clip"}, **{"quality_aesthetic": QUALITY["quality_aesthetic"]}},
                            CPU, "tiny")
    batch = _batch(photos)
    for s in scorers:
        s.score(batch)
    encoded = [k for k in batch.memo if isinstance(k, tuple) and k[-1] == "images"]
    assert len(encoded) == 1  # one CLIP image pass for both metrics


# the stand-ins, roles and identities ------------------------------------------------------------------------------
def test_the_stand_ins_are_in_the_published_layouts(folder):
    ir = torch.load(folder / "imagereward" / "ImageReward.pt", weights_only=True)
    assert any(k.startswith("blip.visual_encoder.blocks.") for k in ir) and "mlp.layers.7.weight" in ir
    med = json.loads((folder / "imagereward" / "med_config.json").read_text())
    assert med["add_cross_attention"] is True and med["model_type"] == "bert"
    assert (folder / "imagereward" / "bert-base-uncased" / "vocab.txt").is_file()
    hps = torch.load(folder / "hps" / HPS_FILE, weights_only=True)
    assert "visual.conv1.weight" in hps["state_dict"] and "text_projection" in hps["state_dict"]
    head = torch.load(folder / "aesthetic" / AESTHETIC_FILE, weights_only=True)
    assert sorted(head) == sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))
    assert {p.name for p in (folder / "pickscore" / "model").iterdir()} >= {"config.json", "model.safetensors"}
    assert (folder / "pickscore" / "processor" / "preprocessor_config.json").is_file()


def test_quality_metrics_have_the_quality_role_and_say_what_they_are(photos):
    for weights in ("tiny", "toy"):
        for s in build_scorers(QUALITY, CPU, weights):
            assert {str(r) for r in s.roles().values()} == {"quality:higher"}
            assert s.identity()["reference"] and s.identity()["weights"] == weights
            if weights == "toy":
                assert "not about image quality" in s.describe_model()
            else:
                assert "tiny random" in s.describe_model()
    needs = {s.name: s.needs_prompt for s in build_scorers(QUALITY, CPU, "tiny")}
    assert needs == {"quality_imagereward": True, "quality_pickscore": True, "quality_hps": True, "quality_aesthetic": False}


# safe loading -----------------------------------------------------------------------------------------------------
class _Payload:
    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return (self.call, self.args)


def _crafted(tmp_path, good: dict, marker, wrap=lambda s: s) -> os.PathLike:
    path = tmp_path / "crafted.pt"
    torch.save(wrap({**good, "z": _Payload(os.system, f"touch {marker}")}), path)
    return path


def test_crafted_quality_checkpoints_are_refused_before_anything_runs(tmp_path, folder):
    from styleprobe.metrics.quality.aesthetic import load_head
    from styleprobe.metrics.quality.blip import VIT_ARCHS, load_imagereward
    from styleprobe.metrics.quality.hps import load_hps

    marker = tmp_path / "pwned"
    ir = torch.load(folder / "imagereward" / "ImageReward.pt", weights_only=True)
    hps_name, hps_path = tiny_hps_model()
    hps = torch.load(hps_path, weights_only=True)
    head = torch.load(folder / "aesthetic" / AESTHETIC_FILE, weights_only=True)
    loads = [
        lambda p: load_imagereward(p, folder / "imagereward" / "med_config.json", VIT_ARCHS["tiny"]),
        lambda p: load_hps(hps_name, p, torch.device("cpu")),
        load_head,
    ]
    crafted = [_crafted(tmp_path / "ir", ir, marker), _crafted(tmp_path / "hps", hps["state_dict"], marker,
                                                               lambda s: {"state_dict": s}),
               _crafted(tmp_path / "head", head, marker)]
    for load, path in zip(loads, crafted, strict=True):
        with pytest.raises(ConfigError) as err:
            load(path)
        assert "does not run code from checkpoints" in str(err.value) and "\n" not in str(err.value)
        assert not marker.exists()


@pytest.fixture
def tmp_path(tmp_path):
    for sub in ("ir", "hps", "head"):
        (tmp_path / sub).mkdir()
    return tmp_path


def test_wrong_quality_files_are_one_line_errors(tmp_path, folder):
    from styleprobe.metrics.quality.aesthetic import load_head
    from styleprobe.metrics.quality.blip import VIT_ARCHS, load_imagereward
    from styleprobe.metrics.quality.hps import load_hps

    med = folder / "imagereward" / "med_config.json"
    ir = torch.load(folder / "imagereward" / "ImageReward.pt", weights_only=True)
    headless = tmp_path / "headless.pt"
    torch.save({k: v for k, v in ir.items() if not k.startswith("mlp.")}, headless)
    with pytest.raises(ConfigError, match=r"lacks 10 of the \d+ weights of the tiny ImageReward model"):
        load_imagereward(headless, med, VIT_ARCHS["tiny"])
    reshaped = tmp_path / "reshaped.pt"
    torch.save({**ir, "blip.visual_encoder.pos_embed": torch.zeros(1, 5, 32)}, reshaped)
    with pytest.raises(ConfigError, match=r"wrong shape \(e\.g\. blip\.visual_encoder\.pos_embed is \(1, 5, 32\)"):
        load_imagereward(reshaped, med, VIT_ARCHS["tiny"])
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_head(text)
    with pytest.raises(ConfigError, match="holds no state dict"):
        load_hps("ViT-B-32", _save(tmp_path / "list.pt", [1, 2, 3]), torch.device("cpu"))
    with pytest.raises(ConfigError, match="lacks weights of open_clip ViT-B-32"):
        load_hps("ViT-B-32", tiny_hps_model()[1], torch.device("cpu"))
    with pytest.raises(ConfigError, match="is not the predictor's MLP"):
        load_head(_save(tmp_path / "x.pth", {"layers.0.weight": torch.ones(3, 4)}))


def _save(path, obj):
    torch.save(obj, path)
    return path


@pytest.mark.parametrize(
    ("name", "fix"),
    [
        ("quality_imagereward", "hf download THUDM/ImageReward ImageReward.pt"),
        ("quality_pickscore", "hf download yuvalkirstain/PickScore_v1"),
        ("quality_hps", "hf download xswu/HPSv2 HPS_v2.1_compressed.pt"),
        ("quality_aesthetic", "improved-aesthetic-predictor/raw/main/sac%2Blogos%2Bava1-l14-linearMSE.pth"),
    ],
)
def test_missing_quality_weights_fail_at_planning_naming_the_download(name, fix, tmp_path, monkeypatch):
    from styleprobe.models.files import check_found

    monkeypatch.setenv("STYLEPROBE_CACHE", str(tmp_path))  # no aesthetic head downloaded there
    loads = metrics_base.LOAD_COUNT["n"]
    scorer = build_scorers({name: QUALITY[name]}, CPU, "hub")[0]
    with pytest.raises(ModelUnavailableError) as err:
        check_found(scorer.needed_files())
    assert fix in str(err.value) and "\n" not in str(err.value)
    assert metrics_base.LOAD_COUNT["n"] == loads  # found missing before any model is read


def test_bad_quality_options_are_one_line_errors():
    with pytest.raises(ConfigError, match="arch='vit_base'; choose one of vit_large, tiny"):
        build_scorers({"q": {"scorer": "quality_imagereward", "arch": "vit_base"}}, CPU, "hub")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) tokeniser"):
        build_scorers({"q": {"scorer": "quality_imagereward", "tokeniser": "x"}}, CPU, "tiny")
