"""Segmentation cross-validation: pooled out-of-fold Dice/NSD/HD95 reports and the
largest-component postprocessing chosen on them."""
