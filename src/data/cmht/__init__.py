"""The CMHT dataset: `readers` (files), `index` (sequences under a root), `dataset` (Grain), `inspect` (CLI)."""
