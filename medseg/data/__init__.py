"""Datasets: the raw layout (nnU-Net v2 for segmentation, a labels table for classification),
validation, and atomic dataset building."""
