"""`python -m src.envs.tracks`: regenerate the bundled track files."""

from src.envs.tracks.registry import main

if __name__ == "__main__":
    main()
