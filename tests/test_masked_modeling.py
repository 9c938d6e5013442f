"""Masked multimodal modeling: learning, absent modalities, masked-only loss, Dirichlet budgets, compiles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from src.config import TrainingConfig
from src.models import Raceformer
from src.models.encoders import patchify
from src.objectives.masked_modeling import masked_modeling_loss
from src.objectives.masking import sample_patch_masks
from tests.test_models import SMALL, make_batch

PATCH_MODS = ("lidar", "rgb", "radar")
TRACES = {"loss": 0}


def _loss(model, batch, key, mask_ratio, dirichlet_alpha, norm_pix_loss):
    TRACES["loss"] += 1  # runs only while tracing
    return masked_modeling_loss(
        model,
        batch,
        key,
        mask_ratio=mask_ratio,
        dirichlet_alpha=dirichlet_alpha,
        norm_pix_loss=norm_pix_loss,
        deterministic=True,
    )


loss_fn = nnx.jit(_loss, static_argnums=(3, 4, 5))


def batch_with_gaps(seed: int = 0) -> dict:
    batch = make_batch(seed)
    batch["valid"] = {m: np.ones(3, bool) for m in SMALL.modalities}
    batch["valid"]["rgb"] = np.array([True, False, True])
    batch["valid"]["radar"] = np.array([True, True, False])
    return batch


@pytest.fixture(scope="module")
def model() -> Raceformer:
    return Raceformer(SMALL, rngs=nnx.Rngs(0))


def test_loss_falls_and_compiles_once():
    mdl = Raceformer(SMALL, rngs=nnx.Rngs(1))
    optimizer = nnx.Optimizer(mdl, optax.adam(3e-3), wrt=nnx.Param)
    batch = batch_with_gaps()
    traces = []

    @nnx.jit
    def step(m, opt, key):
        traces.append(1)
        (loss, aux), grads = nnx.value_and_grad(
            lambda m_: masked_modeling_loss(m_, batch, key), has_aux=True
        )(m)
        opt.update(m, grads)
        return loss, aux

    losses = []
    for i in range(30):
        loss, aux = step(mdl, optimizer, jax.random.fold_in(jax.random.key(0), i))
        losses.append(float(loss))
    assert len(traces) == 1, "the train step recompiled"
    assert np.isfinite(losses).all()
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.7 * first, (first, last)
    assert set(aux) == {"loss/lidar", "loss/rgb", "loss/radar", "mask_fraction", "visible_tokens"}
    # Fixed per-modality budget at mask_ratio 0.5: 2 of 4, 2 of 4 and 8 of 16 patches visible.
    np.testing.assert_allclose(aux["mask_fraction"], 0.5)


def test_absent_modality_values_do_not_change_the_loss(model):
    batch = batch_with_gaps()
    key = jax.random.key(3)
    loss, aux = loss_fn(model, batch, key, 0.5, 0.0, ())
    other = dict(batch)
    other["rgb"] = batch["rgb"].copy()
    other["rgb"][1] = 1e3 * np.random.default_rng(9).normal(size=batch["rgb"][1].shape)
    other["radar"] = batch["radar"].copy()
    other["radar"][2] = np.nan
    loss2, aux2 = loss_fn(model, other, key, 0.5, 0.0, ())
    assert float(loss) == float(loss2)
    for k in aux:
        assert float(aux[k]) == float(aux2[k]), k
    # The same change with rgb present in sample 1 does change the loss...
    present = dict(other, valid={**other["valid"], "rgb": np.ones(3, bool)})
    base = dict(batch, valid=present["valid"])
    assert float(loss_fn(model, base, key, 0.5, 0.0, ())[0]) != float(
        loss_fn(model, present, key, 0.5, 0.0, ())[0]
    )
    # ...and so does a vector modality: always visible, it is context for every prediction.
    moved = dict(batch, gps=batch["gps"] + 1.0)
    assert float(loss_fn(model, moved, key, 0.5, 0.0, ())[0]) != float(loss)


@nnx.jit
def _predict(model, batch, valid, keep_idx, keep_mask):
    enc = model.encode(batch, valid, keep_idx=keep_idx, keep_mask=keep_mask)
    return model.pretrain_head(
        enc["cls"],
        model.split_tokens(enc["tokens"], keep_idx),
        model.split_tokens(enc["mask"], keep_idx),
        valid,
        keep_idx,
    )


def _reference_loss(model, batch, key, mask_ratio, dirichlet_alpha, norm_pix):
    """The loss recomputed with explicit loops over (sample, modality, patch): only masked patches count; the
    targets of the modalities in `norm_pix` are normalised by their own mean and variance."""
    valid = {m: np.asarray(v) for m, v in batch["valid"].items()}
    mask_key, _ = jax.random.split(key)
    keep_idx, keep_mask = sample_patch_masks(
        mask_key,
        {m: model.num_patches(m) for m in PATCH_MODS},
        {m: valid[m] for m in PATCH_MODS},
        mask_ratio=mask_ratio,
        dirichlet_alpha=dirichlet_alpha,
    )
    preds = _predict(model, batch, valid, keep_idx, keep_mask)
    pair_losses = []
    for m in PATCH_MODS:
        target = np.asarray(patchify(jnp.asarray(batch[m]), model.patch_size(m)), np.float64)
        pred = np.asarray(preds[m], np.float64)
        for b in range(target.shape[0]):
            if not valid[m][b]:
                continue
            visible = {int(i) for i, k in zip(np.asarray(keep_idx[m][b]), np.asarray(keep_mask[m][b])) if k}
            errors = []
            for n in range(target.shape[1]):
                if n in visible:
                    continue
                t = target[b, n]
                if m in norm_pix:
                    t = (t - t.mean()) / np.sqrt(t.var() + 1e-6)
                errors.append(np.mean((pred[b, n] - t) ** 2))
            if errors:
                pair_losses.append(np.mean(errors))
    return np.mean(pair_losses)


def test_loss_counts_only_masked_patches(model):
    batch = batch_with_gaps(1)
    key = jax.random.key(11)
    loss, _ = loss_fn(model, batch, key, 0.5, 1.0, PATCH_MODS)
    np.testing.assert_allclose(float(loss), _reference_loss(model, batch, key, 0.5, 1.0, PATCH_MODS), rtol=1e-4)


def test_norm_pix_is_per_modality_and_spares_sparse_bev_grids(model):
    """A BEV patch with one occupied cell: normalised per patch it becomes one sqrt(P - 1) outlier; the default
    leaves BEV targets as they are (bounded by the cell's value) and still normalises the camera's patches."""
    default = TrainingConfig().norm_pix_loss
    assert set(default) == {"rgb", "ir"}
    batch = batch_with_gaps(4)
    bev = np.zeros((3, 8, 8, 1), np.float32)  # SMALL's radar: a BEV grid of 2 x 2 patches (P = 4 values)
    bev[:, 3, 2, 0] = 1.0  # one occupied cell, in patch (1, 1)
    batch["radar"] = bev
    p = model.patch_size("radar")
    raw = np.asarray(patchify(jnp.asarray(bev), p))
    patch = raw[:, (3 // p) * (8 // p) + 2 // p]
    normalised = (patch - patch.mean(-1, keepdims=True)) / np.sqrt(patch.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(np.abs(normalised).max(), np.sqrt(p * p - 1), rtol=1e-4)
    key = jax.random.key(3)
    loss, aux = loss_fn(model, batch, key, 0.5, 0.0, default)
    np.testing.assert_allclose(float(loss), _reference_loss(model, batch, key, 0.5, 0.0, {"rgb"}), rtol=1e-4)
    # the loss tells the settings apart: BEV normalised too, or the camera not normalised, would differ
    for other in ({"rgb", "radar"}, set()):
        assert abs(_reference_loss(model, batch, key, 0.5, 0.0, other) - float(loss)) > 1e-3 * float(loss)
    with pytest.raises(TypeError, match="norm_pix_loss"):
        masked_modeling_loss(model, batch, key, norm_pix_loss=True)


def test_nothing_masked_gives_zero_loss_without_nan(model):
    loss, aux = loss_fn(model, batch_with_gaps(), jax.random.key(0), 0.0, 0.0, ())
    assert float(loss) == 0.0
    assert float(aux["mask_fraction"]) == 0.0
    assert all(np.isfinite(float(v)) for v in aux.values())


def test_dirichlet_budget_is_fixed_and_split_between_present_modalities():
    n = {"lidar": 4, "rgb": 4, "radar": 16}
    valid = {
        "lidar": np.array([True, True, True, False, True, False]),
        "rgb": np.array([True, False, True, True, True, False]),
        "radar": np.array([True, True, False, True, True, False]),
    }
    sample = jax.jit(lambda k: sample_patch_masks(k, n, valid, mask_ratio=0.5, dirichlet_alpha=1.0))
    budget = 12  # round(24 * 0.5)
    capacity = sum(np.where(valid[m], n[m], 0) for m in n)  # [12+... per sample]
    splits = set()
    for seed in range(5):
        keep_idx, keep_mask = sample(jax.random.key(seed))
        counts = np.stack([np.asarray(keep_mask[m]).sum(axis=1) for m in n], axis=1)
        np.testing.assert_array_equal(counts.sum(axis=1), np.minimum(budget, capacity))
        for j, m in enumerate(n):
            assert keep_idx[m].shape == (6, min(n[m], budget))
            assert (counts[:, j] <= n[m]).all()
            np.testing.assert_array_equal(counts[~valid[m], j], 0)
            idx = np.asarray(keep_idx[m])
            assert all(len(set(row)) == len(row) for row in idx)
        splits.add(tuple(counts[0]))
    assert len(splits) > 1, "the Dirichlet draw should vary the split between modalities"
    # Without Dirichlet: a fixed count per modality (round(N_m / 2)), every slot real.
    keep_idx, keep_mask = sample_patch_masks(jax.random.key(0), n, valid, mask_ratio=0.5)
    assert {m: keep_idx[m].shape[1] for m in n} == {"lidar": 2, "rgb": 2, "radar": 8}
    assert all(bool(keep_mask[m].all()) for m in n)
    with pytest.raises(ValueError, match="mask_ratio"):
        sample_patch_masks(jax.random.key(0), n, valid, mask_ratio=1.0)


def test_dirichlet_loss_runs_with_fixed_visible_count(model):
    batch = batch_with_gaps(2)
    loss, aux = loss_fn(model, batch, jax.random.key(5), 0.5, 0.5, ())
    assert np.isfinite(float(loss)) and float(loss) > 0
    # Budget 12 of 24 patches: samples 0 and 1 have room for all 12 (24 and 20 present patches), sample 2
    # (radar absent) only 4 + 4 = 8.
    np.testing.assert_allclose(float(aux["visible_tokens"]), (12 + 12 + 8) / 3, rtol=1e-6)


# --------------------------------------------------------------------------------------------- no leak of masked content


@nnx.jit
def _encode_and_predict(model, batch, valid, keep_idx, keep_mask):
    enc = model.encode(batch, valid, keep_idx=keep_idx, keep_mask=keep_mask)
    preds = model.pretrain_head(
        enc["cls"],
        model.split_tokens(enc["tokens"], keep_idx),
        model.split_tokens(enc["mask"], keep_idx),
        valid,
        keep_idx,
    )
    return enc, preds


@pytest.mark.parametrize("dirichlet_alpha", [0.0, 1.0], ids=["fixed", "dirichlet"])
def test_masked_content_cannot_leak(model, dirichlet_alpha):
    """With fixed keep indices (and, in Dirichlet mode, some slots switched off), replacing the content of
    every patch that is not visible leaves the encoder's outputs and every prediction bitwise unchanged, for
    each patch modality; replacing a visible patch does change them."""
    from src.models.encoders import unpatchify
    from src.objectives.masking import visible_positions

    batch = make_batch(4)
    valid = {m: np.ones(3, bool) for m in SMALL.modalities}
    n = {m: model.num_patches(m) for m in PATCH_MODS}
    for seed in range(20):  # the first draw that hides part of every modality (and switches a slot off)
        keep_idx, keep_mask = sample_patch_masks(
            jax.random.key(seed),
            n,
            {m: valid[m] for m in PATCH_MODS},
            mask_ratio=0.5,
            dirichlet_alpha=dirichlet_alpha,
        )
        hides = all(int(keep_mask[m].sum(1).min()) < n[m] for m in PATCH_MODS)
        if hides and (not dirichlet_alpha or not all(bool(keep_mask[m].all()) for m in PATCH_MODS)):
            break
    else:
        raise AssertionError("no mask draw hides part of every modality")
    base = _encode_and_predict(model, batch, valid, keep_idx, keep_mask)
    rng = np.random.default_rng(0)
    for m in PATCH_MODS:
        visible = np.asarray(visible_positions(keep_idx[m], keep_mask[m], n[m]))[..., None]
        assert (~visible).any() and visible.any()
        ps, shape = model.patch_size(m), batch[m].shape[1:]
        patches = np.asarray(patchify(jnp.asarray(batch[m]), ps))
        noise = (100.0 * rng.normal(size=patches.shape)).astype(np.float32)

        def with_patches(p, m=m, ps=ps, shape=shape):
            return dict(batch, **{m: np.asarray(unpatchify(jnp.asarray(p), ps, shape))})

        hidden = _encode_and_predict(
            model, with_patches(np.where(visible, patches, noise)), valid, keep_idx, keep_mask
        )
        for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(hidden), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"masked {m} content reached the outputs")
        shown = _encode_and_predict(
            model, with_patches(np.where(visible, noise, patches)), valid, keep_idx, keep_mask
        )
        assert not np.array_equal(base[0]["cls"], shown[0]["cls"]), f"visible {m} content is ignored"
