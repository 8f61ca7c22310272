"""Segmentation prediction: sliding-window inference with gaussian weighting and mirroring, fold
ensembling, and the mapping back onto the original image geometry."""
