"""LoRAs on a UNet's transformer layers: which modules they target, their files, and per-layer scales.

styleprobe writes no LoRA layers of its own: peft's `LoraConfig` injects them (`unet.add_adapter` for training,
diffusers' `load_lora_weights` for inference) and this module only names what they act on, in the terms of the
layer map (`layers.py`), so a LoRA layer probe uses the same patterns as the IP-Adapter probe:
- the targets of training are the projections (`to_q, to_k, to_v, to_out.0`) of both attention sites (`attn1`,
  `attn2`) of every transformer layer in the chosen modules;
- at inference each loaded adapter gets a scale per transformer layer (peft's `LoraLayer.set_scale`), which is how
  a pattern (one-hot module, leave-one-out, `style`, ...) switches a trained LoRA on and off layer by layer.
LoRA files are diffusers' format (`pytorch_lora_weights.safetensors`, `unet.`-prefixed keys); files written by
older diffusers (`.lora.down.weight`), by peft (`lora_A` / `lora_B`) or by kohya (`lora_unet_...`) are read by
diffusers' own `lora_state_dict`, which converts them. Only a file's UNet weights are loaded (`load_unet_lora`): a
text-encoder LoRA would change the prompt embeddings of every method sharing the pipeline, which are cached by
prompt text.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from styleprobe.errors import ConfigError
from styleprobe.models.layers import LayerMap

log = logging.getLogger("styleprobe")

WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' file name: load_lora_weights(folder) finds it
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
ATTENTION_SITES = ("attn1", "attn2")
#: B-LoRA (arXiv 2403.14572): the content and the style module of SDXL, trained jointly.
CONTENT_MODULE = "up_blocks.0.attentions.0"
STYLE_MODULE = "up_blocks.0.attentions.1"
MODULE_PRESETS: dict[str, tuple[str, ...] | None] = {
    "b_lora": (CONTENT_MODULE, STYLE_MODULE),
    "all": None,  # every attention module of the UNet (11 on SDXL)
    "content": (CONTENT_MODULE,),
    "style": (STYLE_MODULE,),
}
_TEXT_ENCODER_KEYS = ("text_encoder", "te_", "lora_te")  # prefixes of text-encoder weights in the LoRA formats
_LAYER_IN_KEY = re.compile(r"((?:down_blocks|up_blocks)[._]\d+|mid_block)[._]attentions[._](\d+)[._]transformer_blocks[._](\d+)")


def parse_modules(spec: str, layer_map: LayerMap, where: str) -> tuple[str, ...]:
    """Module names from presets (`b_lora`, `all`, `content`, `style`) and names, joined by `+` or `,`.

    Blocks, modules and single transformer layers are all accepted; the result lists whole modules where a name
    covers one, else layers, in UNet order (a stable spelling for keys).
    """
    names: list[str] = []
    for name in (n.strip() for n in re.split(r"[+,]", spec.strip()) if n.strip()):
        preset = MODULE_PRESETS.get(name, (name,))
        names += list(layer_map.modules if preset is None else preset)
    if not names:
        raise ConfigError(f"{where} is empty; name modules (e.g. {CONTENT_MODULE}+{STYLE_MODULE}) or a preset: "
                          f"{', '.join(MODULE_PRESETS)}")
    try:
        scales = layer_map.mask(names)
    except ConfigError as err:
        raise ConfigError(f"{where}={spec!r}: {err}; or a preset: {', '.join(MODULE_PRESETS)}") from None
    return tuple(layer_map.active_names(scales))


def parse_projections(spec: str, where: str) -> tuple[str, ...]:
    """Projection names from `to_q,to_k,to_v,to_out.0` (any subset, any order; kept in that order)."""
    given = [p.strip() for p in re.split(r"[+,]", spec) if p.strip()]
    unknown = [p for p in given if p not in PROJECTIONS]
    if unknown or not given:
        raise ConfigError(f"{where}={spec!r}: choose projections among {', '.join(PROJECTIONS)} (joined by commas)")
    return tuple(p for p in PROJECTIONS if p in given)


def layer_indices(modules: Sequence[str], layer_map: LayerMap) -> list[int]:
    """The layer-map indices of the transformer layers the modules cover."""
    return [i for i, s in enumerate(layer_map.mask(modules)) if s]


def target_modules(modules: Sequence[str], projections: Sequence[str], layer_map: LayerMap,
                   sites: Sequence[str] = ATTENTION_SITES) -> list[str]:
    """Full names of the linear layers a LoRA on these modules targets (peft's `target_modules`), in each of the
    transformer layers' attention `sites`."""
    return [
        f"{layer_map.layers[i].short}.{site}.{proj}"
        for i in layer_indices(modules, layer_map)
        for site in sites
        for proj in projections
    ]


def transformer_layer(name: str) -> str | None:
    """`up_blocks.0.attentions.1.transformer_blocks.2` for any module or key inside that layer (dots or underscores)."""
    m = _LAYER_IN_KEY.search(name)
    if not m:
        return None
    block = m[1].replace("_blocks_", "_blocks.")
    return f"{block}.attentions.{m[2]}.transformer_blocks.{m[3]}"


def lora_file(source: str | Path) -> Path:
    """The weights file of a LoRA given as a file or a folder holding `pytorch_lora_weights.safetensors`."""
    path = Path(source)
    return path / WEIGHT_NAME if path.is_dir() else path


def unet_keys(keys: Iterable[str]) -> list[str]:
    """The UNet keys of a LoRA state dict or file: text-encoder keys are left out."""
    return [k for k in keys if not k.startswith(_TEXT_ENCODER_KEYS)]


def file_keys(path: Path) -> list[str]:
    """The keys of a LoRA file (its header only: no tensor is read)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return list(f.keys())


def check_keys(keys: Iterable[str], layer_map: LayerMap, what: str) -> list[str]:
    """The transformer layers a LoRA's UNet keys act on; a one-line error if any key names a layer this UNet lacks."""
    known = {layer.short for layer in layer_map.layers}
    layers: list[str] = []
    for key in unet_keys(keys):
        layer = transformer_layer(key)
        if layer is None:
            raise ConfigError(f"{what} has weights outside the UNet's transformer layers ({key}); styleprobe applies "
                              f"LoRAs to attention projections only: drop those keys or use a LoRA of the attention layers")
        if layer not in known:
            raise ConfigError(f"{what} has weights for {layer}, which this model lacks ({key}); it was trained for "
                              f"another base model: use a LoRA trained on this model (or choose that model's preset)")
        if layer not in layers:
            layers.append(layer)
    if not layers:
        raise ConfigError(f"{what} holds no UNet weights; give a LoRA file in diffusers' format ({WEIGHT_NAME})")
    return layers


def load_unet_lora(pipe: Any, source: str, adapter: str, what: str, why: str, **kwargs: Any) -> None:
    """Load the UNet weights of a LoRA (a file, a folder or a Hub id; `kwargs` for `lora_state_dict`) as `adapter`.

    Text-encoder weights are left out, with one log line saying how many and `why`: loaded, they would stay in the
    shared text encoders for every method, whose prompt embeddings are cached by text, so images would depend on
    what ran before. The UNet part goes through diffusers' own loader (its format conversion, network alphas and
    the file's peft metadata), as `load_lora_weights` does it.
    """
    state_dict, alphas, metadata = pipe.lora_state_dict(source, unet_config=pipe.unet.config, return_lora_metadata=True,
                                                        **kwargs)
    keys = unet_keys(state_dict)
    dropped = len(state_dict) - len(keys)
    if dropped:
        log.warning("%s: %d text-encoder weights left out (%s)", what, dropped, why)
    layer_map = LayerMap.from_unet(pipe.unet, "attn1")
    check_keys(keys, layer_map, what)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # several LoRAs at once: expected
        pipe.load_lora_into_unet({k: state_dict[k] for k in keys}, network_alphas=alphas, unet=pipe.unet,
                                 adapter_name=adapter, metadata=metadata, _pipeline=pipe)


def lora_layers(unet: Any, adapter: str) -> list[tuple[str, Any]]:
    """(name, peft LoraLayer) of every layer of the UNet that carries `adapter`."""
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in unet.named_modules() if isinstance(m, LoraLayer) and adapter in m.lora_A]


def set_layer_scales(unet: Any, scales: Mapping[str, Mapping[str, float]]) -> None:
    """Activate the adapters named in `scales` (and only those), each with a factor per transformer layer.

    `scales[adapter][layer]` multiplies that adapter's update in the layer (`up_blocks.0.attentions.1.
    transformer_blocks.0`); layers the mapping does not name get 0, so the adapter is off there.
    """
    adapters = list(scales)
    unet.enable_adapters()
    unet.set_adapters(adapters, weights=[1.0] * len(adapters))
    for adapter, per_layer in scales.items():
        for name, layer in lora_layers(unet, adapter):
            layer.set_scale(adapter, float(per_layer.get(transformer_layer(name) or "", 0.0)))


def state_dict_of(unet: Any, adapter: str) -> dict[str, Any]:
    """An adapter's weights in diffusers' key format (`...to_q.lora.down.weight`), without the `unet.` prefix that
    `save_lora_weights` adds."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=adapter))
