"""The denoising loop's settings (steps, guidance, size, scheduler, negative prompt) and where each comes from.

Each setting is resolved per method: a value given in `sampler` (the command line or an experiment) applies to
every method; where it is null, the method's own default applies (StyleAligned's real-image recipe runs DDIM
at guidance 10), else the model preset's. Rows record the resolved values, so a row says what made its image.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from styleprobe.config import non_negative_number, positive_int
from styleprobe.errors import ConfigError

FIELDS = ("steps", "guidance", "height", "width", "scheduler", "scheduler_options", "negative_prompt")


@dataclass(frozen=True)
class Sampler:
    """Settings of the denoising loop shared by the items of one method in a run."""

    steps: int
    guidance: float
    height: int
    width: int
    scheduler: str = "default"
    negative_prompt: str = ""
    scheduler_options: tuple[tuple[str, Any], ...] = field(default=())  # sorted (name, value) pairs

    @property
    def scheduler_id(self) -> str:
        """The scheduler as rows and keys name it: the class, with its options where it has any."""
        if not self.scheduler_options:
            return self.scheduler
        return f"{self.scheduler}({', '.join(f'{k}={v!r}' for k, v in self.scheduler_options)})"

    @property
    def guided(self) -> bool:
        """Whether classifier-free guidance runs (the UNet batch is doubled, unconditional half first)."""
        return self.guidance > 1.0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], where: str | Mapping[str, str] = "sampler") -> "Sampler":
        """Checked settings; `where` says where they were given, for errors: a prefix, or each setting's full name."""
        d = dict(cfg)
        label = (lambda n: f"{where}.{n}") if isinstance(where, str) else where.__getitem__
        steps, height, width = (positive_int(d.get(n), label(n)) for n in ("steps", "height", "width"))
        for name, value in (("height", height), ("width", width)):
            if value % 8:
                raise ConfigError(f"{label(name)}={value} is not a multiple of 8; the VAE needs multiples of 8")
        guidance = non_negative_number(d.get("guidance"), label("guidance"))
        scheduler = str(d.get("scheduler") or "default")
        options = dict(d.get("scheduler_options") or {})
        if scheduler != "default":
            _check_scheduler(scheduler, options, label("scheduler"), label("scheduler_options"))
        elif options:
            raise ConfigError(f"{label('scheduler_options')}={options} needs a scheduler class; set {label('scheduler')} too")
        return cls(steps, guidance, height, width, scheduler, str(d.get("negative_prompt") or ""),
                   tuple(sorted(options.items())))

    @classmethod
    def resolve(cls, given: Mapping[str, Any], method: Mapping[str, Any], model: Mapping[str, Any],
                where: str = "sampler") -> "Sampler":
        """Each setting from `given` (the `sampler` group), else the method's default (`where`), else the model preset's.

        An error names the setting where the bad value came from (`sampler.steps`, `method.x.sampler.steps`, ...).
        """
        unknown = sorted(set(method) - set(FIELDS))
        if unknown:
            raise ConfigError(f"{where} has unknown setting(s) {', '.join(unknown)}; valid: {', '.join(FIELDS)}")
        preset = {"steps": ("steps", model.get("steps")), "guidance": ("guidance", model.get("guidance")),
                  "height": ("resolution", model.get("resolution")), "width": ("resolution", model.get("resolution")),
                  "scheduler": ("scheduler", "default"), "negative_prompt": ("negative_prompt", "")}
        values: dict[str, Any] = {}
        labels: dict[str, str] = {}
        for name in FIELDS:
            key, default = preset.get(name, (name, None))
            candidates = ((given.get(name), f"sampler.{name}"), (method.get(name), f"{where}.{name}"), (default, f"model.{key}"))
            values[name], labels[name] = next(((v, w) for v, w in candidates if v is not None), (None, f"sampler.{name}"))
        # the options belong to whichever scheduler was chosen
        chosen_by = labels["scheduler"].rsplit(".", 1)[0]
        options_from = {"sampler": given, where: method}.get(chosen_by, {})
        values["scheduler_options"] = options_from.get("scheduler_options") or {}
        labels["scheduler_options"] = f"{chosen_by}.scheduler_options"
        return cls.from_config(values, labels)


def _check_scheduler(name: str, options: Mapping[str, Any], where: str, options_where: str) -> None:
    import diffusers

    if not (name.endswith("Scheduler") and hasattr(diffusers, name)):
        raise ConfigError(
            f"{where}={name!r} is not a diffusers scheduler; use default or a class name "
            "such as EulerDiscreteScheduler, DDIMScheduler, DPMSolverMultistepScheduler"
        )
    accepted = set(inspect.signature(getattr(diffusers, name).__init__).parameters) - {"self"}
    bad = sorted(set(options) - accepted)
    if bad:
        raise ConfigError(f"{options_where} has {', '.join(bad)}, which {name} does not take; "
                          f"valid: {', '.join(sorted(accepted))}")
    for key, value in options.items():
        if not isinstance(value, (bool, int, float, str)) and value is not None:
            raise ConfigError(f"{options_where}.{key}={value!r}; give a number, a word or true/false")
