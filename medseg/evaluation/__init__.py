"""Evaluation shared by the tasks: segmentation metrics and reports (also for `medseg evaluate`),
classification metrics, and the family comparison."""
