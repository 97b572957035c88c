"""Scorer preprocessing against the published constants and the reference implementations, on a real photo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from styleprobe.metrics import preprocess

# Published constants, as the papers' code writes them (OpenAI CLIP's clip.py; torchvision / DINO eval_knn.py).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """Non-square photos (cat 451x300, coffee 600x400) so shorter-side resize and center crop both matter."""
    return [Image.fromarray(skdata.chelsea()), Image.fromarray(skdata.coffee())]


def test_constants_are_the_published_ones():
    assert preprocess.CLIP == preprocess.Preprocess(224, 224, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "bicubic")
    assert preprocess.DINO == preprocess.Preprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD, "bicubic")


def test_clip_matches_open_clip_transform(photos):
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    for name, tag in (("ViT-L-14", "openai"), ("ViT-H-14", "laion2b_s32b_b79k")):
        cfg = get_pretrained_cfg(name, tag)
        assert tuple(cfg["mean"]) == OPENAI_CLIP_MEAN and tuple(cfg["std"]) == OPENAI_CLIP_STD
        assert cfg.get("interpolation", "bicubic") == "bicubic" and cfg.get("resize_mode", "shortest") == "shortest"
    theirs = open_clip.image_transform(224, is_train=False, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
                                       resize_mode="shortest", interpolation="bicubic")
    ours = preprocess.CLIP(photos)
    assert ours.shape == (2, 3, 224, 224) and ours.dtype == torch.float32
    for i, photo in enumerate(photos):
        assert torch.equal(ours[i], theirs(photo))


def test_csd_preprocessing_is_clip_as_csd_writes_it(photos):
    """CSD's own transform (learn2phoenix/CSD): Resize(224, BICUBIC), CenterCrop(224), ToTensor, Normalize(CLIP)."""
    from styleprobe.metrics import build_scorers

    scorer = build_scorers({"style_csd": {"scorer": "style_csd"}}, "cpu", "hub")[0]
    assert scorer.preprocess == preprocess.CLIP
    csd = transforms.Compose([
        transforms.Resize(224, interpolation=InterpolationMode.BICUBIC),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
    ])
    assert torch.equal(preprocess.CLIP(photos[:1])[0], csd(photos[0]))


def test_dino_matches_dino_eval_and_dinov2_processor(photos):
    dino_eval = transforms.Compose([  # DINO's eval_knn.py, as StyleAligned and B-LoRA evaluate
        transforms.Resize(256, interpolation=3),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    ours = preprocess.DINO(photos)
    for i, photo in enumerate(photos):
        assert torch.equal(ours[i], dino_eval(photo))

    from transformers import BitImageProcessor

    # facebook/dinov2-base's preprocessor_config.json
    hf = BitImageProcessor(
        do_resize=True, size={"shortest_edge": 256}, resample=3, do_center_crop=True,
        crop_size={"height": 224, "width": 224}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), do_convert_rgb=True,
    )
    theirs = hf(images=photos, return_tensors="pt")["pixel_values"]
    assert theirs.shape == ours.shape
    # Same resize, crop and constants: equal to float precision except for rare one-level rounding differences
    # of the resized uint8 image (one grey level is 1/255/std in normalised units).
    diff = (theirs - ours).abs()
    assert (diff < 1e-5).float().mean().item() > 0.99  # measured: 99.6% of values
    assert diff.max().item() <= 1.01 / 255 / min(IMAGENET_STD)


def test_center_crop_keeps_the_middle(photos):
    """A shorter-side resize then a central square: the crop of the cat photo equals a hand-made one."""
    photo = photos[0]  # 451 x 300
    w, h = photo.size
    resized = photo.resize((int(224 * w / h), 224), Image.BICUBIC)
    left = int(round((resized.width - 224) / 2.0))
    by_hand = np.asarray(resized.crop((left, 0, left + 224, 224)), dtype=np.float32) / 255.0
    mean = np.array(OPENAI_CLIP_MEAN, dtype=np.float32)
    std = np.array(OPENAI_CLIP_STD, dtype=np.float32)
    expected = torch.from_numpy(((by_hand - mean) / std).transpose(2, 0, 1))
    assert torch.allclose(preprocess.CLIP([photo])[0], expected, atol=1e-5)


def test_grey_and_alpha_images_become_rgb():
    grey = Image.fromarray(skdata.camera())  # 512 x 512, mode L
    rgba = Image.new("RGBA", (300, 200), (10, 20, 30, 128))
    batch = preprocess.CLIP([grey, rgba])
    assert batch.shape == (2, 3, 224, 224)
    pixels = batch * torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1) + torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    assert torch.allclose(pixels[0, 0], pixels[0, 1], atol=1e-6) and torch.allclose(pixels[0, 1], pixels[0, 2], atol=1e-6)
    assert torch.allclose(pixels[1, :, 100, 100], torch.tensor([10, 20, 30]) / 255, atol=1e-6)  # alpha dropped, colour kept


@pytest.mark.parametrize("pre", [preprocess.CLIP, preprocess.DINO], ids=["clip", "dino"])
def test_tensor_preprocessing_stays_within_rounding_of_pils(photos, pre):
    """The batched tensor path (torchvision's antialiased bicubic) against the PIL reference: on real photos of mixed
    sizes and a 1024 px output, in grey levels of the resized image. Measured: mean 0.09-0.17, max 5, 0.02% over 1."""
    big = Image.fromarray(skdata.astronaut()).resize((1024, 1024), Image.BICUBIC)
    images = [*photos, Image.fromarray(skdata.camera()), big, big.rotate(90)]
    ours, reference = pre.tensors(images, "cpu"), pre(images)
    assert ours.shape == reference.shape and ours.dtype == torch.float32
    levels = ((ours - reference) * torch.tensor(pre.std).view(1, 3, 1, 1) * 255).abs()
    assert levels.mean() < 0.25 and levels.max() <= 6 and (levels > 1.01).float().mean() < 1e-3
    # the order of a batch with several sizes is kept: each image is closest to its own reference
    nearest = torch.cdist(ours.flatten(1), reference.flatten(1)).argmin(dim=1)
    assert nearest.tolist() == list(range(len(images)))


def test_scoring_preprocess_choice():
    from styleprobe.errors import ConfigError
    from styleprobe.run.scoring import preprocess_on_device

    assert preprocess_on_device("auto", "cuda") and preprocess_on_device("auto", "cuda:1")
    assert not preprocess_on_device("auto", "cpu")
    assert preprocess_on_device("tensor", "cpu") and not preprocess_on_device("pil", "cuda")
    with pytest.raises(ConfigError, match="scoring.preprocess='gpu'; choose auto, tensor or pil"):
        preprocess_on_device("gpu", "cpu")
