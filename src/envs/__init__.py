"""Simulators and adapters. Importing this package registers `raceformer/BulletRace-v0` with gymnasium."""

import gymnasium

if "raceformer/BulletRace-v0" not in gymnasium.registry:
    gymnasium.register(id="raceformer/BulletRace-v0", entry_point="src.envs.bullet.env:BulletRaceEnv")
