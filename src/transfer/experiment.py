"""A whole transfer run, or one SLURM array task's share of it: pretraining, the missing parts, the report."""

from __future__ import annotations

import json
from typing import Any

from src import config
from src.infra import processes
from src.rl import train_jax
from src.transfer.config import (
    TransferConfig,
    run_path,
    source_of,
)
from src.transfer.parts import done_seeds, existing_parts, part_path, run_part, write_part
from src.transfer.pretrain import pretrain, pretraining_figures
from src.transfer.report import report
from src.transfer.tracks import env_example, eval_track, load_track, multi_track_env


def run(
    cfg: TransferConfig,
    variants: tuple[str, ...],
    seeds: tuple[int, ...],
    *,
    pretrain_only: bool = False,
    write_report: bool = True,
) -> dict[str, Any] | None:
    """Pretrain what the chosen variants need, run every (variant, seed group) not done yet, report (unless a
    SLURM array task, which leaves the report to the aggregation job)."""
    processes.prepare_process()
    out = run_path(cfg)
    out.mkdir(parents=True, exist_ok=True)
    existing_parts(cfg)  # a part from another config is an error before any work
    record = out / "experiment.toml"
    if not record.is_file():
        config.save(cfg, record)
    train_tracks = [load_track(t) for t in cfg.transfer.train_tracks]
    sources = sorted({source_of(v) for v in variants} - {None})
    encoders = {s: pretrain(cfg, s, train_tracks) for s in sources}
    fig_file = out / "pretraining.json"
    figures = json.loads(fig_file.read_text()) if fig_file.is_file() else {}
    for s in sources:
        if not any(k.startswith(f"{s}/") for k in figures):
            figures.update(pretraining_figures(cfg, s, train_tracks))
            fig_file.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    if pretrain_only:
        return None
    evals = [eval_track(cfg, t) for t in cfg.transfer.eval_tracks]
    env, _ = multi_track_env(cfg, train_tracks)
    engines: dict[tuple[bool, bool], train_jax.SeedBatch] = {}
    example = env_example(env)
    for v in variants:
        todo = tuple(s for s in seeds if s not in done_seeds(existing_parts(cfg), v))
        if not todo:
            print(f"[{v}] seeds {list(seeds)} already done", flush=True)
            continue
        part = run_part(cfg, v, todo, encoders, env, evals, engines, example)
        path = write_part(part_path(cfg, v, todo), part)
        print(f"[{v}] seeds {list(todo)}: {part['record']['wall_s']:.0f} s -> {path}", flush=True)
    return report(cfg, figures or None) if write_report else None
