"""Per-modality tokenisers: patching, position embeddings, the pre-LN transformer block and the ViT encoder.

Every grid-like modality (camera image, LiDAR/radar BEV image, a raw 1-D LiDAR scan) becomes a sequence of
non-overlapping patch tokens; vector modalities (GPS, IMU) become a few tokens through one linear map. All
modules keep float32 parameters and compute in `dtype` (bfloat16 for mixed-precision training); attention
softmax and layer norms run in float32 so that bfloat16 logits cannot overflow.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

PosKind = Literal["sincos", "learned"]

_MASKED_LOGIT = -1e30  # finite: a query whose keys are all masked gets a uniform (finite) mix, never NaN


# --------------------------------------------------------------------------------------------- patching


def patch_grid(shape: tuple[int, ...], patch_size: int, name: str = "input") -> tuple[int, ...]:
    """Patch grid of one sample of `shape` ((H, W, C) -> (H/p, W/p); (L, C) -> (L/p,)); ValueError if it does
    not divide evenly, naming `name` (the modality)."""
    if len(shape) not in (2, 3):
        raise ValueError(f"{name}: patching needs a (H, W, C) image or a (L, C) sequence, got shape {shape}")
    if patch_size <= 0:
        raise ValueError(f"{name}: patch_size must be positive, got {patch_size}")
    spatial = shape[:-1]
    bad = [s for s in spatial if s % patch_size]
    if bad:
        raise ValueError(f"{name}: shape {tuple(shape)} is not divisible by patch_size {patch_size}")
    return tuple(s // patch_size for s in spatial)


def patch_dim(shape: tuple[int, ...], patch_size: int) -> int:
    """Values in one patch: p*p*C for images, p*C for sequences."""
    return patch_size ** (len(shape) - 1) * shape[-1]


def patchify(x: jax.Array, patch_size: int) -> jax.Array:
    """(B, H, W, C) -> (B, H/p * W/p, p*p*C) and (B, L, C) -> (B, L/p, p*C).

    Patches are numbered row-major over the patch grid; inside a patch values are ordered
    (row, column, channel).
    """
    p = patch_size
    if x.ndim == 4:
        b, h, w, c = x.shape
        x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, (h // p) * (w // p), p * p * c)
    if x.ndim == 3:
        b, length, c = x.shape
        return x.reshape(b, length // p, p * c)
    raise ValueError(f"patchify: expected (B, H, W, C) or (B, L, C), got shape {x.shape}")


def unpatchify(patches: jax.Array, patch_size: int, shape: tuple[int, ...]) -> jax.Array:
    """Inverse of `patchify`; `shape` is one sample's (H, W, C) or (L, C)."""
    p = patch_size
    b = patches.shape[0]
    if len(shape) == 3:
        h, w, c = shape
        x = patches.reshape(b, h // p, w // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, h, w, c)
    if len(shape) == 2:
        return patches.reshape(b, *shape)
    raise ValueError(f"unpatchify: expected a (H, W, C) or (L, C) shape, got {shape}")


# --------------------------------------------------------------------------------------------- positions


def _sincos_1d(positions: np.ndarray, dim: int) -> np.ndarray:
    """[N] positions -> [N, dim]: sin on the first half, cos on the second, geometric frequencies."""
    freqs = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim // 2))
    angles = positions[:, None].astype(np.float64) * freqs[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


@functools.lru_cache(maxsize=64)
def sincos_embedding(grid: tuple[int, ...], dim: int) -> np.ndarray:
    """Fixed position embedding [prod(grid), dim] for a 1-D or (row-major) 2-D patch grid.

    2-D: half the channels encode the row, half the column, so dim must be divisible by 4 (by 2 for 1-D).
    """
    if len(grid) == 1:
        if dim % 2:
            raise ValueError(f"sin-cos position embedding of a 1-D grid needs an even dim, got {dim}")
        return _sincos_1d(np.arange(grid[0]), dim).astype(np.float32)
    if len(grid) == 2:
        if dim % 4:
            raise ValueError(f"sin-cos position embedding of a 2-D grid needs dim divisible by 4, got {dim}")
        rows, cols = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
        emb = np.concatenate([_sincos_1d(rows.ravel(), dim // 2), _sincos_1d(cols.ravel(), dim // 2)], axis=1)
        return emb.astype(np.float32)
    raise ValueError(f"position embedding: grid must be 1-D or 2-D, got {grid}")


class PositionalEmbedding(nnx.Module):
    """Adds a position embedding over a patch grid: fixed sin-cos (no parameters) or learned ([N, dim])."""

    def __init__(self, grid: tuple[int, ...], dim: int, kind: PosKind, *, rngs: nnx.Rngs):
        self.grid = tuple(grid)
        self.dim = dim
        self.kind = kind
        if kind == "learned":
            init = nnx.initializers.normal(0.02)
            self.table = nnx.Param(init(rngs.params(), (math.prod(self.grid), dim), jnp.float32))
        elif kind == "sincos":
            sincos_embedding(self.grid, dim)  # validate dim now rather than at the first call
        else:
            raise ValueError(f"pos_embedding must be 'sincos' or 'learned', got {kind!r}")

    def embedding(self) -> jax.Array:
        if self.kind == "learned":
            return self.table[...]
        return jnp.asarray(sincos_embedding(self.grid, self.dim))

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return tokens + self.embedding().astype(tokens.dtype)


# --------------------------------------------------------------------------------------------- layers


class PatchEmbed(nnx.Module):
    """Non-overlapping patches of one (H, W, C) or (L, C) sample -> linear tokens [B, N, dim]."""

    def __init__(
        self,
        shape: tuple[int, ...],
        patch_size: int,
        dim: int,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        name: str = "input",
    ):
        self.shape = tuple(shape)
        self.patch_size = patch_size
        self.grid = patch_grid(self.shape, patch_size, name)
        self.num_patches = math.prod(self.grid)
        self.patch_dim = patch_dim(self.shape, patch_size)
        self.proj = nnx.Linear(self.patch_dim, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(patchify(x, self.patch_size))


class Attention(nnx.Module):
    """Multi-head self-attention with a key mask (bool [B, S]: False keys receive no attention)."""

    def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        if dim % num_heads:
            raise ValueError(f"attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nnx.Linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        b, s, d = x.shape
        h = self.num_heads
        q, k, v = jnp.split(self.qkv(x).reshape(b, s, 3, h, d // h), 3, axis=2)
        q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # [B, S, H, d/h]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(d // h)
        if mask is not None:
            logits = jnp.where(mask[:, None, None, :], logits, _MASKED_LOGIT)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        return self.out(jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, s, d))


class TransformerBlock(nnx.Module):
    """Pre-LayerNorm block: x + Drop(Attn(LN(x))), then x + Drop(MLP(LN(x))); GELU MLP of mlp_ratio * dim."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        dropout: float,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
    ):
        hidden = int(dim * mlp_ratio)
        self.norm1 = nnx.LayerNorm(dim, dtype=jnp.float32, rngs=rngs)
        self.attn = Attention(dim, num_heads, rngs=rngs, dtype=dtype)
        self.norm2 = nnx.LayerNorm(dim, dtype=jnp.float32, rngs=rngs)
        self.fc1 = nnx.Linear(dim, hidden, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, dim, dtype=dtype, rngs=rngs)
        self.drop = nnx.Dropout(dropout)

    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        dtype = x.dtype
        x = x + self.drop(
            self.attn(self.norm1(x).astype(dtype), mask), deterministic=deterministic, rngs=rngs
        )
        y = self.fc2(jax.nn.gelu(self.fc1(self.norm2(x).astype(dtype))))
        return x + self.drop(y, deterministic=deterministic, rngs=rngs)


def transformer_stack(
    depth: int, dim: int, num_heads: int, mlp_ratio: float, dropout: float, *, rngs: nnx.Rngs, dtype: Any
) -> nnx.List:
    return nnx.List(
        [TransformerBlock(dim, num_heads, mlp_ratio, dropout, rngs=rngs, dtype=dtype) for _ in range(depth)]
    )


def run_stack(
    blocks: nnx.List, x: jax.Array, mask: jax.Array | None, deterministic: bool, rngs: nnx.Rngs | None
) -> jax.Array:
    for block in blocks:
        x = block(x, mask=mask, deterministic=deterministic, rngs=rngs)
    return x


# --------------------------------------------------------------------------------------------- encoders


class ModalityViT(nnx.Module):
    """PatchEmbed -> position embedding -> depth x TransformerBlock -> LayerNorm: the token sequence Z_m.

    With `keep_idx` (int [B, K]) only those patch tokens (position embedding already added) are encoded, the
    MAE way; `keep_mask` (bool [B, K]) marks which of the K slots are real (False slots are ignored as keys).
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        patch_size: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        dropout: float,
        pos_embedding: PosKind,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        name: str = "input",
    ):
        self.dtype = dtype
        self.embed = PatchEmbed(shape, patch_size, dim, rngs=rngs, dtype=dtype, name=name)
        self.pos = PositionalEmbedding(self.embed.grid, dim, pos_embedding, rngs=rngs)
        self.blocks = transformer_stack(depth, dim, num_heads, mlp_ratio, dropout, rngs=rngs, dtype=dtype)
        self.norm = nnx.LayerNorm(dim, dtype=jnp.float32, rngs=rngs)

    @property
    def num_patches(self) -> int:
        return self.embed.num_patches

    @property
    def patch_dim(self) -> int:
        return self.embed.patch_dim

    def __call__(
        self,
        x: jax.Array,
        *,
        keep_idx: jax.Array | None = None,
        keep_mask: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        tokens = self.pos(self.embed(x.astype(self.dtype)))
        if keep_idx is not None:
            tokens = jnp.take_along_axis(tokens, keep_idx[:, :, None], axis=1)
        tokens = run_stack(self.blocks, tokens, keep_mask, deterministic, rngs)
        return self.norm(tokens).astype(self.dtype)


class VectorTokenizer(nnx.Module):
    """A (k,) vector (GPS, IMU) -> `num_tokens` tokens [B, num_tokens, dim] by one linear map."""

    def __init__(self, in_dim: int, dim: int, num_tokens: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        if num_tokens < 1:
            raise ValueError(f"vector_tokens must be >= 1, got {num_tokens}")
        self.dtype = dtype
        self.num_tokens = num_tokens
        self.dim = dim
        self.proj = nnx.Linear(in_dim, num_tokens * dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x.astype(self.dtype)).reshape(x.shape[0], self.num_tokens, self.dim)
