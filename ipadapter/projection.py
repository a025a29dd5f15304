"""IP-Adapter projection models: image (or face) embeddings -> extra cross-attention tokens.

Every module here is a plain ``torch.nn.Module`` whose ``state_dict()`` keys are exactly those of the
``image_proj`` section of the released checkpoints, so ``module.load_state_dict(image_proj_sd)`` works
with ``strict=True`` and no key renaming. The module is pure torch (no ComfyUI imports).

Notation used in the shape comments:
    B  batch                      C  UNet cross-attention (context) width, 768 SD1.5 / 2048 SDXL
    D  input embedding width      T  number of output tokens
    N  number of image-feature tokens (257 for ViT-H at 224 px)
    E  face-ID embedding width (512 for insightface ArcFace)

Families -> module:
    ImageProjModel       base / light / vit-G / SDXL base               [B, D]      -> [B, 4, C]
    MLPProjModel         full-face                                      [B, 257, D] -> [B, 257, C]
    Resampler            Plus, Plus-Face, composition, Kolors-Plus,     [B, N, D]   -> [B, Q, C]
                         FaceID-portrait "unnorm"
    FaceIDProjModel      FaceID, FaceID-portrait                        [B, E]      -> [B, T, C]
                                                                        [B, n, E]   -> [B, n*T, C]
    FaceIDPlusProjModel  FaceID-Plus (v1) and Plus v2                   [B, E] + [B, N, D] -> [B, T, C]

``build_projection(kind, state_dict)`` infers every hyperparameter from the tensor shapes.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PROJECTION_KINDS",
    "PERCEIVER_DIM_HEAD",
    "ImageProjModel",
    "MLPProjModel",
    "FeedForward",
    "PerceiverAttention",
    "PerceiverResampler",
    "Resampler",
    "FaceIDProjModel",
    "FaceIDPlusProjModel",
    "build_projection",
    "projection_layout",
    "split_tokens",
]

PROJECTION_KINDS: tuple[str, ...] = ("image_proj", "mlp", "resampler", "faceid", "faceid_plus")

# Every released perceiver uses 64-wide heads; checkpoints only store heads*dim_head, so this is the
# one hyperparameter that cannot be read from shapes (diffusers makes the same assumption).
PERCEIVER_DIM_HEAD = 64


def _match_weight_dtype(x: Tensor, weight: Tensor) -> Tensor:
    # Embeddings often arrive in fp32 while the adapter runs in fp16/bf16: follow the weights
    # (diffusers' ImageProjection does the same), but never move devices behind the caller's back.
    return x if x.dtype == weight.dtype else x.to(weight.dtype)


# --------------------------------------------------------------------------------------------------
# Simple projections
# --------------------------------------------------------------------------------------------------


class ImageProjModel(nn.Module):
    """Linear(D, T*C) -> reshape to T tokens -> LayerNorm(C). Base, light, vit-G and SDXL base adapters.

    Keys: ``proj.weight [T*C, D]``, ``proj.bias [T*C]``, ``norm.weight [C]``, ``norm.bias [C]``.
    """

    def __init__(self, cross_attention_dim: int, clip_embeddings_dim: int, num_tokens: int = 4) -> None:
        super().__init__()
        self.cross_attention_dim = cross_attention_dim
        self.num_tokens = num_tokens
        self.proj = nn.Linear(clip_embeddings_dim, num_tokens * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: Tensor) -> Tensor:
        """``image_embeds [..., D]`` (normally ``[B, D]``) -> ``[..., T, C]``."""
        x = self.proj(_match_weight_dtype(image_embeds, self.proj.weight))  # [..., T*C]
        # Row-major split: token t uses rows t*C:(t+1)*C of proj.weight, as in the checkpoints.
        x = x.reshape(*x.shape[:-1], self.num_tokens, self.cross_attention_dim)
        return self.norm(x)


class MLPProjModel(nn.Module):
    """Per-token MLP of the full-face adapter: Linear(D, D) -> GELU -> Linear(D, C) -> LayerNorm(C).

    Keys: ``proj.0.{weight [D, D], bias}``, ``proj.2.{weight [C, D], bias}``, ``proj.3.{weight, bias} [C]``.
    """

    def __init__(self, cross_attention_dim: int, clip_embeddings_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Linear(clip_embeddings_dim, clip_embeddings_dim),
            nn.GELU(),  # exact (erf) GELU, as in the original
            nn.Linear(clip_embeddings_dim, cross_attention_dim),
            nn.LayerNorm(cross_attention_dim),
        )

    def forward(self, image_embeds: Tensor) -> Tensor:
        """``image_embeds [B, N, D]`` (all 257 penultimate CLIP tokens) -> ``[B, N, C]``."""
        return self.proj(_match_weight_dtype(image_embeds, self.proj[0].weight))


class FaceIDProjModel(nn.Module):
    """FaceID MLP: Linear(E, H) -> GELU -> Linear(H, T*C) -> reshape -> LayerNorm(C).

    ``H`` is 1024 (= 2E) and ``T`` is 4 (FaceID) or 16 (FaceID-portrait) in the released checkpoints.
    Keys: ``proj.0.{weight [H, E], bias}``, ``proj.2.{weight [T*C, H], bias}``, ``norm.{weight, bias} [C]``
    (no ``proj.3``: that is what tells it apart from the full-face MLP).
    """

    def __init__(
        self,
        cross_attention_dim: int,
        id_embeddings_dim: int = 512,
        num_tokens: int = 4,
        hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        hidden_dim = 2 * id_embeddings_dim if hidden_dim is None else hidden_dim
        self.cross_attention_dim = cross_attention_dim
        self.num_tokens = num_tokens
        self.proj = nn.Sequential(
            nn.Linear(id_embeddings_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, num_tokens * cross_attention_dim),
        )
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, id_embeds: Tensor) -> Tensor:
        """``[B, E]`` -> ``[B, T, C]``; several faces ``[B, n, E]`` -> ``[B, n*T, C]``.

        With several faces (FaceID-portrait) each face is projected on its own and the tokens are
        concatenated face after face: ``[face0 T | face1 T | ...]``, as the reference does.
        """
        if id_embeds.ndim not in (2, 3):
            raise ValueError(f"FaceIDProjModel expects [B, E] or [B, n_faces, E], got {tuple(id_embeds.shape)}")
        batch = id_embeds.shape[0]
        x = self.proj(_match_weight_dtype(id_embeds, self.proj[0].weight))  # [B, (n,) T*C]
        x = x.reshape(-1, self.num_tokens, self.cross_attention_dim)  # [B*n, T, C]
        x = self.norm(x)
        return x.reshape(batch, -1, self.cross_attention_dim)  # [B, n*T, C]


# --------------------------------------------------------------------------------------------------
# Perceiver resampler
# --------------------------------------------------------------------------------------------------


class FeedForward(nn.Sequential):
    """LayerNorm(dim) -> Linear(dim, mult*dim, no bias) -> GELU -> Linear(mult*dim, dim, no bias).

    A ``Sequential`` so the keys are ``0.{weight,bias}``, ``1.weight``, ``3.weight`` as in the checkpoints.
    """

    def __init__(self, dim: int, mult: int = 4) -> None:
        inner = dim * mult
        super().__init__(
            nn.LayerNorm(dim),
            nn.Linear(dim, inner, bias=False),
            nn.GELU(),
            nn.Linear(inner, dim, bias=False),
        )


class PerceiverAttention(nn.Module):
    """Latents attend to ``concat(image features, latents)``.

    ``norm1`` normalises the image features, ``norm2`` the latents (swapping them is the classic porting
    bug). Q comes from the normalised latents; K and V from the normalised concatenation, with ``to_kv``
    holding K in its first half of rows and V in its second half.
    """

    def __init__(self, dim: int, dim_head: int = PERCEIVER_DIM_HEAD, heads: int = 8) -> None:
        super().__init__()
        self.dim_head = dim_head
        self.heads = heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _split_heads(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape  # [b, n, heads*dh] -> [b, heads, n, dh]
        return t.reshape(b, n, self.heads, self.dim_head).transpose(1, 2)

    def forward(self, x: Tensor, latents: Tensor) -> Tensor:
        """``x [B, N, dim]`` image features, ``latents [B, Q, dim]`` -> ``[B, Q, dim]`` (no residual)."""
        x = self.norm1(x)
        latents = self.norm2(latents)
        q = self._split_heads(self.to_q(latents))  # [B, h, Q, dh]
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        k, v = self._split_heads(k), self._split_heads(v)  # [B, h, N+Q, dh]

        if q.dtype in (torch.float16, torch.bfloat16):
            out = self._attention_fp32_softmax(q, k, v)
        else:
            # q k^T / sqrt(dh): the same product as the original's (q*dh^-1/4)(k*dh^-1/4)^T.
            out = F.scaled_dot_product_attention(q, k, v)

        b, _, n, _ = out.shape
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head)  # merge heads
        return self.to_out(out)

    def _attention_fp32_softmax(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # Half precision: reproduce the original arithmetic step by step. It scales q and k by
        # dh^-1/4 each (keeps fp16 logits in range), takes the softmax in fp32 and casts the weights
        # back before multiplying V. A fused fp16 SDPA kernel rounds differently (~1e-3), and this
        # attention is tiny (Q=16 queries), so the explicit form costs nothing worth saving.
        scale = 1.0 / math.sqrt(math.sqrt(self.dim_head))
        logits = (q * scale) @ (k * scale).transpose(-2, -1)  # [B, h, Q, N+Q]
        weights = torch.softmax(logits.float(), dim=-1).to(q.dtype)
        return weights @ v


class PerceiverResampler(nn.Module):
    """Perceiver stack without learned latents: the caller supplies them.

    This is FaceID-Plus's ``perceiver_resampler`` (the face-ID tokens are its latents) and the body of
    :class:`Resampler`. ``proj_in`` maps image features to ``dim``; ``depth`` layers of
    (attention, feed-forward) with residuals on the *un-normalised* latents; then
    ``norm_out(proj_out(latents))``. There is no LayerNorm before ``proj_in``.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        embedding_dim: int,
        output_dim: int,
        dim_head: int = PERCEIVER_DIM_HEAD,
        ff_mult: int = 4,
    ) -> None:
        super().__init__()
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head=dim_head, heads=heads), FeedForward(dim, ff_mult)])
            for _ in range(depth)
        )

    def forward(self, latents: Tensor, x: Tensor) -> Tensor:
        """``latents [B, Q, dim]``, ``x [B, N, embedding_dim]`` -> ``[B, Q, output_dim]``."""
        x = self.proj_in(_match_weight_dtype(x, self.proj_in.weight))  # [B, N, dim]
        latents = _match_weight_dtype(latents, self.proj_in.weight)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class Resampler(PerceiverResampler):
    """The IP-Adapter Plus resampler: a :class:`PerceiverResampler` with ``num_queries`` learned latents.

    Used by Plus, Plus-Face, composition, Kolors-Plus (internal width 2048, attention width 768) and the
    FaceID-portrait "unnorm" adapter (its input is the raw face embedding, ``embedding_dim = 512``).
    Keys: ``latents [1, Q, dim]``, ``proj_in``, ``proj_out``, ``norm_out``, and per layer i
    ``layers.i.0.{norm1, norm2, to_q, to_kv, to_out}`` and ``layers.i.1.{0, 1, 3}``.
    """

    def __init__(
        self,
        dim: int = 768,
        depth: int = 4,
        heads: int = 12,
        num_queries: int = 16,
        embedding_dim: int = 1280,
        output_dim: int = 768,
        dim_head: int = PERCEIVER_DIM_HEAD,
        ff_mult: int = 4,
    ) -> None:
        super().__init__(dim, depth, heads, embedding_dim, output_dim, dim_head=dim_head, ff_mult=ff_mult)
        # Initial value only; the checkpoint always overwrites it.
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """``x [B, N, embedding_dim]`` -> ``[B, Q, output_dim]``. A 2-D ``[B, D]`` input counts as one token."""
        if x.ndim == 2:
            x = x.unsqueeze(1)
        latents = self.latents.expand(x.shape[0], -1, -1)
        return super().forward(latents, x)


