"""Terrain preference learning: patches along trajectories -> representation -> pairwise cost -> evaluation.

    python -m src.training.terrain extract|represent|cost|evaluate --config configs/terrain_cmht.toml [--set k=v]

Writes under runs/<run.name>/:
    extract    patches/patches.npz + patches/index.json (uint8 patches, multi-view index, train/held-out categories,
               per-trajectory frames, patches, odometry gaps and the scans they cut short)
    represent  represent/ckpt (Orbax: encoder, optimizer; resumes), represent/metrics.jsonl
    cost       cost/ckpt (the cost head on the frozen encoder), cost/metrics.jsonl
    evaluate   evaluation.json (pairwise ordering accuracy per ordered held-out category pair, nearest-neighbour
               category accuracy of the embedding), pca.png (held-out embeddings coloured by category); for `sim`
               data also cost_map.png (the learned cost over the held-out track next to its true surfaces)

Source kinds: `topdown` episode folders, `cmht` sequences, or `sim`: top-down episodes that `extract` records
from the JAX racing env with its surfaces (`src.terrain.sim`, settings in [sim]) when source.root does not exist.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from src import config, contract
from src.config import BevConfig, ConfigError, MeshConfig, RunConfig
from src.data import cmht
from src.terrain import dataset, sim, sources, spec
from src.terrain.extract import GroundGeometry, ScanConfig, extract_patches
from src.terrain.models import CostHead, PatchEncoder, PatchModel, PatchViT
from src.terrain.objectives import preference_loss, triplet_margin_loss, vicreg_loss
from src.training.checkpoint import Checkpointer
from src.training.logging import MetricLogger
from src.training.objectives import l2_normalize
from src.training.run_dir import run_path
from src.training.sharding import make_mesh, replicated, shard_batch

# --------------------------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class TerrainSourceConfig:
    """Where the trajectories are: `topdown` episode folders (any folder holding poses.csv) or CMHT sequences.

    CMHT: each LiDAR sweep is a BEV image of `bev_cells` square cells over +-`bev_half_m` metres, with the
    `channels` of `bev.lidar_bev`. `synthesize_if_missing` writes a demo set (and its specs) at `root`.
    """

    kind: Literal["topdown", "cmht", "sim"] = "topdown"
    root: str = "data/terrain_demo"
    synthesize_if_missing: bool = True
    synthetic_frames: int = 300
    bev_half_m: float = 12.8
    bev_cells: int = 256
    channels: tuple[str, ...] = ("intensity", "height")
    fill_cells: int = 1  # CMHT: empty cells this close to a return are filled and count as seen


@dataclasses.dataclass(frozen=True)
class TerrainSpecConfig:
    train: str = "train.json"  # relative to source.root unless absolute
    holdout: str = "holdout.json"


@dataclasses.dataclass(frozen=True)
class RepresentConfig:
    objective: Literal["triplet", "vicreg"] = "triplet"
    encoder: Literal["conv", "vit"] = "conv"  # the small conv net, or the pretrainer's ModalityViT
    embed_dim: int = 32
    widths: tuple[int, ...] = (16, 32, 64)  # conv
    vit_patch: int = 4  # vit: token patch size in pixels (must divide scan.patch_px)
    vit_dim: int = 32
    vit_depth: int = 1
    vit_heads: int = 2
    batch: int = 32
    steps: int = 200
    lr: float = 1e-3
    margin: float = 1.0
    vicreg_sim: float = 25.0
    vicreg_std: float = 25.0
    vicreg_cov: float = 1.0
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 10


@dataclasses.dataclass(frozen=True)
class CostConfig:
    hidden: int = 32
    scale: float = 1.0
    margin: float = 1.0
    batch: int = 128
    steps: int = 300
    lr: float = 3e-3
    checkpoint_every: int = 100
    log_every: int = 50


@dataclasses.dataclass(frozen=True)
class TerrainEvalConfig:
    pairs: int = 2000  # sampled held-out patch pairs per ordered category pair


@dataclasses.dataclass(frozen=True)
class TerrainConfig:
    run: RunConfig = dataclasses.field(default_factory=lambda: RunConfig(name="terrain_demo"))
    source: TerrainSourceConfig = dataclasses.field(default_factory=TerrainSourceConfig)
    scan: ScanConfig = dataclasses.field(default_factory=ScanConfig)
    spec: TerrainSpecConfig = dataclasses.field(default_factory=TerrainSpecConfig)
    represent: RepresentConfig = dataclasses.field(default_factory=RepresentConfig)
    cost: CostConfig = dataclasses.field(default_factory=CostConfig)
    eval: TerrainEvalConfig = dataclasses.field(default_factory=TerrainEvalConfig)
    sim: sim.SimRecordConfig = dataclasses.field(default_factory=sim.SimRecordConfig)
    # Data parallel over the devices of this process (batches split, parameters replicated); one process only.
    mesh: MeshConfig = dataclasses.field(default_factory=lambda: MeshConfig(distributed="off"))


def spec_path(cfg: TerrainConfig, which: str) -> Path:
    path = Path(getattr(cfg.spec, which))
    return path if path.is_absolute() else Path(cfg.source.root) / path


# --------------------------------------------------------------------------------------------- extract


def _synthesize(cfg: TerrainConfig, root: Path) -> None:
    """A demo set at `root`: painted stripe drives (topdown) or a synthetic CMHT sequence, with both specs."""
    from src.terrain.synthetic import TEXTURES, stripe_drive

    src = cfg.source
    print(f"source.root={root} does not exist: writing a synthetic {src.kind} demo set there", file=sys.stderr)
    if src.kind == "sim":
        summary = sim.record(cfg.sim, root, _patch_side(cfg.scan, cfg.sim.ground_px_per_m))
        for ep in summary["episodes"]:
            print(f"  {ep['episode']} ({ep['split']}): {ep['frames_per_surface']}", file=sys.stderr)
        return
    if src.kind == "topdown":
        stripe_m, speed, dt = 4.0, 1.0, 0.1
        for k in range(2):
            traj, geom = stripe_drive(src.synthetic_frames, speed=speed, dt=dt, stripe_m=stripe_m, seed=k)
            sources.write_topdown_episode(root / f"ep{k}", traj, geom)
        duration = src.synthetic_frames * dt
        stripes = int(duration * speed // stripe_m)

        def ranges(ep: str) -> dict[str, list[dict[str, Any]]]:
            # each stripe's interior (0.5 m in from its edges, so no patch straddles two textures)
            out: dict[str, list[dict[str, Any]]] = {name: [] for name in TEXTURES}
            for s in range(stripes):
                lo, hi = (s * stripe_m + 0.5) / speed, ((s + 1) * stripe_m - 0.5) / speed
                out[TEXTURES[s % len(TEXTURES)]].append({"path": ep, "start": lo, "end": hi})
            return {k: v for k, v in out.items() if v}

        orderings = [
            {"first": "smooth", "second": "ridged", "label": -1},
            {"first": "ridged", "second": "checker", "label": -1},
        ]
        specs = {"train": ranges("ep0"), "holdout": ranges("ep1")}
    else:
        from src.data.synthetic import write_cmht_sequence

        write_cmht_sequence(root / "seq0", frames=src.synthetic_frames, seed=0, points=30_000)
        write_cmht_sequence(root / "seq1", frames=src.synthetic_frames, seed=1, points=30_000)
        half = src.synthetic_frames * 0.1 / 2
        # the synthetic road is one surface: these categories are time ranges only (exercises the pipeline)
        orderings = [{"first": "early", "second": "late", "label": -1}]
        specs = {
            which: {
                "early": [{"path": seq, "start": 0.0, "end": half}],
                "late": [{"path": seq, "start": half, "end": 2 * half}],
            }
            for which, seq in (("train", "seq0"), ("holdout", "seq1"))
        }
    for which, cats in specs.items():
        data = {"categories": cats, "orderings": orderings}
        spec_path(cfg, which).write_text(json.dumps(data, indent=2))


def _patch_side(scan: ScanConfig, px_per_m: float) -> float:
    return scan.patch_m if scan.patch_m > 0 else scan.patch_px / px_per_m


def trajectory_folders(cfg: TerrainConfig) -> list[Path]:
    root = Path(cfg.source.root)
    if cfg.source.kind in ("topdown", "sim"):
        return sorted(p.parent for p in root.rglob("poses.csv"))
    return [s.path for s in cmht.find_sequences(root)]


def extract(cfg: TerrainConfig) -> dataset.PatchSet:
    """Scan every trajectory under source.root, assign both specs' categories, write the patch store."""
    root = Path(cfg.source.root)
    if not root.exists():
        if not cfg.source.synthesize_if_missing:
            raise FileNotFoundError(f"source.root={root} does not exist (or set source.synthesize_if_missing)")
        root.mkdir(parents=True)
        _synthesize(cfg, root)
    train_spec = spec.load_spec(spec_path(cfg, "train"), root)
    holdout_spec = spec.load_spec(spec_path(cfg, "holdout"), root)
    folders = trajectory_folders(cfg)
    if not folders:
        raise FileNotFoundError(f"source.root={root}: no {cfg.source.kind} trajectories found")
    half, cells = cfg.source.bev_half_m, cfg.source.bev_cells
    grid = contract.bev_grid(BevConfig(x_range=(-half, half), y_range=(-half, half)), (cells, cells, 4))
    extractions, times = [], []
    for folder in folders:
        if cfg.source.kind in ("topdown", "sim"):
            traj, geom = sources.read_topdown_episode(folder)
        else:
            traj = sources.cmht_trajectory(
                cmht.read_sequence(folder), grid, cfg.source.channels, cfg.source.fill_cells
            )
            geom = sources.cmht_geometry(grid)
        extractions.append(extract_patches(traj, geom, cfg.scan))
        times.append(traj.times)
    names = [f.relative_to(root).as_posix() if f != root else "." for f in folders]
    ps = dataset.from_extractions(extractions, names, times)
    category = spec.assign_categories(train_spec, folders, ps.source, ps.time, str(spec_path(cfg, "train")))
    held = spec.assign_categories(holdout_spec, folders, ps.source, ps.time, str(spec_path(cfg, "holdout")))
    both = int(((category >= 0) & (held >= 0)).sum())
    if both:
        raise spec.SpecError(f"{spec_path(cfg, 'holdout')}: {both} patches lie in both the train and held-out ranges")
    ps = ps.with_categories(category, train_spec.names, held, holdout_spec.names)
    dataset.save(ps, run_path(cfg) / "patches", {"scan": dataclasses.asdict(cfg.scan), "kind": cfg.source.kind})
    return ps


