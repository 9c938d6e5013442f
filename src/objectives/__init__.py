"""Pretraining objectives: which patches are hidden, masked modeling, contrastive and latent losses."""
