"""Visual Style Prompting's denoising-loop rules, applied around diffusers' own loop for one pipeline call.

The original changes its SDXL pipeline and DDIM scheduler (pipelines/pipeline_stable_diffusion_xl.py,
schedulers/scheduling_ddim.py); styleprobe keeps diffusers' pipeline and, for the length of one call, records the
UNet's raw output (a forward hook) and recomputes each row's noise prediction inside the scheduler's step:
- classifier-free guidance  eps = eps_u + g (eps_c - eps_u),  g = `boost` for the first `boost_steps` steps
  (the original's `use_advanced_sampling`: 20 for steps i < 3), the sampler's guidance after;
- reference rows marked `unguided` use their conditional prediction alone (`use_prompt_as_null`, the real-image
  script: the reference is noised from the real image every step, so its own prediction matters only for the
  colour calibration);
- StyleKeeper's negative visual query guidance (`nvqg_weight` lambda > 0): the unconditional score an image is
  guided away from becomes, in part, its negative row's unconditional score, the query-swapped pass (`swap.py`),
  which simulates content leakage:  eps_u' = (1 - lambda) eps_u + lambda eps_u(Q_ref, KV_own);
  eps = eps_u' + g (eps_c - eps_u'). lambda = 0 is VSP; lambda = 1 guides away from the leakage pass alone, as the
  only public implementation (Slickytail/ComfyUI-StyleGuide, a third-party replication) does with its two passes;
- colour calibration (`calibrate = (start_t, end_t)`): at DDIM steps whose timestep t has start_t > t > end_t,
  the predicted x0 of every row is AdaIN-ed, per channel over the latent's pixels, to its reference row's predicted
  x0 (std + 1e-8, torch's unbiased std), and the step is the deterministic DDIM step from that x0:
      x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t);  x0' = (x0 - mu) / (sigma + 1e-8) * sigma_ref + mu_ref;
      x_prev = sqrt(a_prev) x0' + sqrt(1 - a_prev) eps.
The pipeline's own combination of the halves is computed and then replaced; with no rule active the result is
the same arithmetic, so the plain path gives the pipeline's numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

STD_EPS = 1e-8


@dataclass
class StepRules:
    """What one call's denoising loop does beyond plain classifier-free guidance (tensors over one CFG half)."""

    guidance: float
    ref_index: torch.Tensor  # (B,) long: each row's reference row (a reference row points to itself)
    unguided: torch.Tensor  # (B,) bool: rows whose noise is their conditional prediction
    boost: float = 20.0
    boost_steps: int = 0
    negative_of: torch.Tensor | None = None  # (B,) long: an item's negative row (-1: none)
    nvqg_weight: float = 0.0
    calibrate: tuple[int, int] | None = None  # (start_t, end_t): calibrate where start_t > t > end_t

    def noise(self, raw: torch.Tensor, step: int) -> torch.Tensor:
        """Each row's noise prediction at `step` from the UNet's raw output ([uncond, cond] halves under CFG)."""
        n = self.ref_index.shape[0]
        if raw.shape[0] == n:  # no classifier-free guidance: the prediction as it is
            eps, cond = raw.clone(), raw
        else:
            uncond, cond = raw.chunk(2)
            g = self.boost if step < self.boost_steps else self.guidance
            if self.nvqg_weight and self.negative_of is not None:
                uncond = uncond.clone()
                items = (self.negative_of >= 0).nonzero().flatten().to(raw.device)
                negs = self.negative_of.to(raw.device)[items]
                uncond[items] = (1 - self.nvqg_weight) * uncond[items] + self.nvqg_weight * uncond[negs]
            eps = uncond + g * (cond - uncond)
        if bool(self.unguided.any()):
            rows = self.unguided.to(raw.device)
            eps[rows] = cond[rows]
        return eps

    def calibrates(self, timestep: int) -> bool:
        return self.calibrate is not None and self.calibrate[0] > timestep > self.calibrate[1]


def color_calibrated(x0: torch.Tensor, ref_index: torch.Tensor) -> torch.Tensor:
    """Each row's predicted x0 with its reference row's per-channel mean and std (over height and width)."""
    ref = x0[ref_index.to(x0.device)]
    out = x0 - x0.mean(dim=(2, 3), keepdim=True)
    out = out / (out.std(dim=(2, 3), keepdim=True) + STD_EPS)
    return out * ref.std(dim=(2, 3), keepdim=True) + ref.mean(dim=(2, 3), keepdim=True)


def ddim_step_calibrated(scheduler: Any, eps: torch.Tensor, timestep: int, sample: torch.Tensor,
                         ref_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The deterministic DDIM step (eta 0, epsilon prediction) from colour-calibrated predicted x0s."""
    config = scheduler.config
    if config.prediction_type != "epsilon":
        raise ValueError(f"colour calibration needs an epsilon-predicting model, not {config.prediction_type}")
    prev = timestep - config.num_train_timesteps // scheduler.num_inference_steps
    alpha = scheduler.alphas_cumprod[timestep]
    alpha_prev = scheduler.alphas_cumprod[prev] if prev >= 0 else scheduler.final_alpha_cumprod
    x0 = (sample - (1 - alpha) ** 0.5 * eps) / alpha ** 0.5
    if config.thresholding:
        x0 = scheduler._threshold_sample(x0)
    elif config.clip_sample:
        x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)
    x0 = color_calibrated(x0, ref_index)
    return alpha_prev ** 0.5 * x0 + (1 - alpha_prev) ** 0.5 * eps, x0


@contextmanager
def applied(pipe: Any, rules: StepRules) -> Iterator[None]:
    """`rules` in force for one call of `pipe`: the UNet's raw output is kept, the scheduler's step recomputes the
    noise from it (and calibrates colour where asked)."""
    scheduler, unet = pipe.scheduler, pipe.unet
    if rules.calibrate is not None and type(scheduler).__name__ != "DDIMScheduler":
        raise ValueError(f"colour calibration runs DDIM steps; the pipeline's scheduler is {type(scheduler).__name__}")
    raw: list[torch.Tensor] = []
    counter = [0]

    def keep_output(module: Any, args: Any, output: Any) -> None:
        raw.append(output[0] if isinstance(output, tuple) else output.sample)

    step = scheduler.step

    def rule_step(model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        i = counter[0]
        counter[0] += 1
        eps = rules.noise(raw.pop(), i).to(model_output.dtype)
        raw.clear()
        t = int(timestep)
        if not rules.calibrates(t):
            return step(eps, timestep, sample, *args, **kwargs)
        prev, x0 = ddim_step_calibrated(scheduler, eps, t, sample, rules.ref_index)
        if kwargs.get("return_dict", True):
            from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

            return DDIMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)
        return (prev,)

    handle = unet.register_forward_hook(keep_output)
    scheduler.step = rule_step
    try:
        yield
    finally:
        handle.remove()
        del scheduler.step
