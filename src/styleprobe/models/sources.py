"""Where a model's files come from: Hub ids, local folders, `tiny:<folder>` (the random-weight embedded model, built
on first use) or `toy:<folder>` (the trained toy world, assembled from the shipped weights on first use); whether
the Hub can be reached; and the one-line error for a model that cannot be found.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from styleprobe.errors import ModelUnavailableError

if TYPE_CHECKING:  # torch is imported where it is used: planning and config errors never wait for it
    pass
log = logging.getLogger(__name__)


def resolve_source(source: str) -> str:
    """Turn `tiny:<folder>` / `toy:<folder>` into the tiny / toy model's local folder; Hub ids and paths pass through.

    Before the first Hub id is used, `hub_offline` decides once whether the Hub can be reached at all.
    """
    if source.startswith("tiny:"):
        from styleprobe.models.tiny import ensure_tiny

        return str(ensure_tiny() / source.removeprefix("tiny:"))
    if source.startswith("toy:"):
        from styleprobe.models.toy.assemble import ensure_toy

        return str(ensure_toy() / source.removeprefix("toy:"))
    if not Path(source).expanduser().exists():
        hub_offline()
    return source


HUB_PROBE_SECONDS = 2.0


HUB_UNREACHABLE = {"probed": False}  # set when `hub_offline` found no route to the Hub (rather than HF_HUB_OFFLINE)


@functools.cache
def hub_offline() -> bool:
    """Whether models come from the local Hugging Face cache only: HF_HUB_OFFLINE is set, or the Hub client could not
    connect to its endpoint within HUB_PROBE_SECONDS (`hub_connect_error`). In the second case the offline mode is
    switched on for this process, so a missing model fails at once with its one-line error instead of after the Hub
    client's retries (about 30 s)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    error = hub_connect_error(constants.ENDPOINT)
    if error is None:
        return False
    log.info("the Hugging Face Hub (%s) cannot be reached (%s): using the local cache only", constants.ENDPOINT, error)
    HUB_UNREACHABLE["probed"] = True
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    return True


def hub_connect_error(endpoint: str) -> Exception | None:
    """Why a HEAD request to `endpoint` through huggingface_hub's own HTTP session could not connect, else None.

    The session is the one `hf download` uses, so HTTPS_PROXY / HTTP_PROXY / NO_PROXY (and a client factory set
    in code) apply to the probe as to every download. Only a failed connection (to the endpoint, or to the proxy)
    counts: any answer, whatever its status, and any other failure leave the Hub to report itself.
    """
    import importlib

    from huggingface_hub.utils import get_session

    session = get_session()
    http = importlib.import_module(type(session).__module__.partition(".")[0])  # httpx (hub 1.x) or httpx2 (2.x)
    try:
        session.head(endpoint, timeout=HUB_PROBE_SECONDS, follow_redirects=False)
    except (http.ConnectError, http.ConnectTimeout) as err:
        return err
    except Exception as err:  # noqa: BLE001 - reached, but something else went wrong: the Hub client says what
        log.debug("the Hub probe of %s got through but failed: %s", endpoint, err)
    return None


def unavailable(what: str, source: str = "", subfolder: str | None = None, err: Exception | str = "",
                fix: str | None = None, limit: int = 200) -> ModelUnavailableError:
    """The one-line error for model files that cannot be found or read: what, from where, the first line of why, and
    the fix (by default: download it into the Hugging Face cache, or point the preset at a local folder). Every loader
    of weights (pipelines, adapters, LoRAs, text towers, the scorers' models) builds its error here."""
    where = f"{source}" + (f" (subfolder {subfolder})" if subfolder else "")
    if fix is None and (Path(source).is_absolute() or source.startswith(".")):
        fix = f"the local folder {source} lacks it; point the preset at a folder with the Hub repository's layout"
    elif fix is None:
        fix = (
            f"download it on a machine with network access (hf download {source}) into the Hugging Face cache, "
            f"or into a folder and set the preset's source to that folder"
        )
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    if type(err).__name__ == "LocalEntryNotFoundError":  # huggingface_hub's long "check your connection" text
        from huggingface_hub import constants

        why = "the Hub cannot be reached" if HUB_UNREACHABLE["probed"] else "HF_HUB_OFFLINE is set"
        first = f"not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}"
    return ModelUnavailableError(f"cannot load {what}{' from ' + where if where else ''}: {first[:limit]}; {fix}")
