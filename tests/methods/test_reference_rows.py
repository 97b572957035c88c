"""The shared reference-sample plumbing: reference rows in a batch, trajectories prepared once and replayed, and an
attend step per method on the one attn1 processor.

A method that swaps self-attention keys and values with a reference sample is written here, in the test, on top of
`methods/reference_rows.py` (about 30 lines): what a second shared-attention method needs from the plumbing.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F

from styleprobe.methods import base
from styleprobe.methods.attention import install_self_attention
from styleprobe.methods.reference_rows import (
    ReferenceAttention,
    ReferenceBatch,
    ReferenceRow,
    prepare_trajectories,
    replay_latents,
)
from styleprobe.run.engine import Engine
from styleprobe.run.sampler import Sampler
from styleprobe.run.store import Store

SAMPLER = Sampler(steps=4, guidance=5.0, height=64, width=64)


class KVSwap(ReferenceAttention):
    """Each sharing sample keeps its queries and takes its reference's keys and values."""

    def share(self, query, key, value, rows, refs, out):
        out[rows] = F.scaled_dot_product_attention(query[rows], key[refs], value[refs])
        return rows


@dataclass(frozen=True)
class SwapKnobs:
    reference_caption: str = "a red circle"
    reference_seed: int = 10


class SwapMethod(base.Method):
    """Key/value swap with a reference generated alongside from its caption."""

    name: ClassVar[str] = "kv_swap"
    pattern_site: ClassVar[str] = "attn1"
    Knobs: ClassVar[type] = SwapKnobs

    def activate(self, model: Any) -> None:
        install_self_attention(model.pipe.unet)

    def deactivate(self, model: Any) -> None:
        """Nothing to undo: with no step in use the attn1 processors compute the plain model."""

    def batch_key(self, item: Any) -> tuple[Any, ...]:
        return (item.knobs,)

    def extra_rows(self, batch: int) -> int:
        return batch

    def run_batch(self, engine: Any, items: Any) -> list[Any]:
        state = install_self_attention(engine.model.pipe.unet)
        batch = ReferenceBatch.of([ReferenceRow(it.knobs.reference_caption, "", it.knobs.reference_seed, "")
                                   for it in items])
        layers = torch.zeros(batch.size, len(state.layer_map), dtype=torch.bool)
        for j, it in enumerate(items):
            layers[batch.n_refs + j] = torch.tensor(it.pattern.scales) > 0
        step = KVSwap(batch.ref_index(), layers)
        step.check_layers(len(state.layer_map))
        with state.use(step):
            return batch.denoise(engine, items[0].sampler, [it.row["prompt_used"] for it in items],
                                 [it.seed for it in items], {})


@pytest.fixture
def swap(monkeypatch):
    """The test's method in the registry for this test only."""
    base.registry()
    monkeypatch.setitem(base.REGISTRY, SwapMethod.name, SwapMethod)
    return SwapMethod.name


def _images(model, items) -> torch.Tensor:
    engine = Engine(model, batch_size=len(items), output_type="np")
    return torch.stack([torch.as_tensor(o) for o in engine.run_batch(items)])


def test_no_layers_on_gives_the_plain_model(tiny_model, references, make_items, swap):
    (item,) = make_items(tiny_model, swap, references[:1], patterns=["none"], seeds=[3], sampler=SAMPLER)
    ours = _images(tiny_model, [item])[0]
    engine = Engine(tiny_model, output_type="np")
    plain = torch.as_tensor(engine.denoise(SAMPLER, [item.row["prompt_used"]], engine.noise([3], SAMPLER))[0])
    assert (ours - plain).abs().max() <= 1e-5  # the reference row beside it changes nothing


def test_the_layers_switched_on_change_the_image(tiny_model, references, make_items, swap):
    items = make_items(tiny_model, swap, references[:1], patterns=["none", "style", "all"], seeds=[3], sampler=SAMPLER)
    by = {it.pattern.name: _images(tiny_model, [it])[0] for it in items}
    for a, b in (("none", "style"), ("style", "all"), ("none", "all")):
        assert (by[a] - by[b]).abs().max() > 1e-3, (a, b)


def test_an_image_does_not_depend_on_its_batch_mates(tiny_model, references, make_items, swap):
    """Two references (by caption), three patterns and two seeds in one call: each image as when made alone."""
    mixed = []
    for caption, pattern, seed in [("a red circle", "all", 1), ("a blue square", "style", 2),
                                   ("a red circle", "none", 2), ("a blue square", "all", 1)]:
        mixed += make_items(tiny_model, swap, references[:1], patterns=[pattern], seeds=[seed], sampler=SAMPLER,
                            reference_caption=caption)
    assert len({it.knobs for it in mixed}) == 2  # batch_key splits by knobs; put them in one call on purpose
    together = _images(tiny_model, mixed)
    alone = torch.cat([_images(tiny_model, [it]) for it in mixed])
    assert (together - alone).abs().max() < 1e-4
    assert (alone[0] - alone[3]).abs().max() > 1e-2  # the two references really differ


