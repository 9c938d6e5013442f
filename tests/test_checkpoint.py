"""Checkpointer (state, RNG key, Grain iterator, retention), encoder export/import, MetricLogger."""

from __future__ import annotations

import dataclasses
import json

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from src.config import ModalityConfig, ModelConfig
from src.infra.checkpoint import Checkpointer, export_encoder, import_encoder, load_encoder_config
from src.infra.logging import MetricLogger


class Small(nnx.Module):
    """The parts of a Raceformer that export cares about: `encoders` (a dict), `fusion`, and a head."""

    def __init__(self, width: int, seed: int):
        rngs = nnx.Rngs(seed)
        self.encoders = nnx.Dict({"lidar": nnx.Linear(3, width, rngs=rngs), "gps": nnx.Linear(2, width, rngs=rngs)})
        self.fusion = nnx.Linear(width, 4, rngs=rngs)
        self.head = nnx.Linear(4, 2, rngs=rngs)


def _iterator():
    return iter(grain.MapDataset.range(40).shuffle(seed=3).batch(4).to_iter_dataset())


def _state(model, optimizer, seed):
    return {"model": nnx.state(model), "optimizer": nnx.state(optimizer), "rng": jax.random.key(seed),
            "step": jnp.int32(seed)}


def test_save_restore_round_trip_with_iterator_and_key(tmp_path):
    model = Small(4, 0)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    optimizer.update(model, grads)
    it = _iterator()
    next(it), next(it)
    ckpt = Checkpointer(tmp_path / "ckpt", save_every=1, keep=2)
    assert ckpt.save(5, _state(model, optimizer, 7), data_iter=it, meta={"step": 5, "note": "x"})
    expected_next = next(it)

    other = Small(4, 1)
    other_opt = nnx.Optimizer(other, optax.adam(1e-2), wrt=nnx.Param)
    it2 = _iterator()
    state, meta = ckpt.restore(5, _state(other, other_opt, 0), data_iter=it2)
    assert meta == {"step": 5, "note": "x"}
    np.testing.assert_array_equal(next(it2), expected_next)
    assert jax.dtypes.issubdtype(state["rng"].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(state["rng"]), jax.random.key_data(jax.random.key(7)))
    assert int(state["step"]) == 7
    nnx.update(other, state["model"])
    nnx.update(other_opt, state["optimizer"])
    np.testing.assert_array_equal(other.head.kernel[...], model.head.kernel[...])
    assert int(other_opt.step[...]) == 1
    mu = jax.tree.leaves(nnx.state(other_opt))
    assert any(np.abs(np.asarray(x)).sum() > 0 for x in mu if np.asarray(x).ndim == 2)
    ckpt.close()


def test_interval_retention_and_errors(tmp_path):
    model = Small(4, 0)
    ckpt = Checkpointer(tmp_path / "ckpt", save_every=2, keep=2)
    saved = [ckpt.save(s, {"w": nnx.state(model)}) for s in range(1, 8)]
    assert saved == [False, True, False, True, False, True, False]
    assert ckpt.save(7, {"w": nnx.state(model)}, force=True)
    assert ckpt.all_steps() == [6, 7] and ckpt.latest_step() == 7
    with pytest.raises(FileNotFoundError, match="no checkpoint for step 2"):
        ckpt.restore(2, {"w": nnx.state(model)})
    with pytest.raises(ValueError, match="no data-iterator state"):
        ckpt.restore(7, {"w": nnx.state(model)}, data_iter=_iterator())
    ckpt.close()
    with pytest.raises(ValueError, match="must be >= 1"):
        Checkpointer(tmp_path / "bad", save_every=0, keep=1)


