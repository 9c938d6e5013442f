"""Pictures of a run: the learning curve from `metrics.jsonl` and a top-down GIF of a driven lap."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_learning_curve(metrics_path: Path, png: Path, title: str) -> Path | None:
    """Training episodic return and deterministic evaluation return against env steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)

    def series(key: str) -> list[tuple[float, float]]:
        return [(r["env_steps"], r[key]) for r in rows if r.get(key) is not None and "env_steps" in r]

    train, evals = series("episode/return"), series("eval/return")
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="training episodes (stochastic)", alpha=0.7)
    if evals:
        ax.plot(*zip(*evals), "o-", label="evaluation (policy mean)")
    ax.set_xlabel("env steps")
    ax.set_ylabel("episodic return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def write_gif(path: Path, walls: np.ndarray, poses: np.ndarray, frame_every: int, size: int = 320) -> Path:
    """Top-down GIF: wall segments [S, 2, 2] (m), the car's trail and a triangle at its pose (x, y, yaw) [T, 3]."""
    from PIL import Image, ImageDraw

    pts = np.concatenate([walls.reshape(-1, 2), poses[:, :2]])
    lo, hi = pts.min(0) - 1.0, pts.max(0) + 1.0
    scale = (size - 1) / float((hi - lo).max())

    def px(xy: np.ndarray) -> list[tuple[float, float]]:
        p = (np.asarray(xy).reshape(-1, 2) - lo) * scale
        return [(float(a), float(size - 1 - b)) for a, b in p]

    base = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(base)
    for seg in walls:
        draw.line(px(seg), fill=(40, 40, 40), width=2)
    frames = []
    car = np.array([[0.5, 0.0], [-0.3, 0.25], [-0.3, -0.25]])
    for t in range(0, len(poses), max(frame_every, 1)):
        im = base.copy()
        d = ImageDraw.Draw(im)
        if t > 0:
            d.line(px(poses[: t + 1, :2]), fill=(30, 120, 220), width=2)
        x, y, yaw = poses[t]
        rot = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
        d.polygon(px(car @ rot.T + np.array([x, y])), fill=(220, 40, 40))
        frames.append(im)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=60, loop=0)
    return path
