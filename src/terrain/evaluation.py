"""How well a trained terrain run orders surfaces: held-out pairwise ordering accuracy of the learned cost, the
embedding's nearest-neighbour category accuracy, a PCA plot, the learned cost map of a sim track, and (for PPO
with the cost in its reward) the fraction of time a policy drives on each surface.

Writes under runs/<run.name>/: evaluation.json, pca.png, and for `sim` data cost_map.png.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from src.envs import surfaces
from src.infra.run_dir import run_path
from src.terrain import dataset, sim, spec
from src.terrain.config import TerrainConfig, spec_path
from src.terrain.extract import GroundGeometry
from src.terrain.models import CostHead, PatchModel
from src.terrain.training import embed


@nnx.jit
def _costs(head: CostHead, z: jax.Array) -> jax.Array:
    return head(z)


def pairwise_accuracy(
    cost: np.ndarray, category: np.ndarray, names: list[str], truth: dict[tuple[str, str], int], pairs: int, seed: int
) -> dict[str, float]:
    """Per strictly ordered category pair "a<b" (a preferred): the fraction of sampled patch pairs with
    cost(a) < cost(b)."""
    rng = np.random.default_rng([seed, 2])
    out = {}
    for (a, b), label in sorted(truth.items()):
        if label != -1 or a not in names or b not in names:
            continue
        ia, ib = np.flatnonzero(category == names.index(a)), np.flatnonzero(category == names.index(b))
        if not len(ia) or not len(ib):
            continue
        out[f"{a}<{b}"] = float(np.mean(cost[rng.choice(ia, pairs)] < cost[rng.choice(ib, pairs)]))
    return out


def nn_accuracy(z_ref: np.ndarray, y_ref: np.ndarray, z_query: np.ndarray, y_query: np.ndarray) -> float:
    """Fraction of queries whose nearest reference embedding (Euclidean) has the query's category."""
    d = (z_query**2).sum(1)[:, None] - 2 * z_query @ z_ref.T + (z_ref**2).sum(1)[None]
    return float(np.mean(y_ref[np.argmin(d, axis=1)] == y_query))


