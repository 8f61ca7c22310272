"""Preprocessing shared by the 2D image tasks (images2d.py: resize, z-score, float16 on disk);
segmentation preprocessing lives with its task (medseg.tasks.segmentation.preprocessing)."""
