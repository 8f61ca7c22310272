"""Fingerprint, planner and plans schema of the self-configuring pipeline."""
