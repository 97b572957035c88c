"""The device and dtype a run uses, decided without importing torch where NVIDIA's NVML answers, and GPU peak memory.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from styleprobe.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where it is used: planning and config errors never wait for it
    import torch
log = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device of `engine.device`; a CUDA device this torch cannot use fails with the fix."""
    import torch

    name = device_name(device)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"engine.device={device} means a CUDA GPU here (its driver reports one), but this torch cannot use it "
            "(torch.cuda.is_available() is False); set engine.device=cpu, or install a CUDA build of torch"
        )
    return torch.device(name)


_DEVICE_RE = re.compile(r"^[a-z]+(:\d+)?$")


def device_name(device: str = "auto") -> str:
    """`engine.device` as a name (`cpu`, `cuda`, `cuda:1`, ...), decided without importing torch where NVIDIA's NVML
    answers, so planning and the resume check (whose keys hold the dtype the device implies) never wait seconds for
    it. `auto` is `cuda` when `gpu_visible`, else `cpu`: what torch decides, checked by `resolve_device` before
    loading."""
    device = str(device).strip()
    if device == "auto":
        return "cuda" if gpu_visible() else "cpu"
    if not _DEVICE_RE.match(device):
        raise ConfigError(f"engine.device={device!r} is not a device; give auto, cpu, cuda or cuda:<index>")
    return device


#: The device node of AMD's GPU compute driver: ROCm cannot run without it, so without it torch is not asked.
ROCM_DEVICE = Path("/dev/kfd")


@functools.cache
def gpu_visible() -> bool:
    """Whether a GPU this process may use is there. NVIDIA's driver is asked through NVML (ctypes, no CUDA context: a
    later fork stays safe; microseconds). Where NVML does not answer and a ROCm runtime is present (ROCM_DEVICE),
    torch is asked: its `cuda` device is HIP in ROCm builds. That import (1-2 s) is paid at planning only on such
    machines, which import torch to generate anyway; elsewhere the answer is `cpu` without torch. CUDA_VISIBLE_DEVICES
    set to nothing (or -1) hides every GPU, as it does from torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "x").strip() in ("", "-1"):
        return False
    count = nvml_gpu_count()
    if count is not None:
        return count > 0
    if not ROCM_DEVICE.exists():
        return False
    import torch

    return torch.cuda.is_available()


def nvml_gpu_count() -> int | None:
    """How many GPUs NVIDIA's NVML reports; None when there is no NVML (or it cannot start: no NVIDIA driver)."""
    import ctypes

    for library in ("libnvidia-ml.so.1", "nvml.dll"):
        try:
            nvml = ctypes.CDLL(library)
        except OSError:
            continue
        count = ctypes.c_uint(0)
        try:
            if nvml.nvmlInit_v2() != 0:
                return None
            ok = nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0
            nvml.nvmlShutdown()
        except AttributeError:  # an NVML too old to have the v2 calls
            return None
        return count.value if ok else 0
    return None


def dtype_name(dtype: str, device: str) -> str:
    """`model.dtype` as a name, without torch: `auto` is fp16 on a GPU (SDXL's published weights are fp16), else fp32."""
    if dtype == "auto":
        return "float16" if device.startswith("cuda") else "float32"
    return dtype


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement on a GPU (nothing to do on the CPU)."""
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int | None:
    """Bytes of GPU memory allocated at the peak since the last reset; None on the CPU (not measured)."""
    if device.type != "cuda":
        return None
    import torch

    return int(torch.cuda.max_memory_allocated(device))


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The torch dtype of `dtype_name`."""
    import torch

    return getattr(torch, dtype_name(dtype, device.type))
