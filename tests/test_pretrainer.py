"""The pretraining loop on a tiny model: learning, exact resume, absent modalities, export, NaN and SIGTERM.

Every run here shares one config shape, so the jitted step compiles once for the whole module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from src import config
from src.config import ConfigError, PretrainConfig
from src.infra import sharding
from src.infra.checkpoint import Checkpointer, import_encoder
from src.models.raceformer import Raceformer
from src.pretraining import loop as pretrain_loop
from src.pretraining import step as pretrain_step
from tests._pretrain_fakes import TinySource, tiny_config, tiny_data_fn


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def full_run(runs):
    cfg = tiny_config(runs, "full")
    return cfg, pretrain_loop.train(cfg, data_fn=tiny_data_fn(), progress=False)


def test_loss_falls_and_run_dir_is_complete(full_run):
    cfg, result = full_run
    losses = [result.losses[k] for k in range(1, 31)]
    assert result.stopped_by == "completed" and result.step == 30
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
    out = result.run_dir
    assert (out / "config.toml").is_file()
    rows = [line for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    assert len(rows) == 6  # log_every = 5 over 30 steps
    for key in ("loss", "loss/lidar", "loss/rgb", "grad_norm", "lr", "samples_per_s", "data_wait_s"):
        assert f'"{key}"' in rows[-1]
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").iterdir())
    assert Checkpointer(out / "ckpt", save_every=10, keep=3).all_steps() == [10, 20, 30]


def test_kill_and_resume_continues_exactly(full_run, runs):
    _, full = full_run
    cfg = tiny_config(runs, "resumed", training={"checkpoint_every": 4})
    first = pretrain_loop.train(cfg, data_fn=tiny_data_fn(), stop_after=13, progress=False)
    assert first.stopped_by == "stop_after" and first.step == 13 and first.encoder_dir is None
    second = pretrain_loop.train(cfg, data_fn=tiny_data_fn(), progress=False)
    assert second.start_step == 13 and second.step == 30
    for k in range(1, 14):
        assert first.losses[k] == pytest.approx(full.losses[k], abs=1e-6)
    for k in range(14, 31):
        assert second.losses[k] == pytest.approx(full.losses[k], abs=1e-6), k


def test_resume_false_starts_over_in_a_clean_run_dir(full_run, runs):
    """A finished run (checkpoints 10, 20, 30, encoder) restarted with run.resume=false and another checkpoint
    cadence: the old run is moved aside intact, the new directory holds only the new run's files."""
    _, full = full_run
    shutil.copytree(full.run_dir, runs / "over")
    cfg = tiny_config(runs, "over", run={"name": "over", "out_dir": str(runs), "seed": 0, "resume": False},
                      training={"checkpoint_every": 15})
    again = pretrain_loop.train(cfg, data_fn=tiny_data_fn(), progress=False)
    assert again.start_step == 0 and again.stopped_by == "completed"
    assert again.losses == full.losses  # started from step 0 with the same seed: the same run again
    out = runs / "over"
    assert Checkpointer(out / "ckpt", save_every=15, keep=3).all_steps() == [15, 30]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    assert again.encoder_dir == out / "encoder" and (out / "encoder" / "weights.npz").is_file()
    assert config.load(PretrainConfig, out / "config.toml") == cfg
    aside = [p for p in runs.iterdir() if p.name.startswith("over.")]
    assert len(aside) == 1 and re.fullmatch(r"over\.\d{8}T\d{6}Z", aside[0].name)
    assert Checkpointer(aside[0] / "ckpt", save_every=10, keep=3).all_steps() == [10, 20, 30]
    assert len((aside[0] / "metrics.jsonl").read_text().splitlines()) == 6


def test_resuming_with_another_config_names_the_keys(full_run, runs):
    cfg, _ = full_run
    changed = tiny_config(runs, "full", training={"learning_rate": 1e-2, "log_every": 2})
    with pytest.raises(ConfigError, match=r"training\.learning_rate: 0\.003 -> 0\.01") as err:
        pretrain_loop.train(changed, data_fn=tiny_data_fn(), progress=False)
    assert "log_every" not in str(err.value) and "run.resume=false" in str(err.value)
    assert config.load(PretrainConfig, runs / "full" / "config.toml") == cfg  # left as it was


def _batch(indices):
    src = TinySource()
    samples = [src[i] for i in indices]
    batch = {m: np.stack([s[m] for s in samples]) for m in ("lidar", "rgb", "gps")}
    batch["valid"] = {m: np.array([s["valid"][m] for s in samples]) for m in ("lidar", "rgb", "gps")}
    return batch


def test_absent_modality_values_do_not_change_the_loss(runs):
    cfg = tiny_config(runs, "absent")
    s = pretrain_step.setup(cfg)
    batch = _batch(range(8))  # samples 0, 3, 6 have no camera
    assert not batch["valid"]["rgb"][[0, 3, 6]].any()

    def loss_of(b):
        state = jax.tree.map(jnp.copy, s.state)
        _, metrics = s.step_fn(state, sharding.shard_batch(pretrain_step.model_inputs(b, s.model.modalities), s.mesh))
        return float(metrics["loss"])

    changed = {**batch, "rgb": batch["rgb"].copy()}
    changed["rgb"][[0, 3, 6]] = np.random.default_rng(1).normal(size=changed["rgb"][[0, 3, 6]].shape) * 5
    present_changed = {**batch, "rgb": batch["rgb"].copy()}
    present_changed["rgb"][1] += 1.0
    base = loss_of(batch)
    assert loss_of(changed) == base
    assert abs(loss_of(present_changed) - base) > 1e-4


