"""The transfer experiment: vmapped seeds equal single runs, bad input is named, the command end to end."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from src import config
from src.config import DataConfig, ModelConfig, RLConfig
from src.rl import train_jax, trainer
from src.training import transfer
from src.transfer import config as transfer_config
from src.transfer import parts as transfer_parts
from src.transfer import pretrain as transfer_pretrain
from src.transfer.config import TransferConfig


def _pendulum_cfg(tmp_path) -> RLConfig:
    return config.from_dict(
        RLConfig,
        {
            "run": {"name": "pend", "out_dir": str(tmp_path)},
            "env": {"kind": "gymnax", "id": "Pendulum-v1", "num_envs": 4, "max_episode_steps": 20},
            "ppo": {"agent": "mlp", "total_env_steps": 64, "num_steps": 8, "num_minibatches": 2,
                    "update_epochs": 2, "norm_obs": True, "norm_reward": True, "mlp_hidden": [16]},
            "eval": {"every": 0},
        },
    )


def test_a_vmapped_seed_equals_the_same_seed_run_alone(tmp_path):
    """`SeedBatch` advances seeds 0 and 1 as one vmapped program; each equals `JaxEngine` on that seed alone."""
    cfg = _pendulum_cfg(tmp_path)
    setups = [trainer.setup(config.replace(cfg, run={"seed": s})) for s in (0, 1)]
    learner = setups[0].learner
    engine = train_jax.JaxEngine(learner, setups[0].env.make_engine(learner).env, cfg.env.num_envs)
    example = setups[0].env.obs_example
    trains = [learner.init_state(su.params, example, jax.random.PRNGKey(10 + s)) for s, su in enumerate(setups)]
    keys = [jax.random.PRNGKey(20 + s) for s in (0, 1)]
    batch = train_jax.SeedBatch(engine)
    runner = batch.init(trains, keys)
    alone = [engine.init(t, k) for t, k in zip(trains, keys)]
    for _ in range(3):
        runner, metrics = batch.run_iteration(runner)
        for s in (0, 1):
            alone[s], m = engine.run_iteration(alone[s])
            assert metrics[s]["loss/total" if "loss/total" in m else "value/mean"] == pytest.approx(
                m["loss/total" if "loss/total" in m else "value/mean"], rel=1e-4, abs=1e-5
            )
    for s in (0, 1):
        got, want = train_jax.SeedBatch.seed(runner, s), alone[s]
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5),
                     got.train.params, want.train.params)
        np.testing.assert_array_equal(np.asarray(got.train.env_steps), np.asarray(want.train.env_steps))
    # the seeds really differ (a batch that broadcast one seed would pass the loop above only by accident)
    p0, p1 = (jax.tree.leaves(train_jax.SeedBatch.seed(runner, s).train.params)[0] for s in (0, 1))
    assert not np.allclose(np.asarray(p0), np.asarray(p1))


# --------------------------------------------------------------------------------------------- bad input


def test_unknown_variants_and_seed_ranges_are_named():
    cfg = TransferConfig()
    with pytest.raises(ValueError, match=r"unknown variant 'warm'; valid: \['scratch', 'frozen_random'"):
        transfer_config.select_variants(cfg, "scratch,warm")
    assert transfer_config.select_variants(cfg, "finetuned,scratch") == ("finetuned_cmht", "finetuned_sim", "scratch")
    assert transfer_config.select_seeds(cfg, "1-3") == (1, 2, 3)
    assert transfer_config.select_seeds(cfg, "0,4") == (0, 4)
    with pytest.raises(ValueError, match=r"seeds must lie in 0\.\.4"):
        transfer_config.select_seeds(cfg, "3-5")
    bad = config.replace(cfg, transfer={"variants": ("scratch", "warm")})
    with pytest.raises(config.ConfigError, match=r"transfer.variants: unknown \['warm'\]"):
        transfer_config.variant_names(bad)


def test_a_cmht_root_without_samples_is_an_error_naming_it(tmp_path):
    empty = tmp_path / "empty_root"
    empty.mkdir()
    with pytest.raises((ValueError, FileNotFoundError), match=str(empty)):
        transfer_pretrain.check_cmht_source(DataConfig(root=str(empty)), ModelConfig())


def test_every_variant_takes_the_experiment_model_and_its_bev():
    """Pretraining runs and PPO variants share the one [model], so [model.bev] shapes the simulator's BEV."""
    cfg = config.load(TransferConfig, "configs/transfer_racecar.toml")
    for source in transfer_config.SOURCES:
        assert transfer_config.pretrain_config(cfg, source).model == cfg.model
    rl = transfer_config.rl_config(cfg, "x", "enc", True)
    assert rl.model == cfg.model and rl.finetune.freeze_encoders and rl.finetune.pretrained_ckpt == "enc"
    assert transfer_config.source_of("finetuned_sim") == "sim" and transfer_config.source_of("frozen_random") is None


# --------------------------------------------------------------------------------------------- end to end


