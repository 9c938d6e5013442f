"""One (variant, seed group) part of the experiment: PPO for each seed as a vmap axis, evaluations at the budgets,
and the part file under `<run dir>/parts/` (plain arrays + a JSON record with the config hash)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from src import config
from src.infra.checkpoint import ENCODER_PARTS, encoder_sha256
from src.rl import envs as rl_envs
from src.rl import train_jax, trainer
from src.transfer.config import (
    TransferConfig,
    config_sha256,
    rl_config,
    run_path,
    source_of,
    variant_names,
)
from src.transfer.tracks import EvalTrack


def params_digest(model: nnx.Module) -> str:
    """sha256 over the encoder + fusion parameters (name, dtype, shape, bytes): bitwise identity."""
    digest = hashlib.sha256()
    for part in ENCODER_PARTS:
        for path, var in sorted(nnx.to_flat_state(nnx.state(getattr(model, part), nnx.Param)), key=lambda t: str(t[0])):
            arr = np.ascontiguousarray(np.asarray(jax.device_get(var.get_value())))
            digest.update(f"{part}/{'/'.join(map(str, path))}:{arr.dtype.str}:{arr.shape}".encode())
            digest.update(arr.tobytes())
    return digest.hexdigest()


def budget_iterations(cfg: TransferConfig, total: int) -> list[int]:
    its = sorted({max(1, min(total, int(round(f * total)))) for f in cfg.transfer.budgets})
    bad = [f for f in cfg.transfer.budgets if not 0 < f <= 1]
    if bad:
        raise config.ConfigError(f"transfer.budgets: fractions in (0, 1] expected, got {bad}")
    return its


def run_part(
    cfg: TransferConfig,
    variant: str,
    seeds: tuple[int, ...],
    encoders: dict[str, Path],
    env: train_jax.JaxEnv,
    evals: list[EvalTrack],
    engines: dict[tuple[bool, bool], train_jax.SeedBatch],
    example: Any,
) -> dict[str, Any]:
    """Train `variant` for `seeds` as one vmapped batch, evaluate at every budget; returns the part's arrays
    and record. `engines` caches one compiled seed batch per kind of learner (frozen?, imported?): variants of
    one kind differ only in their parameters, so they share the compiled iteration and evaluation."""
    t0 = time.perf_counter()
    source = source_of(variant)
    encoder = str(encoders[source]) if source else ""
    freeze = variant.startswith("frozen")
    setups = []
    for s in seeds:
        rl = rl_config(cfg, f"{variant}_seed{s}", encoder, freeze)
        rl = config.replace(rl, run={"seed": cfg.run.seed + s})
        training_env = rl_envs.TrainingEnv(
            2, example, lambda learner: train_jax.JaxEngine(learner, env, cfg.env.num_envs), None
        )
        setups.append(trainer.setup(rl, training_env))
    kind = (freeze, bool(encoder))
    if kind not in engines:
        engines[kind] = train_jax.SeedBatch(train_jax.JaxEngine(setups[0].learner, env, cfg.env.num_envs))
    batch = engines[kind]
    learner = batch.engine.learner
    trains = [
        learner.init_state(su.params, example, jax.random.PRNGKey(cfg.run.seed + s)) for su, s in zip(setups, seeds)
    ]
    initial = [params_digest(learner.module(t.params).model) for t in trains]
    runner = batch.init(trains, [jax.random.PRNGKey(cfg.run.seed + s + 1) for s in seeds])
    total = setups[0].iterations
    budgets = budget_iterations(cfg, total)
    arrays: dict[str, list] = {}
    env_steps = []
    train_returns = []
    for it in range(1, total + 1):
        runner, metrics = batch.run_iteration(runner)
        train_returns.append([m.get("episode/return", np.nan) for m in metrics])
        if it in budgets:
            env_steps.append(it * cfg.ppo.num_steps * cfg.env.num_envs)
            for ev in evals:
                figures = ev.rollout(learner, runner.train)
                for key, value in figures.items():
                    arrays.setdefault(f"{ev.name}/{key}", []).append(value)
            print(
                f"[{variant} seeds {seeds[0]}-{seeds[-1]}] iteration {it}/{total}: "
                + ", ".join(f"{ev.name} return {np.mean(arrays[f'{ev.name}/return'][-1]):.1f}" for ev in evals),
                flush=True,
            )
    final = [params_digest(learner.module(train_jax.SeedBatch.seed(runner, i).train.params).model) for i in range(len(seeds))]
    out = {k: np.stack(v, axis=1) for k, v in arrays.items()}  # [S, B, E]
    out["train_return"] = np.asarray(train_returns, np.float64).T  # [S, iterations]
    record = {
        "variant": variant,
        "seeds": list(seeds),
        "config_sha256": config_sha256(cfg),
        "encoder": encoder,
        "encoder_sha256": encoder_sha256(encoder) if encoder else "",
        "budgets_env_steps": env_steps,
        "eval_tracks": [ev.name for ev in evals],
        "min_lap_time_s": {ev.name: ev.min_lap_time for ev in evals},
        "encoder_digest_initial": initial,
        "encoder_digest_final": final,
        "wall_s": time.perf_counter() - t0,
    }
    return {"arrays": out, "record": record}


def part_path(cfg: TransferConfig, variant: str, seeds: tuple[int, ...]) -> Path:
    return run_path(cfg) / "parts" / f"{variant}__seeds{seeds[0]}-{seeds[-1]}.npz"


def write_part(path: Path, part: dict[str, Any]) -> Path:
    """Arrays and the JSON record in one .npz (no pickle); written to a temporary name, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **part["arrays"], record=np.array(json.dumps(part["record"])))
    tmp.replace(path)
    return path


def read_part(path: Path, cfg: TransferConfig) -> dict[str, Any]:
    """A part file; one written under another config is an error that says how to start over."""
    with np.load(path, allow_pickle=False) as z:
        record = json.loads(str(z["record"]))
        arrays = {k: z[k] for k in z.files if k != "record"}
    if record.get("config_sha256") != config_sha256(cfg):
        raise ValueError(
            f"{path}: written under another config (sha256 {str(record.get('config_sha256'))[:12]}, this config "
            f"{config_sha256(cfg)[:12]}); its results cannot be mixed with this run's. Start over: move "
            f"{run_path(cfg)} aside (or delete it), or give the experiment another run.name"
        )
    return {"arrays": arrays, "record": record}


def existing_parts(cfg: TransferConfig) -> list[dict[str, Any]]:
    return [read_part(p, cfg) for p in sorted((run_path(cfg) / "parts").glob("*__seeds*.npz"))]


def done_seeds(parts: list[dict[str, Any]], variant: str) -> set[int]:
    return {s for p in parts if p["record"]["variant"] == variant for s in p["record"]["seeds"]}


def array_parts(cfg: TransferConfig, seeds_per_part: int) -> list[tuple[str, str]]:
    """The experiment cut into (variant, seed range) parts of at most `seeds_per_part` seeds: one SLURM array task
    each (`scripts/slurm/transfer_array.sh`), in the `--variants` / `--seeds` forms the command takes."""
    if seeds_per_part < 1:
        raise ValueError(f"--list-parts {seeds_per_part}: the number of seeds per part must be at least 1")
    n = cfg.transfer.seeds
    groups = [(lo, min(lo + seeds_per_part, n) - 1) for lo in range(0, n, seeds_per_part)]
    return [(v, f"{lo}-{hi}") for v in variant_names(cfg) for lo, hi in groups]
