"""Tiny stand-ins for the models an IP-Adapter works with, built from ComfyUI's own model classes.

* ``TinySD15`` / ``TinySDXL``: ComfyUI model configs (subclasses of ``comfy.supported_models.SD15`` /
  ``SDXL``) with the real UNet topology and the widths of ``harness.dims.TINY_UNET``. Once
  ``register_tiny_models()`` has put them in front of ``comfy.supported_models.models``, ComfyUI's own
  loaders (``CheckpointLoaderSimple``, ``load_checkpoint_guess_config``) detect and load tiny files.
  Both name tiny CLIP text encoders (the real CLIP tokenizers, widths that add up to the tiny UNet's
  context width; SDXL's CLIP-G still pools to 1280 for the ADM embedding), so ``CLIPTextEncode``
  gives conditioning the tiny UNets accept. ``checkpoint_state_dict(arch)`` is a full tiny pipeline.
* ``build_unet(arch)``: a tiny UNet as a CPU fp32 ``ModelPatcher`` with seeded weights.
* ``attn2_keys(model)``: the cross-attention patch keys in the order ComfyUI visits them.
* Tiny CLIP vision encoders (``harness.dims.TINY_CLIP``): ``build_clip_vision(name)``, and
  ``register_tiny_clip_vision()`` so that ``comfy.clip_vision.load`` (hence ``CLIPVisionLoader``)
  loads tiny files.

Nothing here changes ComfyUI's files; the registrations change its module state in this process only.
Import this module only after ComfyUI has been booted (``harness.runtime.boot``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path

import torch

import comfy.clip_model
import comfy.clip_vision
import comfy.model_patcher
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.supported_models
import comfy.supported_models_base
from comfy.ldm.modules.attention import SpatialTransformer

from harness.dims import TINY_CLIP, TINY_UNET, ClipVisionDims

from harness import REPO_ROOT
CONFIG_CACHE = REPO_ROOT / ".cache" / "fixtures" / "configs"

# ----------------------------------------------------------------------------------------------
# Deterministic initialisation
# ----------------------------------------------------------------------------------------------


def _seed_for(seed: int, name: str) -> int:
    """A per-tensor seed, so a tensor's values depend on its name only (not on the iteration order)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def init_value(name: str, shape: torch.Size | tuple[int, ...], seed: int) -> torch.Tensor:
    """The fp32 value of parameter ``name``: matrices/kernels ~ N(0, 1/fan_in), norm scales 1, biases small."""
    gen = torch.Generator().manual_seed(_seed_for(seed, name))
    shape = tuple(shape)
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        std = 0.02 if "embedding" in name else 1.0 / math.sqrt(fan_in)
        return torch.randn(shape, generator=gen) * std
    if len(shape) == 1:
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "weight":  # GroupNorm / LayerNorm scales
            return torch.ones(shape) + 0.02 * torch.randn(shape, generator=gen)
        return 0.02 * torch.randn(shape, generator=gen)  # biases, class embedding
    raise ValueError(f"{name}: scalars keep their constructor value (see seeded_state_dict)")


def seeded_state_dict(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A full fp32 state dict for ``module`` (every parameter and floating buffer) from ``seed``."""
    out = {}
    for name, tensor in module.state_dict().items():
        if not tensor.is_floating_point():
            out[name] = tensor.clone()
        elif tensor.ndim == 0:  # scalars keep the constructor's value (TAESD's vae_scale / vae_shift ...)
            if not tensor.is_meta:  # a meta module has none: the caller sets them
                out[name] = tensor.detach().float().clone()
        else:
            out[name] = init_value(name, tensor.shape, seed)
    return out


def init_module(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter of ``module`` in place with its seeded value (in the module's dtype)."""
    values = seeded_state_dict(module, seed)
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            tensor.copy_(values[name].to(tensor.dtype))
    return module


# ----------------------------------------------------------------------------------------------
# Tiny CLIP text encoder (for the tiny SD1.5 checkpoint)
# ----------------------------------------------------------------------------------------------

TINY_TEXT_LAYERS = 3  # >= 2, so CLIPSetLastLayer -2 keeps working


def tiny_text_config(hidden_size: int, projection_dim: int | None = None, hidden_act: str = "quick_gelu") -> dict:
    """An HF ``clip_text_model`` config: real vocabulary and 77 positions, tiny widths."""
    return {
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 49407,
        "hidden_act": hidden_act,
        "hidden_size": hidden_size,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 4 * hidden_size,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": max(1, hidden_size // 32),
        "num_hidden_layers": TINY_TEXT_LAYERS,
        "pad_token_id": 1,
        "projection_dim": projection_dim or hidden_size,
        "torch_dtype": "float32",
        "vocab_size": 49408,
    }


class TinySD15TextEncoder(comfy.sd1_clip.SDClipModel):
    """ComfyUI's SD1 checkpoint text encoder with a tiny config (width = tiny SD1.5 context width)."""

    def __init__(self, device="cpu", dtype=None, model_options={}):  # noqa: B006 (ComfyUI's signature)
        super().__init__(
            device=device,
            dtype=dtype,
            model_options=model_options,
            textmodel_json_config=tiny_text_config(TINY_UNET["sd15"].context_dim),
            return_projected_pooled=False,
        )


class TinySD15ClipModel(comfy.sd1_clip.SD1ClipModel):
    """``SD1ClipModel`` (state-dict prefix ``clip_l.``) holding the tiny text encoder."""

    def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):  # noqa: B006
        super().__init__(device=device, dtype=dtype, model_options=model_options, clip_model=TinySD15TextEncoder, **kwargs)


