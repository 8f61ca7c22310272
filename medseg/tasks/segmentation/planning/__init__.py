"""Segmentation planning: the fingerprint of a segmentation dataset and the planner (spacing,
transpose, normalisation, patch, batch and U-Net topology per configuration)."""
