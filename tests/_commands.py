"""Tiny-size command lines shared by the tests that run the entry points in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TINY_MODEL = [
    "model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.fusion_depth=1", "model.decoder_dim=16",
    "model.decoder_depth=1", "model.decoder_heads=2", "model.projection_dim=16",
]


def sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def tiny_pretrain(data_root: Path, out_dir: Path, steps: int = 2) -> list[str]:
    """`--set` overrides that shrink configs/pretrain_cmht.toml (2 Grain workers kept) to a few seconds."""
    return sets(*TINY_MODEL, f"data.root={data_root}", f"run.out_dir={out_dir}", f"training.steps={steps}",
                "training.batch_size=4", "training.warmup_steps=1", "training.log_every=1")


def python_env() -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


def run_python(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """`python ARGS` from the repository root; the result's stdout/stderr are text."""
    return subprocess.run([sys.executable, *args], cwd=REPO, env=python_env(), capture_output=True, text=True,
                          timeout=timeout)
