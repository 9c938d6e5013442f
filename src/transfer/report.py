"""The experiment's report from every part present: rliable IQM with bootstrap CIs, P(improvement) over scratch,
learning curves and the minimum-time lap beside every lap time."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from src.analysis.report import write_report
from src.transfer.config import (
    TransferConfig,
    run_path,
    variant_names,
)
from src.transfer.parts import existing_parts


def report(cfg: TransferConfig, pretraining: dict[str, Any] | None = None) -> dict[str, Any]:
    """Aggregate every part present into `<run dir>/report/` (one report per evaluation track) and
    `<run dir>/report/report.md`; a seed present in two parts of one variant is an error."""
    parts = existing_parts(cfg)
    if not parts:
        raise FileNotFoundError(f"{run_path(cfg) / 'parts'}: no results yet; run the experiment first")
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for p in parts:
        by_variant.setdefault(p["record"]["variant"], []).append(p)
    order = [v for v in variant_names(cfg) if v in by_variant]
    budgets = parts[0]["record"]["budgets_env_steps"]
    tracks = parts[0]["record"]["eval_tracks"]
    min_laps = parts[0]["record"]["min_lap_time_s"]
    merged: dict[str, dict[str, np.ndarray]] = {}
    seeds_of: dict[str, list[int]] = {}
    for v in order:
        seen: list[int] = []
        for p in by_variant[v]:
            dup = sorted(set(seen) & set(p["record"]["seeds"]))
            if dup:
                raise ValueError(f"{run_path(cfg) / 'parts'}: variant {v} has seeds {dup} in more than one part")
            seen += p["record"]["seeds"]
        seeds_of[v] = sorted(seen)
        ps = sorted(by_variant[v], key=lambda p: p["record"]["seeds"][0])
        merged[v] = {k: np.concatenate([p["arrays"][k] for p in ps]) for k in ps[0]["arrays"]}
    if pretraining is None:
        file = run_path(cfg) / "pretraining.json"
        pretraining = json.loads(file.read_text()) if file.is_file() else None
    out = run_path(cfg) / "report"
    results = {}
    baseline = "scratch" if "scratch" in merged else order[0]
    sections = []
    for track in tracks:
        r = write_report(
            out / track,
            {v: merged[v][f"{track}/return"] for v in order},
            budgets,
            baseline=baseline,
            clean_laps={v: merged[v][f"{track}/clean"] for v in order},
            lap_times={v: merged[v][f"{track}/lap_time"] for v in order},
            min_lap_time=min_laps[track],
            pretraining=pretraining,
            seed=cfg.run.seed,
        )
        results[track] = r
        sections.append(f"## Evaluation track `{track}`\n\n![learning curve]({track}/learning_curve.png)\n\n"
                        + (out / track / "report.md").read_text())
    frozen_ok = {
        v: all(a == b for p in by_variant[v] for a, b in zip(p["record"]["encoder_digest_initial"],
                                                              p["record"]["encoder_digest_final"]))
        for v in order if v.startswith("frozen")
    }
    summary = {"variants": order, "seeds": seeds_of, "eval_tracks": tracks, "frozen_encoder_unchanged": frozen_ok,
               "wall_s": {v: sum(p["record"]["wall_s"] for p in by_variant[v]) for v in order}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "report.md").write_text(
        "# Transfer experiment\n\n" + "\n".join(sections)
        + f"\nFrozen variants' encoder + fusion bitwise unchanged by training: {frozen_ok}\n"
    )
    return {"tracks": results, **summary}
