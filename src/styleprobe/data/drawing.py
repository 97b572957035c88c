"""The built-in references, drawn by code so the repository ships no binaries and every machine gets identical bytes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

_SIZE = 256


def _neon_grid_circle() -> Image.Image:
    """Dark background, glowing cyan grid, glowing magenta circle: a high-contrast 'synthwave' look."""
    s = _SIZE
    lines = Image.new("RGB", (s, s), (0, 0, 0))
    d = ImageDraw.Draw(lines)
    for p in range(16, s, 32):
        d.line([(p, 0), (p, s)], fill=(0, 200, 255), width=2)
        d.line([(0, p), (s, p)], fill=(0, 200, 255), width=2)
    d.ellipse([60, 60, 196, 196], fill=(0, 0, 0), outline=(255, 40, 210), width=7)
    halo = lines.filter(ImageFilter.GaussianBlur(5))
    base = Image.new("RGB", (s, s), (10, 6, 30))
    return ImageChops.add(ImageChops.add(base, halo), lines)


def _pastel_dots_square() -> Image.Image:
    """Pastel halftone: mint dots on blush paper, the square made of larger lavender dots."""
    s = _SIZE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    cell = 12.0
    cx = (np.floor(xx / cell) + 0.5) * cell
    cy = (np.floor(yy / cell) + 0.5) * cell
    dist = np.hypot(xx - cx, yy - cy)
    # Halftone: dot radius follows a smooth diagonal ramp.
    ramp = (cx + cy) / (2 * s)
    in_square = (cx > 64) & (cx < 192) & (cy > 64) & (cy < 192)
    radius = np.where(in_square, 5.2, 1.5 + 2.5 * ramp)
    dot = dist < radius
    img = np.empty((s, s, 3), dtype=np.uint8)
    img[...] = (255, 222, 230)
    img[dot & ~in_square] = (150, 225, 200)
    img[dot & in_square] = (185, 160, 240)
    return Image.fromarray(img, "RGB")


def _ink_hatching_triangle() -> Image.Image:
    """Black ink hatching on cream paper; the triangle is dense cross-hatching with a bold outline."""
    s = _SIZE
    rng = np.random.default_rng(20240601)
    yy, xx = np.mgrid[0:s, 0:s]
    paper = np.array([242, 230, 200], dtype=np.float32)
    img = np.broadcast_to(paper, (s, s, 3)).copy()
    img += rng.normal(0.0, 4.0, size=(s, s, 1)).astype(np.float32)  # paper grain, fixed seed
    mask_im = Image.new("L", (s, s), 0)
    tri = [(128, 40), (220, 210), (36, 210)]
    ImageDraw.Draw(mask_im).polygon(tri, fill=255)
    inside = np.asarray(mask_im) > 0
    sparse = ((xx + yy) % 14) < 1
    dense = (((xx + yy) % 6) < 2) | (((xx - yy) % 6) < 2)
    ink = (sparse & ~inside) | (dense & inside)
    img[ink] = (20, 18, 16)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    ImageDraw.Draw(out).line(tri + [tri[0]], fill=(10, 10, 10), width=4, joint="curve")
    return out


def _mosaic_house() -> Image.Image:
    """Coloured square tiles with dark grout; the house is terracotta/red/yellow tiles on blue and green."""
    s = _SIZE
    tile = 16
    grout = 2
    rng = np.random.default_rng(7)
    img = np.empty((s, s, 3), dtype=np.uint8)
    img[...] = (55, 50, 45)
    n = s // tile
    for ty in range(n):
        for tx in range(n):
            x, y = tx * tile + tile / 2, ty * tile + tile / 2
            if 96 <= x <= 160 and 176 <= y <= 224:
                colour = (110, 60, 30)  # door
            elif (64 <= x <= 96 or 160 <= x <= 192) and 144 <= y <= 176:
                colour = (250, 210, 60)  # windows
            elif 48 <= x <= 208 and 128 <= y <= 224:
                colour = (215, 110, 60)  # walls
            elif y < 128 and abs(x - 128) <= (y - 48) * 1.1 and y >= 48:
                colour = (190, 35, 40)  # roof
            elif y > 224:
                colour = (60, 150, 70)  # grass
            else:
                colour = (70, 130, 210)  # sky
            jitter = rng.integers(-18, 19, size=3)
            c = np.clip(np.array(colour) + jitter, 0, 255).astype(np.uint8)
            y0, x0 = ty * tile, tx * tile
            img[y0 + grout : y0 + tile, x0 + grout : x0 + tile] = c
    return Image.fromarray(img, "RGB")


Entry = tuple[str, str, str, str, Callable[[], Image.Image]]


# (file name, style, content, style_prompt, generator). Order matters: *_small sets are prefixes.
_SHAPES: tuple[Entry, ...] = (
    ("00_neon_grid.png", "neon_grid", "a circle", "glowing neon lines on a dark grid", _neon_grid_circle),
    ("01_pastel_dots.png", "pastel_dots", "a square", "pastel halftone dots", _pastel_dots_square),
    ("02_ink_hatching.png", "ink_hatching", "a triangle", "black ink cross-hatching on cream paper", _ink_hatching_triangle),
    ("03_mosaic.png", "mosaic", "a house", "a mosaic of square tiles", _mosaic_house),
)


def _toy_entries() -> tuple[Entry, ...]:
    """The toy world's references: one per style, each showing another shape, drawn with seeds no training used."""
    from styleprobe.models.toy import world

    entries = []
    for s, style in enumerate(world.STYLES):
        c = (3 * s + 1) % len(world.CONTENTS)
        name = f"{s:02d}_{style.replace(' ', '_')}.png"
        entries.append((name, style, world.caption(world.CONTENTS[c], None), f"{style} style",
                        lambda c=c, s=s: world.render(c, s, TOY_REFERENCE_SEED + s)))
    return tuple(entries)


TOY_REFERENCE_SEED = 7_000_000  # fixed drawing seeds; training sets draw theirs at random, so these are unseen images


BUILTIN_STYLE_SETS: dict[str, tuple[Entry, ...]] = {
    "shapes": _SHAPES,
    "shapes_small": _SHAPES[:2],
    "toy": _toy_entries(),
}
