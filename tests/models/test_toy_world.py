"""The toy world's images: labels known, balanced, reproducible, and every shape whole inside its frame."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from styleprobe.models.toy import world


def test_an_image_is_determined_by_content_style_and_seed():
    a, b = world.render(3, 5, 11), world.render(3, 5, 11)
    assert a.tobytes() == b.tobytes() and a.size == (world.SIZE, world.SIZE) and a.mode == "RGB"
    assert world.render(3, 5, 12).tobytes() != a.tobytes()  # another seed: another position, size, rotation
    assert world.render(2, 5, 11).tobytes() != a.tobytes() and world.render(3, 4, 11).tobytes() != a.tobytes()


def test_eight_contents_by_eight_styles_with_captions_naming_both():
    assert len(world.CONTENTS) >= 8 and len(world.STYLES) >= 8
    assert len(set(world.CONTENTS)) == len(world.CONTENTS) and len(set(world.STYLES)) == len(world.STYLES)
    sample = world.ToySample(world.CONTENTS.index("star"), world.STYLES.index("hatched ink"), 0)
    assert sample.caption == "a star in hatched ink style"
    assert world.caption("star", None) == "a star" and world.caption(None, "pastel flat") == "something in pastel flat style"
    with pytest.raises(ValueError, match="out of range"):
        world.render(len(world.CONTENTS), 0, 0)


def test_samples_cover_every_pair_equally_in_a_seeded_order():
    pairs = len(world.CONTENTS) * len(world.STYLES)
    items = world.samples(3 * pairs, seed=7)
    assert set(Counter((s.content, s.style) for s in items).values()) == {3}
    assert items == world.samples(3 * pairs, seed=7)
    assert items != world.samples(3 * pairs, seed=8)
    assert len({s.seed for s in items}) == len(items)


@pytest.mark.parametrize("content", range(len(world.CONTENTS)))
def test_every_shape_is_whole_and_varies_in_place_size_and_turn(content):
    masks = [world.shape_mask(content, np.random.default_rng(seed)) for seed in range(12)]
    for mask in masks:
        area = mask.sum() / mask.size
        assert 0.04 < area < 0.6, area  # a shape, neither a speck nor the whole frame
        border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
        assert border.max() < 0.5  # inside the frame: nothing cut off at the edges
    centres = {tuple(np.round(np.argwhere(m > 0.5).mean(0))) for m in masks}
    areas = [m.sum() for m in masks]
    assert len(centres) >= 10 and max(areas) / min(areas) > 1.3


def test_styles_paint_their_own_background_and_contents_keep_it():
    """The corner pixels (background) tell the style whatever the content: a style is not a shape."""
    corner = {(c, s): np.asarray(world.render(c, s, 3), dtype=float)[:4, :4].mean((0, 1))
              for c, s in itertools.product(range(len(world.CONTENTS)), range(len(world.STYLES)))}
    for s in range(len(world.STYLES)):
        same = [corner[(c, s)] for c in range(len(world.CONTENTS))]
        assert max(np.abs(a - same[0]).max() for a in same) < 40  # one background per style (small jitter)
    backgrounds = [corner[(0, s)] for s in range(len(world.STYLES))]
    assert all(np.abs(a - b).max() > 25 for a, b in itertools.combinations(backgrounds, 2))  # and each its own


def test_batches_are_scaled_to_minus_one_one_with_their_labels():
    items = world.samples(10, seed=1)
    images, contents, styles = world.batch(items)
    assert images.shape == (10, 3, world.SIZE, world.SIZE) and images.dtype == np.float32
    assert -1.0 <= images.min() and images.max() <= 1.0
    assert list(contents) == [s.content for s in items] and list(styles) == [s.style for s in items]


def test_the_toy_data_set_has_one_reference_per_style_and_shape_only_prompts(tmp_path):
    from styleprobe.data.prompt_sets import load_prompts
    from styleprobe.data.style_sets import load_style_set

    refs = load_style_set("builtin:toy", cache_dir=tmp_path)
    assert sorted(r.style for r in refs) == sorted(world.STYLES)
    assert len({r.content for r in refs}) == len(refs) == 8
    assert all(r.load().size == (world.SIZE, world.SIZE) for r in refs)
    prompts = load_prompts("builtin:toy")
    assert [p.prompt for p in prompts] == [f"a {c}" for c in world.CONTENTS] and all(p.subject == p.prompt for p in prompts)
