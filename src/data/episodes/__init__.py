"""Driving episodes on disk (JSON + PNG frames): `schema` (validation), `sources` (Grain), `writer`."""
