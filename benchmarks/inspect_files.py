"""`inspect` file-check throughput: files/s of the cheap default check and of `--deep` (full decode).

    uv run python benchmarks/inspect_files.py [--root DIR] [--frames 120] [--workers 8] [--repeats 3]

Without --root a synthetic sequence (`python -m src.data.synthetic cmht --frames N`: 120k-point LiDAR PCDs,
1280x720 JPEG, 640x512 16-bit PNG IR, radar PCDs) is written to a temp dir. Each mode checks every LiDAR, radar and
camera file of the root with `inspect.check_sequence_files`; the best of --repeats runs is reported (the first run
also warms the page cache, so the figures are for files already in memory).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="", help="a CMHT root (default: write a synthetic sequence)")
    parser.add_argument("--frames", type=int, default=120, help="LiDAR sweeps of the synthetic sequence")
    parser.add_argument("--workers", type=int, default=8, help="checking threads")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from src.data import synthetic
    from src.data.cmht import index, inspect

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else Path(tmp)
        if not args.root:
            start = time.perf_counter()
            synthetic.write_cmht_sequence(root / "seq", frames=args.frames, seed=0)
            print(f"wrote a synthetic sequence of {args.frames} sweeps in {time.perf_counter() - start:.1f} s")
        sequences = index.find_sequences(root, on_error="skip")
        files = sum(len(s.streams[n]) for s in sequences for n in inspect.FILE_SENSORS if n in s.streams)
        size = sum(
            p.stat().st_size for s in sequences for n in inspect.FILE_SENSORS if n in s.streams for p in s.streams[n].files
        )
        print(f"{files} sensor files, {size / 1e6:.0f} MB, {args.workers} threads")
        for deep in (False, True):
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                bad = inspect.check_sequence_files(sequences, deep=deep, workers=args.workers, progress=False)
                best = min(best, time.perf_counter() - start)
            problems = sum(len(v) for v in bad.values())
            mode = "--deep (decode)" if deep else "default (header/size)"
            print(f"{mode:22s} {files / best:10,.0f} files/s  ({best:.3f} s, {problems} bad files)")


if __name__ == "__main__":
    main()
