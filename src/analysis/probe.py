"""Pretraining quality on its own, before any PPO: linear probes of the encoder and reconstruction health.

Why: if pretraining does not help the racing policy, the report must tell "the encoder learned nothing"
apart from "what it learned does not transfer". Two figures do that:
- Linear probes: a closed-form ridge regression from the fused CLS feature (what PPO's heads read) to
  targets from the CMHT labels, fitted on one part of the pretraining samples and scored on the rest: whether
  each BEV quadrant (front/rear x left/right of the LiDAR) holds an object within 20 m (accuracy, a ridge
  classifier thresholded at 0, beside the majority-class accuracy) and the distance to the nearest object
  (R^2, capped at `FAR_M`). The same probe on a randomly initialised encoder of the same architecture is the
  reference: a useful encoder beats it.
- Reconstruction correlation: Pearson r between the masked-modeling head's predictions and the true masked
  patches (over all masked pixels, per modality); 0.6-0.8 is the usual healthy range.

CLI: `python -m src.analysis.probe --encoder RUN_DIR --config configs/pretrain_cmht.toml` prints the figures
as JSON (RUN_DIR is a pretraining run directory: `encoder/` is its export, `ckpt/` its checkpoints).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from src import config
from src.config import PretrainConfig
from src.data.cmht import dataset, index, readers
from src.infra.checkpoint import import_encoder, load_encoder_config
from src.models.raceformer import Raceformer
from src.objectives.masked_modeling import masked_predictions
from src.pretraining import step as pretrain_step

RADIUS_M = 20.0  # an object within this range of the LiDAR counts for its quadrant
FAR_M = 50.0  # nearest-object distance cap (also the value of a sample with no labelled object)
QUADRANTS = ("front_left", "front_right", "rear_left", "rear_right")


# --------------------------------------------------------------------------------------------- probes


def label_targets(boxes: np.ndarray, radius: float = RADIUS_M, far: float = FAR_M) -> tuple[np.ndarray, float]:
    """Boxes [K, 7] (LiDAR frame, `readers.label_boxes`) -> (occupied bool [4] in `QUADRANTS` order, nearest m)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 7)
    x, y = boxes[:, 0], boxes[:, 1]
    d = np.hypot(x, y)
    near = d <= radius
    occupied = np.array(
        [(near & (x >= 0) & (y >= 0)).any(), (near & (x >= 0) & (y < 0)).any(),
         (near & (x < 0) & (y >= 0)).any(), (near & (x < 0) & (y < 0)).any()]
    )
    return occupied, float(min(d.min(), far)) if len(d) else far


