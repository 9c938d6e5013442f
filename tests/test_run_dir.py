"""The run directory shared by the pretrainer and the PPO runner: start over, resume, config checks; and the PPO
runner's log lines, which aggregate their window of iterations."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from src import config
from src.config import ConfigError, PretrainConfig, RLConfig
from src.infra import run_dir
from src.rl import trainer
from tests.test_rl_agent import _point_cfg, _point_env


def _cfg(tmp_path, **sections) -> PretrainConfig:
    return config.replace(PretrainConfig(), run={"name": "r", "out_dir": str(tmp_path)}, **sections)


def _fake_run(path, steps=(10, 20)):
    for s in steps:
        (path / "ckpt" / str(s)).mkdir(parents=True)
    (path / "metrics.jsonl").write_text('{"step": 1}\n')


def test_fresh_resumed_and_moved_aside(tmp_path):
    cfg = _cfg(tmp_path)
    fresh = run_dir.prepare(cfg)
    assert (fresh.path, fresh.resumable, fresh.moved_aside) == (tmp_path / "r", False, None)
    assert config.load(PretrainConfig, fresh.path / "config.toml") == cfg
    _fake_run(fresh.path)

    longer = config.replace(cfg, training={"steps": 500, "log_every": 3}, data={"num_workers": 4})
    resumed = run_dir.prepare(longer)  # extending a run and changing cadence or workers is a resume
    assert resumed.resumable and resumed.moved_aside is None
    assert config.load(PretrainConfig, resumed.path / "config.toml") == longer

    over = run_dir.prepare(config.replace(longer, run={"resume": False}))
    assert not over.resumable and re.fullmatch(r"r\.\d{8}T\d{6}Z", over.moved_aside.name)
    assert sorted(p.name for p in over.path.iterdir()) == ["config.toml"]
    assert sorted(p.name for p in (over.moved_aside / "ckpt").iterdir()) == ["10", "20"]
    _fake_run(over.path)
    again = run_dir.prepare(config.replace(longer, run={"resume": False}))  # same second: a distinct name
    assert again.moved_aside != over.moved_aside and again.moved_aside.is_dir()


def test_leftovers_without_a_checkpoint_are_moved_aside(tmp_path):
    cfg = _cfg(tmp_path)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_text('{"step": 1}\n')
    rd = run_dir.prepare(cfg)
    assert not rd.resumable and (rd.moved_aside / "metrics.jsonl").is_file()
    assert not (rd.path / "metrics.jsonl").exists()


def test_resume_with_another_config_names_keys_and_the_way_out(tmp_path):
    cfg = _cfg(tmp_path)
    run_dir.prepare(cfg)
    _fake_run(tmp_path / "r")
    other = config.replace(cfg, model={"embed_dim": 128}, training={"learning_rate": 0.01, "steps": 7})
    with pytest.raises(ConfigError) as err:
        run_dir.prepare(other)
    message = str(err.value)
    assert "model.embed_dim: 64 -> 128" in message and "training.learning_rate: 0.001 -> 0.01" in message
    assert "training.steps" not in message and "--set run.resume=false" in message
    assert config.load(PretrainConfig, tmp_path / "r" / "config.toml") == cfg  # untouched
    (tmp_path / "r" / "config.toml").unlink()
    with pytest.raises(ConfigError, match="no config.toml"):
        run_dir.prepare(cfg)


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory):
    """4 PPO iterations on the point env, logged every 2 iterations, checkpoints at 2 and 4."""
    out = tmp_path_factory.mktemp("ppo")
    cfg = config.replace(_point_cfg(out, "logged"), ppo={"log_every": 2})
    return cfg, trainer.train(cfg, env=_point_env(8), progress=False)


def test_ppo_log_lines_aggregate_their_window(ppo_run):
    _, result = ppo_run
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    for row, window in zip(rows, (result.history[:2], result.history[2:])):
        assert row["episodes"] == sum(h["episodes"] for h in window) == 16  # counts are summed
        assert row["env_steps"] == window[-1]["env_steps"]  # the counter at the window's end
        for key in ("loss/value", "loss/policy", "perf/sps"):
            assert row[key] == pytest.approx(np.mean([h[key] for h in window]), rel=1e-12)
        weights = [h["episodes"] for h in window]
        assert row["episode/return"] == pytest.approx(
            np.average([h["episode/return"] for h in window], weights=weights), rel=1e-12
        )
    assert rows[1]["eval/return"] == result.history[3]["eval/return"]  # evaluated at iteration 4 only


def test_ppo_resume_false_starts_over(ppo_run):
    cfg, first = ppo_run
    again = trainer.train(config.replace(cfg, run={"resume": False}), env=_point_env(8), stop_after=1,
                           progress=False)
    assert [h["iteration"] for h in again.history] == [1]
    assert again.history[0]["loss/value"] == first.history[0]["loss/value"]  # a fresh start, same seed
    out = first.run_dir
    assert sorted(p.name for p in (out / "ckpt").iterdir() if p.name.isdigit()) == ["1"]
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert config.load(RLConfig, out / "config.toml").run.resume is False
    aside = [p for p in out.parent.iterdir() if p.name.startswith("logged.")]
    assert len(aside) == 1
    assert sorted(p.name for p in (aside[0] / "ckpt").iterdir() if p.name.isdigit()) == ["2", "4"]
