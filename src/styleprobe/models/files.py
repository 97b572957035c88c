"""Finding every model file a job will read before it generates or scores anything.

A model file is named by what reads it: the base pipeline (`pipeline_files`), a method's own weights
(`Method.needed_files`: IP-Adapter's checkpoint, image encoder and content text tower, B-LoRA's Hub LoRAs) and each
scorer's weights (`Scorer.needed_files`). `check_found` looks them all up in one place, without downloading weights:
a file is found when its local path exists, when it is in the Hugging Face cache, or when the Hub can be reached
(`models.hub_offline`). Otherwise the job stops with one line naming the file and the fix, so an offline node fails
in seconds instead of after hours of generation. Only huggingface_hub is imported: no torch, no model library.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from styleprobe.errors import ModelUnavailableError

#: Names a Hugging Face model folder keeps its weights under, safetensors first.
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                     "diffusion_pytorch_model.safetensors.index.json")


@dataclass(frozen=True)
class ModelFile:
    """One file a job reads: `names` (any one of them will do) inside `source`, a Hub id or local folder; with no
    names, `source` is itself the file."""

    what: str = field(compare=False)  # for the message: "the IP-Adapter ip-adapter_sdxl.safetensors"
    source: str = ""  # a Hub id, a local folder or file, or tiny:/toy: (styleprobe's own models)
    names: tuple[str, ...] = ()  # paths inside `source`
    setting: str = field(default="", compare=False)  # the config setting that names `source`, for the fix
    revision: str | None = None
    # equal files (three CLIP metrics on one model) are looked up once


def weights_in(folder: str, candidates: Sequence[str] = TRANSFORMERS_WEIGHTS, variant: str | None = None) -> tuple[str, ...]:
    """The names under which `folder` ("" for the top) may hold weights, a variant's ("model.fp16.safetensors") first."""
    prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
    named = [_with_variant(n, variant) for n in candidates] if variant else []
    return tuple(prefix + n for n in dict.fromkeys([*named, *candidates]))


def _with_variant(name: str, variant: str) -> str:
    """diffusers' naming: the variant before the last suffix ("model.fp16.safetensors", "model.safetensors.index.fp16.json")."""
    stem, _, suffix = name.rpartition(".")
    return f"{stem}.{variant}.{suffix}"


def is_hub_id(source: str) -> bool:
    """Whether `source` can only be a Hub repository id ("owner/name"), not a local path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1:
        return False
    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def locate(f: ModelFile) -> Path | str:
    """Where `f` is: a local path, a path in the Hugging Face cache, or "hub" (not cached, but the Hub can be reached).

    Raises ModelUnavailableError with the fix when it is none of these.
    """
    from styleprobe.models.sources import resolve_source

    source = resolve_source(f.source)  # tiny: / toy: become their built folders
    local = Path(source).expanduser()
    if local.exists():
        if not f.names:
            if not local.is_file():
                raise ModelUnavailableError(f"cannot find {f.what}: {local} is a folder; set {f.setting or 'its setting'} "
                                            "to the file itself")
            return local
        found = next((local / n for n in f.names if (local / n).is_file()), None)
        if found is None:
            raise ModelUnavailableError(
                f"cannot find {f.what}: the local folder {local} has no {' or '.join(f.names)}; "
                f"point {f.setting or 'the setting'} at a folder with the Hub repository's layout"
            )
        return found
    if not is_hub_id(source):
        raise ModelUnavailableError(
            f"cannot find {f.what}: {local} does not exist; set {f.setting or 'its setting'} to an existing "
            f"{'folder' if f.names else 'file'} or a Hub id"
        )
    return _locate_on_hub(f, source)


def _locate_on_hub(f: ModelFile, repo: str) -> Path | str:
    from huggingface_hub import constants, try_to_load_from_cache

    from styleprobe.models.sources import HUB_UNREACHABLE, hub_offline

    if not f.names:
        raise ModelUnavailableError(f"cannot find {f.what}: {repo} is not a local file; set {f.setting or 'its setting'} "
                                    "to the file's path")
    for name in f.names:
        cached = try_to_load_from_cache(repo, name, revision=f.revision)
        if isinstance(cached, str):  # not None, nor the marker of a file known to be absent
            return Path(cached)
    if not hub_offline():
        return "hub"
    why = "the Hub cannot be reached" if HUB_UNREACHABLE["probed"] else "HF_HUB_OFFLINE is set"
    name = f.names[0]
    raise ModelUnavailableError(
        f"cannot find {f.what}: {repo}/{name} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}; "
        f"run `hf download {repo} {name}` on a machine with network access, or set {f.setting or 'its setting'} "
        f"to a local copy"
    )


def model_folder(what: str, source: str, setting: str, folder: str = "", revision: str | None = None) -> list[ModelFile]:
    """A Hugging Face model folder's two files, its `config.json` and its weights (`weights_in`), inside `source`."""
    prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
    return [ModelFile(f"{what} (config)", source, (f"{prefix}config.json",), setting, revision),
            ModelFile(f"{what} (weights)", source, weights_in(folder), setting, revision)]


#: The components of each family's pipeline that hold weights, and the library that saves them.
PIPELINE_COMPONENTS = {
    "sdxl": {"unet": "diffusers", "vae": "diffusers", "text_encoder": "transformers", "text_encoder_2": "transformers"},
    "sd15": {"unet": "diffusers", "vae": "diffusers", "text_encoder": "transformers"},
}


def pipeline_files(spec: Any) -> list[ModelFile]:
    """The base pipeline's files a load reads (`models.ModelSpec` `spec`): its index and each component's weights."""
    files = [ModelFile(f"the base pipeline of model {spec.name}", spec.base, ("model_index.json",), "model.base", spec.revision)]
    for component, library in PIPELINE_COMPONENTS[spec.family].items():
        names = weights_in(component, DIFFUSERS_WEIGHTS if library == "diffusers" else TRANSFORMERS_WEIGHTS, spec.variant)
        files.append(ModelFile(f"the {component} weights of model {spec.name}", spec.base, names, "model.base", spec.revision))
    return files


def check_found(files: Iterable[ModelFile]) -> dict[ModelFile, Path | str]:
    """Locate every file (each once); the first missing one raises, saying how many others are missing too."""
    found: dict[ModelFile, Path | str] = {}
    missing: list[ModelUnavailableError] = []
    for f in dict.fromkeys(files):
        try:
            found[f] = locate(f)
        except ModelUnavailableError as err:
            missing.append(err)
    if missing:
        more = f" ({len(missing) - 1} more model files are missing too)" if len(missing) > 1 else ""
        raise ModelUnavailableError(f"{missing[0]}{more}")
    return found


def read_json(source: str, name: str, setting: str = "", revision: str | None = None) -> dict[str, Any]:
    """A small JSON file (a config) of a local folder or Hub repository: read from the folder or the cache, or fetched
    (a few KB, never weights)."""
    where = locate(ModelFile(f"{name} of {source}", source, (name,), setting, revision))
    if where == "hub":
        from huggingface_hub import hf_hub_download

        from styleprobe.models.sources import resolve_source

        try:
            where = Path(hf_hub_download(resolve_source(source), name, revision=revision))
        except Exception as err:  # noqa: BLE001 - missing, gated, a dropped connection: one line with the fix
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise ModelUnavailableError(f"cannot fetch {name} of {source}: {first}; check {setting or 'the setting'}") from err
    try:
        return dict(json.loads(Path(where).read_text()))
    except (OSError, ValueError) as err:
        raise ModelUnavailableError(f"cannot read {name} of {source} ({err}); download it again") from err