def split_indices(n: int, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded permutation of range(n) cut into (train, held-out); both non-empty."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    if n < 4:
        raise ValueError(f"a probe needs >= 4 samples (fit + held-out), got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    k = min(max(int(round(n * train_fraction)), 2), n - 2)
    return perm[:k], perm[k:]


def ridge_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, l2: float) -> np.ndarray:
    """Closed-form ridge (features standardised on the fit split, unpenalised intercept) -> predictions."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-8
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    y_mu = y_train.mean(0)
    gram = a.T @ a + l2 * np.eye(a.shape[1])
    w = np.linalg.solve(gram, a.T @ (y_train - y_mu))
    return b @ w + y_mu


def r2_score(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination per column (1 - SS_res / SS_tot; 0 for predicting the mean, can be < 0)."""
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    return 1.0 - ((y - pred) ** 2).sum(0) / np.maximum(ss_tot, 1e-12)


def linear_probe(
    features: np.ndarray,
    *,
    regression: np.ndarray | None = None,
    classification: np.ndarray | None = None,
    l2: float = 1.0,
    train_fraction: float = 0.6,
    seed: int = 0,
) -> dict[str, Any]:
    """Ridge probes of `features` [N, D] scored on a held-out split.

    regression [N, K] -> "r2" (mean over targets) and "r2_per_target"; classification bool [N, C] ->
    "accuracy" (mean), "accuracy_per_target" and "majority_accuracy" (always predicting the fit split's
    majority class), so a probe that learns nothing shows up as accuracy ~ majority.
    """
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError(f"features: expected a finite [N, D] array, got shape {x.shape}")
    tr, te = split_indices(len(x), train_fraction, seed)
    out: dict[str, Any] = {"samples_fit": len(tr), "samples_held_out": len(te)}
    if regression is not None:
        y = np.asarray(regression, np.float64).reshape(len(x), -1)
        r2 = r2_score(y[te], ridge_predict(x[tr], y[tr], x[te], l2))
        out["r2"], out["r2_per_target"] = float(r2.mean()), r2.tolist()
    if classification is not None:
        c = np.asarray(classification, bool).reshape(len(x), -1)
        signed = np.where(c, 1.0, -1.0)
        acc = ((ridge_predict(x[tr], signed[tr], x[te], l2) > 0) == c[te]).mean(0)
        majority = ((c[tr].mean(0) > 0.5)[None] == c[te]).mean(0)
        out["accuracy"], out["accuracy_per_target"] = float(acc.mean()), acc.tolist()
        out["majority_accuracy"] = float(majority.mean())
    return out


def masked_patch_correlation(pred: np.ndarray, target: np.ndarray, masked: np.ndarray) -> float:
    """Pearson r over every pixel of the masked patches: pred/target [B, N, P], masked [B, N] (0/1)."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    sel = np.broadcast_to(np.asarray(masked, bool)[..., None], pred.shape)
    p, t = pred[sel], target[sel]
    if p.size < 2:
        raise ValueError("masked_patch_correlation: fewer than 2 masked pixels")
    p, t = p - p.mean(), t - t.mean()
    return float((p * t).sum() / max(np.sqrt((p * p).sum() * (t * t).sum()), 1e-12))


# --------------------------------------------------------------------------------------------- models


# One jitted function for every encoder: models of one architecture share the compiled code.
_cls_features = jax.jit(lambda model, batch, valid: model.features(batch, valid, deterministic=True))


def encoder_features(model: Raceformer, samples: dict[str, Any], batch_size: int = 32) -> np.ndarray:
    """The fused CLS feature [N, D] of stacked samples (modality arrays [N, ...] and "valid" {m: [N]})."""
    mods = model.modalities
    n = len(samples[mods[0]])
    out = []
    for i in range(0, n, batch_size):
        # the last chunk is padded to batch_size so the function compiles once
        idx = np.minimum(np.arange(i, i + batch_size), n - 1)
        batch = {m: jnp.asarray(samples[m][idx]) for m in mods}
        valid = {m: jnp.asarray(samples["valid"][m][idx]) for m in mods}
        out.append(np.asarray(_cls_features(model, batch, valid))[: min(batch_size, n - i)])
    return np.concatenate(out)


def reconstruction_correlation(
    model: Raceformer, samples: dict[str, Any], cfg: PretrainConfig, seed: int = 0, batch_size: int = 32
) -> dict[str, float]:
    """Pearson r of masked-patch reconstructions per patch modality, with the run's mask ratio and targets."""
    tr = cfg.training
    mods = model.modalities
    n = len(samples[mods[0]])

    @jax.jit
    def parts(m, batch, key):
        out = masked_predictions(
            m, batch, key, mask_ratio=tr.mask_ratio, dirichlet_alpha=tr.dirichlet_alpha,
            norm_pix_loss=tr.norm_pix_loss, deterministic=True,
        )
        return {k: (v["pred"], v["target"], v["masked"]) for k, v in out.items()}

    acc: dict[str, list] = {}
    for i in range(0, n, batch_size):
        idx = np.arange(i, min(i + batch_size, n))
        batch = {m: jnp.asarray(samples[m][idx]) for m in mods}
        batch["valid"] = {m: jnp.asarray(samples["valid"][m][idx]) for m in mods}
        for m, (p, t, k) in parts(model, batch, jax.random.key(seed + i)).items():
            acc.setdefault(m, []).append((np.asarray(p), np.asarray(t), np.asarray(k)))
    return {
        m: masked_patch_correlation(*(np.concatenate([c[j] for c in chunks]) for j in range(3)))
        for m, chunks in acc.items()
        if sum(c[2].sum() for c in chunks) >= 2
    }


def labelled_samples(cfg: PretrainConfig, max_samples: int = 256) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Up to `max_samples` labelled CMHT samples of `cfg.data` (evenly spread): (stacked samples, occupied
    bool [N, 4], nearest distance [N]). Samples whose sweep has no label file are left out."""
    root = Path(cfg.data.root)
    sequences = {s.name: s for s in index.find_sequences(root, on_error=cfg.data.on_error)}
    source = dataset.CMHTDataSource(list(sequences.values()), cfg.data, cfg.model.modalities, cfg.model.bev)
    labelled = []
    for i in range(len(source)):
        s, row = source.records.locate(i)
        seq = sequences[source.records.names[s]]
        path = seq.labels.get(index.sweep_frame(seq, row))
        if path is not None:
            labelled.append((i, path))
    if len(labelled) < 4:
        raise ValueError(f"{root}: {len(labelled)} samples with a label file; a probe needs >= 4")
    pick = np.unique(np.linspace(0, len(labelled) - 1, min(max_samples, len(labelled))).round().astype(int))
    items = [source[labelled[k][0]] for k in pick]
    targets = [label_targets(readers.label_boxes(readers.read_labels(labelled[k][1]))) for k in pick]
    mods = tuple(cfg.model.modalities)
    samples = {m: np.stack([it[m] for it in items]) for m in mods}
    samples["valid"] = {m: np.array([bool(it["valid"][m]) for it in items]) for m in mods}
    return samples, np.stack([t[0] for t in targets]), np.array([t[1] for t in targets])


def restore_pretrained(run_dir: Path, cfg: PretrainConfig) -> Raceformer | None:
    """The full pretrained model (with its masked-modeling head) from the run's latest checkpoint, if any."""
    from src.infra.checkpoint import Checkpointer

    ckpt = Checkpointer(run_dir / "ckpt", save_every=1, keep=1)
    try:
        step = ckpt.latest_step()
        if step is None:
            return None
        s = pretrain_step.setup(cfg)
        state, _ = ckpt.restore(step, s.state)
        nnx.update(s.model, state["model"])
        return s.model
    finally:
        ckpt.close()


def pretraining_quality(
    run_dir: str | Path, cfg: PretrainConfig, *, max_samples: int = 256, l2: float = 1.0, seed: int = 0
) -> dict[str, Any]:
    """Probe figures of the run's exported encoder against a random encoder of the same architecture, and
    the reconstruction correlation of its masked-modeling head (when the run holds a checkpoint).

    Returns flat {"probe/<encoder>/<figure>": float, "recon_r/<modality>": float, "samples": int}.
    """
    run_dir = Path(run_dir)
    enc_dir = run_dir / "encoder"
    if not enc_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no exported encoder (expected {enc_dir})")
    model_cfg = load_encoder_config(enc_dir)
    cfg = config.replace(cfg, model=model_cfg)
    samples, occupied, nearest = labelled_samples(cfg, max_samples)
    pretrained = Raceformer(model_cfg, rngs=nnx.Rngs(seed))
    import_encoder(pretrained, enc_dir)
    random = Raceformer(model_cfg, rngs=nnx.Rngs(seed + 1))
    out: dict[str, Any] = {"samples": int(len(nearest))}
    for name, model in (("pretrained", pretrained), ("random", random)):
        probe = linear_probe(
            encoder_features(model, samples), regression=nearest[:, None], classification=occupied, l2=l2, seed=seed
        )
        for key in ("r2", "accuracy", "majority_accuracy"):
            out[f"probe/{name}/{key}"] = probe[key]
    full = restore_pretrained(run_dir, cfg)
    if full is not None and cfg.objectives.masked_modeling:
        for m, r in reconstruction_correlation(full, samples, cfg, seed).items():
            out[f"recon_r/{m}"] = r
    return out


def main(argv: list[str] | None = None) -> None:
    """Print the pretraining-quality figures of a pretraining run as JSON."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--encoder", required=True, help="pretraining run directory (holds encoder/ and ckpt/)")
    parser.add_argument("--config", required=True, help="the pretraining config (data root, objectives)")
    parser.add_argument("--max-samples", type=int, default=256)
    parser.add_argument("--l2", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = config.load(PretrainConfig, args.config)
    figures = pretraining_quality(args.encoder, cfg, max_samples=args.max_samples, l2=args.l2, seed=args.seed)
    print(json.dumps(figures, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
