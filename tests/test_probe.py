"""Pretraining-quality figures: probes that can fail, reconstruction correlation, and the end-to-end run."""

import dataclasses
import json

import numpy as np
import pytest

from src import config
from src.analysis import probe
from src.config import ModalityConfig, PretrainConfig
from src.data import synthetic
from src.pretraining import loop as pretrain_loop


def test_probe_recovers_a_linear_relation_and_not_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8))
    w = rng.normal(size=(8, 2))
    y = x @ w + 3.0
    good = probe.linear_probe(x, regression=y, classification=(x @ w[:, 0]) > 0, l2=1e-3)
    assert good["r2"] > 0.999 and good["accuracy"] > 0.93  # least squares, not the max-margin boundary
    noise = probe.linear_probe(rng.normal(size=(400, 8)), regression=y, classification=(x @ w[:, 0]) > 0)
    assert abs(noise["r2"]) < 0.1  # held-out R^2 of unrelated features: ~0 (or below)
    assert abs(noise["accuracy"] - noise["majority_accuracy"]) < 0.12
    assert good["samples_fit"] + good["samples_held_out"] == 400


def test_probe_input_errors_are_named():
    with pytest.raises(ValueError, match="needs >= 4 samples"):
        probe.linear_probe(np.zeros((3, 2)), regression=np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        probe.linear_probe(np.full((8, 2), np.nan), regression=np.zeros(8))


def test_label_targets():
    boxes = np.zeros((3, 7))
    boxes[:, :2] = [[5.0, 3.0], [-10.0, -2.0], [30.0, -1.0]]  # front-left, rear-right, front-right but far
    occupied, nearest = probe.label_targets(boxes)
    assert occupied.tolist() == [True, False, False, True]
    assert nearest == pytest.approx(np.hypot(5.0, 3.0))
    assert probe.label_targets(np.zeros((0, 7))) == (pytest.approx([False] * 4), probe.FAR_M)


def test_reconstruction_correlation_is_one_for_perfect_and_zero_for_noise():
    rng = np.random.default_rng(1)
    target = rng.normal(size=(32, 64, 12))  # ~12k masked pixels: the noise r has sd ~0.01
    masked = rng.random((32, 64)) < 0.5
    garbage = np.where(masked[..., None], target, 1e3 * rng.normal(size=target.shape))  # unmasked: ignored
    assert probe.masked_patch_correlation(garbage, target, masked) == pytest.approx(1.0)
    assert probe.masked_patch_correlation(-target, target, masked) == pytest.approx(-1.0)
    assert abs(probe.masked_patch_correlation(rng.normal(size=target.shape), target, masked)) < 0.05


@pytest.fixture(scope="module")
def tiny_cmht_run(tmp_path_factory):

    root = tmp_path_factory.mktemp("cmht")
    synthetic.write_cmht_sequence(root / "seq", frames=10, seed=0, points=2000, actors=6)
    cfg = config.load(PretrainConfig)
    model = {
        "embed_dim": 32, "depth": 1, "fusion_depth": 1, "num_heads": 2, "patch_size": 8, "decoder_dim": 32,
        "decoder_depth": 1, "decoder_heads": 2,
        "modalities": {"lidar": ModalityConfig((32, 32, 4)), "rgb": ModalityConfig((32, 32, 3)),
                       "gps": ModalityConfig((5,))},
    }
    cfg = config.replace(
        cfg,
        run={"name": "probe", "out_dir": str(tmp_path_factory.mktemp("runs")), "seed": 0},
        model=model,
        data=dataclasses.replace(cfg.data, root=str(root), num_workers=0, prefetch=1),
        training={"steps": 4, "batch_size": 4, "warmup_steps": 1, "log_every": 2, "checkpoint_every": 4,
                  "keep_checkpoints": 1},
    )
    result = pretrain_loop.train(cfg, progress=False)
    return result.run_dir, cfg


@pytest.mark.slow  # a synthetic CMHT sequence + a 4-step pretraining run + two probes: minutes on 2 busy cores
def test_pretraining_quality_end_to_end(tiny_cmht_run, tmp_path, capsys):
    run_dir, cfg = tiny_cmht_run
    cfg_path = config.save(cfg, tmp_path / "pretrain.toml")
    probe.main(["--encoder", str(run_dir), "--config", str(cfg_path), "--max-samples", "10"])
    figures = json.loads(capsys.readouterr().out)
    assert 6 <= figures["samples"] <= 10  # ~10 % of synthetic sweeps are unlabelled
    for enc in ("pretrained", "random"):
        assert np.isfinite(figures[f"probe/{enc}/r2"])
        assert 0.0 <= figures[f"probe/{enc}/accuracy"] <= 1.0
    assert set(k for k in figures if k.startswith("recon_r/")) == {"recon_r/lidar", "recon_r/rgb"}
    assert all(-1.0 <= figures[k] <= 1.0 for k in figures if k.startswith("recon_r/"))
