"""Image preprocessing of the scoring models, with the constants their papers publish.

Every scorer turns a PIL image into a normalised tensor the way its model was evaluated:

- CLIP (Radford et al. 2021; open_clip's 'openai' and LAION tags; CSD, Somepalli et al. 2024, reuses it):
  resize the shorter side to 224 (bicubic), center-crop 224, mean/std below.
- DINO v1 (Caron et al. 2021, eval_knn.py / eval_linear.py, as StyleAligned and B-LoRA use it) and
  DINOv2 (Oquab et al. 2023; its Hugging Face processor): resize the shorter side to 256 (bicubic),
  center-crop 224, ImageNet mean/std.

Tiny offline scorers use the same preprocessing, so the tiny sweep runs exactly this code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

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
        t = self.transform()
        return torch.stack([t(im.convert("RGB")) for im in images])


CLIP = Preprocess(resize=224, crop=224, mean=CLIP_MEAN, std=CLIP_STD)
DINO = Preprocess(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
