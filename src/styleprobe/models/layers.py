"""The layer map of a UNet and the layer patterns defined on it.

The map is derived from the UNet's modules (never hard-coded), so it is right for SDXL (70 transformer layers
in 11 modules), SD1.5 (16 in 16) and the tiny model alike. Each transformer layer has two attention sites,
self-attention `attn1` and cross-attention `attn2`; a method names the one whose module names label its patterns
(`pattern_site`: IP-Adapter's image branch lives in `attn2`, StyleAligned shares `attn1`; B-LoRA changes both and
names a layer by its `attn1`), and its map lists that site of every layer, so the same patterns probe every method. A pattern is a scale per layer: a 0/1 mask (times IP-Adapter's scale), or
explicit per-layer scales. Names at any granularity select layers: a block (`up_blocks.0`), a module
(`up_blocks.0.attentions.1`) or one transformer layer (`up_blocks.0.attentions.1.transformer_blocks.3`, with or
without the trailing site, e.g. `.attn2`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from styleprobe.config import non_negative_number
from styleprobe.errors import ConfigError

_LAYER_RE = re.compile(
    r"^(?P<block>(?:down_blocks|up_blocks)\.\d+|mid_block)\.(?P<attn>attentions\.\d+)"
    r"\.transformer_blocks\.(?P<index>\d+)\.(?P<site>attn[12])$"
)
SITES = ("attn1", "attn2")

# InstantStyle (arXiv 2404.02733), SDXL: style = up_blocks.0.attentions.1, layout = down_blocks.2.attentions.1.
STYLE_MODULE = "up_blocks.0.attentions.1"
LAYOUT_MODULE = "down_blocks.2.attentions.1"
PRESETS: dict[str, tuple[str, ...] | None] = {
    "all": None,  # None: every layer
    "none": (),
    "style": (STYLE_MODULE,),
    "style_layout": (STYLE_MODULE, LAYOUT_MODULE),
}
SWEEPS = ("one_hot:block", "one_hot:module", "one_hot:layer", "leave_one_out:module", "leave_one_out:block")


@dataclass(frozen=True)
class AttentionLayer:
    """One attention site of one transformer layer (`attn2` for IP-Adapter, `attn1` for StyleAligned)."""

    name: str  # up_blocks.0.attentions.1.transformer_blocks.3.attn2
    block: str  # up_blocks.0
    module: str  # up_blocks.0.attentions.1
    index: int  # transformer layer within the module

    @property
    def short(self) -> str:
        """The transformer layer's name without its site (`.attn1` / `.attn2`)."""
        return self.name.rsplit(".", 1)[0]


@dataclass(frozen=True)
class Pattern:
    """A named scale per layer (in layer-map order); `sweep` and `target` say what it probes."""

    name: str
    scales: tuple[float, ...]
    sweep: str = "preset"
    target: str = ""