class FaceIDPlusProjModel(FaceIDProjModel):
    """FaceID-Plus / Plus v2: face-ID tokens refined by a perceiver over CLIP features of the face crop.

    ``proj``/``norm`` are the FaceID MLP (face-ID embedding -> T tokens of width C); those tokens are the
    latents of ``perceiver_resampler`` (width C, heads C // 64), which reads the penultimate CLIP states.
    v1 and v2 have identical weights; v2 is run with ``shortcut=True``.
    """

    def __init__(
        self,
        cross_attention_dim: int = 768,
        id_embeddings_dim: int = 512,
        clip_embeddings_dim: int = 1280,
        num_tokens: int = 4,
        hidden_dim: int | None = None,
        depth: int = 4,
        heads: int | None = None,
        dim_head: int = PERCEIVER_DIM_HEAD,
        ff_mult: int = 4,
    ) -> None:
        super().__init__(cross_attention_dim, id_embeddings_dim, num_tokens, hidden_dim)  # proj / norm: the ID MLP
        heads = cross_attention_dim // dim_head if heads is None else heads
        self.perceiver_resampler = PerceiverResampler(
            dim=cross_attention_dim,
            depth=depth,
            heads=heads,
            embedding_dim=clip_embeddings_dim,
            output_dim=cross_attention_dim,
            dim_head=dim_head,
            ff_mult=ff_mult,
        )

    def forward(self, id_embeds: Tensor, clip_embeds: Tensor, shortcut: bool = False, scale: float = 1.0) -> Tensor:
        """``id_embeds [B, E]``, ``clip_embeds [B, N, D]`` -> ``[B, T, C]``.

        ``shortcut=True`` (Plus v2) returns ``id_tokens + scale * perceiver_out``; otherwise the perceiver
        output alone (v1).
        """
        id_tokens = super().forward(id_embeds)  # [B, T, C]
        out = self.perceiver_resampler(id_tokens, clip_embeds)
        if shortcut:
            out = id_tokens + scale * out
        return out


