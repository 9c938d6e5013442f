"""The experiment's report: `results.json` (every number), a learning-curve PNG with CI bands, `report.md`.

Inputs are per variant arrays [seeds, budgets, columns] (columns: evaluation episodes, e.g. start positions
spread around the track, or tracks): the score the statistics are about (e.g. return), whether each episode
finished a clean lap (no wall contact), and its lap time (NaN where no lap was completed). The minimum-time
lap of the evaluation track (`src.envs.laptime.min_lap_time`) sits beside every lap time, so readers see the
gap to the limit. `pretraining` (e.g. `src.analysis.probe.pretraining_quality`'s figures) adds a section.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from src.analysis.stats import improvement_probabilities, iqm_intervals


def _per_budget(name: str, what: str, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if a.shape != shape:
        raise ValueError(f"{what}[{name!r}]: expected shape {shape} (as its scores), got {a.shape}")
    return a


def summarise(
    scores: Mapping[str, np.ndarray],
    budgets: Sequence[int],
    *,
    baseline: str = "scratch",
    clean_laps: Mapping[str, np.ndarray] | None = None,
    lap_times: Mapping[str, np.ndarray] | None = None,
    min_lap_time: float | None = None,
    score_name: str = "return",
    reps: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """All the report's numbers as a JSON-able dict (see `write_report`)."""
    scores = {k: np.asarray(v, np.float64) for k, v in scores.items()}
    n_budgets = {v.shape[1] for v in scores.values() if v.ndim == 3}
    if n_budgets != {len(budgets)}:
        raise ValueError(f"budgets: {len(budgets)} given but the scores hold {sorted(n_budgets)} budgets")
    iqm = iqm_intervals(scores, reps=reps, seed=seed, confidence=confidence)
    poi = improvement_probabilities(scores, baseline, reps=reps, seed=seed, confidence=confidence)
    variants = {}
    for name, s in scores.items():
        row: dict[str, Any] = {"seeds": int(s.shape[0]), "columns": int(s.shape[2]), score_name: iqm[name]}
        if name in poi:
            row[f"p_improvement_over_{baseline}"] = poi[name]
        if clean_laps is not None:
            c = _per_budget(name, "clean_laps", clean_laps[name], s.shape)
            row["clean_lap_fraction"] = c.mean(axis=(0, 2)).tolist()
        if lap_times is not None:
            t = _per_budget(name, "lap_times", lap_times[name], s.shape)
            done = np.isfinite(t)
            row["lap_time_median_s"] = [
                float(np.median(t[:, b][done[:, b]])) if done[:, b].any() else None for b in range(len(budgets))
            ]
        variants[name] = row
    return {
        "score": score_name,
        "baseline": baseline,
        "budgets": [int(b) for b in budgets],
        "seeds": {k: int(v.shape[0]) for k, v in scores.items()},
        "bootstrap": {
            "reps": int(reps), "seed": int(seed), "confidence": float(confidence), "method": "percentile"
        },
        "min_lap_time_s": None if min_lap_time is None else float(min_lap_time),
        "variants": variants,
    }


def plot_learning_curves(results: Mapping[str, Any], path: str | Path) -> Path:
    """IQM against env steps with the bootstrap CI as a band, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    x = results["budgets"]
    score = results["score"]
    for name, row in results["variants"].items():
        r = row[score]
        (line,) = ax.plot(x, r["iqm"], marker="o", label=f"{name} (n={row['seeds']})")
        ax.fill_between(x, r["lo"], r["hi"], color=line.get_color(), alpha=0.2)
    ax.set_xlabel("env steps")
    ax.set_ylabel(f"IQM {score}")
    ax.set_title(f"IQM {score}, {100 * results['bootstrap']['confidence']:.0f}% stratified-bootstrap CIs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(results: Mapping[str, Any], pretraining: Mapping[str, Any] | None = None) -> str:
    """The report's table: variant x budget with IQM [CI], P(improvement), clean laps, lap time, the limit."""
    score, base = results["score"], results["baseline"]
    ci = f"{100 * results['bootstrap']['confidence']:.0f}% CI"
    lines = [
        f"IQM {score} with {ci} (stratified bootstrap over seeds, {results['bootstrap']['reps']} resamples, "
        f"seed {results['bootstrap']['seed']}); P(> {base}) is the probability of improvement over {base}.",
        "",
        f"| variant | seeds | env steps | IQM {score} [{ci}] | P(> {base}) [{ci}] | clean laps | "
        "median lap time (s) | min-time lap (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    t_min = _fmt(results.get("min_lap_time_s"))
    for name, row in results["variants"].items():
        r = row[score]
        p = row.get(f"p_improvement_over_{base}")
        for b, steps in enumerate(results["budgets"]):
            poi = "-" if p is None else f"{p['p'][b]:.2f} [{p['lo'][b]:.2f}, {p['hi'][b]:.2f}]"
            clean = row.get("clean_lap_fraction")
            lap = row.get("lap_time_median_s")
            lines.append(
                f"| {name} | {row['seeds']} | {steps} | {r['iqm'][b]:.2f} [{r['lo'][b]:.2f}, {r['hi'][b]:.2f}] | "
                f"{poi} | {'-' if clean is None else f'{clean[b]:.2f}'} | {'-' if lap is None else _fmt(lap[b])} | "
                f"{t_min} |"
            )
    if pretraining:
        lines += ["", "Pretraining quality (before any PPO):", "", "| figure | value |", "|---|---|"]
        for key, value in pretraining.items():
            lines.append(f"| {key} | {value:.3f} |" if isinstance(value, float) else f"| {key} | {value} |")
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: str | Path,
    scores: Mapping[str, np.ndarray],
    budgets: Sequence[int],
    *,
    pretraining: Mapping[str, Any] | None = None,
    **summary_kwargs: Any,
) -> dict[str, Any]:
    """Write results.json, learning_curve.png and report.md into `out_dir`; return the results dict.

    `summary_kwargs` go to `summarise` (baseline, clean_laps, lap_times, min_lap_time, score_name, reps, seed,
    confidence).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = summarise(scores, budgets, **summary_kwargs)
    if pretraining is not None:
        results["pretraining"] = dict(pretraining)
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    plot_learning_curves(results, out / "learning_curve.png")
    (out / "report.md").write_text(markdown(results, pretraining))
    return results