# --------------------------------------------------------------------------------------------- training


def make_encoder(cfg: TerrainConfig, channels: int) -> PatchModel:
    rc, rngs = cfg.represent, nnx.Rngs(cfg.run.seed)
    if rc.encoder == "conv":
        return PatchEncoder(channels, rc.embed_dim, widths=rc.widths, rngs=rngs)
    if cfg.scan.patch_px % rc.vit_patch:
        raise ConfigError(f"represent.vit_patch = {rc.vit_patch} does not divide scan.patch_px = {cfg.scan.patch_px}")
    return PatchViT(channels, cfg.scan.patch_px, rc.embed_dim, patch_size=rc.vit_patch, dim=rc.vit_dim,
                    depth=rc.vit_depth, num_heads=rc.vit_heads, rngs=rngs)


def data_parallel(cfg: TerrainConfig, batch: int, what: str, devices: list[jax.Device] | None = None):
    """The mesh a stage trains on (all devices unless given) and a function that places its batches there."""
    mesh = make_mesh(cfg.mesh, devices)
    if batch % mesh.devices.size:
        raise ConfigError(f"{what} = {batch} is not divisible by the {mesh.devices.size} devices of the mesh")
    return mesh, lambda b: shard_batch(b, mesh)


@functools.cache
def representation_step(
    objective: str, margin: float, sim: float, std: float, cov: float
) -> Callable[[nnx.Module, nnx.Optimizer, Any], jax.Array]:
    """The jitted step of one representation objective (cached: every run in a process shares its compilation)."""
    if objective == "triplet":
        return make_step(lambda m, b: triplet_margin_loss(m(b["anchor"]), m(b["positive"]), m(b["negative"]), margin))
    return make_step(lambda m, b: vicreg_loss(m(b["view1"]), m(b["view2"]), sim, std, cov)[0])


