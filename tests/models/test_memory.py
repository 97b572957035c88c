"""The memory estimate behind `engine.batch_size: auto`, the sliced VAE decode and the engine's out-of-memory retry."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from styleprobe.errors import StyleprobeError
from styleprobe.methods.base import method
from styleprobe.models import architectures, memory
from styleprobe.run.engine import Engine, out_of_memory
from styleprobe.run.sampler import Sampler
from styleprobe.run.store import Store

GIB = memory.GIB
SDXL_1024 = Sampler(steps=30, guidance=5.0, height=1024, width=1024)


@functools.cache
def real_components() -> dict[str, torch.nn.Module]:
    """SDXL's and the IP-Adapter image encoder's real architectures on the meta device, in fp16 (no memory)."""
    return {name: architectures.build(name, "meta", torch.float16) for name in architectures.COMPONENTS}


def _meta_model(components: dict[str, torch.nn.Module], extra_bytes: int = 0) -> SimpleNamespace:
    """A loaded model's stand-in on a CUDA device: the components, sliced decode, and `extra_bytes` more weights
    attached by a method (the IP-Adapter's layers, as one fp16 parameter of that size)."""
    components["vae"].enable_slicing()
    attached = {"ip_adapter": {"adapter": torch.nn.Linear(extra_bytes // 2, 1, bias=False, device="meta",
                                                          dtype=torch.float16)}} if extra_bytes else {}
    pipe = SimpleNamespace(components=components, unet=components["unet"], vae=components["vae"])
    return SimpleNamespace(pipe=pipe, attached=attached, dtype=torch.float16, device=torch.device("cuda"),
                           spec=SimpleNamespace(name="sdxl"))


def test_real_sdxl_components_have_their_published_sizes():
    counts = {n: sum(p.numel() for p in m.parameters()) for n, m in real_components().items()}
    assert counts == {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                      "text_encoder_2": 694_659_840, "image_encoder": 1_844_907_264}
    assert architectures.ip_adapter_parameters(real_components()["unet"]) == 351_285_248  # ip-adapter_sdxl: 703 MB fp16


@pytest.mark.parametrize(("card_gib", "method_name", "batch", "estimate_gib"), [
    (16, "ip_adapter", 4, 14.96), (24, "ip_adapter", 8, 15.80), (40, "ip_adapter", 8, 15.80), (80, "ip_adapter", 8, 15.80),
    (16, "style_aligned", 2, 14.96), (24, "style_aligned", 8, 20.80),
    (15.77, "ip_adapter", 1, 14.96),  # a 16 GB card as torch reports it: even batch 1 is above the margin (warned)
])
def test_auto_batch_size_of_real_sdxl_per_card(monkeypatch, caplog, card_gib, method_name, batch, estimate_gib):
    """With the real encoders resident (10.55 GiB in fp16 with the adapter), at 1024 px under guidance."""
    model = _meta_model(real_components(), extra_bytes=2 * 351_285_248)
    assert memory.resident_bytes(model) / GIB == pytest.approx(10.552, abs=1e-3)
    total = int(card_gib * GIB)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=total))
    plugin = method(method_name)
    with caplog.at_level(logging.INFO, logger="styleprobe.models.memory"):
        assert memory.auto_batch_size(model, plugin, SDXL_1024) == batch
    est = memory.model_estimate(model, plugin, SDXL_1024, batch)
    assert est.total / GIB == pytest.approx(estimate_gib, abs=0.01)
    fits = est.total <= total - memory.SPARE_BYTES
    assert fits == (card_gib >= 16)  # the stated margin below the card, where any batch fits
    if batch < max(memory.BATCH_SIZES) and fits:  # the next larger choice would not have left it
        bigger = memory.BATCH_SIZES[memory.BATCH_SIZES.index(batch) - 1]
        assert memory.model_estimate(model, plugin, SDXL_1024, bigger).total > total - memory.SPARE_BYTES
    assert f"engine.batch_size auto: {batch} for {method_name}" in caplog.text
    assert ("may not fit" in caplog.text) == (not fits)