def pca_plot(z: np.ndarray, labels: list[str], path: Path, title: str) -> Path:
    """2-D PCA (SVD of the centred embeddings) scatter coloured by category."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zc = z - z.mean(axis=0)
    _, _, vt = np.linalg.svd(zc, full_matrices=False)
    xy = zc @ vt[:2].T
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name in sorted(set(labels)):
        m = np.array([lab == name for lab in labels])
        ax.scatter(xy[m, 0], xy[m, 1], s=5, alpha=0.6, label=name)
    ax.set(title=title, xlabel="PC 1", ylabel="PC 2")
    ax.legend(markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def evaluate(cfg: TerrainConfig, ps: dataset.PatchSet, encoder: PatchModel, head: CostHead) -> dict[str, Any]:
    """Held-out pairwise ordering accuracy (every pair the train + held-out orderings imply) and NN accuracy."""
    root = Path(cfg.source.root)
    train_spec = spec.load_spec(spec_path(cfg, "train"), root)
    holdout_spec = spec.load_spec(spec_path(cfg, "holdout"), root)
    union = spec.Spec(
        {**holdout_spec.categories, **train_spec.categories}, train_spec.orderings + holdout_spec.orderings
    )
    spec.check_consistent(union, "train + holdout orderings")
    truth = spec.implied_orderings(union)
    held = ps.holdout >= 0
    z_held = embed(encoder, ps.patches[held])
    cost = np.asarray(_costs(head, jnp.asarray(z_held)))
    names = ps.holdout_categories
    pair_acc = pairwise_accuracy(cost, ps.holdout[held], names, truth, cfg.eval.pairs, cfg.run.seed)
    # nearest neighbour: held-out clearest views against training clearest views, categories matched by name
    start, _ = ps.locations()
    ref = start[ps.category[start] >= 0]
    query = start[(ps.holdout[start] >= 0)]
    shared = [n for n in names if n in ps.categories]
    y_ref = np.array([ps.categories[c] for c in ps.category[ref]])
    y_query = np.array([names[c] for c in ps.holdout[query]])
    keep = np.isin(y_query, shared)
    nn = nn_accuracy(embed(encoder, ps.patches[ref]), y_ref, embed(encoder, ps.patches[query[keep]]), y_query[keep])
    out = run_path(cfg)
    pca_plot(z_held, [names[c] for c in ps.holdout[held]], out / "pca.png", "held-out patches (PCA)")
    cost_map = sim_cost_map(cfg, encoder, head, truth, out / "cost_map.png") if cfg.source.kind == "sim" else None
    result = {
        "pairwise_accuracy": pair_acc,
        "pairwise_accuracy_mean": float(np.mean(list(pair_acc.values()))) if pair_acc else None,
        "nn_category_accuracy": nn,
        "nn_chance": 1.0 / max(len(shared), 1),
        "heldout_patches": int(held.sum()),
        "mean_cost": {n: float(cost[ps.holdout[held] == k].mean()) for k, n in enumerate(names)},
        **({"cost_map": cost_map} if cost_map else {}),
    }
    (out / "evaluation.json").write_text(json.dumps(result, indent=2))
    return result


def sim_cost_map(
    cfg: TerrainConfig, encoder: PatchModel, head: CostHead, truth: dict[tuple[str, str], int], path: Path
) -> dict[str, Any]:
    """The learned cost of patches tiling the held-out episode's whole track (`sim.map_patches`), drawn next to
    the true surfaces; returns the mean cost per surface and the pairwise ordering accuracy over tile pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    episode = len(cfg.sim.tracks) - 1
    params = sim.env_params(cfg.sim, episode)
    ppm, r0, c0 = surfaces.ground_geometry(params.terrain)
    patches, tiles, cls, shape = sim.map_patches(params, GroundGeometry(ppm, r0, c0), cfg.scan)
    cost = np.asarray(_costs(head, jnp.asarray(embed(encoder, patches))))
    names = list(surfaces.NAMES)
    acc = pairwise_accuracy(cost, cls, names, truth, cfg.eval.pairs, cfg.run.seed)
    grid = np.full(shape, np.nan)
    grid[tiles[:, 0], tiles[:, 1]] = cost
    colours = np.full((*shape, 3), 1.0)
    colours[tiles[:, 0], tiles[:, 1]] = np.asarray(surfaces.PALETTE, float)[cls] / 255.0
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    axes[0].imshow(colours, origin="lower")
    handles = [Patch(color=np.asarray(surfaces.PALETTE[k]) / 255, label=n) for k, n in enumerate(names)]
    axes[0].legend(handles=handles, loc="center")
    axes[0].set_title(f"true surfaces ({cfg.sim.tracks[episode]}, surface seed {cfg.sim.surface_seed + episode})")
    im = axes[1].imshow(grid, origin="lower", cmap="viridis")
    fig.colorbar(im, ax=axes[1], label="learned cost")
    axes[1].set_title("learned cost of each tile")
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {
        "tiles": len(cls),
        "mean_cost": {n: float(cost[cls == k].mean()) for k, n in enumerate(names) if (cls == k).any()},
        "pairwise_accuracy": acc,
    }


def surface_fractions(rec: dict[str, np.ndarray], terrain: surfaces.TerrainParams) -> dict[str, float]:
    """Fraction of evaluation steps (each episode up to its end, all episodes pooled) on each surface."""
    done = np.asarray(rec["done"], bool)  # [T, E]
    ended = np.cumsum(done, axis=0) - done > 0  # steps after an episode's end
    poses = np.asarray(rec["pose"])[~ended]
    cls = np.asarray(surfaces.surface_at(terrain, jnp.asarray(poses[:, :2], jnp.float32)))
    return {name: float((cls == k).mean()) for k, name in enumerate(surfaces.NAMES)}