@functools.cache
def cost_step(margin: float) -> Callable[[nnx.Module, nnx.Optimizer, Any], jax.Array]:
    return make_step(lambda h, b: preference_loss(h(b["z1"]), h(b["z2"]), b["label"], margin))


def make_step(loss_fn: Callable[[Any, Any], jax.Array]) -> Callable:
    """A jitted train step `step(model, optimizer, batch) -> loss` (updates both in place).

    The jit is over the split (graphdef, state), with the graphdef static: a fresh model of the same structure
    (a resumed run, a second run in one process) reuses the compiled step.
    """

    @functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
    def pure(graphdef: nnx.GraphDef, state: nnx.State, batch: Any) -> tuple[jax.Array, nnx.State]:
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
        optimizer.update(model, grads)
        return loss, nnx.state((model, optimizer))

    def step(model: nnx.Module, optimizer: nnx.Optimizer, batch: Any) -> jax.Array:
        graphdef, state = nnx.split((model, optimizer))
        loss, state = pure(graphdef, state, batch)
        nnx.update((model, optimizer), state)
        return loss

    return step


def train_loop(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    step_fn: Callable,
    batch_at: Callable[[int], Any],
    steps: int,
    out: Path,
    *,
    checkpoint_every: int,
    keep: int,
    log_every: int,
    resume: bool,
    mesh: jax.sharding.Mesh | None = None,
) -> list[float]:
    """Run steps [restored, steps) with Orbax checkpoints under out/ckpt; returns the losses of the steps run.

    Batches are a pure function of the step (`batch_at`), so a resumed run sees exactly the batches it would
    have seen without the interruption. With a `mesh`, model and optimizer are replicated over it (the batches
    `batch_at` gives are split over it: data parallel).
    """
    ckpt = Checkpointer(out / "ckpt", save_every=max(checkpoint_every, 1), keep=keep)
    start = 0
    latest = ckpt.latest_step() if resume else None
    if latest is not None:
        state = {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
        restored, meta = ckpt.restore(latest, state)
        nnx.update(model, restored["model"])
        nnx.update(optimizer, restored["optimizer"])
        start = int(meta["step"])
    if mesh is not None:
        nnx.update((model, optimizer), jax.device_put(nnx.state((model, optimizer)), replicated(mesh)))
    logger = MetricLogger(out, total_steps=steps, progress=False, initial_step=start)
    losses = []
    try:
        for step in range(start, steps):
            loss = float(step_fn(model, optimizer, batch_at(step)))
            if not np.isfinite(loss):
                raise FloatingPointError(f"{out}: non-finite loss {loss} at step {step}")
            losses.append(loss)
            logger.update({"loss": loss})
            done = step + 1
            if done % log_every == 0 or done == steps:
                logger.log(done)
            state = {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
            ckpt.save(done, state, meta={"step": done}, force=done == steps)
    finally:
        ckpt.close()
        logger.close()
    return losses


def restore_model(model: nnx.Module, optimizer: nnx.Optimizer, out: Path) -> None:
    """Load the latest checkpoint under out/ckpt into `model`; an error when there is none."""
    ckpt = Checkpointer(out / "ckpt", save_every=1, keep=1)
    try:
        latest = ckpt.latest_step()
        if latest is None:
            raise FileNotFoundError(f"{out / 'ckpt'}: no checkpoint (run the previous stage first)")
        restored, _ = ckpt.restore(latest, {"model": nnx.state(model), "optimizer": nnx.state(optimizer)})
        nnx.update(model, restored["model"])
    finally:
        ckpt.close()


def represent_source(ps: dataset.PatchSet, cfg: TerrainConfig) -> grain.MapDataset:
    rc = cfg.represent
    length = rc.steps * rc.batch
    src = (
        dataset.TripletSource(ps, length, cfg.run.seed)
        if rc.objective == "triplet"
        else dataset.ViewPairSource(ps, length, cfg.run.seed)
    )
    return grain.MapDataset.source(src).batch(rc.batch)


@functools.cache
def _adam(lr: float) -> optax.GradientTransformation:
    """One optax object per learning rate: it is part of the optimizer's graphdef, so sharing it lets a new run
    (or a resumed one) in the same process reuse the compiled step."""
    return optax.adam(lr)


def encoder_optimizer(cfg: TerrainConfig, model: PatchModel) -> nnx.Optimizer:
    return nnx.Optimizer(model, _adam(cfg.represent.lr), wrt=nnx.Param)


def represent(cfg: TerrainConfig, ps: dataset.PatchSet) -> tuple[PatchModel, list[float]]:
    """Train the encoder with the configured objective; resumes from represent/ckpt when run.resume."""
    model = make_encoder(cfg, ps.patches.shape[-1])
    optimizer = encoder_optimizer(cfg, model)
    ds = represent_source(ps, cfg)
    rc = cfg.represent
    mesh, place = data_parallel(cfg, rc.batch, "represent.batch")
    losses = train_loop(
        model,
        optimizer,
        representation_step(rc.objective, rc.margin, rc.vicreg_sim, rc.vicreg_std, rc.vicreg_cov),
        lambda s: place(ds[s]),
        rc.steps,
        run_path(cfg) / "represent",
        checkpoint_every=rc.checkpoint_every,
        keep=rc.keep_checkpoints,
        log_every=rc.log_every,
        resume=cfg.run.resume,
        mesh=mesh,
    )
    return model, losses


def trained_encoder(cfg: TerrainConfig, ps: dataset.PatchSet) -> PatchModel:
    model = make_encoder(cfg, ps.patches.shape[-1])
    restore_model(model, encoder_optimizer(cfg, model), run_path(cfg) / "represent")
    return model


@nnx.jit
def _embed_batch(model: PatchModel, patches: jax.Array) -> jax.Array:
    return l2_normalize(model(patches))


def embed(model: PatchModel, patches: np.ndarray, batch: int = 512) -> np.ndarray:
    """L2-normalised embeddings [M, D] of uint8 patches (the frozen representation); fixed-size padded batches
    so that one compilation serves every call."""
    out = []
    for a in range(0, len(patches), batch):
        chunk = patches[a : a + batch]
        padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(_embed_batch(model, jnp.asarray(padded)))[: len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, model.out.out_features), np.float32)


def _cost_batches(
    z: np.ndarray, category: np.ndarray, names: list[str], orderings: list[tuple[str, str, int]], batch: int, seed: int
) -> Callable[[int], dict[str, np.ndarray]]:
    """Step -> a batch of (first embedding, second embedding, label): random patches of the ordered categories."""
    members = {name: np.flatnonzero(category == k) for k, name in enumerate(names)}
    firsts = [members[a] for a, _, _ in orderings]
    seconds = [members[b] for _, b, _ in orderings]
    labels = np.array([label for _, _, label in orderings], np.float32)

    def batch_at(step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([seed, 1, step])
        which = rng.integers(len(orderings), size=batch)
        i, j = np.zeros(batch, np.int64), np.zeros(batch, np.int64)
        for o in range(len(orderings)):
            rows = which == o
            i[rows] = rng.choice(firsts[o], rows.sum())
            j[rows] = rng.choice(seconds[o], rows.sum())
        return {"z1": z[i], "z2": z[j], "label": labels[which]}

    return batch_at


def make_cost_head(cfg: TerrainConfig) -> CostHead:
    cc = cfg.cost
    return CostHead(cfg.represent.embed_dim, cc.hidden, cc.scale, rngs=nnx.Rngs(cfg.run.seed + 1))


def cost_optimizer(cfg: TerrainConfig, head: CostHead) -> nnx.Optimizer:
    return nnx.Optimizer(head, _adam(cfg.cost.lr), wrt=nnx.Param)


def train_cost(cfg: TerrainConfig, ps: dataset.PatchSet, z: np.ndarray, train_spec: spec.Spec) -> tuple[CostHead, list[float]]:
    """Fit the cost head on frozen embeddings `z` [M, D] of `ps` from the train spec's orderings."""
    if not train_spec.orderings:
        raise spec.SpecError("the train spec has no orderings to learn a cost from")
    head = make_cost_head(cfg)
    optimizer = cost_optimizer(cfg, head)
    cc = cfg.cost
    mesh, place = data_parallel(cfg, cc.batch, "cost.batch")
    batch_at = _cost_batches(z, ps.category, ps.categories, train_spec.orderings, cc.batch, cfg.run.seed)
    losses = train_loop(
        head,
        optimizer,
        cost_step(cc.margin),
        lambda s: place(batch_at(s)),
        cc.steps,
        run_path(cfg) / "cost",
        checkpoint_every=cc.checkpoint_every,
        keep=1,
        log_every=cc.log_every,
        resume=cfg.run.resume,
        mesh=mesh,
    )
    return head, losses


# --------------------------------------------------------------------------------------------- evaluation


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
    cost = np.asarray(nnx.jit(lambda h, z: h(z))(head, jnp.asarray(z_held)))
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

    from src.envs import surfaces

    episode = len(cfg.sim.tracks) - 1
    params = sim.env_params(cfg.sim, episode)
    ppm, r0, c0 = surfaces.ground_geometry(params.terrain)
    patches, tiles, cls, shape = sim.map_patches(params, GroundGeometry(ppm, r0, c0), cfg.scan)
    cost = np.asarray(nnx.jit(lambda h, z: h(z))(head, jnp.asarray(embed(encoder, patches))))
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


def ground_cost_fn(run: str | Path, terrain: Any) -> Callable[[jax.Array], jax.Array]:
    """cost(pose) of a trained sim terrain run (`run`: its run dir): the car's own top-down ground image on
    `terrain` (a `surfaces.TerrainParams`), rendered at the run's scale, one patch (`scan.patch_px`) centred on
    the rear axle at pose (x, y, yaw), through the frozen encoder and cost head. jit/vmap-able."""
    from src.envs import surfaces

    run = Path(run)
    cfg = config.load(TerrainConfig, run / "config_cost.toml")
    if cfg.source.kind != "sim" or cfg.scan.patch_m > 0:
        raise config.ConfigError(f"{run}: a terrain cost for the racing env needs a sim run with scan.patch_m = 0")
    p, ppm = cfg.scan.patch_px, cfg.sim.ground_px_per_m
    ground = terrain.replace(
        ground_size=(p, p), ground_px_per_m=ppm, ground_behind_m=(p - 1) / 2 / ppm, ground_blur=cfg.sim.ground_blur
    )
    encoder = make_encoder(cfg, 3)
    restore_model(encoder, encoder_optimizer(cfg, encoder), run / "represent")
    head = make_cost_head(cfg)
    restore_model(head, cost_optimizer(cfg, head), run / "cost")
    graphdef, state = nnx.split((encoder, head))

    def cost(pose: jax.Array) -> jax.Array:
        enc, hd = nnx.merge(graphdef, state)
        return hd(l2_normalize(enc(surfaces.ground_image(ground, pose)[None])))[0]

    return cost


# --------------------------------------------------------------------------------------------- CLI


def _store(cfg: TerrainConfig) -> dataset.PatchSet:
    return dataset.load(run_path(cfg) / "patches")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("extract", "represent", "cost", "evaluate"))
    config.add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = config.load_from_args(TerrainConfig, args)
    out = run_path(cfg)
    config.save(cfg, out / f"config_{args.command}.toml")
    if args.command == "extract":
        ps = extract(cfg)
        start, count = ps.locations()
        gaps = sum(s["gaps"] for s in ps.sources)
        stopped = sum(s["stopped_by_gap"] for s in ps.sources)
        print(
            f"{len(ps)} patches at {len(start)} locations ({count.mean():.1f} views each) from {len(ps.sources)} "
            f"trajectories; {gaps} odometry gaps cut {stopped} scans short -> {out / 'patches'}"
        )
    elif args.command == "represent":
        _, losses = represent(cfg, _store(cfg))
        print(f"{cfg.represent.objective}: loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "already done")
    elif args.command == "cost":
        ps = _store(cfg)
        z = embed(trained_encoder(cfg, ps), ps.patches)
        _, losses = train_cost(cfg, ps, z, spec.load_spec(spec_path(cfg, "train"), cfg.source.root))
        print(f"cost: loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "already done")
    else:
        ps = _store(cfg)
        encoder = trained_encoder(cfg, ps)
        head = make_cost_head(cfg)
        restore_model(head, cost_optimizer(cfg, head), out / "cost")
        print(json.dumps(evaluate(cfg, ps, encoder, head), indent=2))


if __name__ == "__main__":
    main()
