"""Terrain objectives against hand computation, a tiny end-to-end run, and exact checkpoint resume."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from src import config
from src.infra.run_dir import run_path
from src.terrain import dataset, evaluation, store, training
from src.terrain.config import TerrainConfig, spec_path
from src.terrain.objectives import preference_loss, triplet_margin_loss, vicreg_loss


def test_triplet_margin_loss_matches_hand_computation():
    a = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    p = jnp.array([[0.0, 1.0], [0.0, 1.0]])
    n = jnp.array([[1.0, 0.0], [0.0, -3.0]])
    # normalised: row 0: d(a,p) = sqrt 2, d(a,n) = 0, d(p,n) = sqrt 2 -> swap keeps 0: relu(sqrt2 - 0 + 1)
    #             row 1: d(a,p) = 0, d(a,n) = 2, d(p,n) = 2 -> relu(0 - 2 + 1) = 0
    expected = (math.sqrt(2) + 1.0) / 2
    assert float(triplet_margin_loss(a, p, n)) == pytest.approx(expected, abs=1e-5)
    # swap matters when the positive is nearer the negative than the anchor is
    a2, p2, n2 = jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0]]), jnp.array([[-1.0, 0.0]])
    # d(a,p) = sqrt2, d(a,n) = 2, d(p,n) = sqrt2: without swap relu(sqrt2 - 2 + 1), with swap relu(1)
    assert float(triplet_margin_loss(a2, p2, n2, swap=False)) == pytest.approx(math.sqrt(2) - 1, abs=1e-5)
    assert float(triplet_margin_loss(a2, p2, n2, swap=True)) == pytest.approx(1.0, abs=1e-5)


def test_vicreg_matches_hand_computation():
    z1 = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    z2 = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    inv = np.mean((z1 - z2) ** 2)  # 1 / 6
    std, cov = 0.0, 0.0
    for z in (z1, z2):
        c = np.cov(z.T)  # ddof = 1
        std += np.mean(np.maximum(0.0, 1.0 - np.sqrt(np.diag(c) + 1e-4))) / 2
        cov += 2 * c[0, 1] ** 2 / 2
    total, parts = vicreg_loss(jnp.asarray(z1), jnp.asarray(z2))
    assert float(parts["invariance"]) == pytest.approx(inv, rel=1e-5)
    assert float(parts["variance"]) == pytest.approx(std, rel=1e-5)
    assert float(parts["covariance"]) == pytest.approx(cov, rel=1e-5)
    assert float(total) == pytest.approx(25 * inv + 25 * std + cov, rel=1e-5)


def test_preference_loss_matches_hand_computation():
    c1 = jnp.array([1.0, 1.0, 1.0, 1.0])
    c2 = jnp.array([3.0, 3.0, 1.05, 1.5])
    label = jnp.array([-1.0, 1.0, 0.0, 0.0])
    # -1: relu(1 - 3 + 1) = 0; 1: relu(-(1 - 3) + 1) = 3; 0: relu(0.05 - 0.1) = 0, relu(0.5 - 0.1) = 0.4
    assert float(preference_loss(c1, c2, label)) == pytest.approx((0 + 3 + 0 + 0.4) / 4, abs=1e-6)


def _cfg(tmp_path, **represent) -> TerrainConfig:
    cfg = TerrainConfig()
    return config.replace(
        cfg,
        run={"name": "t", "out_dir": str(tmp_path / "runs"), "seed": 0},
        source={"root": str(tmp_path / "data"), "synthetic_frames": 160},
        scan={"patch_px": 12, "max_path_m": 2.0},
        represent={"steps": 30, "batch": 16, "checkpoint_every": 30, "log_every": 10, **represent},
        cost={"steps": 150, "batch": 64, "checkpoint_every": 150, "log_every": 50},
        eval={"pairs": 1000},
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("terrain")
    cfg = _cfg(tmp)
    ps = store.extract(cfg)
    encoder, rep_losses = training.represent(cfg, ps)
    z = training.embed(encoder, ps.patches)
    from src.terrain import spec

    head, cost_losses = training.train_cost(cfg, ps, z, spec.load_spec(spec_path(cfg, "train"), tmp / "data"))
    return cfg, ps, encoder, head, rep_losses, cost_losses


def test_extract_writes_a_store_that_loads_back(trained):
    cfg, ps, *_ = trained
    back = dataset.load(run_path(cfg) / "patches")
    np.testing.assert_array_equal(back.patches, ps.patches)
    assert back.categories == ["smooth", "ridged", "checker"] == back.holdout_categories
    assert (ps.category >= 0).any() and (ps.holdout >= 0).any() and not ((ps.category >= 0) & (ps.holdout >= 0)).any()
    start, count = ps.locations()
    assert count.mean() > 5
    triplet = dataset.TripletSource(ps, 10, seed=0)[3]
    assert triplet["anchor"].shape == (12, 12, 1) and triplet["anchor"].dtype == np.uint8
    np.testing.assert_array_equal(triplet["anchor"], dataset.TripletSource(ps, 10, seed=0)[3]["anchor"])


def test_tiny_run_separates_textures_and_learns_the_ordering(trained):
    cfg, ps, encoder, head, rep_losses, cost_losses = trained
    assert np.mean(rep_losses[-5:]) < 0.5 * np.mean(rep_losses[:5])
    result = evaluation.evaluate(cfg, ps, encoder, head)
    assert result["nn_category_accuracy"] >= 0.9  # chance: 1/3
    # two orderings given (smooth < ridged < checker); smooth < checker is only implied
    assert set(result["pairwise_accuracy"]) == {"smooth<ridged", "ridged<checker", "smooth<checker"}
    assert min(result["pairwise_accuracy"].values()) >= 0.95
    assert (run_path(cfg) / "pca.png").stat().st_size > 1000


def test_vicreg_view_pairs_train(trained, tmp_path):
    cfg, ps, *_ = trained
    cfg = config.replace(cfg, run={"out_dir": str(tmp_path)}, represent={"objective": "vicreg", "steps": 12})
    _, losses = training.represent(cfg, ps)
    assert np.isfinite(losses).all() and np.mean(losses[-3:]) < losses[0]


def test_checkpoint_resume_gives_the_same_losses(trained, tmp_path):
    cfg, ps, *_ = trained
    full = config.replace(cfg, run={"out_dir": str(tmp_path / "a")}, represent={"steps": 4, "checkpoint_every": 2})
    _, uninterrupted = training.represent(full, ps)
    part = config.replace(full, run={"out_dir": str(tmp_path / "b")}, represent={"steps": 2})
    _, first = training.represent(part, ps)
    _, rest = training.represent(config.replace(part, represent={"steps": 4}), ps)
    assert len(first) == 2 and len(rest) == 2
    np.testing.assert_allclose(first + rest, uninterrupted, rtol=1e-6)


def _vit_cfg(**represent):
    return config.from_dict(TerrainConfig, {
        "scan": {"patch_px": 12},
        "represent": {"encoder": "vit", "embed_dim": 8, "vit_patch": 4, "vit_dim": 16, "vit_depth": 1,
                      "vit_heads": 2, **represent},
    })


def test_the_vit_encoder_embeds_patches_and_its_triplet_loss_falls():
    """represent.encoder = "vit": the pretrainer's ModalityViT on 12x12 patches (9 tokens of 4x4 pixels)."""
    cfg = _vit_cfg()
    model = training.make_encoder(cfg, 3)
    assert model.vit.num_patches == 9
    rng = np.random.default_rng(0)
    # two "terrains": dark noise and bright noise; anchor/positive from one, negative from the other
    dark = lambda n: rng.integers(0, 80, (n, 12, 12, 3), dtype=np.uint8)  # noqa: E731
    bright = lambda n: rng.integers(170, 255, (n, 12, 12, 3), dtype=np.uint8)  # noqa: E731
    batch = {"anchor": np.concatenate([dark(8), bright(8)]), "positive": np.concatenate([dark(8), bright(8)]),
             "negative": np.concatenate([bright(8), dark(8)])}
    assert model(jnp.asarray(batch["anchor"])).shape == (16, 8)
    step = training.representation_step("triplet", 1.0, 25.0, 25.0, 1.0)
    optimizer = training.encoder_optimizer(cfg, model)
    losses = [float(step(model, optimizer, batch)) for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_a_vit_patch_that_does_not_divide_the_patch_is_named():
    with pytest.raises(config.ConfigError, match=r"represent.vit_patch = 5 does not divide scan.patch_px = 12"):
        training.make_encoder(_vit_cfg(vit_patch=5), 3)
