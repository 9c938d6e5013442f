"""The pretrainer's command line as a process: it ends cleanly, and nothing outlives it when it is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests._commands import REPO, python_env, run_python, sets, tiny_pretrain

MAIN = ["-m", "src.training.pretrainer", "--config", "configs/pretrain_cmht.toml"]


def test_main_command_ends_without_leaked_shared_memory(tiny_cmht_root, tmp_path):
    done = run_python([*MAIN, *tiny_pretrain(tiny_cmht_root, tmp_path, steps=3)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "completed at step 3" in done.stdout
    assert "leaked shared_memory" not in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


def _session_processes(sid: int) -> dict[int, str]:
    """pid -> command line of every live (non-zombie) process in session `sid`, read from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, session
            if int(fields[3]) == sid and fields[0] != "Z":
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return found


def test_kill_9_leaves_no_process_behind(tiny_cmht_root, tmp_path):
    """SIGKILL a training run once its 2 Grain workers and the resource tracker run: they all end within 5 s."""
    proc = subprocess.Popen(
        [sys.executable, *MAIN, *tiny_pretrain(tiny_cmht_root, tmp_path, steps=100_000),
         *sets("training.checkpoint_every=100000")],
        cwd=REPO, env=python_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        metrics = tmp_path / "pretrain_cmht_demo" / "metrics.jsonl"
        # training runs (its workers deliver batches) and the trainer, 2 workers and the resource tracker live
        while not (metrics.is_file() and metrics.read_text()) or len(_session_processes(proc.pid)) < 4:
            assert proc.poll() is None, "the run ended before its workers were seen"
            assert time.monotonic() < deadline, _session_processes(proc.pid)
            time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        t0 = time.monotonic()
        while _session_processes(proc.pid) and time.monotonic() - t0 < 5.0:
            time.sleep(0.1)
        survivors = _session_processes(proc.pid)
        assert not survivors, f"alive {time.monotonic() - t0:.1f} s after kill -9: {survivors}"
    finally:
        for pid in _session_processes(proc.pid):
            os.kill(pid, signal.SIGKILL)
