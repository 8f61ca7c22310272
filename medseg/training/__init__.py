"""Training: one Trainer configured by plans and flags; losses, sampling, augmentation, checkpoints."""