# --------------------------------------------------------------------------------------------------
# Factory: hyperparameters from shapes
# --------------------------------------------------------------------------------------------------


def _shape(sd: Mapping[str, Tensor], key: str, kind: str, ndim: int) -> tuple[int, ...]:
    if key not in sd:
        hint = ""
        if sd and all(k.startswith("image_proj.") for k in sd):
            hint = " (the keys carry an 'image_proj.' prefix: pass the image_proj section with it stripped)"
        raise ValueError(f"{kind!r} projection: missing key {key!r}{hint}")
    shape = tuple(getattr(sd[key], "shape", ()))
    if len(shape) != ndim:
        raise ValueError(f"{kind!r} projection: {key!r} should have {ndim} dims, got shape {list(shape)}")
    return shape


def split_tokens(rows: int, width: int, kind: str, key: str) -> int:
    """Tokens in ``rows`` output rows of ``width``-wide tokens (a projection's ``Linear(D, T*C)``).
    Raises ValueError naming the ``kind`` projection's tensor ``key`` when the rows do not split evenly."""
    if width <= 0 or rows % width != 0:
        raise ValueError(
            f"{kind!r} projection: {key!r} has {rows} output rows, not a multiple of the token width {width}"
        )
    return rows // width


def _perceiver_args(sd: Mapping[str, Tensor], prefix: str, kind: str) -> dict[str, int]:
    """dim, depth, heads, embedding_dim, output_dim, ff_mult of a perceiver stored under ``prefix``."""
    dim, embedding_dim = _shape(sd, f"{prefix}proj_in.weight", kind, 2)
    output_dim = _shape(sd, f"{prefix}proj_out.weight", kind, 2)[0]
    layer_ids = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"layers\.(\d+)\.", k))}
    depth = len(layer_ids)
    if depth == 0 or layer_ids != set(range(depth)):
        raise ValueError(
            f"{kind!r} projection: expected layers {prefix}layers.0 .. N-1, found layer ids {sorted(layer_ids)}"
        )
    inner = _shape(sd, f"{prefix}layers.0.0.to_q.weight", kind, 2)[0]
    if inner % PERCEIVER_DIM_HEAD != 0:
        raise ValueError(
            f"{kind!r} projection: {prefix}layers.0.0.to_q.weight has {inner} rows, not a multiple of the "
            f"{PERCEIVER_DIM_HEAD}-wide attention heads"
        )
    ff_key = f"{prefix}layers.0.1.1.weight"
    ff_mult = split_tokens(_shape(sd, ff_key, kind, 2)[0], dim, kind, ff_key)
    return dict(
        dim=dim,
        depth=depth,
        heads=inner // PERCEIVER_DIM_HEAD,
        embedding_dim=embedding_dim,
        output_dim=output_dim,
        ff_mult=ff_mult,
    )


