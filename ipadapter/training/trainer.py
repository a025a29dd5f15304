"""The training loop: frozen ComfyUI models, a trainable adapter, the reference objective.

One step: resize + center-crop the images to the training resolution and VAE-encode them (a fresh sample of
the posterior each step, ``latents``); CLIP-encode
the images with the encoder's own preprocessing; draw one drop per sample (image / text / both); encode
captions ("" for text drops); noise at uniform timesteps of the model's schedule; predict with the UNet
whose cross-attention layers carry the training patch; MSE against eps (or v); AdamW step.

Only the adapter has gradients: the UNet's parameters are switched to ``requires_grad=False`` for the run
and restored after it, the encoders run under ``no_grad``, and the UNet runs in its compute dtype.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import comfy.model_management as mm
import comfy.utils

from ..encode import encode_images, encoder_widths, negative_embeds
from ..detect import detect
from ..encoders import known_widths
from ..errors import CheckpointError
from ..layers import ARCH_NAMES, model_arch
from ..projection import build_projection
from .adapter import FusedIPLayers, TrainableAdapter, text_kv_weights
from .data import Dataset, batches
from .distributed import average_gradients
from .latents import Posterior, encode_posterior
from .objective import noise_batch, target_for
from .patch import StepTokens, patch_for_training, sdpa_override
from .recipe import Recipe, ResamplerSize, new_projection, train_family

__all__ = ["TrainSettings", "Trainer", "adapter_from_sections", "new_adapter", "frozen_parameters"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    batch_size: int = 1
    learning_rate: float = Recipe.learning_rate
    weight_decay: float = Recipe.weight_decay
    seed: int = 0
    resolution: int = 512
    recipe: Recipe = field(default_factory=Recipe)
    cache_encodings: bool = False  # keep each sample's latents and image features (small datasets)


@contextlib.contextmanager
def frozen_parameters(module: nn.Module) -> Iterator[None]:
    """``requires_grad=False`` on every parameter for the block, then each one's flag as it was."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def release_inference_tensors(module: nn.Module) -> int:
    """Make every parameter created under ``torch.inference_mode`` (a model loaded by a workflow) a normal
    tensor with the same values, one at a time, in place: autograd may not save inference tensors for the
    backward pass, and the backward through a frozen layer needs its weight. Nothing is copied as a whole
    (each old tensor is freed as its replacement arrives; ComfyUI's own ops do the same). Returns the count."""
    count = 0
    with torch.inference_mode(False):
        for sub in module.modules():
            for name, param in list(sub._parameters.items()):
                if param is not None and param.is_inference():
                    sub._parameters[name] = nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad)
                    count += 1
    return count


def _arch(model) -> str:
    arch = model_arch(model)
    if arch is None:
        raise ValueError("IPAdapter Train: the MODEL is not an SD1.5 or SDXL UNet (IP-Adapters train on those).")
    return arch


def _context_dim(model, arch: str) -> int:
    return next(iter(text_kv_weights(model.get_model_object("diffusion_model"), arch).values()))[0].shape[1]


def new_adapter(model, clip_vision, family: str, resampler: ResamplerSize = ResamplerSize(),
                seed: int = 0) -> tuple[TrainableAdapter, str]:
    """A fresh adapter of ``family`` for this MODEL and encoder: default-initialised projection (drawn from
    ``seed``), and to_k_ip / to_v_ip copied from each layer's text to_k / to_v. Returns it and the encoder
    output it reads."""
    fam = train_family(family)
    arch = _arch(model)
    unet = model.get_model_object("diffusion_model")
    pairs = text_kv_weights(unet, arch)
    width = encoder_widths(clip_vision)[fam.encoder_output]
    context = next(iter(pairs.values()))[0].shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        projection = new_projection(fam, arch, context, width, resampler)
    adapter = TrainableAdapter(projection, FusedIPLayers.from_pairs(pairs))
    check_loadable(adapter, family, arch)
    return adapter, fam.encoder_output


def check_loadable(adapter: TrainableAdapter, family: str, arch: str) -> None:
    """Refuse, before any training, a layout no loader would recognise (e.g. full-face on SDXL, which no
    released family has): detection runs on the shapes the file will have."""
    shapes = {"image_proj": {k: torch.empty(v.shape, device="meta") for k, v in adapter.image_proj.state_dict().items()},
              "ip_adapter": {}}
    for i, n in enumerate(adapter.layers.order):
        rows = adapter.layers.sizes[2 * i]
        for name in ("to_k_ip", "to_v_ip"):
            shapes["ip_adapter"][f"{n}.{name}.weight"] = torch.empty(rows, adapter.layers.weight.shape[1], device="meta")
    try:
        detect(shapes, source=f"the {family} adapter to train", widths=known_widths())
    except CheckpointError as exc:
        raise ValueError(f"IPAdapter Train: a {family} adapter for {ARCH_NAMES[arch]} with this CLIP vision encoder "
                         f"is not a layout IP-Adapter loaders know ({exc}); choose another family or encoder.") from None


