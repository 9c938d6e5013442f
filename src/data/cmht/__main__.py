"""`python -m src.data.cmht inspect ROOT ...` (`inspect.main`)."""

from src.data.cmht.inspect import main

main()
