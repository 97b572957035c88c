"""Image preprocessing of the scoring models, with the constants their papers publish.

Every scorer turns a PIL image into a normalised tensor the way its model was evaluated:

- CLIP (Radford et al. 2021; open_clip's 'openai' and LAION tags; CSD, Somepalli et al. 2024, reuses it):
  resize the shorter side to 224 (bicubic), center-crop 224, mean/std below.
- DINO v1 (Caron et al. 2021, eval_knn.py / eval_linear.py, as StyleAligned and B-LoRA use it) and
  DINOv2 (Oquab et al. 2023; its Hugging Face processor): resize the shorter side to 256 (bicubic),
  center-crop 224, ImageNet mean/std.

Tiny offline scorers use the same preprocessing, so the tiny sweep runs exactly this code.

Two implementations of the one definition: `Preprocess(images)` is the reference, PIL per image on the CPU, equal
to open_clip's, CSD's and DINO's own transforms bit for bit (tested). `Preprocess.tensors(images, device)` takes the
images the scoring stage decoded on CPU threads and does the resize, crop and normalisation as batched tensor ops on
the scoring device: the resize is torchvision's antialiased bicubic, which equals PIL's up to rounding (a test bounds
the difference). Scoring uses the
tensor path on a GPU (`scoring.preprocess: auto`), where PIL resizing was most of the scoring time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:  # torch and torchvision are imported when images are preprocessed, not when a scorer is built
    import torch
    from torchvision import transforms

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side, center-crop a square, scale to [0, 1], normalise per channel."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def transform(self) -> transforms.Compose:
        from torchvision import transforms
        from torchvision.transforms import InterpolationMode

        return transforms.Compose(
            [
                transforms.Resize(self.resize, interpolation=InterpolationMode(self.interpolation)),
                transforms.CenterCrop(self.crop),
                transforms.ToTensor(),
                transforms.Normalize(self.mean, self.std),
            ]
        )

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """A (N, 3, crop, crop) float32 batch."""
        import torch

        t = self.transform()
        return torch.stack([t(im.convert("RGB")) for im in images])

    def tensors(self, images: Sequence[Image.Image], device: torch.device | str = "cpu") -> torch.Tensor:
        """The same (N, 3, crop, crop) float32 batch, made on `device`: images of one size resized together (shorter
        side, antialiased bicubic, rounded to 8 bits as PIL's output is), center-cropped and normalised as tensor ops."""
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        decoded = [F.pil_to_tensor(im if im.mode == "RGB" else im.convert("RGB")) for im in images]
        out = torch.empty((len(decoded), 3, self.crop, self.crop), dtype=torch.float32, device=device)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, t in enumerate(decoded):
            by_size.setdefault(tuple(t.shape), []).append(i)
        for idx in by_size.values():
            batch = torch.stack([decoded[i] for i in idx]).to(device, non_blocking=True).float()
            batch = F.resize(batch, [self.resize], interpolation=InterpolationMode(self.interpolation), antialias=True)
            batch = F.center_crop(batch.round_().clamp_(0, 255), [self.crop, self.crop])
            out[torch.tensor(idx, device=device)] = (batch / 255.0 - mean) / std
        return out


CLIP = Preprocess(resize=224, crop=224, mean=CLIP_MEAN, std=CLIP_STD)
DINO = Preprocess(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)


@dataclass(frozen=True)
class ResizeLongest:
    """HPS v2's evaluation transform (tgxs002/HPSv2 866735e, hpsv2/src/open_clip/transform.py: `image_transform` with
    `resize_longest_max=True`, as `create_model_and_transforms(..., light_augmentation=True)` builds `preprocess_val`):
    ToTensor first, then the float image resized so its longer side is `size` (bicubic, on the float tensor: no 8-bit
    rounding; antialiased, torchvision's default since 0.17), zero-padded to a square (`ResizeMaxSize`), normalised.

    One definition, two runners as for `Preprocess`: per image on the CPU (`__call__`), or batched by image size on the
    scoring device (`tensors`); both are the same tensor ops, so they agree to float rounding.
    """

    size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    interpolation: str = "bicubic"

    @property
    def resize(self) -> int:  # for reports that name a preprocessing by its sizes
        return self.size

    @property
    def crop(self) -> int:
        return self.size

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        import torch
        from torchvision.transforms import functional as F

        return torch.stack([self._batch(F.to_tensor(im.convert("RGB"))[None])[0] for im in images])

    def tensors(self, images: Sequence[Image.Image], device: torch.device | str = "cpu") -> torch.Tensor:
        import torch
        from torchvision.transforms.v2 import functional as F

        decoded = [F.pil_to_tensor(im if im.mode == "RGB" else im.convert("RGB")) for im in images]
        out = torch.empty((len(decoded), 3, self.size, self.size), dtype=torch.float32, device=device)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, t in enumerate(decoded):
            by_size.setdefault(tuple(t.shape), []).append(i)
        for idx in by_size.values():
            batch = torch.stack([decoded[i] for i in idx]).to(device, non_blocking=True).float() / 255.0
            out[torch.tensor(idx, device=device)] = self._batch(batch)
        return out

    def _batch(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) floats in [0, 1] of one size -> (N, 3, size, size), normalised."""
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        height, width = pixels.shape[-2:]
        scale = self.size / float(max(height, width))
        new = [height, width]
        if scale != 1.0:
            new = [round(height * scale), round(width * scale)]
            pixels = F.resize(pixels, new, InterpolationMode(self.interpolation), antialias=True)
        pad_h, pad_w = self.size - new[0], self.size - new[1]
        if pad_h or pad_w:  # HPS pads only after a resize; an unresized non-square image would not fit its model
            pixels = F.pad(pixels, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
        mean = torch.tensor(self.mean, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=pixels.device).view(1, 3, 1, 1)
        return (pixels - mean) / std


HPS = ResizeLongest(224)
