"""The assembled Raceformer: per-modality encoders -> MultimodalFusion -> heads, built from `[model]`.

The modality kind follows the configured shape's rank: (H, W, C) -> image/BEV ViT with 2-D patches, (L, C) ->
1-D sequence ViT, (k,) -> vector tokeniser. Every encoder and fusion parameter lives under `encoders` and
`fusion`, the two sub-trees a pretraining run exports and a PPO run imports. Parameters are float32; `dtype`
is the compute dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from src.config import MODALITIES, ModelConfig
from src.models.encoders import ModalityViT, VectorTokenizer, patch_dim, patch_grid
from src.models.fusion import MultimodalFusion
from src.models.heads import PolicyHead, PretrainHead, ProjectionHead, ValueHead


class Raceformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        self.modalities: tuple[str, ...] = tuple(m for m in MODALITIES if m in cfg.modalities)
        if not self.modalities:
            raise ValueError("model.modalities: at least one modality must be configured")
        self.shapes: tuple[tuple[int, ...], ...] = tuple(
            tuple(cfg.modalities[m].shape) for m in self.modalities
        )
        self.dtype = dtype
        patch_sizes, encoders, patch_specs = [], {}, {}
        for m, shape in zip(self.modalities, self.shapes, strict=True):
            p = cfg.modalities[m].patch_size or cfg.patch_size
            patch_sizes.append(p)
            if len(shape) in (2, 3):
                patch_specs[m] = (patch_grid(shape, p, f"model.modalities.{m}"), patch_dim(shape, p))
                encoders[m] = ModalityViT(
                    shape,
                    p,
                    cfg.embed_dim,
                    cfg.depth,
                    cfg.num_heads,
                    cfg.mlp_ratio,
                    cfg.dropout,
                    cfg.pos_embedding,
                    rngs=rngs,
                    dtype=dtype,
                    name=f"model.modalities.{m}",
                )
            elif len(shape) == 1:
                encoders[m] = VectorTokenizer(
                    shape[0], cfg.embed_dim, cfg.vector_tokens, rngs=rngs, dtype=dtype
                )
            else:
                raise ValueError(f"model.modalities.{m}: shape {shape} must have rank 1, 2 or 3")
        self.patch_sizes: tuple[int, ...] = tuple(patch_sizes)
        self.patch_modalities: tuple[str, ...] = tuple(m for m in self.modalities if m in patch_specs)
        self.vector_modalities: tuple[str, ...] = tuple(m for m in self.modalities if m not in patch_specs)
        self.vector_tokens = cfg.vector_tokens
        self.encoders = nnx.Dict(encoders)
        self.fusion = MultimodalFusion(
            self.modalities,
            cfg.embed_dim,
            cfg.fusion_depth,
            cfg.num_heads,
            cfg.mlp_ratio,
            cfg.dropout,
            cfg.missing_modality,
            rngs=rngs,
            dtype=dtype,
        )
        self.pretrain_head = PretrainHead(
            self.modalities,
            patch_specs,
            cfg.embed_dim,
            cfg.decoder_dim,
            cfg.decoder_depth,
            cfg.decoder_heads,
            cfg.mlp_ratio,
            cfg.dropout,
            cfg.pos_embedding,
            rngs=rngs,
            dtype=dtype,
        )
        self.projection_head = ProjectionHead(cfg.embed_dim, cfg.projection_dim, rngs=rngs, dtype=dtype)
        self.policy_head = PolicyHead(cfg.embed_dim, cfg.action_dim, cfg.init_log_std, rngs=rngs, dtype=dtype)
        self.value_head = ValueHead(cfg.embed_dim, rngs=rngs, dtype=dtype)

    # ----------------------------------------------------------------------------------------- layout

    def _index(self, modality: str) -> int:
        if modality not in self.modalities:
            raise ValueError(f"modality {modality!r} is not configured; configured: {list(self.modalities)}")
        return self.modalities.index(modality)

    def patch_size(self, modality: str) -> int:
        return self.patch_sizes[self._index(modality)]

    def num_patches(self, modality: str) -> int:
        """Tokens of a modality: its patch count, or `vector_tokens` for a vector modality."""
        self._index(modality)
        if modality in self.vector_modalities:
            return self.vector_tokens
        return self.encoders[modality].num_patches

    def patch_dim(self, modality: str) -> int:
        """Values per patch (p*p*C or p*C); for a vector modality its length k."""
        shape = self.shapes[self._index(modality)]
        if modality in self.vector_modalities:
            return shape[0]
        return self.encoders[modality].patch_dim

    def token_counts(self, keep_idx: dict[str, jax.Array] | None = None) -> dict[str, int]:
        """Tokens per modality in `encode`'s fused sequence (after CLS), given the MAE slots `keep_idx`."""
        keep_idx = keep_idx or {}
        return {m: keep_idx[m].shape[1] if m in keep_idx else self.num_patches(m) for m in self.modalities}

    def split_tokens(
        self, x: jax.Array, keep_idx: dict[str, jax.Array] | None = None
    ) -> dict[str, jax.Array]:
        """Split a fused [B, T, ...] array (CLS first) into modality -> [B, n_m, ...]."""
        out, start = {}, 1
        for m, n in self.token_counts(keep_idx).items():
            out[m] = x[:, start : start + n]
            start += n
        if start != x.shape[1]:
            raise ValueError(f"split_tokens: sequence has {x.shape[1]} tokens, layout expects {start}")
        return out

    # ----------------------------------------------------------------------------------------- forward

    def _inputs(self, batch: dict, valid: dict | None) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """The configured modalities of `batch`, shape-checked, with absent samples zeroed (so that their
        content, even NaN, can never reach the output)."""
        missing = [m for m in self.modalities if m not in batch]
        if missing:
            raise ValueError(f"Raceformer: batch lacks modalities {missing}; got keys {sorted(batch)}")
        xs, vs = {}, {}
        for m, shape in zip(self.modalities, self.shapes, strict=True):
            x = jnp.asarray(batch[m])
            if tuple(x.shape[1:]) != shape:
                raise ValueError(
                    f"Raceformer: batch[{m!r}] has shape {tuple(x.shape)}, expected (B, *{shape})"
                )
            v = (
                jnp.ones(x.shape[:1], bool)
                if valid is None or m not in valid
                else jnp.asarray(valid[m], bool)
            )
            xs[m] = jnp.where(v.reshape((-1,) + (1,) * len(shape)), x, jnp.zeros((), x.dtype))
            vs[m] = v
        return xs, vs

    def encode(
        self,
        batch: dict,
        valid: dict[str, jax.Array] | None = None,
        *,
        deterministic: bool = True,
        keep_idx: dict[str, jax.Array] | None = None,
        keep_mask: dict[str, jax.Array] | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> dict[str, jax.Array]:
        """Encode a Contract-1 batch (extra keys ignored; a modality missing from `valid`, or valid None,
        is present).

        keep_idx / keep_mask (patch modality -> int / bool [B, K_m]) encode only those patch slots (MAE).
        Returns {"cls": [B, D], "tokens": [B, T, D] (fused, CLS first), "mask": bool [B, T]}.
        """
        xs, vs = self._inputs(batch, valid)
        keep_idx, keep_mask = keep_idx or {}, keep_mask or {}
        tokens, slots = {}, {}
        for m in self.modalities:
            if m in self.patch_modalities:
                tokens[m] = self.encoders[m](
                    xs[m],
                    keep_idx=keep_idx.get(m),
                    keep_mask=keep_mask.get(m),
                    deterministic=deterministic,
                    rngs=rngs,
                )
                if m in keep_mask:
                    slots[m] = keep_mask[m]
            else:
                tokens[m] = self.encoders[m](xs[m])
        return self.fusion(tokens, vs, slots, deterministic=deterministic, rngs=rngs)

    def features(
        self,
        batch: dict,
        valid: dict[str, jax.Array] | None = None,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """The fused CLS feature [B, D] (what PPO's policy and value heads read)."""
        return self.encode(batch, valid, deterministic=deterministic, rngs=rngs)["cls"]
