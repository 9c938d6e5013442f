"""A run's directory, `<run.out_dir>/<run.name>/` (Contract 3), shared by the pretrainer and the PPO runner.

`prepare` decides what a starting run does with what is already there:

- nothing there: a fresh run;
- a previous run with a checkpoint and `run.resume = true`: resume it. The requested config must equal the
  `config.toml` stored beside the checkpoint, except for the keys in `RESUMABLE_KEYS` (cadence, evaluation,
  workers, device layout, and the run length, so a run can be extended); any other difference is an error that
  names the keys, because the checkpoint would otherwise continue under a config that does not describe it;
- a previous run and `run.resume = false` (or one without any checkpoint to resume): start over. The old
  directory is moved aside to `<run.name>.<UTC time, YYYYmmddTHHMMSSZ>` next to it (never deleted), so the new
  run gets a clean directory: only its own checkpoints, a fresh `metrics.jsonl`, its own `config.toml`.

The resolved config is then written to `config.toml`, so that it always describes the checkpoints beside it.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from src import config
from src.config import ConfigError

RESUMABLE_KEYS: tuple[str, ...] = (
    "run.resume",
    "run.out_dir",
    "training.steps",  # extend (or shorten) a run; the LR schedule then follows the new length
    "training.log_every",
    "training.checkpoint_every",
    "training.keep_checkpoints",
    "training.export_encoder",
    "data.num_workers",  # the batches do not depend on the worker count
    "data.prefetch",
    "mesh",  # a requeued job may land on another device layout; checkpoints restore into any sharding
    "ppo.total_env_steps",
    "ppo.log_every",
    "ppo.checkpoint_every",
    "ppo.keep_checkpoints",
    "eval",  # evaluation reads the policy, it does not change training
)
"""Config keys (or whole sections) that may differ between a stored run and the config that resumes it."""

CONFIG_FILE = "config.toml"
CKPT_DIR = "ckpt"


@dataclasses.dataclass(frozen=True)
class RunDir:
    path: Path
    resumable: bool  # holds a checkpoint this invocation continues from
    moved_aside: Path | None  # where the previous run went when this one started over

    @property
    def ckpt(self) -> Path:
        return self.path / CKPT_DIR


def run_path(cfg: Any) -> Path:
    """`<run.out_dir>/<run.name>` of a PretrainConfig or RLConfig."""
    return Path(cfg.run.out_dir) / cfg.run.name


def has_checkpoint(path: Path) -> bool:
    """Whether the run at `path` holds at least one finished Orbax step directory (`ckpt/<step>/`)."""
    ckpt = path / CKPT_DIR
    return ckpt.is_dir() and any(p.is_dir() and p.name.isdigit() for p in ckpt.iterdir())


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _resumable(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS)


def config_differences(stored: Any, requested: Any) -> list[str]:
    """'key: stored -> requested' for every key (outside `RESUMABLE_KEYS`) where the two configs differ."""
    a, b = _flatten(config.to_dict(stored)), _flatten(config.to_dict(requested))
    return [
        f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}"
        for k in sorted(set(a) | set(b))
        if not _resumable(k) and a.get(k) != b.get(k)
    ]


def move_aside(path: Path) -> Path:
    """Rename the run directory `path` to `<name>.<UTC timestamp>` beside it (a suffix -1, -2... if taken)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.{stamp}")
    n = 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{stamp}-{n}")
    path.rename(target)
    return target


def prepare(cfg: Any, *, resume: bool | None = None, primary: bool = True) -> RunDir:
    """Get the run directory of `cfg` ready (module docstring) and write its `config.toml`.

    `resume` defaults to `cfg.run.resume`. Only the `primary` process (JAX process 0) moves or writes anything;
    the others just learn the decision, and must wait at a barrier until the primary is done.
    """
    path = run_path(cfg)
    resume = cfg.run.resume if resume is None else resume
    previous = path.is_dir() and any(path.iterdir())
    resumable = resume and has_checkpoint(path)
    moved = None
    if resumable:
        stored_file = path / CONFIG_FILE
        if not stored_file.is_file():
            raise ConfigError(
                f"{path} holds checkpoints but no {CONFIG_FILE}, so nothing says which config they belong to; "
                f"start over with --set run.resume=false (the old run is moved aside) or choose another run.name"
            )
        diffs = config_differences(config.load(type(cfg), stored_file), cfg)
        if diffs:
            raise ConfigError(
                f"cannot resume {path}: the requested config differs from its {CONFIG_FILE} in "
                f"{len(diffs)} key(s):\n  " + "\n  ".join(diffs) + "\nTo start over, pass --set run.resume=false "
                f"(the old run is moved aside to {path.name}.<UTC time>); to keep both, choose another run.name."
            )
    elif previous and primary:
        moved = move_aside(path)
    if primary:
        config.save(cfg, path / CONFIG_FILE)
    return RunDir(path, resumable, moved)
