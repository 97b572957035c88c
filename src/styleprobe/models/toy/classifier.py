"""The toy world's judge: a small CNN that tells an image's content class and style class.

It is how styleprobe checks, with numbers, that the toy models learned something (a generated image shows the
prompted shape in the prompted or referenced style) and how a leak of content is counted exactly. It is trained on
the world's own images (`world.samples`), by `train_classifier` with a fixed seed, and shipped as safetensors.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from styleprobe.models.toy import world
from styleprobe.models.toy.loop import optimise


class ToyClassifier(nn.Module):
    """Four strided conv blocks, global average pooling, one linear head for content and one for style."""

    def __init__(self, width: int = 32):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                       nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.content = nn.Linear(chans[-1], len(world.CONTENTS))
        self.style = nn.Linear(chans[-1], len(world.STYLES))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, 3, H, W) in [-1, 1] -> (content logits, style logits)."""
        h = self.features(images).mean(dim=(2, 3))
        return self.content(h), self.style(h)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """The most likely content and style class of each image."""
        self.eval()
        contents, styles = [], []
        for i in range(0, len(images), batch_size):
            c, s = self(images[i : i + batch_size])
            contents.append(c.argmax(1).numpy())
            styles.append(s.argmax(1).numpy())
        return np.concatenate(contents), np.concatenate(styles)


@dataclass
class ClassifierTraining:
    steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 2e-3
    train_images: int = 12_800
    seed: int = 20261130


def train_classifier(recipe: ClassifierTraining = ClassifierTraining(), log_every: int = 100) -> tuple[ToyClassifier, dict]:
    """Train the judge on freshly drawn world images; returns it and a record (seconds, final losses)."""
    torch.manual_seed(recipe.seed)
    images, contents, styles = world.batch(world.samples(recipe.train_images, recipe.seed))
    x, yc, ys = torch.from_numpy(images), torch.from_numpy(contents), torch.from_numpy(styles)
    model = ToyClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.learning_rate, total_steps=recipe.steps)
    generator = torch.Generator().manual_seed(recipe.seed)
    loss_fn = nn.CrossEntropyLoss()
    start, losses = time.perf_counter(), []
    model.train()
    for step in range(1, recipe.steps + 1):
        idx = torch.randint(0, len(x), (recipe.batch_size,), generator=generator)
        batch = x[idx]
        flip = torch.rand(len(idx), generator=generator) < 0.5  # mirror images: a mirrored shape is the same class
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        c, s = model(batch)
        loss = loss_fn(c, yc[idx]) + loss_fn(s, ys[idx])
        optimise(optimizer, schedule, loss, losses, step, recipe.steps, "classifier", log_every)
    record = {"seconds": round(time.perf_counter() - start, 1), "final_loss": float(np.mean(losses[-50:])),
              "recipe": recipe.__dict__}
    return model.eval(), record


def accuracy(model: ToyClassifier, items: list[world.ToySample]) -> tuple[float, float]:
    """(content accuracy, style accuracy) of the judge on the world's images of `items`."""
    images, contents, styles = world.batch(items)
    pc, ps = model.predict(torch.from_numpy(images))
    return float((pc == contents).mean()), float((ps == styles).mean())


def save_classifier(model: ToyClassifier, path: Path, record: dict) -> None:
    """The judge's weights as float16 safetensors, with its training record in the metadata; written atomically."""
    from safetensors.torch import save_file

    from styleprobe.disk import atomic_write

    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"record": json.dumps(record)}))


def load_classifier(path: Path | None = None) -> ToyClassifier:
    """The shipped judge (or the one at `path`), in float32 on the CPU."""
    from safetensors.torch import load_file

    from styleprobe.models.toy.weights import weight_path

    state = load_file(str(path or weight_path("classifier")))
    model = ToyClassifier()
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()
