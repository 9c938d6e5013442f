"""Training metrics: per-key aggregates over a logging window -> console progress bar, `metrics.jsonl`, TensorBoard.

`update` accumulates one step's (or one PPO iteration's) scalars; `log` folds in its own metrics, writes the
aggregate of every update since the last `log` as one JSON line and one TensorBoard scalar per key, advances
the progress bar and resets. A key's aggregate is the mean of its updates, except for keys named in `sums`
(counts, e.g. finished episodes), `latest` (counters, e.g. env steps so far) and `weights` (a key starting with
one of its prefixes is a mean weighted by another key of the same update, e.g. episode figures by the number of
episodes, so the logged return is the mean over every episode of the window). On non-zero JAX processes the
logger is disabled and does nothing.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

_BAR_KEYS = ("loss", "lr", "samples_per_s", "return", "episode/return")


class MetricLogger:
    def __init__(self, run_dir: str | Path, *, total_steps: int, enabled: bool = True, progress: bool = True,
                 initial_step: int = 0, sums: tuple[str, ...] = (), latest: tuple[str, ...] = (),
                 weights: dict[str, str] | None = None):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.sums, self.latest, self.weights = frozenset(sums), frozenset(latest), dict(weights or {})
        self._totals: dict[str, list[float]] = {}  # key -> [weighted sum, total weight]
        self._t0 = time.perf_counter()
        self._bar = None
        self._writer = None
        self._jsonl = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = (self.run_dir / "metrics.jsonl").open("a")
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(str(self.run_dir / "tb"))
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, dynamic_ncols=True, leave=True)

    def _weight(self, key: str, metrics: dict[str, Any]) -> float:
        for prefix, weight_key in self.weights.items():
            if key.startswith(prefix) and key != weight_key:
                if weight_key not in metrics:
                    raise KeyError(f"metric {key!r} is weighted by {weight_key!r}, which this update lacks")
                return float(metrics[weight_key])
        return 1.0

    def update(self, metrics: dict[str, Any]) -> None:
        """Accumulate one step's scalar metrics (JAX or NumPy scalars, or floats)."""
        if not self.enabled:
            return
        for key, value in metrics.items():
            value = float(np.asarray(value, np.float64))
            w = 1.0 if key in self.latest or key in self.sums else self._weight(key, metrics)
            if w <= 0:  # a mean weighted by nothing this update (e.g. no episode ended) gets no term
                continue
            total = self._totals.setdefault(key, [0.0, 0.0])
            if key in self.latest:
                total[:] = [value, 1.0]
            elif key in self.sums:
                total[:] = [total[0] + value, 1.0]
            else:
                total[:] = [total[0] + w * value, total[1] + w]

    def log(self, step: int, metrics: dict[str, Any] | None = None) -> dict[str, float]:
        """Fold in `metrics`, write the averages since the last call at `step`, reset; returns what was written."""
        if not self.enabled:
            return {}
        if metrics:
            self.update(metrics)
        row = {k: s / w if w > 0 else float("nan") for k, (s, w) in self._totals.items()}
        self._totals.clear()
        # JSON has no NaN/Infinity: a metric without a finite value this interval (e.g. no lap finished yet,
        # or the non-finite loss that stops a run) is written as null, so the file stays strict JSON.
        finite = {k: v if math.isfinite(v) else None for k, v in row.items()}
        record = {"step": int(step), "wall_s": round(time.perf_counter() - self._t0, 3), **finite}
        self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self._jsonl.flush()
        for key, value in row.items():
            if math.isfinite(value):
                self._writer.add_scalar(key, value, int(step))
        self._writer.flush()
        if self._bar is not None:
            self._bar.n = int(step)
            shown = {k: f"{row[k]:.4g}" for k in _BAR_KEYS if k in row}
            self._bar.set_postfix(shown, refresh=False)
            self._bar.refresh()
        return row

    def write(self, message: str) -> None:
        """Print a line without breaking the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