class TinySD15WordTokenizer(comfy.sd1_clip.SDTokenizer):
    """The real CLIP tokenizer; textual-inversion embeddings are expected at the tiny width."""

    def __init__(self, embedding_directory=None, tokenizer_data={}, **kwargs):  # noqa: B006
        super().__init__(
            embedding_directory=embedding_directory,
            tokenizer_data=tokenizer_data,
            embedding_size=TINY_UNET["sd15"].context_dim,
            **kwargs,
        )


class TinySD15Tokenizer(comfy.sd1_clip.SD1Tokenizer):
    def __init__(self, embedding_directory=None, tokenizer_data={}):  # noqa: B006
        super().__init__(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data, tokenizer=TinySD15WordTokenizer)


# The tiny SDXL text encoders: CLIP-L and CLIP-G each give half of the tiny context width (as 768 + 1280
# make 2048), and CLIP-G's pooled output keeps the real 1280 that SDXL's ADM embedding needs.
SDXL_POOLED_WIDTH = 1280


def _sdxl_text_widths() -> tuple[int, int]:
    context = TINY_UNET["sdxl"].context_dim
    return context // 2, context - context // 2


class ProjectedCLIPTextModel(comfy.clip_model.CLIPTextModel):
    """ComfyUI's CLIP text model with a ``hidden -> projection_dim`` text projection (ComfyUI's is square,
    as real CLIP-G's 1280 -> 1280 is); lets a narrow tiny CLIP-G still pool to SDXL's 1280."""

    def __init__(self, config_dict, dtype, device, operations):
        super().__init__(config_dict, dtype, device, operations)
        self.text_projection = operations.Linear(
            config_dict["hidden_size"], config_dict["projection_dim"], bias=False, dtype=dtype, device=device)


class TinySDXLClipModel(comfy.sdxl_clip.SDXLClipModel):
    """ComfyUI's SDXL dual text encoder (``clip_l.`` + ``clip_g.``) at tiny widths; same outputs and options."""

    def __init__(self, device="cpu", dtype=None, model_options={}):  # noqa: B006
        torch.nn.Module.__init__(self)
        width_l, width_g = _sdxl_text_widths()
        self.clip_l = comfy.sd1_clip.SDClipModel(
            layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
            textmodel_json_config=tiny_text_config(width_l), model_options={**model_options, "model_name": "clip_l"},
        )
        self.clip_g = comfy.sd1_clip.SDClipModel(
            layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
            textmodel_json_config=tiny_text_config(width_g, projection_dim=SDXL_POOLED_WIDTH, hidden_act="gelu"),
            special_tokens={"start": 49406, "end": 49407, "pad": 0}, return_projected_pooled=True,
            model_class=ProjectedCLIPTextModel,
            model_options={**model_options, "model_name": "clip_g"},
        )
        self.dtypes = set([dtype])

    def load_sd(self, sd):
        # ComfyUI tells the two apart by CLIP-G's 32nd layer; the tiny ones differ by their projection.
        projection = sd.get("text_projection.weight")
        if projection is not None and projection.shape[0] == SDXL_POOLED_WIDTH:
            return self.clip_g.load_sd(sd)
        return self.clip_l.load_sd(sd)


