"""Training latents as the reference draws them: a fresh sample of the VAE's posterior at every step.

ComfyUI's VAE encode returns the posterior's mode (its mean); the reference script takes
``latent_dist.sample()`` each step. So the encoder's moments are read once per image (ComfyUI's own encode
path: model loading, batching, dtype; with the Gaussian regulariser passed through for that call) and a
sample ``mean + std * eps`` is drawn whenever the image is used.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor, nn

from comfy.ldm.models.autoencoder import DiagonalGaussianRegularizer

__all__ = ["Posterior", "encode_posterior"]


@dataclass(frozen=True)
class Posterior:
    """One image's latent distribution: ``mean`` [1, 4, h, w]; ``std`` None for a VAE without one."""

    mean: Tensor
    std: Tensor | None

    def sample(self, generator: torch.Generator) -> Tensor:
        if self.std is None:
            return self.mean
        eps = torch.randn(self.mean.shape, generator=generator).to(self.mean.device, self.mean.dtype)
        return self.mean + self.std * eps


class _PassMoments(nn.Module):
    """Stands in for the regulariser: returns the encoder's moments (mean and log-variance) unchanged."""

    def forward(self, z: Tensor):
        return z, None


@contextlib.contextmanager
def _moments_out(first_stage) -> Iterator[None]:
    saved = first_stage.regularization
    first_stage.regularization = _PassMoments()
    try:
        yield
    finally:
        first_stage.regularization = saved


@torch.no_grad()
def encode_posterior(vae, pixels: Tensor) -> Posterior:
    """The posterior of ``pixels`` ([B, H, W, 3] in [0, 1]) under ComfyUI's ``vae``."""
    first_stage = getattr(vae, "first_stage_model", None)
    if not isinstance(getattr(first_stage, "regularization", None), DiagonalGaussianRegularizer):
        return Posterior(vae.encode(pixels).float(), None)
    with _moments_out(first_stage):
        moments = vae.encode(pixels).float()
    mean, logvar = moments.chunk(2, dim=1)
    # the clamp of the reference's (and ComfyUI's) DiagonalGaussianDistribution
    return Posterior(mean, torch.exp(0.5 * logvar.clamp(-30.0, 20.0)))
