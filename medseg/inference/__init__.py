"""Inference: sliding window with gaussian weighting, mirroring TTA, fold ensembles, inversion of
preprocessing back to the original geometry."""
