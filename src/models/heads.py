"""Heads on the fused representation: masked-patch decoder, contrastive projection, policy and value.

Every head returns float32 whatever the compute dtype, so losses are always computed in full precision.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from src.models.encoders import PositionalEmbedding, PosKind, run_stack, transformer_stack


class PretrainHead(nnx.Module):
    """A light MAE decoder that predicts every patch of every patch modality.

    The fused tokens are projected to `decoder_dim`; each patch modality is laid out on its full patch grid
    with a learned mask token at every position that was not encoded, then gets the decoder's own position
    embedding and modality-type embedding. One transformer stack runs over [CLS, all modalities] (absent
    modalities are masked out as keys) and a per-modality linear layer maps each position to the patch's
    `patch_dim` values.
    Vector-modality tokens take part as context only.
    """

    def __init__(
        self,
        modalities: tuple[str, ...],
        patch_specs: dict[str, tuple[tuple[int, ...], int]],
        in_dim: int,
        decoder_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        dropout: float,
        pos_embedding: PosKind,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
    ):
        """patch_specs: patch modality -> (patch grid, patch_dim)."""
        self.modalities = tuple(modalities)
        self.patch_modalities = tuple(m for m in self.modalities if m in patch_specs)
        self.dtype = dtype
        init = nnx.initializers.normal(0.02)
        self.embed = nnx.Linear(in_dim, decoder_dim, dtype=dtype, rngs=rngs)
        self.mask_token = nnx.Param(init(rngs.params(), (decoder_dim,), jnp.float32))
        self.type_embed = nnx.Param(init(rngs.params(), (len(self.modalities), decoder_dim), jnp.float32))
        self.pos = nnx.Dict(
            {
                m: PositionalEmbedding(patch_specs[m][0], decoder_dim, pos_embedding, rngs=rngs)
                for m in self.patch_modalities
            }
        )
        self.blocks = transformer_stack(
            depth, decoder_dim, num_heads, mlp_ratio, dropout, rngs=rngs, dtype=dtype
        )
        self.norm = nnx.LayerNorm(decoder_dim, dtype=jnp.float32, rngs=rngs)
        self.out = nnx.Dict(
            {
                m: nnx.Linear(decoder_dim, patch_specs[m][1], dtype=dtype, rngs=rngs)
                for m in self.patch_modalities
            }
        )

    def __call__(
        self,
        cls: jax.Array,
        tokens: dict[str, jax.Array],
        token_mask: dict[str, jax.Array],
        valid: dict[str, jax.Array],
        keep_idx: dict[str, jax.Array] | None = None,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> dict[str, jax.Array]:
        """cls [B, D]; tokens/token_mask: modality -> fused [B, S_m, D] / bool [B, S_m]; keep_idx: patch
        modality -> int [B, S_m], the grid positions of the S_m slots (absent = all N_m positions in order).
        Returns patch modality -> float32 [B, N_m, patch_dim] predictions."""
        mask_token = self.mask_token[...].astype(self.dtype)
        parts = [self.embed(cls.astype(self.dtype))[:, None]]
        b = parts[0].shape[0]
        masks = [jnp.ones((b, 1), bool)]
        sizes = []
        for i, m in enumerate(self.modalities):
            z = self.embed(tokens[m].astype(self.dtype))
            present = valid[m][:, None]
            if m in self.out:
                idx = keep_idx.get(m) if keep_idx is not None else None
                if idx is not None:
                    slots = jnp.where(token_mask[m][:, :, None], z, mask_token)
                    grid = jnp.broadcast_to(mask_token, (b, math.prod(self.pos[m].grid), z.shape[-1]))
                    z = jax.vmap(lambda g, i_, s: g.at[i_].set(s))(grid, idx, slots)
                z = self.pos[m](z)
                key_mask = jnp.broadcast_to(present, z.shape[:2])
            else:
                key_mask = present & token_mask[m]
            parts.append(z + self.type_embed[i].astype(self.dtype))
            masks.append(key_mask)
            sizes.append(z.shape[1])
        x = jnp.concatenate(parts, axis=1)
        x = self.norm(run_stack(self.blocks, x, jnp.concatenate(masks, axis=1), deterministic, rngs))
        out, start = {}, 1
        for m, n in zip(self.modalities, sizes, strict=True):
            if m in self.out:
                out[m] = self.out[m](x[:, start : start + n].astype(self.dtype)).astype(jnp.float32)
            start += n
        return out


class ProjectionHead(nnx.Module):
    """Contrastive projection: Dense -> GELU -> Dense to `projection_dim`, L2-normalised (float32)."""

    def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        self.dtype = dtype
        self.fc1 = nnx.Linear(in_dim, in_dim, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(in_dim, out_dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        z = self.fc2(jax.nn.gelu(self.fc1(x.astype(self.dtype)))).astype(jnp.float32)
        return z / jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True) + 1e-12)


class PolicyHead(nnx.Module):
    """Gaussian policy over pre-squash actions: mean [B, action_dim] and a state-independent log std [action_dim].

    The mean is the raw Dense output, unbounded: squashing it into the action range is the action
    distribution's job (`ppo.squash`: clip or tanh), so there is exactly one squashing whichever is chosen.
    """

    def __init__(
        self, in_dim: int, action_dim: int, init_log_std: float, *, rngs: nnx.Rngs, dtype: Any = jnp.float32
    ):
        self.dtype = dtype
        # A small last layer starts the policy near the zero action, as PPO implementations commonly do.
        self.mean = nnx.Linear(
            in_dim, action_dim, dtype=dtype, kernel_init=nnx.initializers.orthogonal(0.01), rngs=rngs
        )
        self.log_std = nnx.Param(jnp.full((action_dim,), init_log_std, jnp.float32))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.mean(x.astype(self.dtype)).astype(jnp.float32), self.log_std[...]


class ValueHead(nnx.Module):
    """State value: Dense -> scalar per sample, [B]."""

    def __init__(self, in_dim: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        self.dtype = dtype
        self.value = nnx.Linear(in_dim, 1, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.value(x.astype(self.dtype))[:, 0].astype(jnp.float32)