def test_export_import_strict_and_lenient(tmp_path):
    source = Small(4, 0)
    export_encoder(source, tmp_path / "enc")
    target = Small(4, 9)
    head_before = np.asarray(target.head.kernel[...])
    assert import_encoder(target, tmp_path / "enc") == []
    np.testing.assert_array_equal(target.encoders["lidar"].kernel[...], source.encoders["lidar"].kernel[...])
    np.testing.assert_array_equal(target.fusion.bias[...], source.fusion.bias[...])
    np.testing.assert_array_equal(target.head.kernel[...], head_before)  # heads are not part of the export

    wide = Small(6, 0)
    with pytest.raises(ValueError) as err:
        import_encoder(wide, tmp_path / "enc")
    message = str(err.value)
    for line in ("encoders/lidar/kernel: model (3, 6), checkpoint (3, 4)",
                 "encoders/gps/bias: model (6,), checkpoint (4,)",
                 "fusion/kernel: model (6, 4), checkpoint (4, 4)"):
        assert line in message
    assert "fusion/bias" not in message  # (4,) on both sides
    skipped = import_encoder(wide, tmp_path / "enc", strict=False)
    assert "fusion/kernel" in skipped and "fusion/bias" not in skipped
    np.testing.assert_array_equal(wide.fusion.bias[...], source.fusion.bias[...])
    with pytest.raises(FileNotFoundError):
        import_encoder(wide, tmp_path / "nothing")


def test_metric_logger_averages_between_logs(tmp_path):
    logger = MetricLogger(tmp_path, total_steps=4, progress=False)
    logger.update({"loss": jnp.float32(1.0)})
    logger.update({"loss": 3.0, "lr": 0.5})
    assert logger.log(2) == {"loss": 2.0, "lr": 0.5}
    logger.update({"loss": 5.0})
    assert logger.log(4, {"loss": 7.0}) == {"loss": 6.0}
    logger.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(2, 2.0), (4, 6.0)]
    strict = MetricLogger(tmp_path / "nan", total_steps=1, progress=False)
    strict.log(1, {"loss": float("nan"), "lr": 0.5})
    strict.close()
    assert json.loads((tmp_path / "nan" / "metrics.jsonl").read_text()) | {"wall_s": 0} == {
        "step": 1, "wall_s": 0, "loss": None, "lr": 0.5,
    }  # strict JSON: a non-finite value is null, not NaN
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())

    quiet = MetricLogger(tmp_path / "other", total_steps=4, enabled=False)
    quiet.update({"loss": 1.0})
    assert quiet.log(1) == {}
    quiet.close()
    assert not (tmp_path / "other").exists()


def test_metric_logger_sums_counts_keeps_counters_and_weights_episode_means(tmp_path):
    logger = MetricLogger(tmp_path, total_steps=4, progress=False, sums=("episodes",), latest=("env_steps",),
                          weights={"episode/": "episodes"})
    logger.update({"episodes": 1, "episode/return": 10.0, "env_steps": 64, "loss": 1.0})
    logger.update({"episodes": 0, "env_steps": 128, "loss": 2.0})  # no episode ended
    logger.update({"episodes": 3, "episode/return": 2.0, "env_steps": 192, "loss": 6.0})
    assert logger.log(3) == {"episodes": 4.0, "episode/return": 4.0, "env_steps": 192.0, "loss": 3.0}
    logger.update({"episodes": 0, "env_steps": 256})
    assert logger.log(4) == {"episodes": 0.0, "env_steps": 256.0}  # no episode: no return, not a zero
    with pytest.raises(KeyError, match="weighted by 'episodes'"):
        logger.update({"episode/return": 1.0})
    logger.close()


def test_import_refuses_an_encoder_trained_with_other_settings(tmp_path):
    cfg = ModelConfig(num_heads=2, modalities={"lidar": ModalityConfig((32, 32, 2)), "gps": ModalityConfig((4,))})
    export_encoder(Small(4, 0), tmp_path / "enc", cfg)
    assert load_encoder_config(tmp_path / "enc") == cfg
    other = dataclasses.replace(
        cfg, num_heads=4, modalities={**cfg.modalities, "lidar": ModalityConfig((64, 64, 8), patch_size=8)}
    )
    with pytest.raises(ValueError) as err:
        import_encoder(Small(4, 1), tmp_path / "enc", model_cfg=other)
    assert str(err.value).splitlines()[1:] == [
        "  model.num_heads: model 4, checkpoint 2",
        "  model.modalities.lidar: model 8 channels in patches of 8, checkpoint 2 channels in patches of 16",
    ]
    resized = dataclasses.replace(cfg, modalities={**cfg.modalities, "lidar": ModalityConfig((64, 64, 2))})
    assert import_encoder(Small(4, 1), tmp_path / "enc", model_cfg=resized) == []  # another resolution is fine