def _tiny(tmp_path, cmht_root) -> TransferConfig:
    return config.from_dict(
        TransferConfig,
        {
            "run": {"name": "tiny", "out_dir": str(tmp_path / "runs"), "seed": 0},
            "transfer": {"seeds": 2, "budgets": [0.5, 1.0], "train_tracks": ["procedural:1"],
                         "eval_tracks": ["procedural:101"]},
            "model": {
                "embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 1.0, "patch_size": 8, "fusion_depth": 1,
                "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2, "projection_dim": 16,
                "modalities": {"lidar": {"shape": [16, 16, 4]}, "ir": {"shape": [8, 8, 1]},
                               "gps": {"shape": [5]}, "imu": {"shape": [6]}},
                "bev": {"x_range": [-6.4, 19.2], "y_range": [-12.8, 12.8]},
            },
            "env": {"num_envs": 2, "lidar_rays": 16, "time_limit": 10.0, "signed_progress": True,
                    "terminate_on_collision": True, "reset_mode": "random"},
            "ppo": {"total_env_steps": 32, "num_steps": 8, "num_minibatches": 2, "update_epochs": 1,
                    "norm_obs": True, "checkpoint_every": 0},
            "eval": {"every": 0, "episodes": 2, "start_positions": 2, "max_steps": 8},
            "pretrain": {
                "training": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "log_every": 1,
                             "checkpoint_every": 2, "keep_checkpoints": 1},
                "cmht": {"root": str(cmht_root), "num_workers": 0, "prefetch": 1},
                "sim": {"episodes_per_track": 2, "frames": 4, "frame_every": 2},
                "probe_samples": 8,
            },
        },
    )


@pytest.mark.slow  # two pretraining runs, probes, four compiled PPO kinds: 15-25 minutes on 2 cores at load 5-9
@pytest.mark.timeout(3000)
def test_the_experiment_end_to_end(tiny_cmht_root, tmp_path, capsys):
    cfg = _tiny(tmp_path, tiny_cmht_root)
    cfg_path = config.save(cfg, tmp_path / "tiny.toml")
    assert transfer.main(["--config", str(cfg_path)]) == 0
    out = transfer_config.run_path(cfg)
    variants = transfer_config.variant_names(cfg)
    assert len(variants) == 6
    parts = {p["record"]["variant"]: p for p in transfer_parts.existing_parts(cfg)}
    assert set(parts) == set(variants)  # every variant ran ...
    for v, p in parts.items():
        assert p["record"]["seeds"] == [0, 1]
        assert p["record"]["budgets_env_steps"] == [16, 32]  # ... and was evaluated at every budget
        for key in ("return", "clean", "lap_time"):
            assert p["arrays"][f"procedural_101/{key}"].shape == (2, 2, 2)  # seeds x budgets x starts
        assert np.isfinite(p["arrays"]["procedural_101/return"]).all()
        initial, final = p["record"]["encoder_digest_initial"], p["record"]["encoder_digest_final"]
        if v.startswith("frozen"):
            assert initial == final  # frozen encoders + fusion bitwise unchanged by PPO
        else:
            assert all(a != b for a, b in zip(initial, final))  # trained ones moved
    assert parts["frozen_random"]["record"]["encoder_digest_initial"][0] != \
        parts["frozen_random"]["record"]["encoder_digest_initial"][1]  # one random encoder per seed
    for source in transfer_config.SOURCES:  # the imported encoder is the export, bitwise
        from flax import nnx

        from src.infra.checkpoint import import_encoder
        from src.models.raceformer import Raceformer

        model = Raceformer(cfg.model, rngs=nnx.Rngs(99))
        import_encoder(model, out / f"pretrain_{source}" / "encoder")
        assert parts[f"frozen_pretrained_{source}"]["record"]["encoder_digest_initial"] == [
            transfer_parts.params_digest(model)
        ] * 2
    results = json.loads((out / "report" / "procedural_101" / "results.json").read_text())
    for v in variants:
        ret = results["variants"][v]["return"]
        assert len(ret["lo"]) == len(ret["hi"]) == 2 and all(lo <= hi for lo, hi in zip(ret["lo"], ret["hi"]))
        if v != "scratch":
            assert "p_improvement_over_scratch" in results["variants"][v]
    assert results["min_lap_time_s"] > 0
    assert {"cmht/probe/pretrained/r2", "sim/probe/random/r2", "sim/recon_r/lidar"} <= set(results["pretraining"])
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert all(summary["frozen_encoder_unchanged"].values())
    assert (out / "report" / "procedural_101" / "learning_curve.png").stat().st_size > 0
    report_md = (out / "report" / "report.md").read_text()
    assert "95% CI" in report_md and "min-time lap" in report_md

    # --report-only aggregates what is there; a rerun does no work; another config's parts are an error
    before = {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir()}
    assert transfer.main(["--config", str(cfg_path), "--report-only"]) == 0
    assert transfer.main(["--config", str(cfg_path), "--variants", "scratch", "--seeds", "0-1"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir()} == before
    changed = config.save(config.replace(cfg, transfer={"max_speed": 8.0}), tmp_path / "changed.toml")
    with pytest.raises(SystemExit, match="written under another config.*Start over"):
        transfer.main(["--config", str(changed), "--report-only"])
