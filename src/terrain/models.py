"""Flax NNX models for terrain patches: a small conv encoder or the project's ViT, and the cost head on the
(frozen) embedding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from src.models.encoders import ModalityViT


class PatchEncoder(nnx.Module):
    """3 strided conv blocks (3x3, stride 2, LayerNorm, GELU) -> global average pool -> linear to `embed_dim`.

    Takes uint8 patches [B, P, P, C] (scaled to [0, 1] here, so stores stay uint8) and returns the raw features
    [B, embed_dim]; the objectives L2-normalise them where the metric needs it.
    """

    def __init__(self, in_channels: int, embed_dim: int, *, widths: tuple[int, ...] = (16, 32, 64), rngs: nnx.Rngs):
        chans = (in_channels, *widths)
        self.convs = nnx.List(
            [nnx.Conv(a, b, (3, 3), strides=(2, 2), padding="SAME", rngs=rngs) for a, b in zip(chans, chans[1:])]
        )
        self.norms = nnx.List([nnx.LayerNorm(b, rngs=rngs) for b in widths])
        self.out = nnx.Linear(widths[-1], embed_dim, rngs=rngs)

    def __call__(self, patches: jax.Array) -> jax.Array:
        x = patches.astype(jnp.float32) / 255.0
        for conv, norm in zip(self.convs, self.norms):
            x = nnx.gelu(norm(conv(x)))
        return self.out(x.mean(axis=(1, 2)))


class PatchViT(nnx.Module):
    """The pretrainer's `ModalityViT` on a patch: uint8 [B, P, P, C] -> tokens -> mean over tokens -> linear to
    `embed_dim`, so terrain representations can use the same encoder family as the multimodal model."""

    def __init__(
        self,
        in_channels: int,
        patch_px: int,
        embed_dim: int,
        *,
        patch_size: int,
        dim: int,
        depth: int,
        num_heads: int,
        rngs: nnx.Rngs,
    ):
        self.vit = ModalityViT((patch_px, patch_px, in_channels), patch_size, dim, depth, num_heads, 2.0, 0.0,
                               "sincos", rngs=rngs, name="terrain patch")
        self.out = nnx.Linear(dim, embed_dim, rngs=rngs)

    def __call__(self, patches: jax.Array) -> jax.Array:
        tokens = self.vit(patches.astype(jnp.float32) / 255.0)
        return self.out(tokens.mean(axis=1))


PatchModel = PatchEncoder | PatchViT  # what `represent.encoder` chooses


class CostHead(nnx.Module):
    """A small MLP on an embedding -> non-negative cost `scale * exp(out)`."""

    def __init__(self, embed_dim: int, hidden: int, scale: float, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(embed_dim, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 1, rngs=rngs)
        self.scale = scale

    def __call__(self, z: jax.Array) -> jax.Array:
        return self.scale * jnp.exp(self.out(nnx.gelu(self.hidden(z)))[..., 0])