class LayerMap:
    """One attention site of every transformer layer of a UNet, grouped by block and module, in UNet order."""

    def __init__(self, layers: Sequence[AttentionLayer], site: str = "attn2"):
        if not layers:
            raise ConfigError("this UNet has no transformer layers; layer probes need a text-conditioned UNet")
        self.site = site
        self.layers = tuple(layers)
        self.names = tuple(layer.name for layer in self.layers)
        self.blocks = tuple(dict.fromkeys(layer.block for layer in self.layers))
        self.modules = tuple(dict.fromkeys(layer.module for layer in self.layers))
        self._index = {layer.name: i for i, layer in enumerate(self.layers)}

    @classmethod
    def from_unet(cls, unet: Any, site: str = "attn2") -> "LayerMap":
        """Read the map of one site off a UNet's module tree (works on the `meta` device: no weights needed)."""
        if site not in SITES:
            raise ValueError(f"unknown attention site {site!r}; use one of {', '.join(SITES)}")
        layers = []
        for name, _ in unet.named_modules():
            m = _LAYER_RE.match(name)
            if m and m["site"] == site:
                block, attn, index = m["block"], m["attn"], int(m["index"])
                layers.append(AttentionLayer(name=name, block=block, module=f"{block}.{attn}", index=index))
        return cls(layers, site)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], site: str = "attn2") -> "LayerMap | None":
        """The same map from the UNet's config alone (its `config.json`), with no import of torch or diffusers.

        It follows how diffusers' `UNet2DConditionModel` builds its blocks from the config, for the blocks SD1.5
        and SDXL use; a UNet with any other block returns None, and the caller builds the structure instead.
        """
        if site not in SITES:
            raise ValueError(f"unknown attention site {site!r}; use one of {', '.join(SITES)}")
        counts = _transformer_counts(config)
        if counts is None:
            return None
        layers = [
            AttentionLayer(name=f"{module}.transformer_blocks.{i}.{site}", block=module.rsplit(".attentions.", 1)[0],
                           module=module, index=i)
            for module, n in counts
            for i in range(n)
        ]
        return cls(layers, site)

    def __len__(self) -> int:
        return len(self.layers)

    def index(self, name: str) -> int:
        return self._index[name]

    def layers_in(self, name: str) -> list[int]:
        """Indices of the layers a block, module or layer name selects; unknown names fail listing valid ones."""
        name = name.strip()
        full = name if name.endswith(f".{self.site}") else f"{name}.{self.site}"
        if full in self._index:
            return [self._index[full]]
        hits = [i for i, layer in enumerate(self.layers) if layer.module == name or layer.block == name]
        if not hits:
            raise ConfigError(f"unknown layer name {name!r}; {self.describe_names()}")
        return hits

    def describe_names(self) -> str:
        """One line listing every valid name, for error messages."""
        per_module = {m: sum(1 for layer in self.layers if layer.module == m) for m in self.modules}
        modules = ", ".join(f"{m} ({n} layers)" for m, n in per_module.items())
        return (
            f"valid presets: {', '.join(PRESETS)}; sweeps: {', '.join(SWEEPS)}; blocks: {', '.join(self.blocks)}; "
            f"modules: {modules}; a single layer is <module>.transformer_blocks.<i> with i below the module's count"
        )

    def mask(self, names: Iterable[str] | None, value: float = 1.0) -> tuple[float, ...]:
        """A scale vector with `value` on the layers the names select (None: all layers)."""
        if names is None:
            return tuple(value for _ in self.layers)
        scales = [0.0] * len(self.layers)
        for name in names:
            for i in self.layers_in(name):
                scales[i] = value
        return tuple(scales)

    def active_names(self, scales: Sequence[float]) -> list[str]:
        """A compact list of what a scale vector switches on: whole modules where possible, else layers."""
        out: list[str] = []
        for module in self.modules:
            idx = [i for i, layer in enumerate(self.layers) if layer.module == module]
            on = [i for i in idx if scales[i] != 0]
            if on and len(on) == len(idx) and len({scales[i] for i in idx}) == 1:
                out.append(module)
            else:
                out.extend(self.layers[i].short for i in on)
        return out

    def sweep(self, kind: str) -> list[Pattern]:
        """Generated sweeps: one-hot per block/module/layer, leave-one-out per module/block."""
        if kind not in SWEEPS:
            raise ConfigError(f"unknown sweep {kind!r}; use one of {', '.join(SWEEPS)}")
        mode, unit = kind.split(":")
        units: Sequence[str] = {
            "block": self.blocks,
            "module": self.modules,
            "layer": [layer.short for layer in self.layers],
        }[unit]
        patterns = []
        for u in units:
            on = self.mask([u])
            if mode == "leave_one_out":
                on = tuple(1.0 - s for s in on)
            patterns.append(Pattern(name=f"{mode}:{u}", scales=on, sweep=f"{mode}_{unit}", target=u))
        return patterns


