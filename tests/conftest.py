"""Test-wide settings: run JAX on the CPU so that results do not depend on the machine the suite runs on."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
