"""The toy world's trained models: the shipped weights have learned what they were trained for (held-out seeds)."""

from __future__ import annotations

import torch

from styleprobe.toy import classifier, world
from styleprobe.toy.train import EVAL_SEED, records


def test_the_shipped_judge_tells_content_and_style_on_held_out_images():
    """Chance is 1/8 for each; the judge is what every later learned-ness check counts with."""
    judge = classifier.load_classifier()
    content, style = classifier.accuracy(judge, world.samples(512, EVAL_SEED + 1))
    assert content >= 0.95 and style >= 0.95, (content, style)
    record = records()["classifier"]
    assert record["held_out"]["content_accuracy"] >= 0.95 and record["seconds"] > 0


def test_classifier_training_is_reproducible():
    recipe = classifier.ClassifierTraining(steps=3, batch_size=8, train_images=64, seed=5)
    a, _ = classifier.train_classifier(recipe)
    b, _ = classifier.train_classifier(recipe)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_the_shipped_vae_keeps_content_and_style_through_a_round_trip():
    from styleprobe.toy import vae

    model = vae.load_vae()
    assert model.config.scaling_factor == records()["vae"]["scaling_factor"] and 0.2 < model.config.scaling_factor < 5
    images, contents, styles = world.batch(world.samples(256, EVAL_SEED + 2))
    x = torch.from_numpy(images)
    recon = vae.reconstruct(model, x)
    with torch.no_grad():
        latents = model.encode(x[:64]).latent_dist.mean
    assert latents.shape[1:] == (4, world.SIZE // 4, world.SIZE // 4)
    assert vae.psnr(recon, x) > 22
    content, style = classifier.load_classifier().predict(recon)
    assert (content == contents).mean() >= 0.95 and (style == styles).mean() >= 0.95


def test_vae_training_is_reproducible():
    from styleprobe.toy import vae

    recipe = vae.VAETraining(steps=2, batch_size=4, train_images=64, seed=3)
    a, ra = vae.train_vae(recipe)
    b, rb = vae.train_vae(recipe)
    assert ra["scaling_factor"] == rb["scaling_factor"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_clip_targets_count_every_image_a_caption_describes():
    """A content-only caption matches every image of that content, whatever its style, and nothing else."""
    import numpy as np

    from styleprobe.toy.clip import _captions, _matches

    contents, styles = np.array([0, 0, 1, 1]), np.array([2, 3, 2, 3])
    named_c, named_s = np.array([0, -1, 1, -1]), np.array([-1, 3, 2, -1])
    m = _matches(named_c, named_s, contents, styles).numpy()
    assert m.tolist() == [[1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0], [1, 1, 1, 1]]
    texts, c, s = _captions(contents, styles, np.random.default_rng(0))
    for text, ci, si, cc, ss in zip(texts, c, s, contents, styles):
        assert (ci < 0 or ci == cc) and (si < 0 or si == ss) and (ci >= 0 or si >= 0)
        assert text == world.caption(world.CONTENTS[ci] if ci >= 0 else None, world.STYLES[si] if si >= 0 else None)
