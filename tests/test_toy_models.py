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