_TRAINABLE_PROJECTIONS = {"image_proj", "resampler", "mlp"}


def adapter_from_sections(sections, spec) -> tuple[TrainableAdapter, str]:
    """A trainable copy of an existing adapter's weights (fine-tuning starts from exactly them)."""
    if spec.projection not in _TRAINABLE_PROJECTIONS or spec.encoder is None or spec.is_faceid:
        raise ValueError(f"IPAdapter Train: {spec.source or spec.family} is a {spec.label} adapter; fine-tuning "
                         "supports the CLIP-image families (basic, Plus, Plus-Face, full-face).")
    proj = build_projection(spec.projection, {k: v.detach().float().clone() for k, v in sections["image_proj"].items()})
    proj.requires_grad_(True)
    ip = sections["ip_adapter"]
    pairs = {int(k.split(".")[0]): (ip[k], ip[k.replace("to_k_ip", "to_v_ip")])
             for k in ip if k.endswith(".to_k_ip.weight")}
    return TrainableAdapter(proj, FusedIPLayers.from_pairs(pairs)), spec.encoder.output


def _fit(image: Tensor, size: int) -> Tensor:
    """[H, W, 3] -> [1, size, size, 3]: resize the short side and center-crop (the reference's transforms)."""
    chw = image.movedim(-1, 0)[None].float()
    return comfy.utils.common_upscale(chw, size, size, "bilinear", "center").movedim(1, -1).clamp(0, 1)