def _make_image_proj(sd: Mapping[str, Tensor]) -> nn.Module:
    c = _shape(sd, "norm.weight", "image_proj", 1)[0]
    rows, d = _shape(sd, "proj.weight", "image_proj", 2)
    return ImageProjModel(c, d, split_tokens(rows, c, "image_proj", "proj.weight"))


def _make_mlp(sd: Mapping[str, Tensor]) -> nn.Module:
    d_out, d = _shape(sd, "proj.0.weight", "mlp", 2)
    if d_out != d:
        raise ValueError(f"'mlp' projection: proj.0.weight should be square [D, D], got {[d_out, d]}")
    c = _shape(sd, "proj.2.weight", "mlp", 2)[0]
    return MLPProjModel(c, d)


def _make_faceid(sd: Mapping[str, Tensor]) -> nn.Module:
    c = _shape(sd, "norm.weight", "faceid", 1)[0]
    hidden, e = _shape(sd, "proj.0.weight", "faceid", 2)
    rows = _shape(sd, "proj.2.weight", "faceid", 2)[0]
    return FaceIDProjModel(c, e, split_tokens(rows, c, "faceid", "proj.2.weight"), hidden_dim=hidden)


def _make_resampler(sd: Mapping[str, Tensor]) -> nn.Module:
    _, queries, latent_dim = _shape(sd, "latents", "resampler", 3)
    args = _perceiver_args(sd, "", "resampler")
    if latent_dim != args["dim"]:
        raise ValueError(
            f"'resampler' projection: latents width {latent_dim} differs from proj_in's output width {args['dim']}"
        )
    return Resampler(num_queries=queries, **args)