_ATTENTION_BLOCKS = {"down": "CrossAttnDownBlock2D", "up": "CrossAttnUpBlock2D"}
_PLAIN_BLOCKS = {"down": "DownBlock2D", "up": "UpBlock2D"}


def _transformer_counts(config: Mapping[str, Any]) -> list[tuple[str, int]] | None:
    """(attention module, transformer layers) in the order diffusers registers them (down, up, then mid), or None
    for a UNet whose blocks this does not know."""
    down, up = list(config.get("down_block_types", ())), list(config.get("up_block_types", ()))
    mid = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if config.get("dual_cross_attention") or mid not in (None, "UNetMidBlock2DCrossAttn"):
        return None
    if any(t not in (_ATTENTION_BLOCKS["down"], _PLAIN_BLOCKS["down"]) for t in down):
        return None
    if any(t not in (_ATTENTION_BLOCKS["up"], _PLAIN_BLOCKS["up"]) for t in up):
        return None
    per_block = config.get("layers_per_block", 2)
    per_block = [per_block] * len(down) if isinstance(per_block, int) else list(per_block)
    depth = config.get("transformer_layers_per_block", 1)
    depth = [depth] * len(down) if isinstance(depth, int) else list(depth)
    reverse = config.get("reverse_transformer_layers_per_block") or list(reversed(depth))

    def modules(block: str, n_modules: int, layers: Any) -> list[tuple[str, int]]:
        layers = [layers] * n_modules if isinstance(layers, int) else list(layers)
        return [(f"{block}.attentions.{j}", int(layers[j])) for j in range(n_modules)]

    out: list[tuple[str, int]] = []
    for i, kind in enumerate(down):
        if kind == _ATTENTION_BLOCKS["down"]:
            out += modules(f"down_blocks.{i}", per_block[i], depth[i])
    reversed_per_block = list(reversed(per_block))
    for i, kind in enumerate(up):
        if kind == _ATTENTION_BLOCKS["up"]:
            out += modules(f"up_blocks.{i}", reversed_per_block[i] + 1, reverse[i])
    if mid is not None:
        out += modules("mid_block", 1, depth[-1])
    return out


def expand_patterns(
    specs: Sequence[Any], layer_map: LayerMap, presets: Mapping[str, Sequence[str] | None] | None = None
) -> list[Pattern]:
    """Turn config pattern specs into patterns.

    A spec is a preset name (`all`, `none`, `style`, `style_layout`), a sweep (`one_hot:module`, ...), a single
    block/module/layer name, a set `set:<name>+<name>` (named by `set_pattern`), or a mapping `{name, layers: [names]}` / `{name, scales: {name: scale}}`.
    """
    presets = {**PRESETS, **(presets or {})}
    out: list[Pattern] = []
    for spec in specs:
        if isinstance(spec, str):
            spec = spec.strip()
            if spec in presets:
                names = presets[spec]
                out.append(Pattern(name=spec, scales=layer_map.mask(None if names is None else list(names))))
            elif spec.startswith(SET_PREFIX):
                out.append(set_pattern(layer_map, layer_map.mask(_set_members(spec)), presets))
            elif ":" in spec:
                out.extend(layer_map.sweep(spec))
            else:
                out.append(Pattern(name=spec, scales=layer_map.mask([spec]), sweep="explicit", target=spec))
        elif isinstance(spec, Mapping):
            out.append(_explicit(dict(spec), layer_map))
        else:
            raise ConfigError(f"injection pattern {spec!r} is neither a name nor a mapping; see experiments/injection/*.yaml")
    names = [p.name for p in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"injection patterns repeat the name(s) {', '.join(dupes)}; give each pattern a unique name")
    if not out:
        raise ConfigError("injection.patterns is empty; name at least one pattern, e.g. injection.patterns=[style]")
    return out


#: A set of layers by name, `set:<name>+<name>...` (blocks, modules or layers): what a layer-set search plans.
SET_PREFIX = "set:"