class Trainer:
    """Trains ``adapter`` against the frozen ``model`` / ``clip`` / ``vae`` / ``clip_vision``."""

    def __init__(self, model, clip, vae, clip_vision, adapter: TrainableAdapter, encoder_output: str,
                 settings: TrainSettings, optimizer_state: dict | None = None, step: int = 0):
        self.arch = _arch(model)
        self.clip, self.vae, self.clip_vision = clip, vae, clip_vision
        self.adapter = adapter
        self.output = encoder_output
        self.settings = settings
        self.tokens = StepTokens()
        self.model = patch_for_training(model, self.arch, self.tokens)  # a clone: the input MODEL is untouched
        self.step_count = step
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.drops = random.Random(settings.seed)
        self._texts: dict[str, tuple[Tensor, Tensor | None]] = {}
        self._encoded: dict[int, tuple[Posterior, Tensor]] = {}
        self._negative: Tensor | None = None
        base = self.model.model
        self.target = target_for(base.model_type)  # refuse unsupported models before any work
        self.device = self.model.load_device
        self.dtype = base.manual_cast_dtype or base.get_dtype()
        self.adapter.to(self.device)
        self.optimizer = torch.optim.AdamW(self.adapter.parameters(), lr=settings.learning_rate,
                                           weight_decay=settings.weight_decay)
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 and self.device.type == "cuda" else None
        self.last_drops: list[str] = []

    # -- encoding (frozen, no graph) -------------------------------------------------------------
    @torch.no_grad()
    def _text(self, caption: str) -> tuple[Tensor, Tensor | None]:
        hit = self._texts.get(caption)
        if hit is None:
            cond, pooled = self.clip.encode_from_tokens(self.clip.tokenize(caption), return_pooled=True)
            hit = (cond.detach().clone(), None if pooled is None else pooled.detach().clone())
            self._texts[caption] = hit
        return hit

    @torch.no_grad()
    def _encode_sample(self, sample, image: Tensor) -> tuple[Posterior, Tensor]:
        """(the VAE posterior of the fitted image, the image encoder's features)."""
        key = id(sample)
        if key in self._encoded:
            return self._encoded[key]
        posterior = encode_posterior(self.vae, _fit(image, self.settings.resolution))
        features = encode_images(self.clip_vision, image[None].float(), self.output).float()
        out = (posterior, features.detach().clone())
        if self.settings.cache_encodings:
            self._encoded[key] = out
        return out

    def draw_drops(self, n: int) -> list[str]:
        return [self.settings.recipe.draw(self.drops.random()) for _ in range(n)]

    def _inputs(self, batch) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        drops = self.draw_drops(len(batch))
        self.last_drops = drops
        latents, features, contexts, pooled = [], [], [], []
        for (sample, image), drop in zip(batch, drops):
            posterior, feats = self._encode_sample(sample, image)
            latent = self.model.model.process_latent_in(posterior.sample(self.generator))
            if drop in ("image", "both"):  # basic: zero embeds; hidden-state families: an all-zero pixel input
                if self._negative is None:
                    with torch.no_grad():
                        self._negative = negative_embeds(self.clip_vision, self.output, feats,
                                                         mode="normalized zeros").float().clone()
                feats = self._negative
            cond, pool = self._text("" if drop in ("text", "both") else sample.caption)
            latents.append(latent)
            features.append(feats)
            contexts.append(cond)
            pooled.append(pool)
        return torch.cat(latents), torch.cat(features), _pad_cat(contexts), self._adm(pooled)

    def _adm(self, pooled: list) -> Tensor | None:
        """SDXL's size/crop conditioning vector (uncropped, at the training resolution); None on SD1.5."""
        if pooled[0] is None:
            return None
        res = self.settings.resolution
        return self.model.model.encode_adm(pooled_output=torch.cat(pooled), width=res, height=res, crop_w=0, crop_h=0,
                                           target_width=res, target_height=res, device=self.device)

    # -- one step --------------------------------------------------------------------------------
    def loss(self, x0: Tensor, features: Tensor, context: Tensor, y: Tensor | None) -> Tensor:
        """The reference objective for one batch (graph attached to the adapter's parameters)."""
        dev, dt = self.device, self.dtype
        noised = noise_batch(self.model.model.model_sampling, self.model.model.model_type, x0.to(dev), self.generator)
        tokens = self.adapter.image_proj(features.to(dev))
        self.tokens.kv = self.adapter.layers.kv(tokens, dt)
        options = dict(self.model.model_options.get("transformer_options", {}))
        options["optimized_attention_override"] = sdpa_override
        unet = self.model.model.diffusion_model
        kwargs = {} if y is None else {"y": y.to(dev, dt)}
        try:
            out = unet(noised.model_input.to(dt), noised.timestep.to(dev), context=context.to(dev, dt),
                       transformer_options=options, **kwargs)
        finally:
            self.tokens.kv = {}
        return F.mse_loss(out.float(), noised.target.float())

    def evaluate(self, batch, seed: int = 0) -> float:
        """The loss on ``batch`` without drops, at timesteps and noise fixed by ``seed``, without training:
        comparable between steps (the training loss is not, its timesteps are random)."""
        latents, features, contexts, pooled = [], [], [], []
        for sample, image in batch:
            posterior, feats = self._encode_sample(sample, image)
            latent = self.model.model.process_latent_in(posterior.mean)  # deterministic: comparable losses
            cond, pool = self._text(sample.caption)
            latents.append(latent), features.append(feats), contexts.append(cond), pooled.append(pool)
        y = self._adm(pooled)
        saved, self.generator = self.generator, torch.Generator().manual_seed(seed)
        try:
            with self.session(), torch.no_grad():
                return float(self.loss(torch.cat(latents), torch.cat(features), _pad_cat(contexts), y))
        finally:
            self.generator = saved

    def step(self, batch) -> float:
        x0, features, context, y = self._inputs(batch)
        loss = self.loss(x0, features, context, y)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            average_gradients(self.adapter)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            average_gradients(self.adapter)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        return float(loss.detach())

    def run(self, dataset: Dataset, steps: int, on_step: Callable[[int, float], None] | None = None) -> list[float]:
        """Train for ``steps`` steps; interruptible between steps (ComfyUI's interrupt raises out of here,
        leaving the MODEL and every file as they were). Returns the loss of every step."""
        losses = []
        data = batches(dataset, self.settings.batch_size, self.generator)
        with self.session():
            for _ in range(steps):
                mm.throw_exception_if_processing_interrupted()
                losses.append(self.step(next(data)))
                if on_step is not None:
                    on_step(self.step_count, losses[-1])
        return losses

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Models loaded, UNet frozen, gradients on (ComfyUI runs nodes under inference_mode)."""
        mm.load_models_gpu([self.model])
        release_inference_tensors(self.model.model.diffusion_model)
        with torch.inference_mode(False), torch.enable_grad(), frozen_parameters(self.model.model):
            self.adapter.train()
            yield

    def state(self) -> dict:
        """Everything a resumed run needs (tensors and plain data, loadable with weights_only=True)."""
        return {"adapter": {k: v.detach().cpu() for k, v in self.adapter.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "step": self.step_count,
                "generator": self.generator.get_state(), "drops": list(self.drops.getstate()[1]),
                "drops_version": self.drops.getstate()[0]}


def _pad_cat(contexts: list[Tensor]) -> Tensor:
    """Concatenate text contexts of different lengths (prompts past 77 tokens give 154, ...) by repeating
    each to the common multiple, as ComfyUI batches such conditionings."""
    length = math.lcm(*(c.shape[1] for c in contexts))
    return torch.cat([c.repeat(1, length // c.shape[1], 1) for c in contexts])
