"""Flax NNX modules of the Raceformer (encoders, fusion, heads, the assembled model)."""

from src.models.encoders import (
    ModalityViT,
    PatchEmbed,
    PositionalEmbedding,
    TransformerBlock,
    patchify,
    unpatchify,
)
from src.models.fusion import MultimodalFusion
from src.models.heads import PolicyHead, PretrainHead, ProjectionHead, ValueHead
from src.models.raceformer import Raceformer

__all__ = [
    "ModalityViT",
    "MultimodalFusion",
    "PatchEmbed",
    "PolicyHead",
    "PositionalEmbedding",
    "PretrainHead",
    "ProjectionHead",
    "Raceformer",
    "TransformerBlock",
    "ValueHead",
    "patchify",
    "unpatchify",
]
