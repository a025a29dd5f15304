"""Training step: this pack's trainer against the reference recipe's step, on the same shapes and weights.

Reference = the diffusers UNet2DConditionModel with the reference's attention processors
(diffusers' IPAdapterAttnProcessor2_0, to_k_ip / to_v_ip initialised from to_k / to_v, the image tokens
concatenated after the text as the reference's IPAdapter module does), projection + IP layers trained by
AdamW, UNet frozen. Ours = IPAdapter Train's step on ComfyUI's UNet. Both UNets hold the same weights
(ComfyUI's key map), get the same random inputs, and run interleaved; the ratio is the median of per-round
ratios, so drift on a shared machine hits both alike. Peak memory: CUDA max allocated per variant, or on
CPU the bytes autograd saves for one backward pass.

    .venv/bin/python dev/benchmark_training.py --arch sd15 --family plus --scale tiny --latent 32 --batch 2
    .venv/bin/python dev/benchmark_training.py --arch sdxl --scale full --latent 128 --batch 1   (GPU)
    .venv/bin/python dev/benchmark_training.py --scale full --latent 64 --batch 1 --rounds 3 --encoders

``--encoders``: the reference script encodes its batch inside every step (VAE encode and sample, CLIP
vision, text encoder, all under no_grad), so its step also runs those frozen encoders (diffusers'
AutoencoderKL and transformers' CLIP models in the released architectures, random weights); this trainer
encodes a sample once and reuses it (``TrainSettings.cache_encodings``, on in the node), so its step on a
sample it has seen is the UNet step. The ratio then compares the two recipes' steps after the first epoch.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

from harness import runtime

runtime.boot(Path(tempfile.mkdtemp(prefix="ipadapter-train-bench-")))
runtime.init_nodes(load_pack=True)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0  # noqa: E402

import comfy.model_management as mm  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.supported_models  # noqa: E402
import comfy.utils  # noqa: E402

from harness import dims, tiny_models  # noqa: E402
from ipadapter_next.ipadapter.training import bench, recipe, trainer  # noqa: E402
from ipadapter_next.ipadapter.training.adapter import FusedIPLayers, TrainableAdapter, text_kv_weights  # noqa: E402

CONFIG_CLASS = {"sd15": comfy.supported_models.SD15, "sdxl": comfy.supported_models.SDXL}
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4)
TINY_VAE = dict(block_out_channels=(16, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4, norm_num_groups=8)
# (hidden, intermediate, layers, heads, projection) of the text encoders: CLIP ViT-L, OpenCLIP bigG
TEXT = {"full": {"l": (768, 3072, 12, 12, 768), "g": (1280, 5120, 32, 20, 1280)},
        "tiny": {"l": (64, 128, 2, 2, 64), "g": (64, 128, 2, 2, 64)}}


def reference_encoders(arch: str, scale: str, family_output: str, batch: int, resolution: int, dtype):
    """The reference step's encoding of one batch (frozen, no_grad), on the same device and dtype."""
    from diffusers import AutoencoderKL
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    dev = mm.get_torch_device()
    vae = AutoencoderKL(**(SD_VAE if scale == "full" else TINY_VAE))
    vae.decoder = None  # only encode runs
    enc = ENCODER[scale]
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=enc.hidden_size, intermediate_size=enc.intermediate_size, num_hidden_layers=enc.num_hidden_layers,
        num_attention_heads=enc.num_attention_heads, image_size=enc.image_size, patch_size=enc.patch_size,
        projection_dim=enc.projection_dim, hidden_act="gelu"))
    texts = []
    for name in ("l", "g") if arch == "sdxl" else ("l",):
        hidden, inter, layers, heads, proj = TEXT[scale][name]
        cfg = CLIPTextConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                             num_attention_heads=heads, projection_dim=proj, hidden_act="gelu")
        texts.append((CLIPTextModelWithProjection if name == "g" else CLIPTextModel)(cfg))
    models = [m.to(dev, dtype).eval().requires_grad_(False) for m in (vae, vision, *texts)]
    g = torch.Generator().manual_seed(1)
    pixels = (torch.rand(batch, 3, resolution, resolution, generator=g) * 2 - 1).to(dev, dtype)
    clip_pixels = torch.randn(batch, 3, enc.image_size, enc.image_size, generator=g).to(dev, dtype)
    ids = torch.randint(0, 49408, (batch, 77), generator=g).to(dev)

    def encode() -> None:
        with torch.no_grad():
            models[0].encode(pixels).latent_dist.sample()
            out = models[1](clip_pixels, output_hidden_states=family_output != "image_embeds")
            _ = out.image_embeds if family_output == "image_embeds" else out.hidden_states[-2]
            for text in models[2:]:
                text(ids, output_hidden_states=True)
    return encode
