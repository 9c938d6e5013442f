"""`python -m src.data.episodes validate DIR [--json]` (`schema.main`)."""

import sys

from src.data.episodes.schema import main

sys.exit(main())
