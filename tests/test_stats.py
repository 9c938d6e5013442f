"""rliable statistics and the report: CIs that separate what differs, P(improvement), reproducibility."""

import json

import numpy as np
import pytest
from rliable import metrics

from src.analysis import stats
from src.analysis.report import summarise, write_report

REPS = 200


def _scores(shift: float, seed: int, shape=(6, 2, 4)) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, 1.0, shape)


def test_iqm_matches_hand_computation():
    x = np.array([[10.0, 1.0], [2.0, 3.0], [4.0, -50.0], [5.0, 100.0]])  # 8 values
    # sorted: -50 1 2 3 4 5 10 100 -> drop 2 each end -> mean(2, 3, 4, 5)
    assert stats.iqm(x) == pytest.approx(3.5)


def test_fast_improvement_probability_equals_rliables():
    rng = np.random.default_rng(1)
    for _ in range(5):
        x, y = rng.integers(0, 4, (5, 3)).astype(float), rng.integers(0, 4, (7, 3)).astype(float)  # with ties
        assert stats.probability_of_improvement(x, y) == pytest.approx(metrics.probability_of_improvement(x, y))


def test_clearly_better_variant_is_separated():
    scores = {"scratch": _scores(0.0, 0), "pretrained": _scores(3.0, 1)}
    iqm = stats.iqm_intervals(scores, reps=REPS)
    poi = stats.improvement_probabilities(scores, "scratch", reps=REPS)
    for b in range(2):
        assert iqm["pretrained"]["lo"][b] > iqm["scratch"]["iqm"][b]
        assert iqm["scratch"]["hi"][b] < iqm["pretrained"]["iqm"][b]
        assert poi["pretrained"]["p"][b] > 0.9 and poi["pretrained"]["lo"][b] > 0.5
    assert set(poi) == {"pretrained"}


def test_identical_distributions_are_not_separated():
    scores = {"scratch": _scores(0.0, 2, (12, 1, 4)), "same": _scores(0.0, 3, (12, 1, 4))}
    iqm = stats.iqm_intervals(scores, reps=REPS)
    poi = stats.improvement_probabilities(scores, "scratch", reps=REPS)
    a, b = iqm["scratch"], iqm["same"]
    assert a["lo"][0] < b["hi"][0] and b["lo"][0] < a["hi"][0]  # the CIs overlap
    assert abs(poi["same"]["p"][0] - 0.5) < 0.15
    assert poi["same"]["lo"][0] < 0.5 < poi["same"]["hi"][0]
    same = stats.improvement_probabilities({"scratch": scores["scratch"], "copy": scores["scratch"]}, "scratch", reps=20)
    assert same["copy"]["p"][0] == 0.5


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="baseline 'scratch' is not among the variants"):
        stats.improvement_probabilities({"a": _scores(0, 0)}, "scratch")
    with pytest.raises(ValueError, match=r"scores\['b'\].*differ"):
        stats.iqm_intervals({"a": _scores(0, 0), "b": _scores(0, 0, (6, 3, 4))})
    with pytest.raises(ValueError, match=r"scores\['a'\]: contains NaN"):
        stats.iqm_intervals({"a": np.full((3, 1, 1), np.nan)})


def _inputs():
    scores = {"scratch": _scores(0.0, 0), "frozen": _scores(1.0, 1), "finetuned": _scores(3.0, 2)}
    rng = np.random.default_rng(4)
    clean = {k: rng.random(v.shape) < 0.5 for k, v in scores.items()}
    laps = {k: np.where(clean[k], 20 + rng.random(v.shape), np.nan) for k, v in scores.items()}
    return scores, {"clean_laps": clean, "lap_times": laps, "min_lap_time": 15.25, "reps": REPS}


def _report(tmp_path, seed):
    scores, kw = _inputs()
    pretraining = {"probe_r2_pretrained": 0.61, "probe_r2_random": 0.12}
    return write_report(tmp_path, scores, [1000, 2000], seed=seed, pretraining=pretraining, **kw)


def test_report_holds_cis_and_is_reproducible(tmp_path):
    _report(tmp_path / "a", seed=7)
    _report(tmp_path / "b", seed=7)
    text = (tmp_path / "a" / "results.json").read_text()
    assert text == (tmp_path / "b" / "results.json").read_text()  # same seed -> same bytes
    res = json.loads(text)
    scores, kw = _inputs()
    other = summarise(scores, [1000, 2000], seed=8, **kw)
    assert other["variants"]["scratch"]["return"]["lo"] != res["variants"]["scratch"]["return"]["lo"]
    assert res["bootstrap"]["reps"] == REPS and res["bootstrap"]["seed"] == 7
    assert res["seeds"] == {"scratch": 6, "frozen": 6, "finetuned": 6}
    for row in res["variants"].values():
        r = row["return"]
        assert all(lo <= m <= hi for lo, m, hi in zip(r["lo"], r["iqm"], r["hi"]))
        assert all(0 <= f <= 1 for f in row["clean_lap_fraction"])
        assert all(20 <= t <= 21 for t in row["lap_time_median_s"])
    p = res["variants"]["finetuned"]["p_improvement_over_scratch"]
    assert all(lo <= m <= hi for lo, m, hi in zip(p["lo"], p["p"], p["hi"]))
    md = (tmp_path / "a" / "report.md").read_text()
    r = res["variants"]["finetuned"]["return"]
    assert f"| finetuned | 6 | 2000 | {r['iqm'][1]:.2f} [{r['lo'][1]:.2f}, {r['hi'][1]:.2f}] |" in md
    assert "15.25 |" in md and "probe_r2_pretrained | 0.610" in md
    assert (tmp_path / "a" / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
