"""Process-level set-up shared by the entry points and the Grain data workers.

- `prepare_process`: what every entry point needs before it builds a Grain pipeline, whether it runs as
  `python -m ...` or is called as a library (`src.pretraining.loop.train`, `src.rl.trainer.train`, `transfer`): absl flags
  marked parsed, since Grain's spawned workers read absl flags (and absl logging warns before they are parsed).
- `worker_init`: the `worker_init_fn` of every `mp_prefetch`: a worker exits within `PARENT_POLL_S` of its
  parent's death (a `kill -9`, the OOM killer, a closed terminal), instead of living on as an orphan.
- `release_shared_memory`: after a Grain iterator is closed, wait until Grain has unlinked every shared-memory
  batch, so that nothing is left for the resource tracker to report as leaked at exit.
"""

from __future__ import annotations

import os
import threading
import time

PARENT_POLL_S = 0.5


def prepare_process() -> None:
    """Mark absl flags as parsed (idempotent; a program that parsed real flags keeps them)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _exit_when_orphaned(parent: int) -> None:
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent:  # re-parented: the process that started this worker is gone
            os._exit(1)


def worker_init(worker_index: int = 0, worker_count: int = 1) -> None:
    """Grain `worker_init_fn`: start a daemon thread that ends this worker once its parent has died.

    A liveness poll rather than Linux's PR_SET_PDEATHSIG, which fires when the *thread* that started the child
    exits (Grain starts workers from helper threads) and exists on Linux only.
    """
    del worker_index, worker_count
    import multiprocessing

    parent = multiprocessing.parent_process()  # the spawning process, even if it died while this one started
    parent_pid = parent.pid if parent is not None and parent.pid is not None else os.getppid()
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), name="parent-watchdog", daemon=True).start()


def release_shared_memory() -> None:
    """Block until Grain's background deletions of shared-memory batches have run.

    Grain frees a batch's shared memory from a one-thread pool when the batch is garbage collected; a process
    that exits right after closing its iterator can end before that thread ran, and the resource tracker then
    reports the segments as leaked. A no-op task queued behind them returns once they are done.
    """
    import gc

    from grain._src.python.ipc import shared_memory_array

    gc.collect()
    pool = getattr(shared_memory_array.SharedMemoryArray, "_del_thread_pool", None)
    if pool is not None:
        pool.apply(int)
