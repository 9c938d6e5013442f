"""Real SLURM jobs (`sbatch scripts/slurm/pretrain_cpu.sbatch`, 2 tasks) on a reachable cluster, e.g. the local one
that `scripts/slurm/local_cluster.sh start` sets up (CI does): distributed start-up, self-requeue after a SIGTERM
mid-run (what the time-limit warning sends), pre-emption by `scontrol requeue`, and losses that continue exactly.

Three jobs with one tiny config (LiDAR + GPS on an 8-sweep synthetic CMHT sequence) are submitted together: one
runs uninterrupted, one gets `scancel --signal=TERM` mid-run, one `scontrol requeue`. Skipped when `sinfo` fails.
The slow test lets the real time limit (`--time=3`) stop and requeue a job several times.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from src import config
from src.config import ModalityConfig, PretrainConfig
from src.transfer import config as transfer_config
from src.transfer import experiment
from src.transfer import parts as transfer_parts

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm" / "pretrain_cpu.sbatch"


def _cluster_problem() -> str | None:
    """Why no job can be submitted here, or None."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM client tools (sinfo, sbatch); start a local cluster with scripts/slurm/local_cluster.sh start"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: no SLURM controller answers"
    if out.returncode != 0:
        return f"sinfo failed ({out.stderr.strip()[:200]}): no SLURM cluster reachable"
    if not any(s.startswith(("idle", "mix", "alloc", "completing")) for s in out.stdout.split()):
        return f"SLURM has no usable node (node states: {out.stdout.split()})"
    return None


_PROBLEM = _cluster_problem()
pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(_PROBLEM is not None, reason=f"slurm: {_PROBLEM}"),
    pytest.mark.timeout(2400),  # the jobs run one after another on a 2-CPU node (generous: a busy machine)
]


def tiny_cfg(tmp: Path, name: str, data_root: Path, steps: int, batch_size: int = 4) -> Path:
    """A config file for the job script: a small LiDAR + GPS model, every step logged, no periodic saves."""
    cfg = config.replace(
        config.load(PretrainConfig),
        run={"name": name, "out_dir": str(tmp / "runs"), "seed": 0},
        model={
            "embed_dim": 32, "depth": 1, "fusion_depth": 1, "num_heads": 2, "patch_size": 8, "decoder_dim": 32,
            "decoder_depth": 1, "decoder_heads": 2,
            "modalities": {"lidar": ModalityConfig((32, 32, 4)), "gps": ModalityConfig((5,))},
        },
        data={"source": "cmht", "root": str(data_root), "num_workers": 0, "prefetch": 0},
        training={"steps": steps, "batch_size": batch_size, "warmup_steps": 5, "log_every": 1,
                  "checkpoint_every": 100_000, "keep_checkpoints": 2},
    )
    path = tmp / f"{name}.toml"
    config.save(cfg, path)
    return path