def _set_members(spec: str) -> list[str]:
    members = [m.strip() for m in spec.removeprefix(SET_PREFIX).split("+") if m.strip()]
    if not members:
        raise ConfigError(f"injection pattern {spec!r} names no layers; write set:<name>+<name>, e.g. "
                          f"set:{STYLE_MODULE}+{LAYOUT_MODULE}")
    return members


def set_pattern(layer_map: LayerMap, mask: Sequence[float], presets: Mapping[str, Sequence[str] | None] | None = None) -> Pattern:
    """The pattern of a set of layers (a 0/1 mask), under the one name every sweep gives that set.

    An item's key hashes its pattern's name, so the same set must always get the same name for its images to be made
    once: `none` and `all` (and a multi-module preset such as `style_layout`) by their preset names, one module, block
    or layer by the name the one-hot probe gives it (`one_hot:<module>`), any other set as
    `set:<modules or layers>` in layer-map order (whole modules where the set holds them).
    """
    mask = tuple(1.0 if s else 0.0 for s in mask)
    presets = {**PRESETS, **(presets or {})}
    for name, members in presets.items():
        if members is not None and (len(members) == 1 or not all(_names_layers(layer_map, m) for m in members)):
            continue  # one module goes by its one-hot name; a preset of names this UNet lacks (SD 1.5) never matches
        if layer_map.mask(None if members is None else list(members)) == mask:
            return Pattern(name=name, scales=mask)
    active = layer_map.active_names(mask)
    if len(active) == 1:
        unit = "module" if active[0] in layer_map.modules else "layer"
        return Pattern(name=f"one_hot:{active[0]}", scales=mask, sweep=f"one_hot_{unit}", target=active[0])
    return Pattern(name=SET_PREFIX + "+".join(active), scales=mask, sweep="layer_set", target="+".join(active))


def _names_layers(layer_map: LayerMap, name: str) -> bool:
    try:
        return bool(layer_map.layers_in(name))
    except ConfigError:
        return False


def _explicit(spec: dict[str, Any], layer_map: LayerMap) -> Pattern:
    name = spec.get("name")
    if not name:
        raise ConfigError(f"injection pattern {spec} has no name; add name: <something unique>")
    if ("layers" in spec) == ("scales" in spec):
        raise ConfigError(f"injection pattern {name!r} needs exactly one of layers: [names] or scales: {{name: scale}}")
    if "layers" in spec:
        return Pattern(name=str(name), scales=layer_map.mask(list(spec["layers"])), sweep="explicit")
    scales = [0.0] * len(layer_map)
    for layer_name, value in dict(spec["scales"]).items():
        value = non_negative_number(value, f"scale of {layer_name} in pattern {name!r}")
        for i in layer_map.layers_in(str(layer_name)):
            scales[i] = value
    return Pattern(name=str(name), scales=tuple(scales), sweep="explicit")


def native_scale_config(scales: Sequence[float], layer_map: LayerMap) -> dict[str, Any]:
    """The same pattern in diffusers' `set_ip_adapter_scale` form, where that form can express it.

    diffusers sets one scale per `attentions.i` module (`{"up": {"block_0": [0.0, 1.0, 0.0]}}`); a pattern
    that differs between the transformer layers of one module has no native form.
    """
    per_module: dict[str, float] = {}
    for module in layer_map.modules:
        values = {scales[i] for i, layer in enumerate(layer_map.layers) if layer.module == module}
        if len(values) != 1:
            raise ValueError(f"{module} has different scales per transformer layer: diffusers cannot express that")
        per_module[module] = values.pop()
    config: dict[str, Any] = {}
    for block in layer_map.blocks:
        modules = [m for m in layer_map.modules if m.startswith(block + ".")]
        values = [per_module[m] for m in sorted(modules, key=lambda m: int(m.rsplit(".", 1)[1]))]
        if block == "mid_block":
            config["mid"] = values[0]
        else:
            updown, number = block.split("_blocks.")
            config.setdefault(updown, {})[f"block_{number}"] = values
    return config
