"""Analysis of experiments: rliable statistics and reports (`stats`, `report`), pretraining probes (`probe`)."""