class TinySDXLTokenizer(comfy.sdxl_clip.SDXLTokenizer):
    """The real CLIP tokenizers; textual-inversion embeddings are expected at the tiny widths."""

    def __init__(self, embedding_directory=None, tokenizer_data={}):  # noqa: B006
        width_l, width_g = _sdxl_text_widths()
        self.clip_l = comfy.sd1_clip.SDTokenizer(
            embedding_directory=embedding_directory, tokenizer_data=tokenizer_data, embedding_size=width_l)
        self.clip_g = comfy.sd1_clip.SDTokenizer(
            pad_with_end=False, embedding_directory=embedding_directory, embedding_size=width_g,
            embedding_key="clip_g", tokenizer_data=tokenizer_data)


# ----------------------------------------------------------------------------------------------
# Tiny UNet model configs
# ----------------------------------------------------------------------------------------------


def _channel_mult(arch: str) -> list[int]:
    dims = TINY_UNET[arch]
    return [w // dims.model_channels for w in dims.block_widths]


def tiny_unet_config(arch: str) -> dict:
    """The full UNet config (what ComfyUI's detection yields) for the tiny ``sd15`` / ``sdxl`` UNet."""
    dims = TINY_UNET[arch]
    common = {
        "use_checkpoint": False,
        "image_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "use_spatial_transformer": True,
        "legacy": False,
        "model_channels": dims.model_channels,
        "channel_mult": _channel_mult(arch),
        "context_dim": dims.context_dim,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
        "dtype": torch.float32,
    }
    if arch == "sd15":
        return {
            **common,
            "adm_in_channels": None,
            "num_res_blocks": [2, 2, 2, 2],
            "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
            "transformer_depth_middle": 1,
            "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
            "use_linear_in_transformer": False,
            "num_heads": 8,
        }
    if arch == "sdxl":
        return {
            **common,
            "num_classes": "sequential",
            "adm_in_channels": 2816,  # model_base.SDXL.encode_adm always builds 1280 + 6 * 256
            "num_res_blocks": [2, 2, 2],
            "transformer_depth": [0, 0, 2, 2, 10, 10],
            "transformer_depth_middle": 10,
            "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
            "use_linear_in_transformer": True,
            "num_head_channels": 64,
        }
    raise ValueError(f"unknown arch {arch!r}: expected 'sd15' or 'sdxl'")


class TinySD15(comfy.supported_models.SD15):
    """SD1.5 topology at the tiny widths; its text encoder is tiny too (context width 64)."""

    unet_config = {
        "context_dim": TINY_UNET["sd15"].context_dim,
        "model_channels": TINY_UNET["sd15"].model_channels,
        "use_linear_in_transformer": False,
        "adm_in_channels": None,
        "use_temporal_attention": False,
    }

    def clip_target(self, state_dict={}):  # noqa: B006 (ComfyUI's signature)
        return comfy.supported_models_base.ClipTarget(TinySD15Tokenizer, TinySD15ClipModel)


class TinySDXL(comfy.supported_models.SDXL):
    """SDXL topology (70 attn2 blocks) at the tiny widths, with tiny CLIP-L + CLIP-G text encoders."""

    unet_config = {
        "model_channels": TINY_UNET["sdxl"].model_channels,
        "use_linear_in_transformer": True,
        "transformer_depth": [0, 0, 2, 2, 10, 10],
        "context_dim": TINY_UNET["sdxl"].context_dim,
        "adm_in_channels": 2816,
        "use_temporal_attention": False,
    }

    def clip_target(self, state_dict={}):  # noqa: B006 (ComfyUI's signature)
        return comfy.supported_models_base.ClipTarget(TinySDXLTokenizer, TinySDXLClipModel)


TINY_MODEL_CONFIGS = {"sd15": TinySD15, "sdxl": TinySDXL}


def register_tiny_models() -> None:
    """Put the tiny configs in front of ComfyUI's model list (idempotent), so its detection finds them."""
    models = comfy.supported_models.models
    for cls in (TinySDXL, TinySD15):
        while cls in models:
            models.remove(cls)
        models.insert(0, cls)


def model_config(arch: str):
    """A ``TinySD15`` / ``TinySDXL`` instance for the tiny UNet config, set to fp32."""
    cfg = TINY_MODEL_CONFIGS[arch](tiny_unet_config(arch))
    cfg.set_inference_dtype(torch.float32, None)
    return cfg


def build_unet(arch: str, seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """A tiny ``sd15`` / ``sdxl`` model (ComfyUI's ``BaseModel`` / ``model_base.SDXL``) on CPU, fp32, seeded."""
    cfg = model_config(arch)
    model = cfg.get_model({}, device=torch.device("cpu"))
    init_module(model.diffusion_model, seed)
    model.eval()
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def attn2_keys(model_patcher) -> list[tuple[str, int, int]]:
    """The attn2 patch keys ``(block, id, block_index)`` ComfyUI emits for this model, in execution order."""
    unet = model_patcher.get_model_object("diffusion_model") if hasattr(model_patcher, "get_model_object") else model_patcher
    keys: list[tuple[str, int, int]] = []

    def walk(block_name: str, block_id: int, block: torch.nn.Module) -> None:
        for module in block:
            if isinstance(module, SpatialTransformer):
                keys.extend((block_name, block_id, j) for j in range(len(module.transformer_blocks)))

    for i, block in enumerate(unet.input_blocks):
        walk("input", i, block)
    walk("middle", 0, unet.middle_block)
    for i, block in enumerate(unet.output_blocks):
        walk("output", i, block)
    return keys


def checkpoint_state_dict(arch: str = "sd15", seed: int = 0) -> dict[str, torch.Tensor]:
    """A full tiny checkpoint (fp32): UNet, tiny text encoder(s) and ComfyUI's TAESD as the VAE.

    Keys are laid out as in a real ``.safetensors`` of that model (``model.diffusion_model.``, the text
    encoders as ComfyUI saves them, ``first_stage_model.``), so ``CheckpointLoaderSimple`` loads it
    once ``register_tiny_models()`` has run. The VAE is TAESD (``taesd_encoder.* / taesd_decoder.*``),
    which ComfyUI's ``VAE`` detects from its keys: the same latent shape (4 channels, 8x down-scaling)
    at a fraction of the real AutoencoderKL's size.
    """
    import comfy.taesd.taesd

    cfg = model_config(arch)
    model = cfg.get_model({}, device=torch.device("meta"))
    sd = {"model.diffusion_model." + k: v for k, v in seeded_state_dict(model.diffusion_model, seed).items()}

    text_class = cfg.clip_target().clip
    text = text_class(device="meta", dtype=torch.float32)
    text_sd = seeded_state_dict(text, seed + 1)
    for key in list(text_sd):
        if key.endswith("embeddings.position_ids"):
            text_sd[key] = torch.arange(77).unsqueeze(0)
    sd.update(cfg.process_clip_state_dict_for_saving(text_sd))

    with torch.device("meta"):
        vae = comfy.taesd.taesd.TAESD()
    vae_sd = seeded_state_dict(vae, seed + 2)
    vae_sd["vae_scale"] = torch.tensor(1.0)
    vae_sd["vae_shift"] = torch.tensor(0.0)
    sd.update({"first_stage_model." + k: v for k, v in vae_sd.items()})
    return {k: v.contiguous() for k, v in sd.items() if not v.is_meta}


def build_sd_vae(seed: int = 0):
    """ComfyUI's SD VAE (the KL autoencoder, whose encoder has a Gaussian posterior), seeded, fp32, through
    ``comfy.sd.VAE``. ComfyUI fixes the encoder's widths (128 channels, x1 x2 x4 x4), so it is full size
    (84M parameters); the tiny checkpoints carry TAESD, which has no posterior."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    with torch.device("meta"):
        shapes = AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
    sd = seeded_state_dict(shapes, seed)
    return comfy.sd.VAE(sd=sd)


def sd15_checkpoint_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """``checkpoint_state_dict("sd15", seed)``: the tiny SD1.5 pipeline of ``checkpoints/tiny_sd15.safetensors``."""
    return checkpoint_state_dict("sd15", seed)


# ----------------------------------------------------------------------------------------------
# Tiny CLIP vision encoders
# ----------------------------------------------------------------------------------------------

# Files users keep under these names hold these encoders (the canonical download names).
CLIP_VISION_FILENAMES = {
    "vit-h": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
    "vit-g": "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors",
    "vit-l-336": "clip-vit-large-patch14-336.safetensors",
}


def clip_vision_config(name: str) -> dict:
    """The HF ``clip_vision_model`` config of a tiny encoder from ``harness.dims.TINY_CLIP``."""
    d: ClipVisionDims = TINY_CLIP[name]
    return {
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "hidden_act": "gelu",
        "hidden_size": d.hidden_size,
        "image_size": d.image_size,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": d.intermediate_size,
        "layer_norm_eps": 1e-05,
        "model_type": "clip_vision_model",
        "num_attention_heads": d.num_attention_heads,
        "num_channels": 3,
        "num_hidden_layers": d.num_hidden_layers,
        "patch_size": d.patch_size,
        "projection_dim": d.projection_dim,
        "torch_dtype": "float32",
    }


def clip_vision_config_path(name: str, cache_dir: Path | None = None) -> Path:
    """Write (once) the tiny encoder's JSON config and return its path (0.3.75's ClipVisionModel wants a file)."""
    text = json.dumps(clip_vision_config(name), indent=2, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    folder = Path(cache_dir) if cache_dir is not None else CONFIG_CACHE
    path = folder / f"clip_vision_{name}_{digest}.json"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # atomic: concurrent writers write the same content
    return path


def clip_vision_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The seeded fp32 state dict of a tiny encoder, in the HF layout ComfyUI loads (``vision_model.*``)."""
    config = clip_vision_config(name)
    model_class = comfy.clip_vision.IMAGE_ENCODERS[config["model_type"]]
    meta = model_class(config, torch.float32, torch.device("meta"), comfy.ops.manual_cast)
    return {k: v.contiguous() for k, v in seeded_state_dict(meta, seed).items()}


def build_clip_vision(name: str, seed: int = 0) -> comfy.clip_vision.ClipVisionModel:
    """A tiny ``ClipVisionModel`` (ComfyUI's own class, its usual device and dtype) with seeded weights."""
    clip = comfy.clip_vision.ClipVisionModel(str(clip_vision_config_path(name)))
    missing, unexpected = clip.load_sd(clip_vision_state_dict(name, seed))
    if missing or unexpected:
        raise RuntimeError(f"tiny clip vision {name}: missing {missing}, unexpected {unexpected}")
    return clip


def _tiny_clip_vision_match(sd) -> str | None:
    """The TINY_CLIP name whose widths, layer count and token count this HF-layout state dict has."""
    probe = "vision_model.encoder.layers.0.layer_norm1.weight"
    if probe not in sd or "vision_model.embeddings.position_embedding.weight" not in sd:
        return None
    hidden = sd[probe].shape[0]
    tokens = sd["vision_model.embeddings.position_embedding.weight"].shape[0]
    layers = 1 + max(
        int(k.split(".")[3]) for k in sd.keys() if k.startswith("vision_model.encoder.layers.")
    )
    projection = sd["visual_projection.weight"].shape[0] if "visual_projection.weight" in sd else None
    for name, d in TINY_CLIP.items():
        if (d.hidden_size, d.tokens, d.num_hidden_layers, d.projection_dim) == (hidden, tokens, layers, projection):
            return name
    return None


def register_tiny_clip_vision() -> None:
    """Let ``comfy.clip_vision.load`` (and so the ``CLIPVisionLoader`` node) load tiny encoder files.

    Wraps ``comfy.clip_vision.load_clipvision_from_sd``: a state dict with a tiny encoder's shapes is
    built from that tiny config; every other state dict goes to ComfyUI's original function unchanged.
    Idempotent.
    """
    current = comfy.clip_vision.load_clipvision_from_sd
    if getattr(current, "_tiny_original", None) is not None:
        return
    original = current

    def load_clipvision_from_sd(sd, prefix="", convert_keys=False):
        from harness import tiny_sd3

        name = None if convert_keys else _tiny_clip_vision_match(sd)
        siglip = name is None and not convert_keys and tiny_sd3.is_tiny_siglip(sd)
        if name is None and not siglip:
            return original(sd, prefix=prefix, convert_keys=convert_keys)
        config = tiny_sd3.siglip_config_path() if siglip else clip_vision_config_path(name)
        clip = comfy.clip_vision.ClipVisionModel(str(config))
        missing, unexpected = clip.load_sd(sd)
        if missing:
            logging.warning("missing clip vision: %s", missing)
        unexpected = set(unexpected)
        for k in list(sd.keys()):  # as ComfyUI does: leave only the keys that were not used
            if k not in unexpected:
                sd.pop(k)
        return clip

    load_clipvision_from_sd._tiny_original = original
    comfy.clip_vision.load_clipvision_from_sd = load_clipvision_from_sd


def register_all() -> None:
    """Both registrations: tiny model configs and tiny CLIP vision loading."""
    register_tiny_models()
    register_tiny_clip_vision()
