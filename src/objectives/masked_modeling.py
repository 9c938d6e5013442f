"""Masked multimodal modeling (MultiMAE style).

Every present patch modality (image/BEV and 1-D sequence modalities) is patchified; a random subset of its
patches is encoded, the rest is predicted by `PretrainHead` and scored by MSE on the masked patches only.

Choices, fixed here so that shapes stay static under jit:
- Vector modalities (GPS, IMU) are never masked: their `vector_tokens` tokens are always visible context and
  carry no reconstruction loss. Each is one linear projection of a handful of numbers, so hiding it would only
  remove the modality as a whole, and a vector cannot be predicted patch by patch.
- `dirichlet_alpha == 0`: every patch modality keeps a fixed number of visible patches,
  K_m = clip(round(N_m * (1 - mask_ratio)), 1, N_m), so each encoder runs on exactly K_m tokens (the MAE
  saving).
- `dirichlet_alpha > 0`: one overall visible budget K = clip(round(N * (1 - mask_ratio)), 1, N) over all N
  patch tokens is split per sample between the PRESENT patch modalities by a Dirichlet(alpha) draw (MultiMAE).
  Modality m then has min(N_m, K) slots; the first k_m of them are real, the others are key-masked. The
  per-sample total is exactly min(K, patches of the present modalities): shares beyond a modality's patch
  count move on to the next modality in canonical order. The price of static shapes: each encoder runs on
  min(N_m, K) slots, so with several large modalities this mode saves less encoder compute than the fixed
  per-modality budget.
- Absent modalities (valid False) contribute neither tokens (key-masked or replaced by the fusion) nor loss.
- The total loss is the mean over (sample, patch modality) pairs that are present and have at least one masked
  patch of that pair's mean squared error over its masked patches (every modality weighs the same, whatever
  its patch count).
- `norm_pix_loss` names the modalities whose target patches are normalised by their own mean and variance (MAE's
  normalised-pixel target). It suits camera images, whose patches all carry texture; on a sparse BEV grid a patch
  with one occupied cell becomes a single outlier of sqrt(P - 1) (about 30 for a 16 x 16 x 4 patch), so near-empty
  patches would dominate the loss. The config default is therefore camera images only (`rgb`, `ir`).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from src.models.encoders import patchify
from src.objectives.masking import sample_patch_masks, visible_positions

if TYPE_CHECKING:
    from src.models.raceformer import Raceformer


def _patch_targets(x: jax.Array, patch_size: int, normalise: bool) -> jax.Array:
    target = patchify(x.astype(jnp.float32), patch_size)
    if normalise:
        mean = target.mean(axis=-1, keepdims=True)
        var = target.var(axis=-1, keepdims=True)
        target = (target - mean) / jnp.sqrt(var + 1e-6)
    return target


def masked_predictions(
    model: Raceformer,
    batch: dict,
    key: jax.Array,
    *,
    mask_ratio: float = 0.5,
    dirichlet_alpha: float = 0.0,
    norm_pix_loss: Collection[str] = (),
    deterministic: bool = False,
) -> dict[str, dict[str, jax.Array]]:
    """The masked-modeling head's work on `batch`: per patch modality {"pred", "target": [B, N, P],
    "masked": float [B, N] (masked and present), "visible": bool [B, N] (encoded and present), "present":
    bool [B] (the modality is valid)}.

    Shared by `masked_modeling_loss` and the reconstruction health figure (`src.analysis.probe`), so both
    see the same masks and targets. `key` draws the masks and (when not deterministic) the dropout.
    """
    mods = model.patch_modalities
    if not mods:
        raise ValueError("masked_modeling_loss: the model has no patch (image or sequence) modality to mask")
    if isinstance(norm_pix_loss, bool | str):
        raise TypeError(
            f"masked_modeling_loss: norm_pix_loss={norm_pix_loss!r}; expected a collection of modality names"
        )
    given = batch.get("valid", {})
    b = jnp.shape(batch[model.modalities[0]])[0]
    valid = {m: jnp.asarray(given[m], bool) if m in given else jnp.ones((b,), bool) for m in model.modalities}
    mask_key, drop_key = jax.random.split(key)
    keep_idx, keep_mask = sample_patch_masks(
        mask_key,
        {m: model.num_patches(m) for m in mods},
        {m: valid[m] for m in mods},
        mask_ratio=mask_ratio,
        dirichlet_alpha=dirichlet_alpha,
    )
    rngs = None if deterministic else nnx.Rngs(dropout=drop_key)
    enc = model.encode(
        batch, valid, deterministic=deterministic, keep_idx=keep_idx, keep_mask=keep_mask, rngs=rngs
    )
    tokens = model.split_tokens(enc["tokens"], keep_idx)
    token_mask = model.split_tokens(enc["mask"], keep_idx)
    preds = model.pretrain_head(
        enc["cls"], tokens, token_mask, valid, keep_idx, deterministic=deterministic, rngs=rngs
    )
    out = {}
    for m in mods:
        present = valid[m]
        x = jnp.asarray(batch[m])
        x = jnp.where(present.reshape((-1,) + (1,) * (x.ndim - 1)), x, jnp.zeros((), x.dtype))
        visible = visible_positions(keep_idx[m], keep_mask[m], model.num_patches(m))
        out[m] = {
            "pred": preds[m],
            "target": _patch_targets(x, model.patch_size(m), m in norm_pix_loss),
            "masked": (~visible & present[:, None]).astype(jnp.float32),
            "visible": visible & present[:, None],
            "present": present,
        }
    return out


def masked_modeling_loss(
    model: Raceformer,
    batch: dict,
    key: jax.Array,
    *,
    mask_ratio: float = 0.5,
    dirichlet_alpha: float = 0.0,
    norm_pix_loss: Collection[str] = (),
    deterministic: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """MultiMAE loss of `model` on a Contract-1 `batch` (with batch["valid"]; missing = all present).

    `norm_pix_loss`: the modalities whose targets are normalised per patch (module docstring); names of
    modalities the model does not have are ignored, so one setting serves models with different inputs.

    `key` draws the masks and (when not deterministic) the dropout. Returns (loss, aux) with aux["loss/<m>"]
    the masked MSE of each patch modality over the samples where it is present (0 when it is absent
    everywhere), aux["mask_fraction"] (masked / present patches) and aux["visible_tokens"] (mean visible
    patches a sample).
    """
    parts = masked_predictions(
        model, batch, key, mask_ratio=mask_ratio, dirichlet_alpha=dirichlet_alpha,
        norm_pix_loss=norm_pix_loss, deterministic=deterministic,
    )
    b = jnp.shape(batch[model.modalities[0]])[0]
    aux: dict[str, jax.Array] = {}
    pair_loss, pair_used, masked_total, present_total, visible_total = 0.0, 0.0, 0.0, 0.0, 0.0
    for m, part in parts.items():
        masked = part["masked"]
        err = jnp.mean(jnp.square(part["pred"] - part["target"]), axis=-1)  # [B, N]
        count = masked.sum(axis=1)
        sample_loss = (err * masked).sum(axis=1) / jnp.maximum(count, 1.0)
        used = (count > 0).astype(jnp.float32)
        aux[f"loss/{m}"] = (sample_loss * used).sum() / jnp.maximum(used.sum(), 1.0)
        pair_loss = pair_loss + (sample_loss * used).sum()
        pair_used = pair_used + used.sum()
        masked_total = masked_total + count.sum()
        present_total = present_total + part["present"].sum() * model.num_patches(m)
        visible_total = visible_total + part["visible"].sum()
    aux["mask_fraction"] = masked_total / jnp.maximum(present_total, 1.0)
    aux["visible_tokens"] = visible_total / b
    return pair_loss / jnp.maximum(pair_used, 1.0), aux
