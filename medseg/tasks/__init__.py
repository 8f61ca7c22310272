"""Tasks behind one registry (see registry.py). Each task module registers itself when imported
here; adding a task is one new module plus its import line below (or a plug-in, medseg.plugins)."""

from medseg.tasks.prediction import BatchRequest, PredictorOptions, TaskPredictor, open_predictor
from medseg.tasks.registry import PlanRequest, RunContext, Task, TrainingRun, get_task, list_tasks, register_task

from medseg.tasks import segmentation, classification, masked_pretraining, autoencoder_pretraining, latent_segmentation  # noqa: E402,F401,I001  (segmentation first: the default task)  (registers the built-in tasks)

__all__ = [
    "BatchRequest", "PlanRequest", "PredictorOptions", "RunContext", "Task", "TaskPredictor", "TrainingRun", "get_task", "list_tasks",
    "open_predictor", "register_task",
]
