"""The tiny model is built in the real formats and loaded through the real code path."""

from __future__ import annotations

import http.server
import json
import os
import threading

import pytest
from conftest import cli_imports
from safetensors import safe_open

from styleprobe.errors import ConfigError
from styleprobe.models import devices, loading, sources
from styleprobe.models.presets import AdapterSpec, ModelSpec
from styleprobe.models.tiny import ensure_tiny


def test_tiny_adapter_checkpoint_is_in_h94_format(tiny_ip):
    tiny_model = tiny_ip
    root = ensure_tiny()
    with safe_open(str(root / "IP-Adapter" / "sdxl_models" / "ip-adapter_sdxl.safetensors"), "pt") as f:
        keys = set(f.keys())
        proj = f.get_tensor("image_proj.proj.weight")
    assert {"image_proj.proj.weight", "image_proj.proj.bias", "image_proj.norm.weight", "image_proj.norm.bias"} <= keys
    ip_keys = sorted(k for k in keys if k.startswith("ip_adapter."))
    indices = sorted({int(k.split(".")[1]) for k in ip_keys})
    unet = tiny_model.pipe.unet
    n_cross = len(unet.styleprobe_state.layer_map)
    assert len(indices) == n_cross and all(i % 2 == 1 for i in indices)  # attn2 layers: odd processor indices
    assert {k.split(".", 2)[2] for k in ip_keys} == {"to_k_ip.weight", "to_v_ip.weight"}
    cross = unet.config.cross_attention_dim
    assert proj.shape == (4 * cross, 32)  # num_tokens * cross_attention_dim x image embedding dim
    image_encoder = json.loads((root / "IP-Adapter" / "sdxl_models" / "image_encoder" / "config.json").read_text())
    text_encoder_2 = json.loads((root / "stable-diffusion-xl-base" / "text_encoder_2" / "config.json").read_text())
    assert image_encoder["projection_dim"] == text_encoder_2["projection_dim"] == 32  # one shared (bigG-like) space


def test_loaded_adapter_weights_are_the_checkpoints(tiny_ip):
    """load_ip_adapter put the checkpoint's to_k_ip into the layer it names (processor index order)."""
    root = ensure_tiny()
    unet = tiny_ip.pipe.unet
    names = list(unet.attn_processors)
    processors = unet.attn_processors
    with safe_open(str(root / "IP-Adapter" / "sdxl_models" / "ip-adapter_sdxl.safetensors"), "pt") as f:
        for index in (1, len(names) - 1):
            stored = f.get_tensor(f"ip_adapter.{index}.to_k_ip.weight")
            loaded = processors[names[index]].to_k_ip[0].weight.detach()
            assert names[index].endswith("attn2.processor")
            assert (stored - loaded).abs().max() == 0


def test_tiny_weights_are_fixed(tmp_path, monkeypatch):
    """Two builds in two caches give the same bytes: fixed seeds, nothing from the clock or the machine."""
    import hashlib

    def digest(root):
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.safetensors"))
        }

    first = ensure_tiny()
    second = ensure_tiny(tmp_path)
    assert digest(first) == digest(second) and len(digest(first)) >= 8


