"""Race tracks: geometry (`geometry.Track`), validation, procedural generation, map_server maps (reading, wall
tracing, centreline extraction), the bundled tracks (`registry.get_track`) and the track on a grid (`raster`)."""
