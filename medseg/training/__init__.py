"""Training: one loop that owns the step (medseg.training.trainer), configured by plans and flags,
with the parts every task reuses: optimizers, schedules, splits, checkpoints, curves, 2D image
augmentation."""