def test_models_are_loaded_once_per_process(tiny_spec, tiny_model):
    """A second load of the same preset reuses the first (earlier tests may have loaded another model since the
    session's, which frees it: so the first load here may read weights, the second never does)."""
    first = loading.load(tiny_spec, "cpu")
    before = loading.LOAD_COUNT["n"]
    assert loading.load(tiny_spec, "cpu") is first
    assert loading.LOAD_COUNT["n"] == before


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"family": "sd3"}, "model.family='sd3' is unknown"),
        ({"dtype": "float8"}, "model.dtype='float8' is unknown"),
        ({"adapter": {"kind": "faceid"}}, "model.adapter.kind='faceid' is unknown"),
        ({"family": "sd15", "content_text_encoder": None}, "content_text_encoder is required for sd15"),
    ],
)
def test_bad_presets_fail_with_a_fix(change, fragment):
    cfg = {
        "name": "x", "family": "sdxl", "base": "b", "dtype": "auto", "content_text_encoder": None,
        "adapter": {"source": "s", "subfolder": "sdxl_models", "weight_name": "w.safetensors", "kind": "global"},
    }
    for key, value in change.items():
        if isinstance(value, dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        ModelSpec.from_config(cfg)


def test_identity_names_base_and_adapter():
    spec = ModelSpec("sdxl", "sdxl", "stabilityai/stable-diffusion-xl-base-1.0", AdapterSpec("h94/IP-Adapter", "sdxl_models", "ip-adapter_sdxl.safetensors"))
    assert spec.identity["adapter"] == "h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors"
    assert spec.identity["base"] == "stabilityai/stable-diffusion-xl-base-1.0"


def test_local_folders_and_bfloat16_load_through_the_same_path(tiny_spec, references, keep_tiny_loaded, make_items):
    """Absolute local folders (as a researcher's downloaded copies) and a half-precision dtype."""
    from dataclasses import replace

    import torch

    from styleprobe.run.engine import Engine

    root = ensure_tiny()
    spec = replace(
        tiny_spec,
        base=str(root / "stable-diffusion-xl-base"),
        adapter=replace(tiny_spec.adapter, source=str(root / "IP-Adapter")),
        dtype="bfloat16",
    )
    model = loading.load(spec, "cpu")
    assert model.dtype == torch.bfloat16 and model.pipe.unet.dtype == torch.bfloat16
    items = make_items(model, "ip_adapter", references[:1], patterns=["style"], prompts=["a cat"], subtraction=0.5)
    assert items[0].row["dtype"] == "bfloat16"
    images = Engine(model).run_batch(items)
    assert images[0].size == (64, 64)


class _Proxy(http.server.ThreadingHTTPServer):
    """An HTTP proxy on the loopback address that serves `http://hub.invalid` itself (a host only it can reach) and
    records every request it gets."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.server.requests.append((self.command, self.path))
        self.send_response(200 if self.path.startswith("http://hub.invalid/") else 502)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET = do_CONNECT = _answer

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass


@pytest.fixture
def hub_probe(monkeypatch):
    """A fresh Hub probe aimed at http://hub.invalid, online, with no proxy configured; all of it restored after."""
    from huggingface_hub import constants
    from huggingface_hub.utils import close_session

    for name in [n for n in os.environ if n.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://hub.invalid")
    monkeypatch.setitem(sources.HUB_UNREACHABLE, "probed", False)
    proxy = _Proxy()
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    close_session()  # the Hub client reads the proxy settings when it builds its session
    sources.hub_offline.cache_clear()
    try:
        yield proxy
    finally:
        sources.hub_offline.cache_clear()
        close_session()
        proxy.shutdown()
        proxy.server_close()


@pytest.mark.parametrize("route", ["proxy", "proxy bypassed by NO_PROXY", "no proxy"])
def test_the_hub_probe_goes_through_the_hub_clients_proxy(hub_probe, monkeypatch, route):
    """The probe is the Hub client's own request: through HTTPS_PROXY / HTTP_PROXY it reaches a host only the proxy
    can reach, and the process stays online; bypassing the proxy (NO_PROXY) or having none, the host cannot be
    reached and the process switches to the local cache, so a missing model fails at once."""
    from huggingface_hub import constants

    if route != "no proxy":
        monkeypatch.setenv("HTTPS_PROXY", hub_probe.url)
        monkeypatch.setenv("HTTP_PROXY", hub_probe.url)
    if route == "proxy bypassed by NO_PROXY":
        monkeypatch.setenv("NO_PROXY", "localhost,hub.invalid")
    through_proxy = route == "proxy"
    assert sources.hub_offline() is not through_proxy
    assert hub_probe.requests == ([("HEAD", "http://hub.invalid/")] if through_proxy else [])
    assert constants.HF_HUB_OFFLINE is not through_proxy and sources.HUB_UNREACHABLE["probed"] is not through_proxy
    assert os.environ["HF_HUB_OFFLINE"] == ("0" if through_proxy else "1")


def test_hf_hub_offline_is_respected_without_a_probe(hub_probe, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(sources, "hub_connect_error", lambda endpoint: pytest.fail("probed although offline"))
    assert sources.hub_offline() is True and sources.HUB_UNREACHABLE["probed"] is False


def _cli_modules(tmp_path, *args: str, **env: str):
    """Run the CLI in a fresh interpreter; its exit code, its error lines and the heavy libraries it had imported."""
    proc, imported = cli_imports(tmp_path, *args, HF_HOME=str(tmp_path / "hf"), **env)
    return proc.returncode, [line for line in proc.stderr.splitlines() if line.startswith("styleprobe: error:")], imported


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "unreachable"])
def test_a_missing_real_model_fails_before_any_heavy_import(tmp_path, offline):
    """No network and no cached weights: the one-line error comes from the UNet's config file, read with
    huggingface_hub alone, so torch, diffusers, transformers and open_clip are never imported (about 1 s, not 9)."""
    env = {"HF_HUB_OFFLINE": "1"} if offline == "HF_HUB_OFFLINE" else {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}
    code, errors, imported = _cli_modules(tmp_path, "model=sdxl", f"results_dir={tmp_path / 'out'}", **env)
    assert code == 2 and len(errors) == 1
    why = "HF_HUB_OFFLINE is set" if offline == "HF_HUB_OFFLINE" else "the Hub cannot be reached"
    assert errors[0].startswith("styleprobe: error: cannot load the UNet config from stabilityai/stable-diffusion-xl-base-1.0")
    assert f"not in the Hugging Face cache ({tmp_path / 'hf' / 'hub'}) and {why}" in errors[0]
    assert "hf download stabilityai/stable-diffusion-xl-base-1.0" in errors[0]
    assert imported == "IMPORTED []"
    assert not (tmp_path / "out").exists()


def test_a_config_error_comes_before_any_heavy_import(tmp_path):
    code, errors, imported = _cli_modules(tmp_path, "engine.batch_size=-3", f"results_dir={tmp_path / 'out'}")
    assert code == 2 and errors == ["styleprobe: error: engine.batch_size=-3; give a positive integer or auto"]
    assert imported == "IMPORTED []"


def test_device_and_dtype_are_decided_without_torch_and_agree_with_it(monkeypatch):
    """Planning names the device (and so the dtype in every key) without torch; loading checks torch agrees."""
    import torch

    devices.gpu_visible.cache_clear()
    assert devices.device_name("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert devices.device_name("cuda:1") == "cuda:1" and devices.device_name(" cpu ") == "cpu"
    with pytest.raises(ConfigError, match="engine.device='gpu please' is not a device; give auto, cpu, cuda"):
        devices.device_name("gpu please")
    assert devices.dtype_name("auto", "cuda:0") == "float16" and devices.dtype_name("auto", "cpu") == "float32"
    assert devices.dtype_name("bfloat16", "cpu") == "bfloat16"
    assert devices.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # hides every GPU, from torch and from styleprobe alike
    devices.gpu_visible.cache_clear()
    assert devices.gpu_visible() is False
    devices.gpu_visible.cache_clear()
    monkeypatch.setattr(devices, "gpu_visible", lambda: True)  # a driver that reports a GPU this torch cannot use
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.device_name("auto") == "cuda"
    with pytest.raises(ConfigError, match="this torch cannot use it .* set engine.device=cpu, or install a CUDA build"):
        devices.resolve_device("auto")


@pytest.fixture
def fresh_gpu_probe():
    devices.gpu_visible.cache_clear()
    yield
    devices.gpu_visible.cache_clear()


def _no_nvml(monkeypatch) -> None:
    """A machine without NVIDIA's NVML: loading its library fails, as on an AMD or a CPU-only machine."""
    import ctypes

    real = ctypes.CDLL

    def cdll(name, *args, **kwargs):
        if "nvidia-ml" in str(name) or "nvml" in str(name):
            raise OSError(f"{name}: cannot open shared object file")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(ctypes, "CDLL", cdll)


@pytest.mark.parametrize(
    ("nvml_gpus", "rocm", "torch_gpu", "expected", "torch_asked"),
    [
        (None, False, True, "cpu", False),  # no NVML, no ROCm runtime: the CPU, decided without torch
        (None, True, True, "cuda", True),  # ROCm: torch's `cuda` device (HIP) is asked
        (None, True, False, "cpu", True),
        (1, True, False, "cuda", False),  # NVML answers: torch is not asked, whatever else is there
        (0, True, True, "cpu", False),
    ],
)
def test_device_auto_asks_torch_only_where_nvml_is_absent_and_rocm_present(
        fresh_gpu_probe, monkeypatch, tmp_path, nvml_gpus, rocm, torch_gpu, expected, torch_asked):
    import torch

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    if nvml_gpus is None:
        _no_nvml(monkeypatch)
        assert devices.nvml_gpu_count() is None
    else:
        monkeypatch.setattr(devices, "nvml_gpu_count", lambda: nvml_gpus)
    kfd = tmp_path / "kfd"
    if rocm:
        kfd.touch()
    monkeypatch.setattr(devices, "ROCM_DEVICE", kfd)
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: asked.append(True) or torch_gpu)
    assert devices.device_name("auto") == expected
    assert bool(asked) is torch_asked
    if expected == "cuda" and torch_gpu:
        assert devices.resolve_device("auto") == torch.device("cuda")


def test_a_full_size_model_on_the_cpu_is_warned_about(tiny_spec, monkeypatch, caplog):
    """A model with a full-size UNet that would generate on the CPU says so, naming engine.device (the size is read from
    the loaded UNet, whatever the source is called); the tiny model itself is below the threshold (see the next test)."""
    import torch

    assert loading.FULL_SIZE_UNET_PARAMETERS > 100 * 2_000_000  # SD 1.5 (0.86 B) is full size; the tiny model is not
    monkeypatch.setattr(loading, "FULL_SIZE_UNET_PARAMETERS", 1)  # as if the tiny UNet were SDXL's
    with caplog.at_level("WARNING", logger="styleprobe"):
        loading._load(tiny_spec, torch.device("cpu"), torch.float32)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith(f"engine.device is the CPU here: {tiny_spec.name} (sdxl,")
    assert "minutes per image" in warnings[0] and "set engine.device=cuda" in warnings[0]


def test_sdxl_pipelines_load_without_the_watermarker(tiny_spec, monkeypatch, caplog):
    """Even where `invisible-watermark` is installed (faked here), styleprobe's SDXL images carry no watermark, and the
    run's costs.yaml says so."""
    import types

    import torch
    from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl as sdxl

    from styleprobe.run.sweep import generation_costs

    class Watermarker:
        def apply_watermark(self, images):
            return images + 1

    monkeypatch.setattr(sdxl, "is_invisible_watermark_available", lambda: True)
    monkeypatch.setattr(sdxl, "StableDiffusionXLWatermarker", Watermarker, raising=False)
    with caplog.at_level("WARNING", logger="styleprobe"):
        model = loading._load(tiny_spec, torch.device("cpu"), torch.float32)  # read afresh, the session's model untouched
    assert model.pipe.watermark is None
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []  # the tiny model on the CPU is as meant
    stats = types.SimpleNamespace(generated_by={}, generate_seconds={}, prepare_seconds={}, prepared={}, peak_gpu_bytes=None)
    assert generation_costs(stats, model)["watermark"] is False
    model.pipe.watermark = Watermarker()
    assert generation_costs(stats, model)["watermark"] is True
