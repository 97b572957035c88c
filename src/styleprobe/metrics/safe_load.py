"""Reading a scoring model's weights file without running anything in it.

Published scorer checkpoints are torch pickles (CSD's `checkpoint.pth`, ImageReward's `ImageReward.pt`, HPS's
`HPS_v2.1_compressed.pt`, the LAION aesthetic head's `.pth`) or safetensors. A pickle can name any Python callable,
so `read_weights` loads pickles with torch's weights-only unpickler and a short allow-list of harmless globals that
training checkpoints hold beside their tensors (`plain_state_globals`): a file that asks for anything else, e.g. a
crafted pickle that would run code, is refused with one line naming what it asked for, before anything in it runs.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

from styleprobe.errors import ConfigError


def plain_state_globals() -> list[Any]:
    """The only non-tensor globals a training checkpoint may hold besides torch's own: numpy scalars and dtypes and
    the argparse Namespace of the training run. Each builds plain data; none runs code.

    numpy scalars pickled by numpy 1.x name `numpy.core.multiarray.scalar`, by numpy 2.x `numpy._core...`: both map
    to the one function.
    """
    import argparse

    import numpy as np

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_)]
    return [argparse.Namespace, np.dtype, *dtypes, (scalar, "numpy.core.multiarray.scalar"),
            (scalar, "numpy._core.multiarray.scalar")]


def read_weights(path: Path, what: str, fix: str) -> Any:
    """The object in `path` (a safetensors file or a torch pickle), on the CPU. `what` names the file for messages
    ("CSD checkpoint"), `fix` says how to get a good one ("download CSD's checkpoint.pth again").

    A pickle is read with `weights_only=True` and `plain_state_globals`; one that asks for more is refused with one
    line naming what it asks for, and any file that cannot be read fails with one line too.
    """
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # noqa: BLE001 - a damaged file gets the one-line error
            raise ConfigError(f"{what} {path} cannot be read as safetensors ({_first_line(err)}); {fix}") from err
    try:
        with torch.serialization.safe_globals(plain_state_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        asked = refused_global(str(err))
        if asked is None:  # not a pickle that asks for code: a damaged or foreign file
            raise ConfigError(f"{what} {path} cannot be read (not a torch checkpoint); {fix}") from err
        raise ConfigError(
            f"{what} {path} needs more than tensors and plain training state to load (it asks for {asked}); "
            f"styleprobe does not run code from checkpoints: {fix}"
        ) from err
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise ConfigError(f"{what} {path} cannot be read ({type(err).__name__}: {_first_line(err)}); {fix}") from err


def tensor_dict(obj: Any, what: str, path: Path, fix: str, key: str | None = None) -> dict[str, Any]:
    """`obj` (or `obj[key]` when it holds that key) as a state dict of tensors, or one line saying it is not one."""
    import torch

    state = obj.get(key, obj) if isinstance(obj, dict) and key else obj
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        where = f" (expected a dict with {key!r})" if key else ""
        raise ConfigError(f"{what} {path} holds no state dict{where}; {fix}")
    return dict(state)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:120] if text else ""


#: How torch's weights-only unpickler (torch/_weights_only_unpickler.py) words a refusal that names what the pickle
#: asks for: a global outside its allow-list (with `builtins.` left off), a global of a blocked module (os, posix,
#: nt, sys), a class it may not instantiate or build, a function it may not call, a type that needs a torch module.
_NOT_ALLOWED = re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global")
_REFUSALS = (
    _NOT_ALLOWED,
    re.compile(r"unsupported GLOBAL (\S+) whose module \S+ is blocked"),
    re.compile(r"Can only (?:create new object|build) .* but got <class '([^']+)'>"),
    re.compile(r"call reduce for unrecognized function (.+?)(?: which belongs to |$)", re.MULTILINE),
    re.compile(r"((?:``\S+``(?: and )?)+) must be imported to load"),
)


def refused_global(message: str) -> str | None:
    """What a checkpoint's pickle asked for, from torch's refusal `message`; None when torch named nothing (the file is
    damaged, or not a pickle at all). Torch words `builtins.eval` as `GLOBAL eval`: the module is put back."""
    for pattern in _REFUSALS:
        found = pattern.search(message)
        if found:
            name = found.group(1).replace("``", "").strip()
            return f"builtins.{name}" if pattern is _NOT_ALLOWED and "." not in name else name
    return None
