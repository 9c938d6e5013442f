"""The pure-JAX racing env: parameters (`params`), ray casting (`raycast`), car dynamics (`dynamics`), sensors
(`sensors`) and the functional env API (`env`: reset, reset_at, step)."""
