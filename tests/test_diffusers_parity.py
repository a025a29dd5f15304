"""UNet-level parity with diffusers 0.42.1, the independent oracle.

The same tiny UNet weights run twice: as ComfyUI's UNet patched by our ``apply_adapter``, and as a
diffusers ``UNet2DConditionModel`` (built with the same topology, weights moved with ComfyUI's own
``unet_to_diffusers`` key map) into which diffusers' own loader (``_load_ip_adapter_weights``) put the
same synthetic original-format IP-Adapter checkpoint. Both get the same latents, timestep, text context
and pre-projection image features, as a CFG batch (row 0 = uncond, row 1 = cond), and their noise
predictions must agree within 1e-4 (fp32). Scales use diffusers' own ``set_ip_adapter_scale`` (per-block
dicts included), masks diffusers' ``IPAdapterMaskProcessor`` and ``ip_adapter_masks``.

First the two UNets without any adapter are checked to agree within 1e-5, so a later difference is the
adapter's; every adapter case also checks the adapter moves the output by far more than the tolerance.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import parity_support as ps
from harness import adapter_factory, tiny_models
from harness.dims import TINY_CLIP, TINY_UNET
from harness.widths import TINY_WIDTHS
from ipadapter_next.ipadapter import adapter as adapter_mod
from ipadapter_next.ipadapter import apply, checkpoint, layers

ATOL = 1e-4  # adapter cases, fp32
BASE_ATOL = 1e-5  # the two UNets without adapter
MIN_EFFECT = 100 * ATOL  # every adapter case must move the noise prediction by at least this much
LATENT_HW = (8, 12)  # grids 8x12, 4x6, 2x3, 1x2: diffusers' mask downsampling recovers each exactly
TEXT_TOKENS = 7
VIT_H = TINY_CLIP["vit-h"]

# family -> (arch, shape of one image's pre-projection features)
FAMILIES = {
    "ip-adapter_sd15": ("sd15", (VIT_H.projection_dim,)),
    "ip-adapter-plus_sd15": ("sd15", (VIT_H.tokens, VIT_H.hidden_size)),
    "ip-adapter-full-face_sd15": ("sd15", (VIT_H.tokens, VIT_H.hidden_size)),
    "ip-adapter_sdxl_vit-h": ("sdxl", (VIT_H.projection_dim,)),
    "ip-adapter-plus_sdxl_vit-h": ("sdxl", (VIT_H.tokens, VIT_H.hidden_size)),
}
SD15_FAMILIES = [f for f, (a, _) in FAMILIES.items() if a == "sd15"]
SDXL_FAMILIES = [f for f, (a, _) in FAMILIES.items() if a == "sdxl"]

# Per-block cases: a diffusers set_ip_adapter_scale dict, and the same thing written by hand as our
# layer_weights keyed by ComfyUI transformer_index (execution order: input, middle, output).
# SD1.5: input 1,2,4,5,7,8 -> t 0-5, middle -> 6, output 3-11 -> t 7-15.
# SDXL:  input 4,5,7,8 -> t 0-3, middle -> 4, output 0-5 -> t 5-10.
PER_BLOCK = {
    "sd15": {
        # InstantStyle's SD1.5 style block (up_blocks.1), middle attention only = output 4.
        "style": ({"up": {"block_1": [0.0, 1.0, 0.0]}}, {8: 1.0}),
        "mixed": (
            {"down": {"block_0": [0.5, 0.0], "block_2": 1.0}, "mid": 0.8,
             "up": {"block_1": [0.0, 1.0, 0.3], "block_3": 0.6}},
            {0: 0.5, 4: 1.0, 5: 1.0, 6: 0.8, 8: 1.0, 9: 0.3, 13: 0.6, 14: 0.6, 15: 0.6},
        ),
    },
    "sdxl": {
        # InstantStyle's SDXL style block: up_blocks.0.attentions.1 = output 1.
        "style": ({"up": {"block_0": [0.0, 1.0, 0.0]}}, {6: 1.0}),
        "mixed": (
            {"down": {"block_2": [0.0, 0.7]}, "mid": 0.4, "up": {"block_0": [0.0, 1.0, 0.0], "block_1": 0.25}},
            {3: 0.7, 4: 0.4, 6: 1.0, 8: 0.25, 9: 0.25, 10: 0.25},
        ),
    },
}
# Single transformer blocks inside an SDXL SpatialTransformer: diffusers processor -> scale, and our
# (transformer_index, block_index) key. Applied on top of the "mixed" dict.
SDXL_BLOCK_OVERRIDES = {
    "mid_block.attentions.0.transformer_blocks.3.attn2.processor": ((4, 3), 0.0),
    "up_blocks.0.attentions.1.transformer_blocks.7.attn2.processor": ((6, 7), 0.6),
    "down_blocks.1.attentions.0.transformer_blocks.1.attn2.processor": ((0, 1), 0.9),
}
MIXED_WEIGHT = 0.5  # the mixed cases also scale everything by the node weight


# ------------------------------------------------------------------------------------------------
# Fixtures: one UNet pair per architecture, one adapter pair per family (module scope)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The tiny UNets are latency-bound; a single intra-op thread is faster and steadier on a busy box.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class UNetPair:
    def __init__(self, arch: str):
        self.arch = arch
        self.patcher = tiny_models.build_unet(arch, seed=0)
        self.comfy_unet = self.patcher.model.diffusion_model
        self.diffusers = ps.build_diffusers_unet(self.comfy_unet, arch)
        gen = torch.Generator().manual_seed(1234)
        ctx = TINY_UNET[arch].context_dim
        self.x = torch.randn(2, 4, *LATENT_HW, generator=gen)
        self.t = torch.tensor([621.0, 621.0])
        self.context = torch.randn(2, TEXT_TOKENS, ctx, generator=gen)
        self.added, self.y = {}, None
        if arch == "sdxl":
            text_embeds = torch.randn(2, 1280, generator=gen)
            h, w = LATENT_HW[0] * 8, LATENT_HW[1] * 8
            time_ids = torch.tensor([[h, w, 0, 0, h, w]] * 2, dtype=torch.float32)
            self.added = {"text_embeds": text_embeds, "time_ids": time_ids}
            with torch.no_grad():  # exactly the vector diffusers' add_embedding receives
                time_embeds = self.diffusers.add_time_proj(time_ids.flatten()).reshape(2, -1)
            self.y = torch.cat([text_embeds, time_embeds], dim=-1)
        self.comfy_base = self.comfy(self.patcher)
        self.diffusers_base = ps.diffusers_forward(self.diffusers, self.x, self.t, self.context, self.added)

    def comfy(self, patcher) -> torch.Tensor:
        return ps.comfy_forward(patcher, self.x, self.t, self.context, self.y, cond_or_uncond=(1, 0))

    def reference(self, unet, image_embeds, masks=None) -> torch.Tensor:
        return ps.diffusers_forward(unet, self.x, self.t, self.context, self.added, image_embeds, masks)


_pairs: dict[str, UNetPair] = {}


@pytest.fixture(scope="module")
def pairs():
    yield _pairs
    _pairs.clear()


def _pair(pairs, arch) -> UNetPair:
    if arch not in pairs:
        pairs[arch] = UNetPair(arch)
    return pairs[arch]


class AdapterPair:
    def __init__(self, family: str, pair: UNetPair, tmp_dir):
        arch, feat_shape = FAMILIES[family]
        sd = adapter_factory.adapter_state_dict(family, scale="tiny", seed=3)
        # Ours: the file on disk, read and detected by the library.
        path = adapter_factory.write_checkpoint(family, tmp_dir / f"{family}.safetensors", scale="tiny", seed=3)
        sections = checkpoint.read_checkpoint(path)
        for section in ("image_proj", "ip_adapter"):
            assert set(sections[section]) == set(sd[section])
        self.spec = checkpoint.detect(sections, source=path.name, widths=TINY_WIDTHS)
        assert self.spec.family == family and self.spec.arch == arch
        self.ours = adapter_mod.build_adapter(sections, self.spec, source=path.name, dtype=torch.float32)
        # diffusers: the same tensors through its own UNet loader.
        self.diffusers = ps.load_ip_adapter_into(pair.diffusers, sd)
        gen = torch.Generator().manual_seed(99)
        self.cond = torch.randn(1, *feat_shape, generator=gen)
        self.uncond = torch.randn(1, *feat_shape, generator=gen)
        # diffusers: one tensor per adapter, [B, num_images, ...], CFG rows [uncond, cond].
        self.image_embeds = [torch.stack([self.uncond[0], self.cond[0]])[:, None]]
        self.embeds = apply.Embeds(cond=self.cond, uncond=self.uncond)


_adapters: dict[str, AdapterPair] = {}


@pytest.fixture(scope="module")
def adapters(pairs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parity_ckpts")

    def get(family):
        if family not in _adapters:
            _adapters[family] = AdapterPair(family, _pair(pairs, FAMILIES[family][0]), tmp)
        return _adapters[family]

    yield get
    _adapters.clear()


def _check(ours: torch.Tensor, ref: torch.Tensor, base: torch.Tensor, label: str) -> tuple[float, float]:
    diff = (ours - ref).abs().max().item()
    effect = (ref - base).abs().max().item()
    print(f"{label}: max|ours - diffusers| = {diff:.3e}, adapter effect {effect:.3e}")
    assert torch.isfinite(ours).all()
    assert effect > MIN_EFFECT, f"{label}: the adapter barely changes the output ({effect:.2e}); the test could not fail"
    assert diff <= ATOL, f"{label}: max |ours - diffusers| = {diff:.3e} > {ATOL} (adapter effect {effect:.3e})"
    return diff, effect


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_unets_without_adapter_agree(pairs, arch):
    pair = _pair(pairs, arch)
    diff = (pair.comfy_base - pair.diffusers_base).abs().max().item()
    print(f"{arch} base: max|comfy - diffusers| = {diff:.3e}")
    assert pair.comfy_base.abs().max() > 0.1
    assert diff <= BASE_ATOL


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_per_block_maps_match_diffusers_names(pairs, arch):
    """Our hand-written transformer_index maps are what diffusers' dicts select (via ComfyUI's key map)."""
    pair = _pair(pairs, arch)
    family = SD15_FAMILIES[0] if arch == "sd15" else SDXL_FAMILIES[0]
    sd = adapter_factory.adapter_state_dict(family, seed=3)
    unet = ps.load_ip_adapter_into(pair.diffusers, sd)
    depth = {s.key[:2]: 0 for s in layers.layer_map(arch)}
    for s in layers.layer_map(arch):
        depth[s.key[:2]] += 1
    for name, (dict_scale, by_t) in PER_BLOCK[arch].items():
        ps.set_scale(unet, dict_scale)
        derived = ps.diffusers_scales_as_layer_weights(unet, pair.comfy_unet, arch)
        expected = {}
        t_of = ps.transformer_indices(pair.comfy_unet)
        for block, t in t_of.items():
            for b in range(depth[block]):
                expected[(t, b)] = by_t.get(t, 0.0)
        assert derived == expected, name
    # Every diffusers IP processor has its own ComfyUI site, and the checkpoint N agrees with ours.
    blocks = ps.comfy_block_of(arch)
    t_of = ps.transformer_indices(pair.comfy_unet)
    site_of = {(s.transformer_index, s.key[2]): s for s in layers.layer_map(arch)}
    n = 0  # position in attn_processors order = the checkpoint N
    seen = set()
    for proc_name in unet.attn_processors:
        m = ps.ATTN2_PROCESSOR.match(proc_name)
        if m:
            key = (t_of[blocks[m.group(1)]], int(m.group(2)))
            assert site_of[key].ckpt_index == n, proc_name
            seen.add(key)
        n += 1
    assert seen == set(site_of)


def _ours(pair: UNetPair, ad: AdapterPair, **kwargs) -> torch.Tensor:
    patched = apply.apply_adapter(pair.patcher, ad.ours, ad.embeds, **kwargs)
    return pair.comfy(patched)


@pytest.mark.parametrize("weight", [1.0, 0.37])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_weight(pairs, adapters, family, weight):
    ad = adapters(family)
    pair = _pair(pairs, FAMILIES[family][0])
    ps.set_scale(ad.diffusers, weight)
    ref = pair.reference(ad.diffusers, ad.image_embeds)
    ours = _ours(pair, ad, weight=weight)
    _check(ours, ref, pair.comfy_base, f"{family} weight {weight}")


@pytest.mark.parametrize("case", ["style", "mixed"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_per_block(pairs, adapters, family, case):
    arch = FAMILIES[family][0]
    ad = adapters(family)
    pair = _pair(pairs, arch)
    dict_scale, by_t = PER_BLOCK[arch][case]
    weight = MIXED_WEIGHT if case == "mixed" else 1.0
    ps.set_scale(ad.diffusers, dict_scale)
    layer_weights = dict(by_t)
    if case == "mixed" and arch == "sdxl":
        procs = ad.diffusers.attn_processors
        for proc_name, (key, value) in SDXL_BLOCK_OVERRIDES.items():
            procs[proc_name].scale = [value]
            layer_weights[key] = value
    if weight != 1.0:
        for proc in ad.diffusers.attn_processors.values():
            if hasattr(proc, "scale"):
                proc.scale = [s * weight for s in proc.scale]
    ref = pair.reference(ad.diffusers, ad.image_embeds)
    ours = _ours(pair, ad, weight=weight, layer_weights=layer_weights)
    _check(ours, ref, pair.comfy_base, f"{family} per-block {case}")


def _disc_mask() -> torch.Tensor:
    """A binary disc at 8x the latent size (aspect ratio of the latent), edges off every token grid."""
    h, w = LATENT_HW[0] * 8, LATENT_HW[1] * 8
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return (((yy - 0.45 * h) ** 2 + (xx - 0.6 * w) ** 2) < (0.33 * h) ** 2).float()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_mask(pairs, adapters, family):
    ad = adapters(family)
    pair = _pair(pairs, FAMILIES[family][0])
    mask = ps.diffusers_mask(_disc_mask())  # [1, 1, H, W], binarized by diffusers' processor
    ps.set_scale(ad.diffusers, 1.0)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*aspect ratio of the mask.*")  # grids must be exact
        ref = pair.reference(ad.diffusers, ad.image_embeds, masks=[mask])
    unmasked = pair.reference(ad.diffusers, ad.image_embeds)
    ours = _ours(pair, ad, weight=1.0, attn_mask=mask[0], mask_interpolation="bicubic")
    _check(ours, ref, pair.comfy_base, f"{family} mask")
    masked_effect = (ref - unmasked).abs().max().item()
    assert masked_effect > MIN_EFFECT, "the mask changes nothing: the case could not fail"