def _make_faceid_plus(sd: Mapping[str, Tensor]) -> nn.Module:
    c = _shape(sd, "norm.weight", "faceid_plus", 1)[0]
    hidden, e = _shape(sd, "proj.0.weight", "faceid_plus", 2)
    tokens = split_tokens(_shape(sd, "proj.2.weight", "faceid_plus", 2)[0], c, "faceid_plus", "proj.2.weight")
    args = _perceiver_args(sd, "perceiver_resampler.", "faceid_plus")
    # The ID tokens are the perceiver's latents and the shortcut adds them to its output.
    if args["dim"] != c or args["output_dim"] != c:
        raise ValueError(
            f"'faceid_plus' projection: perceiver width {args['dim']} / output {args['output_dim']} must both "
            f"equal the ID-token width {c} (norm.weight)"
        )
    return FaceIDPlusProjModel(
        cross_attention_dim=c,
        id_embeddings_dim=e,
        clip_embeddings_dim=args["embedding_dim"],
        num_tokens=tokens,
        hidden_dim=hidden,
        depth=args["depth"],
        heads=args["heads"],
        ff_mult=args["ff_mult"],
    )


_BUILDERS = {
    "image_proj": _make_image_proj,
    "mlp": _make_mlp,
    "resampler": _make_resampler,
    "faceid": _make_faceid,
    "faceid_plus": _make_faceid_plus,
}


def _check_layout(module: nn.Module, sd: Mapping[str, Tensor], kind: str) -> None:
    """Every key and shape must match exactly, so the strict load cannot fail later with a vaguer error."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in sd.items()}
    problems = []
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    if missing:
        problems.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    wrong = [
        f"{k}: expected {list(expected[k])}, got {list(given[k])}"
        for k in sorted(expected.keys() & given.keys())
        if expected[k] != given[k]
    ]
    if wrong:
        problems.append(f"unexpected shapes [{'; '.join(wrong[:8])}{' ...' if len(wrong) > 8 else ''}]")
    if problems:
        raise ValueError(f"{kind!r} projection: state dict does not fit the inferred layout: " + ", ".join(problems))


def projection_layout(kind: str, state_dict: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the ``kind`` projection whose hyperparameters the tensors' shapes give (built on the
    meta device, nothing allocated). Raises ``ValueError`` when the defining tensors do not fit together."""
    if kind not in _BUILDERS:
        raise ValueError(f"unknown projection kind {kind!r}; expected one of {PROJECTION_KINDS}")
    with torch.device("meta"):
        module = _BUILDERS[kind](state_dict)
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def build_projection(kind: str, state_dict: Mapping[str, Tensor], *, load_weights: bool = True) -> nn.Module:
    """Build the projection for ``kind`` from the ``image_proj`` section of a checkpoint.

    Every hyperparameter (widths, token/query counts, depth, heads, FF ratio) comes from the tensor
    shapes; only the 64-wide perceiver heads are assumed. ``kind`` is one of :data:`PROJECTION_KINDS`.

    - If any tensor is on the meta device, the module is built on the meta device and returned
      without weights (checks a full-size layout without allocating it).
    - Otherwise, with ``load_weights=True`` (default), the module is built on the meta device and the
      given tensors are assigned to it (strict, no copy: the module shares the state dict's tensors,
      dtype and device). With ``load_weights=False`` it is built normally with fresh initial values.

    Raises ``ValueError`` naming the missing key or the unexpected shape when the state dict does not fit.
    """
    if kind not in _BUILDERS:
        raise ValueError(f"unknown projection kind {kind!r}; expected one of {PROJECTION_KINDS}")
    for key, value in state_dict.items():
        if not isinstance(value, Tensor):
            raise ValueError(f"{kind!r} projection: {key!r} is a {type(value).__name__}, not a tensor")
    on_meta = any(t.is_meta for t in state_dict.values())

    if on_meta or load_weights:
        with torch.device("meta"):
            module = _BUILDERS[kind](state_dict)
    else:
        module = _BUILDERS[kind](state_dict)
    _check_layout(module, state_dict, kind)

    if load_weights and not on_meta:
        module.load_state_dict(dict(state_dict), strict=True, assign=True)
    return module
