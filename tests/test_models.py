"""Raceformer model: patching, shapes of every modality kind, missing-modality handling, jit, split/merge,
a hand-counted parameter total, and a train step that moves every parameter."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from src.config import ModalityConfig, ModelConfig
from src.models import Raceformer
from src.models.encoders import patchify, sincos_embedding, unpatchify

B = 3
SMALL = ModelConfig(
    embed_dim=16,
    depth=1,
    num_heads=2,
    mlp_ratio=2.0,
    patch_size=4,
    fusion_depth=1,
    decoder_dim=16,
    decoder_depth=1,
    decoder_heads=2,
    projection_dim=16,
    action_dim=2,
    vector_tokens=2,
    modalities={
        "lidar": ModalityConfig(shape=(16, 2)),  # 1-D sequence: 4 patches of 4 x 2 values
        "rgb": ModalityConfig(shape=(8, 8, 3)),  # image: 2 x 2 patches of 4 x 4 x 3
        "radar": ModalityConfig(
            shape=(8, 8, 1), patch_size=2
        ),  # per-modality patch size: 4 x 4 patches of 2 x 2
        "gps": ModalityConfig(shape=(3,)),
        "imu": ModalityConfig(shape=(6,)),
    },
)
NUM_PATCHES = {"lidar": 4, "rgb": 4, "radar": 16, "gps": 2, "imu": 2}
PATCH_DIM = {"lidar": 8, "rgb": 48, "radar": 4, "gps": 3, "imu": 6}


def make_batch(seed: int = 0, n: int = B) -> dict:
    rng = np.random.default_rng(seed)
    return {m: rng.normal(size=(n, *c.shape)).astype(np.float32) for m, c in SMALL.modalities.items()}


def all_valid(n: int = B) -> dict:
    return {m: np.ones(n, bool) for m in SMALL.modalities}


@nnx.jit
def encode(model: Raceformer, batch: dict, valid: dict) -> dict:
    """Every output of the model in one compiled function (compiling is the slow part of these tests)."""
    out = model.encode(batch, valid)
    feats = out["cls"]
    mean, log_std = model.policy_head(feats)
    heads = {
        "projection": model.projection_head(feats),
        "mean": mean,
        "log_std": log_std,
        "value": model.value_head(feats),
        "pretrain": model.pretrain_head(
            feats, model.split_tokens(out["tokens"]), model.split_tokens(out["mask"]), valid
        ),
    }
    return {**out, **heads}


@pytest.fixture(scope="module")
def model() -> Raceformer:
    return Raceformer(SMALL, rngs=nnx.Rngs(0))


# --------------------------------------------------------------------------------------------- patching


def test_patchify_is_row_major_and_inverts():
    x = np.arange(4 * 4 * 2, dtype=np.float32).reshape(1, 4, 4, 2)
    p = np.asarray(patchify(jnp.asarray(x), 2))
    assert p.shape == (1, 4, 8)
    # Patch 0: rows 0-1, columns 0-1, (row, column, channel) order; patch 1 is the next patch to the right.
    np.testing.assert_array_equal(p[0, 0], [0, 1, 2, 3, 8, 9, 10, 11])
    np.testing.assert_array_equal(p[0, 1], [4, 5, 6, 7, 12, 13, 14, 15])
    np.testing.assert_array_equal(p[0, 2], [16, 17, 18, 19, 24, 25, 26, 27])
    np.testing.assert_array_equal(unpatchify(p, 2, (4, 4, 2)), x)
    seq = np.arange(12, dtype=np.float32).reshape(1, 6, 2)
    ps = np.asarray(patchify(jnp.asarray(seq), 3))
    np.testing.assert_array_equal(ps[0], [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]])
    np.testing.assert_array_equal(unpatchify(ps, 3, (6, 2)), seq)


def test_sincos_2d_values():
    emb = sincos_embedding((2, 3), 8)
    assert emb.shape == (6, 8)
    # Position (row 1, column 2) is patch 5; each half has frequencies 1 and 1/100.
    expected = [
        math.sin(1),
        math.sin(0.01),
        math.cos(1),
        math.cos(0.01),
        math.sin(2),
        math.sin(0.02),
        math.cos(2),
        math.cos(0.02),
    ]
    np.testing.assert_allclose(emb[5], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_embedding((2, 2), 6)


def test_indivisible_shapes_name_the_modality():
    bad_image = dataclasses.replace(
        SMALL, modalities={**SMALL.modalities, "rgb": ModalityConfig(shape=(10, 8, 3))}
    )
    with pytest.raises(ValueError, match=r"model\.modalities\.rgb.*patch_size 4"):
        Raceformer(bad_image, rngs=nnx.Rngs(0))
    bad_seq = dataclasses.replace(SMALL, modalities={"lidar": ModalityConfig(shape=(18, 1), patch_size=4)})
    with pytest.raises(ValueError, match=r"model\.modalities\.lidar"):
        Raceformer(bad_seq, rngs=nnx.Rngs(0))


# --------------------------------------------------------------------------------------------- shapes


def test_output_shapes_for_every_modality_kind(model):
    assert model.modalities == ("lidar", "rgb", "radar", "gps", "imu")
    for m in model.modalities:
        assert model.num_patches(m) == NUM_PATCHES[m], m
        assert model.patch_dim(m) == PATCH_DIM[m], m
    out = encode(model, make_batch(), all_valid())
    t = 1 + sum(NUM_PATCHES.values())
    assert out["cls"].shape == (B, 16) and out["tokens"].shape == (B, t, 16) and out["mask"].shape == (B, t)
    assert bool(out["mask"].all())
    np.testing.assert_array_equal(out["cls"], out["tokens"][:, 0])
    parts = model.split_tokens(out["tokens"])
    assert {m: p.shape[1] for m, p in parts.items()} == NUM_PATCHES
    # Heads on the fused features.
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out["projection"]), axis=1), 1.0, rtol=1e-5)
    assert out["projection"].shape == (B, 16)
    assert out["mean"].shape == (B, 2) and bool((jnp.abs(out["mean"]) < 1).all())
    np.testing.assert_array_equal(out["log_std"], [-0.5, -0.5])
    assert out["value"].shape == (B,)
    assert {m: p.shape for m, p in out["pretrain"].items()} == {
        m: (B, NUM_PATCHES[m], PATCH_DIM[m]) for m in ("lidar", "rgb", "radar")
    }


def test_wrong_batch_shape_is_an_error(model):
    batch = make_batch()
    batch["imu"] = np.zeros((B, 5), np.float32)
    with pytest.raises(ValueError, match="imu"):
        model.encode(batch)


# ---------------------------------------------------------------------------------------- missing modalities


def _check_absent_content_is_ignored(mdl: Raceformer):
    batch = make_batch()
    valid = all_valid()
    valid["rgb"] = np.array([True, False, True])
    valid["gps"] = np.array([True, False, True])
    other = {m: v.copy() for m, v in batch.items()}
    other["rgb"][1] = 100.0 * np.random.default_rng(5).normal(size=other["rgb"][1].shape)
    other["rgb"][1, 0, 0, 0] = np.nan
    other["gps"][1] = [1e3, -1e3, 7.0]
    a, b = encode(mdl, batch, valid), encode(mdl, other, valid)
    np.testing.assert_allclose(a["cls"], b["cls"], atol=1e-6)
    np.testing.assert_allclose(a["tokens"], b["tokens"], atol=1e-6)
    # With the modalities present, the same change moves sample 1 (and only sample 1).
    a, b = encode(mdl, batch, all_valid()), encode(mdl, other, all_valid())
    diff = np.abs(np.asarray(a["cls"]) - np.asarray(b["cls"])).max(axis=1)
    assert np.isnan(diff[1]) or diff[1] > 1e-3
    np.testing.assert_allclose(diff[[0, 2]], 0.0, atol=1e-6)
    # Every modality absent: the CLS token attends to itself, features stay finite.
    none = {m: np.array([True, False, True]) for m in SMALL.modalities}
    assert np.isfinite(np.asarray(encode(mdl, batch, none)["cls"])).all()


def test_mask_mode_ignores_absent_modalities(model):
    _check_absent_content_is_ignored(model)
    valid = all_valid()
    valid["rgb"] = np.array([True, False, True])
    out = encode(model, make_batch(), valid)
    rgb_mask = np.asarray(model.split_tokens(out["mask"])["rgb"])
    np.testing.assert_array_equal(rgb_mask.all(axis=1), [True, False, True])
    np.testing.assert_array_equal(np.asarray(model.split_tokens(out["tokens"])["rgb"])[1], 0.0)


def test_learned_token_mode_ignores_absent_modalities():
    mdl = Raceformer(dataclasses.replace(SMALL, missing_modality="learned_token"), rngs=nnx.Rngs(1))
    _check_absent_content_is_ignored(mdl)


# --------------------------------------------------------------------------------------------- transforms


def test_split_merge_roundtrips_to_identical_outputs(model):
    batch, valid = make_batch(1), all_valid()
    valid["radar"] = np.array([False, True, True])
    first = encode(model, batch, valid)
    graphdef, state = nnx.split(model)
    clone = nnx.merge(graphdef, jax.tree.map(jnp.array, state))  # fresh buffers, same values
    again = encode(clone, batch, valid)
    for key in ("tokens", "mask", "projection", "mean", "value"):
        np.testing.assert_array_equal(first[key], again[key])
    # A different parameter state through the same graph gives different outputs.
    other = nnx.merge(graphdef, jax.tree.map(lambda x: x + 0.01 if x.dtype == jnp.float32 else x, state))
    assert not np.allclose(encode(other, batch, valid)["tokens"], first["tokens"])


def _block(d: int, hidden: int) -> int:
    # LN (2d) + qkv (3d^2 + 3d) + out (d^2 + d) + LN (2d) + fc1 (d*h + h) + fc2 (h*d + d)
    return 4 * d * d + 2 * d * hidden + 9 * d + hidden


def _expected_params(cfg: ModelConfig, learned_pos: bool, learned_token: bool) -> int:
    d, dd = cfg.embed_dim, cfg.decoder_dim
    hidden, dec_hidden = int(d * cfg.mlp_ratio), int(dd * cfg.mlp_ratio)
    patch = {m: n for m, n in NUM_PATCHES.items() if m in ("lidar", "rgb", "radar")}
    n_mod = len(cfg.modalities)
    encoders = 0
    for m, n in patch.items():  # patch embedding + [position table] + blocks + final LN
        encoders += (
            PATCH_DIM[m] * d + d + (n * d if learned_pos else 0) + cfg.depth * _block(d, hidden) + 2 * d
        )
    for m in ("gps", "imu"):  # one linear map to vector_tokens tokens
        encoders += PATCH_DIM[m] * cfg.vector_tokens * d + cfg.vector_tokens * d
    fusion = (
        d + n_mod * d + (n_mod * d if learned_token else 0) + cfg.fusion_depth * _block(d, hidden) + 2 * d
    )
    decoder = (d * dd + dd) + dd + n_mod * dd + cfg.decoder_depth * _block(dd, dec_hidden) + 2 * dd
    decoder += sum(
        dd * PATCH_DIM[m] + PATCH_DIM[m] + (n * dd if learned_pos else 0) for m, n in patch.items()
    )
    projection = d * d + d + d * cfg.projection_dim + cfg.projection_dim
    policy = d * cfg.action_dim + cfg.action_dim + cfg.action_dim
    value = d + 1
    return encoders + fusion + decoder + projection + policy + value


@pytest.mark.parametrize("learned", [False, True])
def test_parameter_count_matches_closed_form(learned):
    cfg = dataclasses.replace(
        SMALL,
        pos_embedding="learned" if learned else "sincos",
        missing_modality="learned_token" if learned else "mask",
    )
    mdl = Raceformer(cfg, rngs=nnx.Rngs(0))
    count = sum(int(np.size(x)) for x in jax.tree.leaves(nnx.state(mdl, nnx.Param)))
    assert count == _expected_params(cfg, learned, learned)
    if not learned:  # the formula evaluated by hand: encoders 8_128, fusion 2_352, decoder 3_644, heads 597
        assert count == 14_721


# --------------------------------------------------------------------------------------------- training


def test_train_step_moves_every_parameter():
    cfg = dataclasses.replace(SMALL, pos_embedding="learned", missing_modality="learned_token")
    mdl = Raceformer(cfg, rngs=nnx.Rngs(2))
    optimizer = nnx.Optimizer(mdl, optax.adam(1e-2), wrt=nnx.Param)
    batch = make_batch(3, n=2)
    valid = {m: np.array([True, False]) for m in SMALL.modalities}  # sample 1 sees the learned tokens only
    c = jnp.asarray(np.random.default_rng(0).normal(size=(cfg.projection_dim,)), jnp.float32)

    def loss_fn(m: Raceformer) -> jax.Array:
        out = m.encode(batch, valid)
        tokens, masks = m.split_tokens(out["tokens"]), m.split_tokens(out["mask"])
        # The decoder sees every other patch as a mask token, so the mask token gets a gradient too.
        keep_idx = {
            p: jnp.broadcast_to(jnp.arange(m.num_patches(p)), (2, m.num_patches(p)))
            for p in m.patch_modalities
        }
        dec_masks = {**masks, **{p: masks[p] & (keep_idx[p] % 2 == 0) for p in m.patch_modalities}}
        preds = m.pretrain_head(out["cls"], tokens, dec_masks, valid, keep_idx)
        feats = out["cls"]
        mean, log_std = m.policy_head(feats)
        return (
            sum(jnp.mean(jnp.square(p)) for p in preds.values())
            + (m.projection_head(feats) @ c).mean()
            + mean.sum()
            + log_std.sum()
            + m.value_head(feats).mean()
        )

    @nnx.jit
    def step(m: Raceformer, opt: nnx.Optimizer) -> jax.Array:
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        opt.update(m, grads)
        return loss

    before = jax.tree.map(np.array, nnx.state(mdl, nnx.Param))
    assert np.isfinite(float(step(mdl, optimizer)))
    after = jax.tree.map(np.array, nnx.state(mdl, nnx.Param))
    flat_before = jax.tree_util.tree_flatten_with_path(before)[0]
    flat_after = jax.tree.leaves(after)
    unchanged = [
        jax.tree_util.keystr(p) for (p, x), y in zip(flat_before, flat_after) if np.array_equal(x, y)
    ]
    assert not unchanged, f"parameters not updated: {unchanged}"
    assert len(flat_before) > 50


# ---------------------------------------------------------------------------------------- absent modality weights


def _absent_weights_do_not_reach(mdl: Raceformer, perturb_type_embedding: bool):
    """rgb absent in sample 1: moving rgb's encoder weights (and, in "mask" mode, its modality-type embedding)
    must leave that sample's CLS and every token bitwise unchanged, while sample 0 (rgb present) moves."""
    batch, valid = make_batch(2), all_valid()
    valid["rgb"] = np.array([True, False, True])
    base = encode(mdl, batch, valid)
    graphdef, state = nnx.split(mdl)
    other = nnx.merge(graphdef, jax.tree.map(jnp.array, state))
    rng = np.random.default_rng(3)  # random, not constant, shifts: a LayerNorm would remove a constant one
    proj = other.encoders["rgb"].embed.proj
    proj.kernel[...] = proj.kernel[...] + rng.normal(size=proj.kernel.shape).astype(np.float32)
    proj.bias[...] = proj.bias[...] + rng.normal(size=proj.bias.shape).astype(np.float32)
    if perturb_type_embedding:
        i = mdl.modalities.index("rgb")
        shift = rng.normal(size=other.fusion.type_embed.shape[1:]).astype(np.float32)
        other.fusion.type_embed[...] = other.fusion.type_embed[...].at[i].add(shift)
    moved = encode(other, batch, valid)
    for key in ("cls", "tokens"):
        np.testing.assert_array_equal(np.asarray(moved[key])[1], np.asarray(base[key])[1], err_msg=key)
    assert np.abs(np.asarray(moved["cls"])[0] - np.asarray(base["cls"])[0]).max() > 1e-3


def test_mask_mode_attention_ignores_an_absent_modality_entirely(model):
    _absent_weights_do_not_reach(model, perturb_type_embedding=True)


def test_learned_token_mode_ignores_an_absent_modality_encoder():
    mdl = Raceformer(dataclasses.replace(SMALL, missing_modality="learned_token"), rngs=nnx.Rngs(1))
    _absent_weights_do_not_reach(mdl, perturb_type_embedding=False)
