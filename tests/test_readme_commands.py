"""Every command in README.md's ```bash blocks runs, at a tiny size, as a new user would type it.

The commands are read from the README itself; `TINY` maps each one to the `--set` overrides that shrink it
(steps, frames, episodes). A README command missing from `TINY` fails the test, so a new documented command
comes with its tiny form. Commands run in README order (the `--eval` command reads the run trained before it).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests._commands import REPO, TINY_MODEL, run_python, sets, tiny_pretrain


def readme_commands(readme: Path = REPO / "README.md") -> list[str]:
    """The `python ...` commands of the README's bash blocks (continuations joined, `uv run` and comments
    dropped), as the argument string after `python`."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == ["uv", "run"]:
                words = words[2:]
            if words[:1] == ["python"]:
                commands.append(" ".join(words[1:]))
    return commands


def tiny_rl(out: Path) -> list[str]:
    return sets(f"run.out_dir={out}", "env.num_envs=2", "ppo.total_env_steps=16", "ppo.num_steps=8",
                "ppo.num_minibatches=2", "ppo.update_epochs=1", "eval.every=1", "eval.episodes=2", "eval.start_positions=2",
                "eval.max_steps=12", "eval.gif_frame_every=4")


def tiny_terrain(out: Path) -> list[str]:
    return sets(f"run.out_dir={out}", f"source.root={out / 'terrain_data'}",
                "represent.steps=4", "represent.checkpoint_every=2", "cost.steps=4", "eval.pairs=50")


def tiny_transfer(data_root: Path, out: Path) -> list[str]:
    return sets(f"run.out_dir={out}", *TINY_MODEL, "model.modalities.lidar.shape=[16, 16, 4]",
                "model.modalities.rgb.shape=[16, 16, 3]", "transfer.seeds=2", "transfer.budgets=[0.5, 1.0]",
                'transfer.train_tracks=["procedural:1"]', 'transfer.eval_tracks=["procedural:101"]',
                "env.num_envs=2", "env.lidar_rays=16", "ppo.total_env_steps=32", "ppo.num_steps=8",
                "ppo.num_minibatches=2", "ppo.update_epochs=1", "eval.episodes=2", "eval.start_positions=2",
                "eval.max_steps=8", "pretrain.training.steps=2", "pretrain.training.batch_size=4",
                "pretrain.training.warmup_steps=1", "pretrain.training.checkpoint_every=2",
                f"pretrain.cmht.root={data_root}", "pretrain.sim.episodes_per_track=2", "pretrain.sim.frames=4",
                "pretrain.probe_samples=8")


def tiny_terrain_sim(out: Path) -> list[str]:
    return sets(f"run.out_dir={out}", f"source.root={out / 'terrain_sim_data'}", "sim.steps=800", "sim.record_every=5",
                "sim.ground_size=[48, 32]", "sim.ground_px_per_m=20.0", "scan.patch_px=6", "scan.max_path_m=1.0",
                "represent.steps=4", "represent.checkpoint_every=2", "cost.steps=4", "eval.pairs=50")


def tiny_args(command: str, data_root: Path, out: Path) -> list[str]:
    terrain = {f"-m src.training.terrain {stage} --config configs/terrain_{kind}.toml": tiny(out)
               for stage in ("extract", "represent", "cost", "evaluate")
               for kind, tiny in (("topdown", tiny_terrain), ("sim", tiny_terrain_sim))}
    tiny = {
        **terrain,
        "-m src.training.pretrainer --config configs/pretrain_cmht.toml": tiny_pretrain(data_root, out),
        "-m src.training.rl_agent --config configs/rl_racecar.toml": tiny_rl(out),
        "-m src.training.terrain_loop --config configs/rl_racecar.toml --terrain-run runs/terrain_sim "
        "--surface-patches 30 --seeds 0 1 2 --set ppo.total_env_steps=150000 --set eval.every=0": [
            *tiny_rl(out), "--terrain-run", str(out / "terrain_sim"), "--seeds", "0"],
        "-m src.training.rl_agent --config configs/rl_racecar.toml --eval": tiny_rl(out),
        "-m src.training.transfer --config configs/transfer_racecar.toml": tiny_transfer(data_root, out),
    }
    if command not in tiny:
        pytest.fail(f"README command `python {command}` has no tiny form in tests/test_readme_commands.py: add one")
    return tiny[command]


def test_every_readme_command_has_a_tiny_form(tmp_path):
    commands = readme_commands()
    assert "-m src.training.pretrainer --config configs/pretrain_cmht.toml" in commands
    assert "-m src.training.transfer --config configs/transfer_racecar.toml" in commands
    for command in commands:
        assert tiny_args(command, tmp_path / "data", tmp_path / "runs")  # fails for a command without one


@pytest.mark.slow  # fresh processes, each compiling its models: the transfer experiment alone 15-25 minutes
@pytest.mark.timeout(3600)
def test_every_readme_command_runs(tiny_cmht_root, tmp_path):
    for command in readme_commands():
        limit = 2400 if "src.training.transfer" in command else 600
        done = run_python([*shlex.split(command), *tiny_args(command, tiny_cmht_root, tmp_path)], timeout=limit)
        assert done.returncode == 0, f"python {command}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        for problem in ("Traceback", "leaked shared_memory"):
            assert problem not in done.stderr, f"python {command}\n{done.stderr[-4000:]}"
