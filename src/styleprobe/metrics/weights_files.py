"""Where a scorer's weights file is: a local path the metric's config names, or a file of a Hub repository."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from styleprobe.errors import ModelUnavailableError


def local_or_hub(checkpoint: Any, repo: str, filename: str, what: str, setting: str) -> Any:
    """A scorer's weights file: a local path (the metric's `setting`, e.g. metrics.style_csd.checkpoint), or `filename`
    of Hub repository `repo` from the Hugging Face cache (downloaded when the Hub can be reached). Either way missing
    is one line naming the download and the setting."""
    if checkpoint:
        path = Path(str(checkpoint)).expanduser()
        if not path.is_file():
            raise ModelUnavailableError(f"{what} {path} not found; download it (hf download {repo} {filename}) and set "
                                        f"{setting} to its path")
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename))
    except Exception as err:  # noqa: BLE001 - offline, missing, gated: one message with the fix
        from styleprobe.models.sources import unavailable

        raise unavailable(f"{what} {repo}/{filename}", err=err, limit=160,
                          fix=f"run `hf download {repo} {filename}` on a machine with network access, or set "
                              f"{setting}=/path/to/{filename}") from err