ENCODER = {"tiny": dims.TINY_CLIP["vit-h"], "full": dims.FULL_CLIP["vit-h"]}


def unet_config(arch: str, scale: str, dtype) -> dict:
    d = (dims.TINY_UNET if scale == "tiny" else dims.FULL_UNET)[arch]
    return {**tiny_models.tiny_unet_config(arch), "model_channels": d.model_channels, "context_dim": d.context_dim,
            "channel_mult": [w // d.model_channels for w in d.block_widths], "dtype": dtype}


def comfy_model(arch: str, scale: str, dtype):
    cfg = CONFIG_CLASS[arch](unet_config(arch, scale, dtype))
    cfg.set_inference_dtype(dtype, None)
    dev = mm.get_torch_device()
    model = cfg.get_model({}, device=dev)
    tiny_models.init_module(model.diffusion_model, 0)
    return comfy.model_patcher.ModelPatcher(model.eval(), load_device=dev, offload_device=mm.unet_offload_device())


def diffusers_kwargs(arch: str, scale: str) -> dict:
    d = (dims.TINY_UNET if scale == "tiny" else dims.FULL_UNET)[arch]
    if arch == "sd15":
        return dict(sample_size=64, block_out_channels=d.block_widths, layers_per_block=2,
                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=d.context_dim,
                    attention_head_dim=8, use_linear_projection=False)
    return dict(sample_size=128, block_out_channels=d.block_widths, layers_per_block=2,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2, 10), cross_attention_dim=d.context_dim,
                attention_head_dim=tuple(max(1, w // 64) for w in d.block_widths), use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816)


def reference_unet(patcher, arch: str, scale: str, tokens: int, dtype) -> UNet2DConditionModel:
    """The diffusers UNet with the ComfyUI UNet's weights and the reference's IP processors."""
    unet = UNet2DConditionModel(**diffusers_kwargs(arch, scale))
    mapping = comfy.utils.unet_to_diffusers(unet_config(arch, scale, dtype))
    ldm = patcher.model.diffusion_model.state_dict()
    own = unet.state_dict()
    unet.load_state_dict({k: ldm[v] for k, v in mapping.items() if k in own and v in ldm}, strict=True)
    unet.requires_grad_(False)
    processors = {}
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            processors[name] = AttnProcessor2_0()
            continue
        attn = unet.get_submodule(name[: -len(".processor")])
        proc = IPAdapterAttnProcessor2_0(attn.to_k.out_features, attn.to_k.in_features, num_tokens=(tokens,), scale=1.0)
        with torch.no_grad():  # the reference's initialisation: copies of the text K/V weights
            proc.to_k_ip[0].weight.copy_(attn.to_k.weight)
            proc.to_v_ip[0].weight.copy_(attn.to_v.weight)
        processors[name] = proc
    unet.set_attn_processor(processors)
    return unet.to(mm.get_torch_device(), dtype)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="sd15", choices=["sd15", "sdxl"])
    p.add_argument("--family", default="plus", choices=["basic", "plus"])
    p.add_argument("--scale", default="tiny", choices=["tiny", "full"])
    p.add_argument("--latent", type=int, default=32, help="latent side (resolution / 8)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--encoders", action="store_true",
                   help="the reference step also encodes its batch, as the reference script does every step")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    dev = mm.get_torch_device()
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    patcher = comfy_model(args.arch, args.scale, dtype)
    fam = recipe.train_family(args.family)
    enc = ENCODER[args.scale]
    width = enc.projection_dim if fam.encoder_output == "image_embeds" else enc.hidden_size
    features = (width,) if fam.encoder_output == "image_embeds" else (enc.tokens, width)
    context = (dims.TINY_UNET if args.scale == "tiny" else dims.FULL_UNET)[args.arch].context_dim
    size = recipe.ResamplerSize(dim=64, heads=2) if args.scale == "tiny" and args.arch == "sdxl" else recipe.ResamplerSize(
        heads=2 if args.scale == "tiny" else None)

    def projection():
        torch.manual_seed(0)
        return recipe.new_projection(fam, args.arch, context, width, size).to(dev)

    # ours
    unet = patcher.model.diffusion_model
    adapter = TrainableAdapter(projection(), FusedIPLayers.from_pairs(text_kv_weights(unet, args.arch)))
    settings = trainer.TrainSettings(steps=1, batch_size=args.batch, resolution=args.latent * 8)
    ours = trainer.Trainer(patcher, None, None, None, adapter, fam.encoder_output, settings)
    inputs = bench.random_inputs(ours, args.batch, args.latent * 8, features)
    ours_step = bench.trainer_step(ours, inputs)

    # reference
    ref_unet = reference_unet(patcher, args.arch, args.scale, fam.tokens, dtype)
    ref_proj = projection()
    ip_params = [p for proc in ref_unet.attn_processors.values() if isinstance(proc, IPAdapterAttnProcessor2_0)
                 for p in proc.parameters()]
    ref_opt = torch.optim.AdamW(list(ref_proj.parameters()) + ip_params, lr=1e-4, weight_decay=1e-2)
    x0, feats, ctx, y = (t.to(dev) if t is not None else None for t in inputs)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=g).to(dev)
    timesteps = torch.randint(0, 1000, (args.batch,), generator=g).to(dev)
    added = None
    if args.arch == "sdxl":
        added = {"text_embeds": y[:, :1280].to(dtype),
                 "time_ids": torch.tensor([[args.latent * 8] * 2 + [0, 0] + [args.latent * 8] * 2] * args.batch,
                                          device=dev, dtype=dtype)}

    def ref_step() -> None:
        with torch.autocast(dev.type, dtype=dtype, enabled=dev.type == "cuda"):
            tokens = ref_proj(feats)
            hidden = torch.cat([ctx.to(dtype), tokens.to(dtype)], dim=1)
            pred = ref_unet((x0 + noise).to(dtype), timesteps, hidden, added_cond_kwargs=added).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)

    encode = (reference_encoders(args.arch, args.scale, fam.encoder_output, args.batch, args.latent * 8, dtype)
              if args.encoders else None)

    def reference_step() -> None:
        if encode is not None:
            encode()
        ref_step()

    with ours.session():
        results = {}
        for name, step in (("ours", ours_step), ("reference", reference_step)):
            results[name] = bench.measure(step, 2, dev, warmup=1)
        ratios = []
        for _ in range(args.rounds):
            times = {}
            for name, step in (("ours", ours_step), ("reference", reference_step)):
                start = time.perf_counter()
                step()
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times[name] = time.perf_counter() - start
            ratios.append(times["ours"] / times["reference"])
            results.setdefault("t_ours", []).append(times["ours"])
            results.setdefault("t_ref", []).append(times["reference"])
    print(f"{args.arch} {args.family} {args.scale} latent {args.latent} batch {args.batch} on {dev} ({dtype}), "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds"
          + (", reference step includes its per-step encoding" if args.encoders else ""))
    print(f"  ours      median {statistics.median(results['t_ours']) * 1000:8.1f} ms  peak {results['ours'].peak_bytes / 2**20:8.1f} MiB ({results['ours'].peak_kind})")
    print(f"  reference median {statistics.median(results['t_ref']) * 1000:8.1f} ms  peak {results['reference'].peak_bytes / 2**20:8.1f} MiB")
    print(f"  time ratio ours/reference: median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}); "
          f"memory ratio {results['ours'].peak_bytes / max(results['reference'].peak_bytes, 1):.2f}")


if __name__ == "__main__":
    main()