def submit(cfg_path: Path, log: Path, *sbatch_args: str) -> str:
    env = {**os.environ, "CONFIG": str(cfg_path), "EXTRA_ARGS": "", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        ["sbatch", "--parsable", f"--output={log}", "--time=10", *sbatch_args, str(SCRIPT)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )
    return out.stdout.strip().split(";")[0]


def job_info(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
    return dict(re.findall(r"(\w+)=(\S+)", out.stdout)) if out.returncode == 0 else {}


def metrics(run: Path) -> dict[int, float]:
    """step -> loss over every line metrics.jsonl holds (all runs of a requeued job)."""
    file = run / "metrics.jsonl"
    if not file.is_file():
        return {}
    rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    return {int(r["step"]): float(r["loss"]) for r in rows}


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_done(jobs: dict[str, str], logs: dict[str, Path], timeout: float) -> dict[str, dict[str, str]]:
    """Each job's last `scontrol show job` record, taken when it ended (SLURM forgets it MinJobAge s later)."""
    ended: dict[str, dict[str, str]] = {}

    def finished():
        for name, job in jobs.items():
            info = job_info(job) if name not in ended else ended[name]
            if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
                ended[name] = info
        return dict(ended) if len(ended) == len(jobs) else None

    try:
        return wait_for(finished, timeout, f"jobs {jobs}", poll=1.0)
    except AssertionError:
        subprocess.run(["scancel", *jobs.values()])
        tails = "\n".join(f"--- {k}:\n{logs[k].read_bytes().decode('utf-8', errors='replace')[-2000:] if logs[k].exists() else ''}" for k in jobs)
        raise AssertionError(f"jobs did not finish in {timeout:.0f} s:\n{tails}") from None


STEPS = 120


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    from src.data import synthetic

    tmp = tmp_path_factory.mktemp("slurm")
    data_root = tmp / "cmht"
    synthetic.write_cmht_sequence(data_root / "drive_0" / "seq_1", frames=8, points=800)
    names = ("reference", "sigterm", "preempted")
    logs = {n: tmp / f"{n}.out" for n in names}
    t0 = time.monotonic()
    ids = {n: submit(tiny_cfg(tmp, n, data_root, STEPS), logs[n]) for n in names}
    runs = {n: tmp / "runs" / n for n in names}
    # Both interruptions come once training runs (a few steps logged) and well before its end.
    wait_for(lambda: len(metrics(runs["sigterm"])) >= 5, 1200, "the sigterm job to train")
    sent_term = time.monotonic()
    subprocess.run(["scancel", "--signal=TERM", ids["sigterm"]], check=True)  # the job steps, as --signal=TERM@N
    wait_for(lambda: len(metrics(runs["preempted"])) >= 5, 1200, "the preempted job to train")
    subprocess.run(["scontrol", "requeue", ids["preempted"]], check=True)
    infos = wait_done(ids, logs, 1500)
    return {"ids": ids, "logs": logs, "runs": runs, "infos": infos, "wall_s": time.monotonic() - t0,
            "sent_term": sent_term}


def _log(jobs, name: str) -> str:
    # Two tasks write into one log through srun, which can cut a multi-byte character between their chunks.
    return jobs["logs"][name].read_bytes().decode("utf-8", errors="replace")


def test_two_tasks_start_distributed_and_finish(jobs):
    log = _log(jobs, "reference")
    assert jobs["infos"]["reference"]["JobState"] == "COMPLETED", log[-3000:]
    for i in range(2):
        assert len(re.findall(rf"process {i}/2: 1 local devices, 2 global devices \(cpu\), mesh data=2 x fsdp=1",
                              log)) == 1, log[-3000:]
    assert f"completed at step {STEPS}" in log
    assert sorted(metrics(jobs["runs"]["reference"])) == list(range(1, STEPS + 1))
    assert (jobs["runs"]["reference"] / "encoder" / "weights.npz").is_file()


def _resumed_step(log: str) -> int:
    found = re.findall(r"resumed \S+ at step (\d+)", log)
    assert len(found) == 1, log[-3000:]
    return int(found[0])


def _assert_continues_exactly(jobs, name: str, stopped_at: int) -> None:
    reference = metrics(jobs["runs"]["reference"])
    losses = metrics(jobs["runs"][name])
    assert 0 < stopped_at < STEPS
    assert sorted(losses) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert losses[step] == pytest.approx(reference[step], abs=1e-6), (name, step, stopped_at)


def test_sigterm_saves_exits_75_and_the_job_requeues_itself(jobs):
    log = _log(jobs, "sigterm")
    assert jobs["infos"]["sigterm"]["JobState"] == "COMPLETED", log[-3000:]
    assert jobs["infos"]["sigterm"]["Restarts"] == "1"
    saved = re.findall(r"SIGTERM received: saving a checkpoint at step (\d+)", log)
    assert len(saved) == 1, log[-3000:]
    assert "stopped early with a checkpoint" in log and "requeueing it" in log
    # The log holds both runs (--open-mode=append): two starts of each process, then the resume at the saved step.
    assert "job " in log and " run 1 started" in log and " run 2 started" in log
    assert len(re.findall(r"process 0/2:", log)) == 2
    assert _resumed_step(log) == int(saved[0])
    assert f"completed at step {STEPS}" in log
    _assert_continues_exactly(jobs, "sigterm", int(saved[0]))


def test_scontrol_requeue_checkpoints_at_the_sync_point_and_resumes_there(jobs):
    log = _log(jobs, "preempted")
    assert jobs["infos"]["preempted"]["JobState"] == "COMPLETED", log[-3000:]
    assert jobs["infos"]["preempted"]["Restarts"] == "1"
    assert "DUE TO JOB REQUEUE" in log  # SLURM's own notice in the appended log
    saved = re.findall(r"SIGTERM received: saving a checkpoint at step (\d+)", log)
    assert len(saved) == 1, log[-3000:]
    assert _resumed_step(log) == int(saved[0])
    assert f"completed at step {STEPS}" in log
    _assert_continues_exactly(jobs, "preempted", int(saved[0]))


@pytest.mark.slow
def test_time_limit_requeues_until_the_last_step(tmp_path):
    """`--time=3` with the warning 60 s before it: each run trains until SIGTERM, saves, and the job requeues
    itself until all steps are done; the losses equal an uninterrupted run's at every step. SLURM sends the
    warning up to 60 s early (its event resolution), so the limit leaves at least a minute for start-up: with
    `--time=1` the signal can come before Python has installed its handler, and the job fails with 143."""
    from src.data import synthetic

    steps = 1000  # more than one run trains at 5 steps/s between start-up and the warning
    data_root = tmp_path / "cmht"
    synthetic.write_cmht_sequence(data_root / "drive_0" / "seq_1", frames=8, points=800)
    logs = {n: tmp_path / f"{n}.out" for n in ("limited", "whole")}
    ids = {
        "limited": submit(tiny_cfg(tmp_path, "limited", data_root, steps), logs["limited"],
                          "--time=3", "--signal=TERM@60"),
        "whole": submit(tiny_cfg(tmp_path, "whole", data_root, steps), logs["whole"]),
    }
    infos = wait_done(ids, logs, 1500)
    log = logs["limited"].read_bytes().decode("utf-8", errors="replace")
    assert infos["limited"]["JobState"] == "COMPLETED", log[-3000:]
    runs = int(infos["limited"]["Restarts"]) + 1
    assert runs >= 2 and "TIME LIMIT" not in log, log[-3000:]
    saved = [int(k) for k in re.findall(r"SIGTERM received: saving a checkpoint at step (\d+)", log)]
    resumed = [int(k) for k in re.findall(r"resumed \S+ at step (\d+)", log)]
    assert len(saved) == runs - 1 and resumed == saved, log[-3000:]
    assert f"completed at step {steps}" in log
    whole, limited = metrics(tmp_path / "runs" / "whole"), metrics(tmp_path / "runs" / "limited")
    assert sorted(limited) == list(range(1, steps + 1))
    for step in range(1, steps + 1):
        assert limited[step] == pytest.approx(whole[step], abs=1e-6), (step, saved)


def _transfer_cfg(tmp: Path, name: str):
    """`test_transfer`'s tiny experiment with the two variants that need no pretraining (so its CMHT root is
    never read)."""
    from tests.test_transfer import _tiny

    cfg = _tiny(tmp, tmp / "cmht_unused")
    return config.replace(cfg, run={"name": name}, transfer={"variants": ("scratch", "frozen_random")})


@pytest.mark.slow  # six jobs that each start JAX and compile PPO: about 5 minutes on the 2-CPU node
def test_transfer_job_array_gives_the_one_machine_report(tmp_path):
    """scripts/slurm/transfer_array.sh with one seed per task: a pretraining job, an array of (variant, seed)
    tasks, then the report job. Every task ran in its own process with its seed alone, yet the aggregated report
    holds the same numbers as the one-machine command, which runs both seeds vmapped in one program."""

    cfg = _transfer_cfg(tmp_path / "array", "tiny")
    path = config.save(cfg, tmp_path / "tiny.toml")
    parts_file = tmp_path / "tiny.parts"
    out = subprocess.run(
        [str(ROOT / "scripts" / "slurm" / "transfer_array.sh"), str(path), "1",
         f"--output={tmp_path}/%x-%j.out", "--time=10"],
        cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu", "PARTS_FILE": str(parts_file)},
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ids = dict(zip(("pretrain", "array", "report"), out.stdout.split()))
    assert parts_file.read_text().split("\n") == [
        "scratch 0-0", "scratch 1-1", "frozen_random 0-0", "frozen_random 1-1", ""]
    # the one-machine command on the same config (another run directory) while the jobs run
    alone = _transfer_cfg(tmp_path / "one", "tiny")
    experiment.run(alone, transfer_config.variant_names(alone), (0, 1))
    infos = wait_done(ids, {k: tmp_path / f"raceformer-transfer-{j}.out" for k, j in ids.items()}, 1500)
    logs = "\n".join(f.read_text(errors="replace")[-1500:] for f in sorted(tmp_path.glob("*.out")))
    assert {k: v["JobState"] for k, v in infos.items()} == dict.fromkeys(ids, "COMPLETED"), logs
    array_parts = {(p["record"]["variant"], tuple(p["record"]["seeds"])): p for p in transfer_parts.existing_parts(cfg)}
    assert sorted(array_parts) == [("frozen_random", (0,)), ("frozen_random", (1,)), ("scratch", (0,)),
                                   ("scratch", (1,))]
    one = {p["record"]["variant"]: p for p in transfer_parts.existing_parts(alone)}
    for (variant, (seed,)), part in array_parts.items():
        for key, value in part["arrays"].items():
            np.testing.assert_allclose(value[0], one[variant]["arrays"][key][seed], rtol=1e-3, atol=1e-3,
                                       err_msg=f"{variant} seed {seed} {key}")
    summary = json.loads((transfer_config.run_path(cfg) / "report" / "summary.json").read_text())
    assert summary["seeds"] == {"scratch": [0, 1], "frozen_random": [0, 1]}
    assert summary["frozen_encoder_unchanged"] == {"frozen_random": True}
    assert "IQM" in (transfer_config.run_path(cfg) / "report" / "report.md").read_text()