def test_encoder_export_round_trips_and_mismatch_lists_paths(full_run):
    cfg, result = full_run
    trained = Raceformer(cfg.model, rngs=nnx.Rngs(0))
    nnx.update(trained, result.state["model"])
    fresh = Raceformer(cfg.model, rngs=nnx.Rngs(123))
    batch = pretrain_step.model_inputs(_batch(range(4)), fresh.modalities)
    features = nnx.jit(lambda model, b: model.features(b, b["valid"]))
    before = features(fresh, batch)
    import_encoder(fresh, result.encoder_dir)
    after = features(fresh, batch)
    np.testing.assert_allclose(after, features(trained, batch), rtol=1e-6, atol=1e-6)
    assert not np.allclose(before, after)

    other = Raceformer(tiny_config(result.run_dir, model={"embed_dim": 16}).model, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError) as err:
        import_encoder(other, result.encoder_dir)
    message = str(err.value)
    assert "fusion/cls_token: model (16,), checkpoint (32,)" in message
    assert "encoders/lidar" in message and "encoders/gps" in message


def test_nan_loss_stops_and_keeps_last_good_checkpoint(runs):
    cfg = tiny_config(runs, "nan", training={"checkpoint_every": 1})
    source = TinySource(length=24, nan_at=17)  # unshuffled batches: 0-7, 8-15, 16-23 -> step 3 is NaN

    def data_fn(cfg, *, batch_size, shard_index, shard_count):
        return iter(grain.MapDataset.source(source).repeat().batch(batch_size).to_iter_dataset())

    with pytest.raises(pretrain_loop.NonFiniteLossError, match=r"non-finite loss .* at step 3.*step 2"):
        pretrain_loop.train(cfg, data_fn=data_fn, progress=False)
    ckpt = Checkpointer(runs / "nan" / "ckpt", save_every=1, keep=3)
    assert ckpt.all_steps() == [1, 2]
    state, _ = ckpt.restore(2, pretrain_step.setup(cfg).state)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["model"]))


class _SignalAfter(grain.DatasetIterator):
    """A data iterator that sends this process SIGTERM after `n` batches (a SLURM pre-emption mid-run)."""

    def __init__(self, inner, n):
        super().__init__(inner)
        self.inner, self.n, self.count = inner, n, 0

    def __next__(self):
        self.count += 1
        if self.count == self.n:
            os.kill(os.getpid(), signal.SIGTERM)
        return next(self.inner)

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


def test_sigterm_saves_a_checkpoint_and_exits(runs):
    cfg = tiny_config(runs, "sigterm")
    inner = tiny_data_fn()

    def data_fn(cfg, **kw):
        return _SignalAfter(inner(cfg, **kw), 7)

    previous = signal.getsignal(signal.SIGTERM)
    result = pretrain_loop.train(cfg, data_fn=data_fn, progress=False)
    assert signal.getsignal(signal.SIGTERM) is previous
    assert result.stopped_by == "SIGTERM" and result.step == 7 and result.encoder_dir is None
    assert Checkpointer(runs / "sigterm" / "ckpt", save_every=10, keep=3).latest_step() == 7


def _params_by_path(model):
    return {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_weight_decay_reaches_dense_kernels_only(runs):
    """One AdamW step of the pretrainer's optimizer with zero gradients moves a parameter only by its weight
    decay: exactly the Dense kernels move; embedding tables, tokens, biases and norms stay."""
    from src.objectives.contrastive import LatentDecoder

    cfg = tiny_config(runs, "decay", model={"pos_embedding": "learned", "missing_modality": "learned_token"},
                      training={"warmup_steps": 0, "weight_decay": 0.5})
    model = Raceformer(cfg.model, rngs=nnx.Rngs(0))
    model.latent_decoder = LatentDecoder(32, 3, 16, rngs=nnx.Rngs(1))  # brings an nnx.Embed table
    before = _params_by_path(model)
    optimizer = nnx.Optimizer(model, pretrain_step.make_optimizer(cfg), wrt=nnx.Param)
    optimizer.update(model, jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param)))
    after = _params_by_path(model)
    decayed = {k for k in before if not np.array_equal(before[k], after[k])}
    block = ("attn/qkv", "attn/out", "fc1", "fc2")
    expected = {
        "encoders/gps/proj", "encoders/lidar/embed/proj", "encoders/rgb/embed/proj",
        *(f"{stack}/blocks/0/{layer}" for stack in ("encoders/lidar", "encoders/rgb", "fusion", "pretrain_head")
          for layer in block),
        "pretrain_head/embed", "pretrain_head/out/lidar", "pretrain_head/out/rgb", "projection_head/fc1",
        "projection_head/fc2", "policy_head/mean", "value_head/value", "latent_decoder/hidden", "latent_decoder/out",
    }
    assert decayed == {f"{k}/kernel" for k in expected}
    for table in ("encoders/lidar/pos/table", "fusion/type_embed", "fusion/missing_token", "fusion/cls_token",
                  "pretrain_head/type_embed", "pretrain_head/mask_token", "latent_decoder/view_embed/embedding"):
        assert table in before and table not in decayed


def test_sigterm_during_start_up_still_trains_one_step(runs):
    """A SIGTERM kept from start-up (main installs the flag first) stops the run after one step, not before:
    a job requeued by its time limit always makes progress."""
    flag = pretrain_loop.StopFlag()
    flag.signum = signal.SIGTERM
    result = pretrain_loop.train(tiny_config(runs, "early"), data_fn=tiny_data_fn(), stop_flag=flag, progress=False)
    assert result.stopped_by == "SIGTERM" and result.step == 1 and sorted(result.losses) == [1]
    assert Checkpointer(runs / "early" / "ckpt", save_every=10, keep=3).latest_step() == 1
