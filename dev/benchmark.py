"""Benchmark: UNet step overhead of adapters, apply latency, checkpoint load time.

Full-size SD1.5 / SDXL UNet shapes with random weights, built through ComfyUI's own model classes;
full-size synthetic adapters from the fixture factory. Variants are timed interleaved in one run, and
overheads are medians of per-round ratios, so drift on a shared machine affects both sides alike.

    .venv/bin/python dev/benchmark.py [--arch sd15 sdxl] [--latent 32] [--rounds 12] [--curve]

``--curve`` measures only what a weight curve adds per UNet call (``bench_curve``).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from harness import runtime

runtime.boot(Path(tempfile.mkdtemp(prefix="ipadapter-bench-")))
runtime.init_nodes(load_pack=True)

import safetensors.torch  # noqa: E402
import torch  # noqa: E402

import comfy.model_management as mm  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.supported_models  # noqa: E402

from harness import adapter_factory, dims, tiny_models  # noqa: E402
from ipadapter_next.ipadapter import adapter as adapter_mod  # noqa: E402
from ipadapter_next.ipadapter import apply, attention, checkpoint, curves, weights  # noqa: E402
from ipadapter_next.ipadapter.layers import layer_map  # noqa: E402

FAMILIES = {
    "sd15": {"basic": "ip-adapter_sd15", "plus": "ip-adapter-plus_sd15", "full-face": "ip-adapter-full-face_sd15"},
    "sdxl": {"basic": "ip-adapter_sdxl_vit-h", "plus": "ip-adapter-plus_sdxl_vit-h"},
}
CONFIG_CLASS = {"sd15": comfy.supported_models.SD15, "sdxl": comfy.supported_models.SDXL}


def full_unet(arch: str, dtype: torch.dtype):
    full = dims.FULL_UNET[arch]
    cfg = {**tiny_models.tiny_unet_config(arch), "model_channels": full.model_channels,
           "context_dim": full.context_dim, "dtype": dtype}
    config = CONFIG_CLASS[arch](cfg)
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=mm.get_torch_device())
    g = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * 0.02).to(p.dtype))
    model.eval()
    dev = mm.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=dev, offload_device=mm.unet_offload_device())


def full_adapter(family: str, dtype: torch.dtype) -> adapter_mod.Adapter:
    sections = adapter_factory.adapter_state_dict(family, scale="full", seed=0)
    spec = checkpoint.detect(sections, source=f"{family}.safetensors")
    return adapter_mod.build_adapter(sections, spec, f"{family}.safetensors", dtype=dtype)


def features(ad: adapter_mod.Adapter, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    enc = ad.spec.encoder
    shape = (1, enc.width) if enc.output == "image_embeds" else (1, (enc.image_size // 14) ** 2 + 1, enc.width)
    return torch.randn(shape, generator=g)


def embeds(ad, seed):
    return apply.Embeds(features(ad, seed), features(ad, seed + 1))


def unet_step(model, x, t, ctx, y):
    """One UNet evaluation as sampling makes it: uncond + cond batched, patches from model_options."""
    to = dict(model.model_options["transformer_options"])
    to.update(cond_or_uncond=[1, 0], sigmas=t)
    with torch.no_grad():
        out = model.model.apply_model(x, t, c_crossattn=ctx, transformer_options=to, y=y)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return out


def bench_steps(arch: str, latent: int, rounds: int, dtype: torch.dtype) -> None:
    dev = mm.get_torch_device()
    base = full_unet(arch, dtype)
    context = dims.FULL_UNET[arch].context_dim
    x = torch.randn(2, 4, latent, latent, device=dev, dtype=dtype)
    t = torch.tensor([5.0, 5.0], device=dev)
    ctx = torch.randn(2, 77, context, device=dev, dtype=dtype)
    y = torch.randn(2, 2816, device=dev, dtype=dtype) if arch == "sdxl" else None
    adapters = {name: full_adapter(fam, dtype) for name, fam in FAMILIES[arch].items()}
    variants = {"no adapter": base}
    for name, ad in adapters.items():
        variants[f"1x {name}"] = apply.apply_adapter(base, ad, embeds(ad, 1))
    stacked = base
    for i in range(4):
        stacked = apply.apply_adapter(stacked, adapters["plus"], embeds(adapters["plus"], 10 + i))
    variants["4x plus"] = stacked
    mm.load_models_gpu([base] + adapter_mod_patchers(adapters))
    for m in variants.values():  # warm up: first calls compute and cache each layer's K/V
        unet_step(m, x, t, ctx, y)
    times = {name: [] for name in variants}
    order = list(variants.items())
    for r in range(rounds):
        for name, m in (order if r % 2 == 0 else order[::-1]):  # alternate the order: no position bias
            start = time.perf_counter()
            unet_step(m, x, t, ctx, y)
            times[name].append(time.perf_counter() - start)
    base_t = times["no adapter"]
    replay = patch_overhead(variants, x, t, ctx, y)
    print(f"\n[{arch}] UNet step, latent {latent}x{latent}, batch 2 (uncond+cond), {dtype}, {rounds} interleaved rounds, {dev}")
    print(f"  {'variant':<14} {'median step':>12} {'overhead (median of per-round ratios)':>40}")
    for name, ts in times.items():
        ratio = statistics.median(a / b for a, b in zip(ts, base_t)) - 1
        extra = replay.get(name)
        extra_s = f"   in-patch time {extra * 1000:6.1f} ms/step = {extra / statistics.median(base_t) * 100:.2f}%" if extra is not None else ""
        print(f"  {name:<14} {statistics.median(ts) * 1000:>10.1f}ms {ratio * 100:>+39.2f}%{extra_s}")
    bench_apply(arch, base, adapters["plus"])


def bench_curve(arch: str, dtype: torch.dtype, repeats: int = 200) -> None:
    """What a weight curve adds per UNet call, measured where it acts (no UNet step, whose noise on a shared
    machine is far larger): one curve lookup, plus at every layer the rescale of the cached K/V by the
    multiplier (``kv_at`` at m != 1 against m == 1, interleaved), for a full-size Plus adapter."""
    dev = mm.get_torch_device()
    ad = full_adapter(FAMILIES[arch]["plus"], dtype)
    host = tiny_models.build_unet(arch)  # make_entry reads only the compute dtype and the sampling schedule
    fade = curves.make_curve("fade out", "ease")
    mm.load_models_gpu([ad.patcher])
    print(f"\n[{arch}] weight curve cost per UNet call, full-size Plus adapter, batch 2 (uncond+cond), {dtype}, {dev}")
    for scaling in ("V only", "K+mean(V) w/ C penalty"):
        entry = apply.make_entry(host, ad, embeds(ad, 1), weights.resolve_layer_weights(arch), weight_curve=fade,
                                 embeds_scaling=scaling)
        total = 0.0
        for site in layer_map(arch):
            width = ad.layer_widths[site.ckpt_index]
            q = torch.empty(2, 1, width, device=dev, dtype=dtype if dev.type != "cpu" else torch.float32)
            entry.kv_at(site, q, (1, 0), None, 0.5)  # warm the caches
            with_m, without = [], []
            for _ in range(repeats):
                for m, acc in ((0.5, with_m), (1.0, without)):
                    start = time.perf_counter()
                    entry.kv_at(site, q, (1, 0), None, m)
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    acc.append(time.perf_counter() - start)
            total += statistics.median(with_m) - statistics.median(without)
        lookups = []
        for i in range(repeats * 10):
            sigma = 5.0 * (1 + 1e-6 * (i + 1))  # a new sigma each time: no cached answer
            start = time.perf_counter()
            entry.curve.at(sigma)
            lookups.append(time.perf_counter() - start)
        lookup = statistics.median(lookups)
        print(f"  {scaling}: K/V rescale at {len(layer_map(arch))} layers {total * 1e3:.3f} ms, curve lookup "
              f"{lookup * 1e6:.1f} us: {(total + lookup) * 1e3:.3f} ms per UNet call")


def patch_overhead(variants, x, t, ctx, y, repeats: int = 20) -> dict[str, float]:
    """Time the image branch directly: record every attn2 call of one real UNet step, then replay each
    call with the variant's patch and with a patch that has no adapter entries (same inner attention),
    interleaved; the per-step sum of differences is the time the adapters add. Much less noisy than
    whole-step ratios, whose round-to-round spread on a shared CPU exceeds the effect."""
    out = {}
    for name, model in variants.items():
        patches = attention.attn2_patches(model)
        if not patches:
            continue
        calls = []
        original = attention.IPAttention.__call__

        def record(self, q, k, v, extra_options):
            calls.append((self, q, k, v, dict(extra_options)))
            return original(self, q, k, v, extra_options)

        attention.IPAttention.__call__ = record
        try:
            unet_step(model, x, t, ctx, y)
        finally:
            attention.IPAttention.__call__ = original
        added = 0.0
        for patch, q, k, v, opts in calls:
            bare = attention.IPAttention(patch.site, (), patch.inner)
            with_t, bare_t = [], []
            for _ in range(repeats):
                for fn, acc in ((patch, with_t), (bare, bare_t)):
                    start = time.perf_counter()
                    fn(q, k, v, opts)
                    if q.device.type == "cuda":
                        torch.cuda.synchronize()
                    acc.append(time.perf_counter() - start)
            added += statistics.median(with_t) - statistics.median(bare_t)
        out[name] = added
    return out


def adapter_mod_patchers(adapters):
    return [ad.patcher for ad in adapters.values()]


def bench_apply(arch, base, ad, repeats: int = 5) -> None:
    """Latency of each of four stacked applies beyond the CLIP encoding (features are precomputed).

    Each apply gets a new reference; the negative is one tensor for all, as the default black-image
    negative is (encode.negative_embeds encodes it once per encoder)."""
    per_position = [[] for _ in range(4)]
    negative = features(ad, 999)
    for r in range(repeats):
        model = base
        for i in range(4):
            e = apply.Embeds(features(ad, 100 * r + i), negative)
            start = time.perf_counter()
            model = apply.apply_adapter(model, ad, e)
            per_position[i].append(time.perf_counter() - start)
    meds = ", ".join(f"{statistics.median(p) * 1000:.1f} ms" for p in per_position)
    print(f"  apply latency beyond CLIP encoding, 4 stacked Plus applies (median of {repeats}): {meds}")


def bench_load(rounds: int = 7) -> None:
    """load_adapter (read + detect + build, cache cleared) against a plain safetensors read of the same file."""
    print("\n[load] full-size checkpoints in fp16, as released; page cache warm for both")
    for family in ("ip-adapter-plus_sd15", "ip-adapter_sdxl"):
        sections = adapter_factory.adapter_state_dict(family, scale="full", seed=0)
        flat = {f"{s}.{k}": v.half().contiguous() for s, sd in sections.items() for k, v in sd.items()}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{family}.safetensors"
            safetensors.torch.save_file(flat, str(path))
            plain, ours = [], []
            for _ in range(rounds):
                start = time.perf_counter()
                safetensors.torch.load_file(str(path))
                plain.append(time.perf_counter() - start)
                adapter_mod._cache.clear()
                start = time.perf_counter()
                adapter_mod.load_adapter(path)
                ours.append(time.perf_counter() - start)
            size = path.stat().st_size / 2**20
            ratio = statistics.median(a / b for a, b in zip(ours, plain))
            # Modules are assembled from the file's tensors on first use: time that separately.
            first = []
            for _ in range(rounds):
                adapter_mod._cache.clear()
                ad = adapter_mod.load_adapter(path)
                start = time.perf_counter()
                ad.model
                first.append(time.perf_counter() - start)
            print(f"  {family} ({size:.0f} MiB): plain read {statistics.median(plain) * 1000:.1f} ms, "
                  f"load_adapter {statistics.median(ours) * 1000:.1f} ms, ratio {ratio:.2f}x; "
                  f"assembling its modules on first use {statistics.median(first) * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["sd15", "sdxl"], choices=["sd15", "sdxl"])
    parser.add_argument("--latent", type=int, default=32, help="latent side (32 = 256 px; 64 = 512 px)")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--fp16", action="store_true", help="UNet and adapters in fp16 (GPU)")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--curve", action="store_true", help="only what a weight curve adds per UNet call")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(f"runtime: {runtime.boot(None).describe()}; torch {torch.__version__}; device {mm.get_torch_device()}; "
          f"threads {torch.get_num_threads()}")
    dtype = torch.float16 if args.fp16 else torch.float32
    for arch in args.arch:
        if args.curve:
            bench_curve(arch, dtype)
            continue
        bench_steps(arch, args.latent, args.rounds, dtype)
    if not args.skip_load:
        bench_load()


if __name__ == "__main__":
    main()