def test_the_estimate_reproduces_the_h100_peaks_it_was_calibrated_on():
    """benchmarks/README: random-weight SDXL with 2-layer stand-in encoders, the batch decoded at once (no slicing),
    1024 px fp16: 22 GiB at batch 4, 38 GiB at batch 8 on an H100."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from styleprobe.models import tiny

    dims = tiny.SIZES["sdxl"]
    with torch.device("meta"):
        stand_ins = [CLIPTextModel(tiny._text_config(dims.text_encoder, dims.bigg_dim)),
                     CLIPTextModelWithProjection(tiny._text_config(dims.text_encoder_2, dims.bigg_dim)),
                     tiny._vision_encoder(dims.vision, dims.bigg_dim)]
    unet, vae = real_components()["unet"], real_components()["vae"]
    resident = memory.module_bytes([unet, vae, *(m.to(torch.float16) for m in stand_ins)])
    resident += 2 * architectures.ip_adapter_parameters(unet)
    vae_parameters = sum(p.numel() for p in vae.parameters())
    for batch, measured in ((4, 22.0), (8, 38.0)):
        est = memory.estimate(resident, unet.config, vae.config, height=1024, width=1024, dtype=torch.float16,
                              guided=True, batch=batch, vae_parameters=vae_parameters, sliced=False)
        assert est.total / GIB == pytest.approx(measured, abs=0.25)
        assert est.decode > est.denoise  # the whole-batch decode made those peaks


def test_per_sample_terms_follow_size_dtype_guidance_and_slicing():
    unet, vae = architectures.UNET, architectures.VAE
    at = functools.partial(memory.estimate, 0, unet, vae, dtype=torch.float16)
    one = at(height=1024, width=1024, guided=True, batch=1)
    assert one.denoise == 2 * at(height=1024, width=1024, guided=False, batch=1).denoise  # guidance doubles the rows
    assert at(height=512, width=512, guided=True, batch=1).denoise * 4 == one.denoise
    assert at(height=1024, width=1024, guided=True, batch=8).decode == one.decode  # sliced: one image at a time
    assert at(height=1024, width=1024, guided=True, batch=8, sliced=False).decode == 8 * one.decode
    assert one.decode == 4 * GIB  # float32 (SDXL's VAE forces the upcast under fp16)
    assert memory.estimate(0, unet, vae, dtype=torch.bfloat16, height=1024, width=1024, guided=True, batch=1).decode == 2 * GIB
    assert at(height=1024, width=1024, guided=True, batch=2, extra_rows=2).denoise == 2 * at(
        height=1024, width=1024, guided=True, batch=2).denoise


def test_resident_weights_include_what_methods_attach_and_count_shared_tensors_once(tiny_ip):
    pipe = tiny_ip.pipe
    assert "image_encoder" in pipe.components and pipe.components["image_encoder"] is not None
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    assert memory.resident_bytes(tiny_ip) > memory.module_bytes([m for m in modules if m is not pipe.image_encoder])
    assert memory.resident_bytes(tiny_ip) == memory.module_bytes(
        [*modules, *(m for s in tiny_ip.attached.values() for m in memory._modules_in(s))])
    tower = torch.nn.Linear(10, 10)
    fake = SimpleNamespace(pipe=SimpleNamespace(components={"unet": pipe.unet, "scheduler": pipe.scheduler}),
                           attached={"x": SimpleNamespace(), "y": {"text_tower": (None, tower), "again": pipe.unet}})
    assert memory.resident_bytes(fake) == memory.module_bytes([pipe.unet]) + 110 * 4


def test_auto_batch_size_on_the_cpu_is_fixed(tiny_model):
    assert memory.auto_batch_size(tiny_model, method("ip_adapter"), SDXL_1024) == memory.CPU_BATCH_SIZE


def test_sliced_decode_equals_the_whole_batch_decode(tiny_model):
    vae = tiny_model.pipe.vae
    assert vae.use_slicing  # models.load turns it on
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    try:
        with torch.inference_mode():
            sliced = vae.decode(latents).sample
            vae.disable_slicing()
            whole = vae.decode(latents).sample
    finally:
        vae.enable_slicing()
    assert sliced.shape == whole.shape == (4, 3, 64, 64)
    torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-5)


def _items(tiny_model, make_items, references):
    return make_items(tiny_model, "ip_adapter", references[:2], patterns=("none", "all"), seeds=(0, 1))  # 8 items


def _images(store: Store, root: Path) -> dict[str, np.ndarray]:
    table = store.table()
    return {k: np.asarray(Image.open(root / p), dtype=np.int16) for k, p in zip(table.key, table.image_path)}


def _failing_above(monkeypatch, limit: int, error: Exception, upcast: bool = True) -> list[int]:
    """Batches larger than `limit` raise `error` (a device out of memory, after the VAE's upcast if `upcast`); the
    sizes tried, in order."""
    tried: list[int] = []
    run_batch = Engine.run_batch

    def run(self, items):
        tried.append(len(items))
        if len(items) > limit:
            if upcast:
                self.model.pipe.vae.to(torch.float64)  # as an fp16 pipeline leaves its VAE upcast when the decode fails
            raise error
        return run_batch(self, items)

    monkeypatch.setattr(Engine, "run_batch", run)
    return tried


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB"),
                                   RuntimeError("CUDA error: out of memory")])
def test_out_of_memory_halves_the_batch_for_the_rest_of_the_run(tiny_model, make_items, references, tmp_path,
                                                                monkeypatch, caplog, error):
    items = _items(tiny_model, make_items, references)
    Engine(tiny_model, batch_size=8).generate(items, Store(tmp_path / "a"), "run")
    tried = _failing_above(monkeypatch, 2, error)
    with caplog.at_level(logging.WARNING, logger="styleprobe.run.engine"):
        stats = Engine(tiny_model, batch_size=8).generate(items, Store(tmp_path / "b"), "run")
    assert tried == [8, 4, 2, 2, 2, 2]  # halved twice, then 2 for every later batch
    assert tiny_model.pipe.vae.dtype == torch.float32  # back to the model's dtype after each failure
    assert stats.generated == 8 and stats.batches == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["out of memory on cpu at batch size 8: batch size 4 from now on in this run",
                        "out of memory on cpu at batch size 4: batch size 2 from now on in this run"]
    a, b = _images(Store(tmp_path / "a"), tmp_path / "a"), _images(Store(tmp_path / "b"), tmp_path / "b")
    assert a.keys() == b.keys() and len(a) == 8
    assert max(int(np.abs(a[k] - b[k]).max()) for k in a) <= 1  # batch 8 vs 2: float rounding at most


def test_out_of_memory_at_batch_1_names_the_fix(tiny_model, make_items, references, tmp_path, monkeypatch):
    items = _items(tiny_model, make_items, references)
    tried = _failing_above(monkeypatch, 0, torch.OutOfMemoryError("CUDA out of memory"))
    with pytest.raises(StyleprobeError) as err:
        Engine(tiny_model, batch_size=2).generate(items, Store(tmp_path), "run")
    assert tried == [2, 1]
    message = str(err.value)
    assert "\n" not in message and "batch size 1" in message and "sampler.height" in message


def test_other_errors_are_not_taken_for_out_of_memory(tiny_model, make_items, references, tmp_path, monkeypatch):
    assert not out_of_memory(RuntimeError("shape mismatch")) and out_of_memory(torch.OutOfMemoryError("x"))
    items = _items(tiny_model, make_items, references)
    tried = _failing_above(monkeypatch, 0, RuntimeError("mat1 and mat2 shapes cannot be multiplied"), upcast=False)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        Engine(tiny_model, batch_size=4).generate(items, Store(tmp_path), "run")
    assert tried == [4]


def test_the_memory_benchmark_runs_in_smoke_mode(tiny_model, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("memory_estimate", Path(__file__).parents[2] / "benchmarks" / "memory_estimate.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--smoke", "--out", str(tmp_path / "m.json")])
    assert [r["batch"] for r in result["rows"]] == [1, 2] and result["sliced"]
    assert result["resident_bytes"] > memory.module_bytes([tiny_model.pipe.unet])  # the adapter and encoders too
    assert all(r["measured"]["total"] is None and r["estimate"]["total"] > r["estimate"]["resident"] for r in result["rows"])
