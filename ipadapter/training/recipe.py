"""The reference training recipe as data: what is trained per family, drop rates, optimiser settings.

The numbers are those of the reference training scripts (tutorial_train.py / tutorial_train_plus.py /
tutorial_train_sdxl.py of h94/IP-Adapter): AdamW lr 1e-4, weight decay 1e-2, no schedule, no clipping,
no EMA; one draw per sample drops the image (5 %), the text (5 %) or both (5 %).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..projection import ImageProjModel, MLPProjModel, Resampler

__all__ = ["DROP_KINDS", "Recipe", "TrainFamily", "TRAIN_FAMILIES", "ResamplerSize", "new_projection", "train_family"]


@dataclass(frozen=True)
class Recipe:
    learning_rate: float = 1e-4
    weight_decay: float = 1e-2
    drop_image: float = 0.05  # image dropped, caption kept
    drop_text: float = 0.05  # caption "" , image kept
    drop_both: float = 0.05

    def draw(self, u: float) -> str:
        """The drop for one sample from a uniform draw ``u`` in [0, 1), laid out as the reference does."""
        if u < self.drop_image:
            return "image"
        if u < self.drop_image + self.drop_text:
            return "text"
        if u < self.drop_image + self.drop_text + self.drop_both:
            return "both"
        return "none"


DROP_KINDS = ("none", "image", "text", "both")


@dataclass(frozen=True)
class TrainFamily:
    """What one trainable family is: its projection, what it reads from the image encoder, its tokens."""

    name: str
    projection: str  # ipadapter.projection kind
    encoder_output: str  # "image_embeds" | "penultimate_hidden_states"
    tokens: int | None  # image tokens; None = one per encoder token (full-face)
    note: str


TRAIN_FAMILIES: dict[str, TrainFamily] = {f.name: f for f in (
    TrainFamily("basic", "image_proj", "image_embeds", 4, "ImageProj: pooled image_embeds -> 4 tokens"),
    TrainFamily("plus", "resampler", "penultimate_hidden_states", 16, "Resampler: penultimate states -> 16 tokens"),
    TrainFamily("plus-face", "resampler", "penultimate_hidden_states", 16,
                "a Plus adapter trained on face crops (crop the faces in the dataset)"),
    TrainFamily("full-face", "mlp", "penultimate_hidden_states", None, "MLP: every penultimate token -> one token"),
)}


def train_family(name: str) -> TrainFamily:
    try:
        return TRAIN_FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family to train {name!r}; choose one of {', '.join(TRAIN_FAMILIES)}") from None


@dataclass(frozen=True)
class ResamplerSize:
    """The reference's Resampler: depth 4, 64-wide heads (12 on SD1.5, 20 on SDXL), FF x4, 16 queries;
    its width is the cross-attention width on SD1.5 and 1280 on SDXL. Smaller sizes are for tests."""

    dim: int | None = None  # None: the reference's width for the architecture
    heads: int | None = None
    depth: int = 4
    ff_mult: int = 4

    def resolve(self, arch: str, context_dim: int) -> tuple[int, int]:
        dim = self.dim if self.dim is not None else (context_dim if arch == "sd15" else 1280)
        heads = self.heads if self.heads is not None else (12 if arch == "sd15" else 20)
        return dim, heads


def new_projection(family: TrainFamily, arch: str, context_dim: int, encoder_width: int,
                   resampler: ResamplerSize = ResamplerSize()) -> nn.Module:
    """A freshly initialised projection (PyTorch's default init, as the reference builds it), fp32."""
    if family.projection == "image_proj":
        return ImageProjModel(context_dim, encoder_width, family.tokens)
    if family.projection == "mlp":
        return MLPProjModel(context_dim, encoder_width)
    if family.projection == "resampler":
        dim, heads = resampler.resolve(arch, context_dim)
        module = Resampler(dim=dim, depth=resampler.depth, heads=heads, num_queries=family.tokens,
                           embedding_dim=encoder_width, output_dim=context_dim, ff_mult=resampler.ff_mult)
        with torch.no_grad():  # the reference's latents init: randn / sqrt(dim)
            module.latents.copy_(torch.randn(1, family.tokens, dim) / dim ** 0.5)
        return module
    raise ValueError(f"no projection for {family.projection!r}")
