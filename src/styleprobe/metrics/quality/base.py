"""What the quality scorers share: their role, their prompt check, their stand-ins and where their files come from."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from styleprobe.errors import ModelUnavailableError
from styleprobe.metrics.base import Scorer


class QualityScorer(Scorer):
    """A preference or aesthetic score of the output alone (and its prompt): role "quality", higher is better.

    `reference` names the original code the score follows (file and commit), recorded in the metric's identity.
    On the tiny and the toy world (`scoring.weights` tiny / toy) the scorer runs on its tiny random stand-in
    (`quality/stand_ins.py`): the toy world has no trained quality model, and its numbers are not about quality.
    """

    reference: ClassVar[str] = ""

    @property
    def stand_in(self) -> bool:
        return self.settings.weights in ("tiny", "toy")

    def describe_model(self) -> str:
        if self.settings.weights == "toy":
            return f"tiny random {self.family_name()} on toy images (not about image quality)"
        return super().describe_model()

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "reference": self.reference}

    def local_or_hub(self, checkpoint: Any, repo: str, filename: str, option: str = "checkpoint") -> Path:
        """A local file (`metrics.<name>.<option>`), or `filename` of Hub repository `repo` from the Hugging Face
        cache (downloaded when the Hub can be reached)."""
        if checkpoint:
            path = Path(str(checkpoint)).expanduser()
            if not path.is_file():
                raise ModelUnavailableError(f"{self.name}: {path} not found; download {repo}/{filename} "
                                            f"(hf download {repo} {filename}) and set metrics.{self.name}.{option} to it")
            return path
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(repo, filename))
        except Exception as err:  # noqa: BLE001 - offline, missing, gated: one message with the fix
            from styleprobe.models.sources import unavailable

            raise unavailable(f"{self.name} weights {repo}/{filename}", err=err, limit=160,
                              fix=f"run `hf download {repo} {filename}` on a machine with network access, or set "
                                  f"metrics.{self.name}.{option}=/path/to/{filename}") from err

    def file_needed(self, checkpoint: Any, repo: str, filename: str, what: str, option: str = "checkpoint") -> Any:
        """The `ModelFile` that `local_or_hub` will read, for the check before any image is made."""
        from styleprobe.models.files import ModelFile

        setting = f"metrics.{self.name}.{option}"
        if checkpoint:
            return ModelFile(f"{what} of {self.name}", str(checkpoint), (), setting)
        return ModelFile(f"{what} of {self.name}", repo, (filename,), setting)


def prompts_of(batch: Any) -> list[str]:
    """The batch's target prompts (the row's `prompt`, as CLIP-T scores it)."""
    return [str(p) for p in batch.prompts]
