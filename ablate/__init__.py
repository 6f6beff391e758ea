"""ablate: modality knockout for multimodal recommenders."""

__version__ = "0.1.0"
