"""The toy world has learned: the shipped weights, loaded as `model=toy` through the real loaders and run through
styleprobe's own sweep, make images in which the judge finds what was asked (held-out seeds and references).

These are the numbers the README reports next to the statement that this is a toy world: effects in it are real,
but they are findings about the toy, not about SDXL.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from styleprobe.config import CONFIG_DIR
from styleprobe.models.toy import classifier, world
from styleprobe.models.toy.train import EVAL_SEED
from styleprobe.models.toy.weights import weight_path
from styleprobe.run.store import Store
from styleprobe.run.sweep import run

_NEEDED = ("unet", "adapter", "scorer_open_clip", "scorer_csd", "scorer_dino")
pytestmark = pytest.mark.slow
CHANCE = 1 / len(world.STYLES)


@pytest.fixture(scope="module", autouse=True)
def shipped_weights() -> None:
    """The weights ship with the package: one that is missing is a packaging regression, a failure, never a skip."""
    missing = [str(weight_path(n)) for n in _NEEDED if not weight_path(n).is_file()]
    if missing:
        pytest.fail(f"the toy world's shipped weights are missing: {', '.join(missing)}; restore them from the "
                    "repository (python -m styleprobe.models.toy.train remakes them)", pytrace=False)


def _sweep(tmp_path: Path, name: str, references: list[world.ToySample], prompts: list[str], patterns: str,
           seeds: str = "[0]"):
    """Run a toy sweep (no metrics) on these references, prompts and seeds; the table with each image's judged labels."""
    folder = tmp_path / f"{name}_refs"
    folder.mkdir()
    lines = ["image,style,content"]
    for i, ref in enumerate(references):
        ref.image().save(folder / f"{i:03d}.png")
        lines.append(f"{i:03d}.png,{world.STYLES[ref.style]},{world.caption(world.CONTENTS[ref.content], None)}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / f"{name}_prompts.txt").write_text("\n".join(prompts) + "\n")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            f"results_root={tmp_path}", f"name={name}", "model=toy", "experiment=custom", f"injection.patterns={patterns}",
            f"data.style_set={folder}", f"data.prompts={tmp_path / f'{name}_prompts.txt'}", "metrics=[]", "analyze=false",
            f"seeds={seeds}",
        ])
    run(cfg)
    store = Store(cfg.results_dir)
    table = store.table()
    images = np.stack([np.asarray(Image.open(store.root / p).convert("RGB"), dtype=np.float32) for p in table.image_path])
    content, style = classifier.load_classifier().predict(torch.from_numpy(images.transpose(0, 3, 1, 2) / 127.5 - 1))
    return table.assign(judged_content=[world.CONTENTS[c] for c in content], judged_style=[world.STYLES[s] for s in style])


@pytest.fixture(scope="module")
def text_to_image(tmp_path_factory) -> dict[str, float]:
    """Every content x style caption with four seeds (each seed is one initial noise, shared by the 64 captions, so
    one seed alone would judge the UNet on a single noise), judged: the share of images showing the asked content
    and the asked style."""
    captions = [world.caption(c, s) for c in world.CONTENTS for s in world.STYLES]
    table = _sweep(tmp_path_factory.mktemp("t2i"), "t2i", world.samples(1, EVAL_SEED + 7), captions, "[none]", "[0,1,2,3]")
    assert len(table) == 256
    asked = table.prompt.str.extract(r"^a (?P<c>.+?) in (?P<s>.+) style$")
    shares = {"content": float((asked.c == table.judged_content).mean()), "style": float((asked.s == table.judged_style).mean())}
    print(f"text-to-image ({len(table)} images): {shares}")
    return shares


def test_text_to_image_makes_the_prompted_style(text_to_image):
    """The judge finds the asked style in >= 70% of the images (chance 12.5%)."""
    assert text_to_image["style"] >= 0.7, text_to_image


def test_text_to_image_makes_the_prompted_content(text_to_image):
    """The judge finds the asked shape in >= 80% of the images (chance 12.5%)."""
    assert text_to_image["content"] >= 0.8, text_to_image


def test_an_image_prompt_brings_the_references_style_only_when_injected(tmp_path):
    """Held-out references, prompts naming only a shape: with injection `all` the judge finds the reference's style
    in >= 70% of images; with `none` near chance (the prompt leaves the style free)."""
    references = world.samples(16, EVAL_SEED + 8)
    prompts = [world.caption(c, None) for c in ("circle", "star", "heart", "arrow")]
    table = _sweep(tmp_path, "image_prompt", references, prompts, "[all,none]")
    matched = table.judged_style == table["style"]
    by_pattern = matched.groupby(table.injection).mean()
    prompted = (table.prompt.str.removeprefix("a ") == table.judged_content).groupby(table.injection).mean()
    print(f"image prompt ({len(table)} images): reference style all {by_pattern['all']:.3f} none {by_pattern['none']:.3f};"
          f" prompted content all {prompted['all']:.3f} none {prompted['none']:.3f}")
    assert len(table) == 16 * 4 * 2
    assert by_pattern["all"] >= 0.7, by_pattern
    assert by_pattern["none"] <= CHANCE + 0.15, by_pattern
    assert prompted["none"] >= 0.8, prompted


def test_the_style_scorer_ranks_same_style_pairs_above_different_style_pairs():
    """The CSD-format style model, loaded by the CSD scorer from its checkpoint.pth: AUC >= 0.9 on held-out images."""
    from styleprobe.metrics.base import ScorerSettings
    from styleprobe.metrics.csd import StyleCSD
    from styleprobe.metrics.preprocess import CLIP
    from styleprobe.models.toy.scorers import pair_auc

    items = world.samples(256, EVAL_SEED + 9)
    scorer = StyleCSD(ScorerSettings(name="style_csd", options={}, device=torch.device("cpu"), weights="toy"))
    features = scorer.embed_pixels(CLIP([it.image() for it in items]))
    _, contents, styles = world.batch(items)
    auc, content_auc = pair_auc(features, styles), pair_auc(features, contents)
    print(f"style scorer pair AUC: style {auc:.3f}, content {content_auc:.3f}")
    assert auc >= 0.9 and "toy-world" in scorer.describe_model()
