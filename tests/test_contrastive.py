"""InfoNCE family and latent reconstruction: hand-computed values, masking, and a short learning run."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from src.objectives import contrastive as O

# z_a = (e1, e2, -e1), z_b = (e1, e2, -e2): cosine similarities s[i, j] = z_a[i] . z_b[j]
Z_A = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
Z_B = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
#     s = [[ 1, 0,  0],
#          [ 0, 1, -1],
#          [-1, 0,  0]]   positives on the diagonal: 1, 1, 0

# Jitted once per module: op-by-op dispatch of the eager versions costs more than compiling them.
info_nce = jax.jit(O.info_nce, static_argnames=("temperature", "symmetric"))
supcon = jax.jit(O.multi_positive_info_nce, static_argnames=("temperature",))
pearson = jax.jit(O.pearson)


def test_info_nce_hand_computed_3x3():
    # Temperature 0.5 doubles the similarities; row i: log sum_j exp(2 s_ij) - 2 s_ii.
    e2, em2 = math.exp(2.0), math.exp(-2.0)
    rows = [math.log(e2 + 1 + 1) - 2, math.log(1 + e2 + em2) - 2, math.log(em2 + 1 + 1) - 0]
    cols = [math.log(e2 + 1 + em2) - 2, math.log(1 + e2 + 1) - 2, math.log(1 + em2 + 1) - 0]
    one_way, aux = info_nce(Z_A, Z_B, temperature=0.5, symmetric=False)
    np.testing.assert_allclose(one_way, sum(rows) / 3, rtol=1e-6)
    both, _ = info_nce(Z_A, Z_B, temperature=0.5, symmetric=True)
    np.testing.assert_allclose(both, 0.5 * (sum(rows) / 3 + sum(cols) / 3), rtol=1e-6)
    # Row argmax: row 0 -> 0, row 1 -> 1, row 2 -> 1 (0 > -1 and ties go to the first): 2 of 3 correct.
    np.testing.assert_allclose(aux["accuracy"], 2 / 3, rtol=1e-6)
    # Unnormalised inputs are normalised first: scaling an embedding changes nothing.
    np.testing.assert_allclose(
        info_nce(3.0 * Z_A, Z_B, temperature=0.5, symmetric=False)[0], sum(rows) / 3, rtol=1e-6
    )
    # Pair 2 invalid: only the 2x2 block [[1, 0], [0, 1]] remains in rows and columns.
    masked, aux = info_nce(Z_A, Z_B, temperature=0.5, valid=jnp.array([True, True, False]))
    np.testing.assert_allclose(masked, math.log(e2 + 1) - 2, rtol=1e-6)
    assert float(aux["pairs"]) == 2 and float(aux["accuracy"]) == 1.0


def test_invalid_pairs_do_not_affect_loss_or_gradients():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    z_a, z_b = jax.random.normal(k1, (6, 4)), jax.random.normal(k2, (6, 4))
    valid = jnp.array([True, False, True, True, False, True])
    noise = jnp.where(valid[:, None], 0.0, 5.0 * jax.random.normal(k3, (6, 4)))

    def f(a, b):
        return info_nce(a, b, temperature=0.2, valid=valid)[0]

    value_and_grad = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
    loss, grads = value_and_grad(z_a, z_b)
    loss2, grads2 = value_and_grad(z_a + noise, z_b - noise)
    np.testing.assert_allclose(loss, loss2, rtol=1e-6)
    v = np.asarray(valid)
    for g, g2 in zip(grads, grads2):
        np.testing.assert_allclose(np.asarray(g)[v], np.asarray(g2)[v], rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(np.asarray(g)[~v], 0.0)
    # ...and equals InfoNCE on the valid subset alone.
    np.testing.assert_allclose(loss, info_nce(z_a[valid], z_b[valid], temperature=0.2)[0], rtol=1e-6)


def _supcon_reference(z, labels, valid, t):
    """Loop-by-loop SupCon, written independently of the vectorised version."""
    z = np.asarray(z, np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    losses = []
    for i in range(len(z)):
        if not valid[i]:
            continue
        others = [a for a in range(len(z)) if a != i and valid[a]]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        denom = math.log(sum(math.exp(z[i] @ z[a] / t) for a in others))
        losses.append(-sum(z[i] @ z[p] / t - denom for p in positives) / len(positives))
    return sum(losses) / len(losses)


def test_multi_positive_matches_reference_and_ignores_invalid():
    z = jax.random.normal(jax.random.key(1), (8, 5))
    labels = jnp.array([0, 0, 0, 1, 1, 2, 2, 3])  # label 3 has a single member: no positive, drops out
    valid = jnp.array([True, True, False, True, True, True, True, True])
    loss, aux = supcon(z, labels, valid, temperature=0.3)
    np.testing.assert_allclose(
        loss, _supcon_reference(z, np.asarray(labels), np.asarray(valid), 0.3), rtol=1e-5
    )
    assert float(aux["anchors"]) == 6
    changed = z.at[2].set(jax.random.normal(jax.random.key(2), (5,)))
    np.testing.assert_allclose(supcon(changed, labels, valid, temperature=0.3)[0], loss, rtol=1e-6)


def test_latent_reconstruction_pearson_and_dropout():
    latents = jax.random.normal(jax.random.key(3), (3, 16, 8))
    decoder = O.LatentDecoder(8, num_views=3, hidden=16, rngs=nnx.Rngs(0))
    valid = jnp.ones((3, 16), bool).at[1:, 0].set(False)  # sample 0 has one valid view: it drops out
    loss, aux = nnx.jit(O.latent_reconstruction_loss)(decoder, latents, valid, jax.random.key(4))
    assert float(aux["samples"]) == 15 and np.isfinite(float(loss))
    x = jax.random.normal(jax.random.key(5), (4, 6))
    np.testing.assert_allclose(pearson(x, 2.0 * x + 1.0, jnp.ones(4)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(pearson(x, -x, jnp.ones(4)), -1.0, rtol=1e-5)
    w = jnp.array([1.0, 1.0, 1.0, 0.0])
    y = x.at[3].set(-100.0)
    np.testing.assert_allclose(pearson(x, y, w), 1.0, rtol=1e-5)  # a dropped row does not count


@pytest.fixture(scope="module")
def trained_decoder():
    """Fit the decoder on views that are fixed linear maps of a shared latent: reconstruction must correlate."""
    key = jax.random.key(6)
    mix = jax.random.normal(key, (3, 8, 8))

    def views(k):
        shared = jax.random.normal(k, (32, 8))
        return jnp.einsum("bd,vde->vbe", shared, mix)

    decoder = O.LatentDecoder(8, num_views=3, hidden=64, rngs=nnx.Rngs(1))
    opt = nnx.Optimizer(decoder, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(decoder, opt, k):
        k1, k2 = jax.random.split(k)
        lat = views(k1)

        def loss_fn(d):
            return O.latent_reconstruction_loss(d, lat, jnp.ones((3, 32), bool), k2)

        (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(decoder)
        opt.update(decoder, grads)
        return loss, aux

    before = step(decoder, opt, jax.random.key(100))[1]["pearson"]
    for i in range(150):
        _, aux = step(decoder, opt, jax.random.key(200 + i))
    return float(before), float(aux["pearson"])


def test_latent_reconstruction_learns(trained_decoder):
    before, after = trained_decoder
    assert after > 0.8 and after > before + 0.3


# --------------------------------------------------------------------------------------------- a short run

CAMS = ("left", "front", "right")
SIZE = 16


def _write_views_episode(root, name: str, frames: int, seed: int) -> None:
    """Each instant has a random scene colour; every camera sees it through its own channel order, with
    independent pixel noise (no pixel is shared between views), and 10 % of the camera frames are dropped.
    Matching views therefore needs the learned cross-camera relation, which carries over to a new episode."""
    from src.data.episodes import writer

    rng = np.random.default_rng(seed)
    colour = rng.uniform(30, 225, (frames, 1, 1, 3))
    order = {"left": [0, 1, 2], "front": [1, 2, 0], "right": [2, 0, 1]}
    images = {
        cam: np.clip(colour[..., order[cam]] + rng.normal(0, 25, (frames, SIZE, SIZE, 3)), 0, 255).astype(
            np.uint8
        )
        for cam in CAMS
    }
    keep = {cam: rng.random(frames) >= 0.1 for cam in CAMS}
    ego = {"pose": rng.normal(size=(frames, 3)), "velocity": rng.normal(size=(frames, 3))}
    header = {"episode_id": name, "source": "test", "cameras": list(CAMS)}
    writer.write_episode(root / name, header, images, keep, ego, np.arange(frames) * 0.1, np.zeros((frames, 2)))


@pytest.fixture(scope="module")
def retrieval_run(tmp_path_factory):
    from src.config import ModalityConfig, ModelConfig
    from src.data import loader
    from src.data.episodes import sources
    from src.models.raceformer import Raceformer

    root = tmp_path_factory.mktemp("views")
    _write_views_episode(root, "train", frames=96, seed=0)
    _write_views_episode(root, "heldout", frames=32, seed=1)
    eps, _ = sources.load_episodes(root)
    by_id = {e.episode_id: e for e in eps}
    modalities = {"rgb": ModalityConfig((SIZE, SIZE, 3)), "gps": ModalityConfig((5,))}
    train = sources.EpisodeFrameSource([by_id["train"]], CAMS, modalities)
    held = sources.EpisodeFrameSource([by_id["heldout"]], CAMS, modalities)
    held_batch = next(iter(loader.to_iter(sources.build_dataset(held, 32, shuffle=False, num_epochs=1))))
    cfg = ModelConfig(
        embed_dim=32,
        depth=1,
        num_heads=2,
        patch_size=8,
        fusion_depth=1,
        projection_dim=16,
        modalities=modalities,
    )
    model = Raceformer(cfg, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    weights = {"multiview": 1.0}

    @nnx.jit
    def step(model, opt, batch):
        def loss_fn(m):
            return O.contrastive_loss(m, batch, jax.random.key(0), weights, CAMS, temperature=0.1)

        (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        opt.update(model, grads)
        return loss

    @nnx.jit
    def heldout(model, batch):
        loss, aux = O.contrastive_loss(model, batch, jax.random.key(0), weights, CAMS, deterministic=True)
        return loss, aux["multiview/accuracy"]

    before = float(heldout(model, held_batch)[1])
    it = iter(loader.to_iter(sources.build_dataset(train, 32, seed=0)))
    losses = [float(step(model, opt, next(it))) for _ in range(60)]
    loss, after = heldout(model, held_batch)
    # Dropped camera frames: replacing their (zero) images by noise must not change the loss at all.
    noisy = dict(held_batch)
    rng = np.random.default_rng(0)
    noisy["images_by_cam"] = {
        cam: np.where(
            held_batch["image_valid_by_cam"][cam][:, None, None, None],
            img,
            rng.normal(size=img.shape).astype(np.float32),
        )
        for cam, img in held_batch["images_by_cam"].items()
    }
    dropped = sum(int((~held_batch["image_valid_by_cam"][c]).sum()) for c in CAMS)
    return before, float(after), losses, (float(loss), float(heldout(model, noisy)[0]), dropped)


def test_contrastive_run_raises_heldout_retrieval(retrieval_run):
    before, after, losses, _ = retrieval_run
    chance = 1 / 32
    print(
        f"held-out top-1 retrieval: before {before:.3f}, after {after:.3f}; loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    )
    assert after > 4 * chance and after > before + 0.1
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_dropped_views_do_not_change_the_model_loss(retrieval_run):
    loss, loss_noisy, dropped = retrieval_run[3]
    assert dropped > 0
    assert loss == loss_noisy