def test_reference_rows_are_shared_by_equal_references_and_come_first():
    a, b = ReferenceRow("a", "", 1, ""), ReferenceRow("b", "k", 0, "")
    batch = ReferenceBatch.of([a, b, a, a])
    assert batch.refs == (a, b) and batch.item_refs == (0, 1, 0, 0) and batch.size == 6
    assert batch.ref_index().tolist() == [0, 1, 0, 1, 0, 0]


def test_a_trajectory_is_replayed_from_its_offset_after_every_step():
    zts = torch.arange(6.0).view(6, 1, 1, 1, 1).expand(6, 1, 2, 2, 2).clone()  # zts[i] is all i
    batch = ReferenceBatch.of([ReferenceRow("r", "key", 0, ""), ReferenceRow("g", "", 5, "")])
    engine = SimpleNamespace(noise=lambda seeds, sampler: torch.full((len(seeds), 2, 2, 2), -1.0))
    latents = batch.latents(engine, None, [7], {"key": (zts[:, 0], {})}, offset=2)
    assert latents[0].unique().tolist() == [2.0] and latents[1:].unique().tolist() == [-1.0]
    callback = batch.replay_callback({"key": (zts[:, 0], {})}, offset=2)
    for step, expected in enumerate([3.0, 3.0, 3.0, 4.0, 5.0]):  # zts[max(offset + 1, step + 1)]
        out = callback(None, step, None, {"latents": torch.zeros(3, 2, 2, 2)})["latents"]
        assert out[0].unique().tolist() == [expected] and out[1:].abs().max() == 0
        assert torch.equal(replay_latents(zts[:, 0], 2, step), zts[max(3, step + 1), 0])
    assert ReferenceBatch.of([ReferenceRow("g", "", 5, "")]).replay_callback({}, 0) is None


def test_a_trajectory_is_made_once_and_kept_as_a_keyed_artefact(tmp_path):
    made = []

    def make(model, item):
        made.append(item.trajectory)
        return torch.full((3, 1, 2, 2), float(len(made))), {"seconds": 0.25, "steps": 2}

    items = [SimpleNamespace(key=f"i{n}", reference=SimpleNamespace(style="neon"), trajectory=t)
             for n, t in enumerate(["k1", "k1", "", "k2"])]
    engine = SimpleNamespace(model=SimpleNamespace(device=torch.device("cpu")))
    kwargs = dict(key_of=lambda it: it.trajectory, make=make, artefact="noised", what="forward noising", label="noise")
    cache: dict = {}
    records = prepare_trajectories(engine, items, Store(tmp_path), cache, **kwargs)
    assert made == ["k1", "k2"] and [r["key"] for r in records] == ["k1", "k2"]
    assert records[0] == {"what": "forward noising", "key": "k1", "style": "neon", "seconds": 0.25, "steps": 2,
                          "peak_gpu_bytes": None, "reused": False}
    # a new process reads them back; another results folder gets its own copy from memory; neither makes them again
    again = prepare_trajectories(engine, items, Store(tmp_path), {}, **kwargs)
    other = Store(tmp_path / "other")
    prepare_trajectories(engine, items, other, cache, **kwargs)
    assert made == ["k1", "k2"] and all(r["reused"] for r in again)
    tensors, meta = other.read_tensors("noised", "k2")
    assert torch.equal(tensors["zts"], cache["k2"][0]) and meta["steps"] == 2


def test_attention_masks_are_refused_on_the_layers_a_step_changes():
    step = KVSwap(torch.tensor([0, 0]), torch.tensor([[False], [True]]))
    q = torch.randn(2, 1, 4, 8)
    with pytest.raises(ValueError, match="attention masks"):
        step.attend(q, q, q, torch.zeros(2, 1, 4, 4), 0)
    with pytest.raises(ValueError, match=r"layers must have shape \(batch, 3\)"):
        step.check_layers(3)
    cfg = step.attend(torch.cat([q, q]), torch.cat([q, q]), torch.cat([q, q]), None, 0)  # CFG: both halves
    torch.testing.assert_close(cfg[:2], cfg[2:])
    torch.testing.assert_close(cfg[1], F.scaled_dot_product_attention(q[1], q[0], q[0]))
