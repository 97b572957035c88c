"""The toy world's images: drawn shapes (content) in drawing styles (style), each label known.

Eight content classes x eight style classes, at random position, size and rotation, with small random variation
within a style (hue, stroke width, texture phase), so a model has to learn what a style is, not one picture of it.
Every image is determined by (content, style, seed); captions name both, as in "a star in hatched ink style".
The styles differ in what InstantStyle calls style (palette, texture, stroke, background treatment) and the contents
in what it calls content (the shape), so in this world a leak of content and a transfer of style can be told apart
by a classifier, exactly.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 64  # pixels per side
SUPERSAMPLE = 4  # shapes are drawn at 4x and averaged down, for clean anti-aliased edges

CONTENTS = ("circle", "square", "triangle", "star", "cross", "heart", "crescent", "arrow")
STYLES = (
    "hatched ink", "neon outline", "pastel flat", "polka dot", "checkerboard", "sunset gradient", "pixel mosaic",
    "chalk on slate",
)


@dataclass(frozen=True)
class ToySample:
    """One image of the toy world: what it shows, in which style, drawn with which seed."""

    content: int
    style: int
    seed: int

    @property
    def caption(self) -> str:
        return caption(CONTENTS[self.content], STYLES[self.style])

    def image(self) -> Image.Image:
        return render(self.content, self.style, self.seed)


def caption(content: str | None, style: str | None) -> str:
    """'a star in hatched ink style', 'a star', 'something in hatched ink style' or 'something'."""
    subject = f"a {content}" if content else "something"
    return f"{subject} in {style} style" if style else subject


# shapes ----------------------------------------------------------------------------------------------------------
def _disc(cx: float, r: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(a), r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 48, endpoint=False)]


def _polygon(content: str) -> list[list[tuple[float, float]]]:
    """The shape as polygons in unit coordinates (centre 0, radius about 1): the first is drawn, any further one is
    cut out of it. A circle is a many-sided polygon."""
    if content == "circle":
        return [_disc(0.0, 1.0)]
    if content == "square":
        return [[(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]]
    if content == "triangle":
        return [[(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]]
    if content == "star":
        return [[(r * math.cos(a), r * math.sin(a))
                 for k in range(10) for a, r in [(-math.pi / 2 + k * math.pi / 5, 1.0 if k % 2 == 0 else 0.42)]]]
    if content == "cross":
        w = 0.3
        return [[(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]]
    if content == "heart":
        pts = []
        for t in np.linspace(0, 2 * math.pi, 64, endpoint=False):
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x / 17, -y / 17 - 0.1))
        return [pts]
    if content == "crescent":  # a disc with a smaller disc cut out of its right side (drawn in the background)
        return [_disc(0.0, 1.0), _disc(0.42, 0.78)]
    if content == "arrow":
        return [[(-1, -0.22), (0.2, -0.22), (0.2, -0.6), (1, 0), (0.2, 0.6), (0.2, 0.22), (-1, 0.22)]]
    raise ValueError(f"unknown content {content!r}")


def shape_mask(content: int, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """(size, size) float mask in [0, 1] of the content's shape at a random scale, rotation and position."""
    big = size * SUPERSAMPLE
    radius = rng.uniform(0.26, 0.40) * big
    angle = rng.uniform(0, 2 * math.pi)
    margin = radius * 1.05
    cx, cy = rng.uniform(margin, big - margin), rng.uniform(margin, big - margin)
    cos, sin = math.cos(angle), math.sin(angle)
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    for n, poly in enumerate(_polygon(CONTENTS[content])):
        points = [(cx + radius * (x * cos - y * sin), cy + radius * (x * sin + y * cos)) for x, y in poly]
        draw.polygon(points, fill=255 if n == 0 else 0)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    """A band of about `width` pixels along the mask's edge."""
    img = Image.fromarray((mask * 255).astype(np.uint8))
    grown = np.asarray(img.filter(ImageFilter.MaxFilter(2 * (width // 2) + 1)), dtype=np.float32) / 255.0
    shrunk = np.asarray(img.filter(ImageFilter.MinFilter(2 * (width // 2) + 1)), dtype=np.float32) / 255.0
    return np.clip(grown - shrunk, 0, 1)


# styles ----------------------------------------------------------------------------------------------------------
def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))


def _compose(background: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Paint (alpha, colour) layers over a background, in order; alpha (H, W), colour (H, W, 3) or (3,)."""
    out = np.broadcast_to(background, (SIZE, SIZE, 3)).astype(np.float32).copy()
    for alpha, colour in layers:
        a = alpha[..., None]
        out = out * (1 - a) + np.broadcast_to(colour, out.shape) * a
    return out


def _style_image(style: str, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) floats in [0, 1]: the shape painted in the style, with the style's variation drawn from `rng`."""
    x, y = _grid(SIZE)
    jitter = rng.uniform(-0.04, 0.04)
    if style == "hatched ink":  # paper, black diagonal hatching inside a thin black outline
        period, phase = rng.uniform(4.5, 6.0), rng.uniform(0, 6)
        hatch = (np.mod(x + y + phase, period) < 1.6).astype(np.float32)
        paper = _hsv(0.12 + jitter, 0.12, 0.96) + rng.normal(0, 0.015, (SIZE, SIZE, 3)).astype(np.float32)
        ink = _hsv(0.6, 0.3, 0.12)
        return _compose(paper, [(mask * hatch, ink), (_outline(mask, 2), ink)])
    if style == "neon outline":  # black background, a glowing thick outline in a saturated hue, dark inside
        hue = rng.choice([0.5, 0.83]) + jitter
        band = _outline(mask, int(rng.integers(3, 5)))
        glow = np.asarray(Image.fromarray((band * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2.5)),
                          dtype=np.float32) / 255.0
        return _compose(_hsv(0.7, 0.5, 0.05), [(np.clip(glow * 1.4, 0, 1), _hsv(hue, 1.0, 0.7)), (band, _hsv(hue, 0.35, 1.0))])
    if style == "pastel flat":  # pale mint background, a flat pastel fill, no outline
        hue = rng.choice([0.0, 0.12, 0.6, 0.8]) + jitter
        return _compose(_hsv(0.4, 0.2, 0.95), [(mask, _hsv(hue, 0.4, 0.9))])
    if style == "polka dot":  # light grey-blue background, the shape filled with a grid of coloured dots on white
        period = rng.uniform(6.0, 7.5)
        ox, oy = rng.uniform(0, period, 2)
        dots = ((np.mod(x + ox, period) - period / 2) ** 2 + (np.mod(y + oy, period) - period / 2) ** 2 < (period * 0.3) ** 2)
        hue = rng.choice([0.0, 0.6]) + jitter
        return _compose(_hsv(0.6, 0.1, 0.85), [(mask, np.float32([1, 1, 1])), (mask * dots, _hsv(hue, 0.9, 0.85))])
    if style == "checkerboard":  # mid-grey background, the shape a black-and-colour checkerboard of 8-pixel squares
        cell = 8
        ox, oy = rng.integers(0, cell, 2)
        check = ((np.floor((x + ox) / cell) + np.floor((y + oy) / cell)) % 2).astype(np.float32)
        tint = _hsv(0.33 + jitter, 0.7, 0.8)
        colour = check[..., None] * tint + (1 - check[..., None]) * np.float32([0.05, 0.05, 0.05])
        return _compose(np.float32([0.5, 0.5, 0.5]), [(mask, colour)])
    if style == "sunset gradient":  # dark navy background, the shape filled top to bottom from yellow to magenta
        t = np.clip((y - y[mask > 0.5].min(initial=0)) / max(1.0, float(np.ptp(y[mask > 0.5]) if (mask > 0.5).any() else 1)), 0, 1)
        top, bottom = _hsv(0.13 + jitter, 0.9, 1.0), _hsv(0.88 + jitter, 0.8, 0.8)
        colour = top * (1 - t[..., None]) + bottom * t[..., None]
        return _compose(_hsv(0.63, 0.7, 0.22), [(mask, colour)])
    if style == "pixel mosaic":  # white background, the shape made of coarse blocks of random saturated colours
        block = 8
        ox, oy = rng.integers(0, block, 2)
        cells = rng.uniform(0, 1, (SIZE // block + 2, SIZE // block + 2))
        bx = ((x + ox) // block).astype(int)
        by = ((y + oy) // block).astype(int)
        hues = cells[by, bx]
        colour = np.stack([np.float32(colorsys.hsv_to_rgb(h, 0.85, 0.9)) for h in hues.ravel()]).reshape(SIZE, SIZE, 3)
        coarse = np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).resize((SIZE // 4, SIZE // 4), Image.Resampling.BOX)
                            .resize((SIZE, SIZE), Image.Resampling.NEAREST), dtype=np.float32) / 255.0
        return _compose(np.float32([0.98, 0.98, 0.98]), [((coarse > 0.5).astype(np.float32), colour)])
    if style == "chalk on slate":  # dark green slate, a rough white chalk outline and a faint chalky fill
        band = _outline(mask, int(rng.integers(2, 4)))
        grain = (rng.uniform(0, 1, (SIZE, SIZE)) < 0.75).astype(np.float32)
        slate = _hsv(0.4 + jitter, 0.45, 0.28) + rng.normal(0, 0.02, (SIZE, SIZE, 3)).astype(np.float32)
        return _compose(slate, [(mask * 0.18, np.float32([1, 1, 1])), (band * grain, np.float32([0.95, 0.95, 0.92]))])
    raise ValueError(f"unknown style {style!r}")


def render(content: int, style: int, seed: int) -> Image.Image:
    """The image of (content, style) drawn with `seed`: the same three numbers always give the same pixels."""
    if not (0 <= content < len(CONTENTS) and 0 <= style < len(STYLES)):
        raise ValueError(f"content {content} / style {style} out of range ({len(CONTENTS)} x {len(STYLES)})")
    rng = np.random.default_rng([int(seed), content, style])
    mask = shape_mask(content, rng)
    pixels = np.clip(_style_image(STYLES[style], mask, rng), 0, 1)
    return Image.fromarray((pixels * 255 + 0.5).astype(np.uint8), "RGB")


def samples(n: int, seed: int) -> list[ToySample]:
    """`n` samples with every (content, style) pair equally often (as far as `n` allows), in a seeded random order."""
    rng = np.random.default_rng(seed)
    pairs = [(c, s) for c in range(len(CONTENTS)) for s in range(len(STYLES))]
    labels = [pairs[i % len(pairs)] for i in range(n)]
    order = rng.permutation(n)
    seeds = rng.integers(0, 2**31 - 1, n)
    return [ToySample(labels[i][0], labels[i][1], int(seeds[k])) for k, i in enumerate(order)]


def batch(items: list[ToySample]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (N, 3, H, W) float32 in [-1, 1], content labels (N,), style labels (N,)) of the samples."""
    images = np.stack([np.asarray(s.image(), dtype=np.float32) for s in items]).transpose(0, 3, 1, 2) / 127.5 - 1.0
    return images, np.array([s.content for s in items]), np.array([s.style for s in items])
