"""Methods as plug-ins: a name in the `method` config group -> a `Method` (see `base.py` for the hooks).

    ip_adapter      IP-Adapter's image branch in cross-attention (attn2), InstantStyle's layers and subtraction
    style_aligned   StyleAligned's shared self-attention (attn1) with a DDIM-inverted reference

Importing this package registers every method.
"""

from styleprobe.methods import ip_adapter, style_aligned  # noqa: F401 - importing registers the methods
from styleprobe.methods.base import REGISTRY, Method, MethodEntry, Parts, knob_names, method, parse_entries, register

__all__ = ["REGISTRY", "Method", "MethodEntry", "Parts", "knob_names", "method", "parse_entries", "register"]
