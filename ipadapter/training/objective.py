"""Noising and the regression target on the model's own schedule (ComfyUI's model_sampling).

Timesteps are drawn uniformly over the schedule's discrete steps. ComfyUI's ``noise_scaling`` /
``calculate_input`` give the DDPM input sqrt(a) x0 + sqrt(1 - a) eps for sigma = sqrt((1 - a) / a), which is
what the reference feeds the UNet at that timestep; the target is eps (epsilon models) or the v of
v-prediction models, v = sqrt(a) eps - sqrt(1 - a) x0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

__all__ = ["Noised", "TARGETS", "noise_batch", "target_for"]


def _sigma(sigma: Tensor, like: Tensor) -> Tensor:
    return sigma.view(-1, *([1] * (like.ndim - 1)))


def _eps_target(x0: Tensor, noise: Tensor, sigma: Tensor, sigma_data: float) -> Tensor:
    return noise


def _v_target(x0: Tensor, noise: Tensor, sigma: Tensor, sigma_data: float) -> Tensor:
    s = _sigma(sigma, x0)
    # The output for which ComfyUI's V_PREDICTION.calculate_denoised returns x0 exactly.
    return (noise * sigma_data ** 2 - s * x0) / (sigma_data * (s ** 2 + sigma_data ** 2) ** 0.5)


# ComfyUI ModelType name -> target. Flow and EDM models are not what IP-Adapters are trained on.
TARGETS: dict[str, Callable[[Tensor, Tensor, Tensor, float], Tensor]] = {
    "EPS": _eps_target,
    "V_PREDICTION": _v_target,
}


def target_for(model_type) -> Callable[[Tensor, Tensor, Tensor, float], Tensor]:
    name = getattr(model_type, "name", str(model_type))
    if name not in TARGETS:
        raise ValueError(f"IPAdapter Train: the model predicts {name}; training supports {', '.join(TARGETS)} "
                         "models (SD1.5 / SDXL and their v-prediction variants).")
    return TARGETS[name]


@dataclass(frozen=True)
class Noised:
    model_input: Tensor  # what the UNet reads (calculate_input of x0 + sigma * noise)
    timestep: Tensor  # the UNet's timestep for sigma
    sigma: Tensor
    target: Tensor


def noise_batch(model_sampling, model_type, x0: Tensor, generator: torch.Generator) -> Noised:
    """Uniform timesteps over the schedule, noise, the UNet input and the target for clean latents ``x0``."""
    sigmas = model_sampling.sigmas
    index = torch.randint(0, sigmas.shape[0], (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    sigma = sigmas[index].to(x0.device, torch.float32)
    x = model_sampling.noise_scaling(sigma, noise, x0)
    model_input = model_sampling.calculate_input(sigma, x)
    sigma_data = float(getattr(model_sampling, "sigma_data", 1.0))
    target = target_for(model_type)(x0, noise, sigma, sigma_data)
    return Noised(model_input, model_sampling.timestep(sigma).float(), sigma, target)
