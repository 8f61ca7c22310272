"""The plans schema, the fingerprint schema, the device budget and what 2D image tasks plan alike;
each task's own planner lives with its task (segmentation: medseg.tasks.segmentation.planning)."""
