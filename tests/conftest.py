"""Test-wide settings: run JAX on the CPU so that results do not depend on the machine the suite runs on."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")


import pytest  # noqa: E402

TINY_CMHT_FRAMES = 12


@pytest.fixture(scope="session")
def tiny_cmht_root(tmp_path_factory):
    """A synthetic CMHT sequence of 12 LiDAR sweeps (about 36 MB), written once for the tests that run the
    pretrainer's command line in a subprocess."""
    from src.config import DataConfig
    from src.data import synthetic

    root = tmp_path_factory.mktemp("cmht") / "root"
    return synthetic.ensure_dataset(DataConfig(root=str(root), synthesize_if_missing=True,
                                              synthetic_frames=TINY_CMHT_FRAMES))
