"""Methods as plug-ins: a name in the `method` config group -> a `Method` (see `base.py` for the hooks).

    ip_adapter      IP-Adapter's image branch in cross-attention (attn2), InstantStyle's layers and subtraction
    style_aligned   StyleAligned's shared self-attention (attn1) with a DDIM-inverted reference

Every module of this package registers its method when imported, and importing the package imports them all,
so a new method is one module here plus its config file in experiments/method/.
"""

import importlib
import pkgutil

from styleprobe.methods.base import REGISTRY, Method, MethodEntry, Parts, knob_names, method, parse_entries, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "Method", "MethodEntry", "Parts", "knob_names", "method", "parse_entries", "register"]
