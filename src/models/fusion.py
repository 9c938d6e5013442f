"""MultimodalFusion: one self-attention stack over every modality's tokens, robust to absent modalities.

Tokens are concatenated in the canonical modality order after a CLS token; each modality's tokens get its
learned modality-type embedding. A modality absent for a sample (valid False) is handled per
`missing_modality`: "mask" removes its tokens as attention keys, "learned_token" replaces them by a learned
token of that modality (so the fusion always sees the same number of tokens). The CLS token is always a valid
key, so a sample with every modality absent still produces finite features.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from src.models.encoders import run_stack, transformer_stack


class MultimodalFusion(nnx.Module):
    def __init__(
        self,
        modalities: tuple[str, ...],
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        dropout: float,
        missing_modality: Literal["mask", "learned_token"],
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
    ):
        if missing_modality not in ("mask", "learned_token"):
            raise ValueError(f"missing_modality must be 'mask' or 'learned_token', got {missing_modality!r}")
        self.modalities = tuple(modalities)
        self.missing_modality = missing_modality
        self.dtype = dtype
        init = nnx.initializers.normal(0.02)
        self.cls_token = nnx.Param(init(rngs.params(), (dim,), jnp.float32))
        self.type_embed = nnx.Param(init(rngs.params(), (len(self.modalities), dim), jnp.float32))
        if missing_modality == "learned_token":
            self.missing_token = nnx.Param(init(rngs.params(), (len(self.modalities), dim), jnp.float32))
        self.blocks = transformer_stack(depth, dim, num_heads, mlp_ratio, dropout, rngs=rngs, dtype=dtype)
        self.norm = nnx.LayerNorm(dim, dtype=jnp.float32, rngs=rngs)

    def __call__(
        self,
        tokens: dict[str, jax.Array],
        valid: dict[str, jax.Array],
        token_mask: dict[str, jax.Array] | None = None,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> dict[str, jax.Array]:
        """tokens: modality -> [B, N_m, D]; valid: modality -> bool [B]; token_mask: modality -> bool [B, N_m]
        (False = an empty slot, e.g. a masked-out MAE slot). Returns {"cls": [B, D], "tokens": [B, T, D] with
        CLS first, "mask": bool [B, T]} where mask says which tokens took part in attention (the others are
        zero)."""
        parts, masks = [], []
        for i, m in enumerate(self.modalities):
            z = tokens[m].astype(self.dtype)
            b, n = z.shape[:2]
            present = valid[m][:, None]
            slots = token_mask[m] if token_mask is not None and m in token_mask else jnp.ones((b, n), bool)
            if self.missing_modality == "learned_token":
                z = jnp.where(present[:, :, None], z, self.missing_token[i].astype(self.dtype))
                key_mask = jnp.where(present, slots, True)
            else:
                key_mask = present & slots
            parts.append(z + self.type_embed[i].astype(self.dtype))
            masks.append(key_mask)
        b = parts[0].shape[0]
        cls = jnp.broadcast_to(self.cls_token[...].astype(self.dtype), (b, 1, self.cls_token.shape[0]))
        x = jnp.concatenate([cls, *parts], axis=1)
        mask = jnp.concatenate([jnp.ones((b, 1), bool), *masks], axis=1)
        x = self.norm(run_stack(self.blocks, x, mask, deterministic, rngs)).astype(self.dtype)
        x = jnp.where(mask[:, :, None], x, jnp.zeros((), x.dtype))
        return {"cls": x[:, 0], "tokens": x, "mask": mask}
