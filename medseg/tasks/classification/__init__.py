"""The classification task: one label vector (multi-label) or one class (multi-class) per 2D image.

Stages, as the pipeline runs them:
- fingerprint: image sizes, spacings and per-channel intensity statistics of the training images;
- plan: a square input size (the median image side, at most 224, a multiple of the ViT patch) and a
  batch, shrunk on a CPU until a measured training step fits the step time and the run's budget
  sees the data often enough; per-image z-scoring; augmentation for radiographs (grayscale) or
  endoscopy/photographs (colour); BCE for multi-label, CE (optionally class-weighted) for multi-class;
- preprocess: every image resized (antialiased) to the input size and z-scored, float16 on disk;
- folds: a patient never in two folds when the table has a group/patient column, classes spread
  evenly over the folds;
- training: AdamW with warm-up and cosine decay, layer-wise learning-rate decay when the family
  numbers its layers (ViT), validation score = mean ROC AUC (from additive score histograms);
- final validation: every held-out image predicted, probabilities in ``validation/predictions.csv``;
  (and through the test-time views, ``predictions_tta.csv``);
- cross-validation: out-of-fold predictions pooled; the test-time views kept when they raise the
  AUC; a temperature fitted on them (``probability_calibration.json``); per-class thresholds
  (Youden's J) picked on the calibrated probabilities and stored in the model folder
  (``thresholds.json``) for prediction; AUC, F1, balanced accuracy, sensitivity and specificity per
  class and mean, per image and per patient (mean / max of a patient's images) where the table has
  a group column; ROC plot ``roc.png``;
- predict: ``predictions.csv`` with a probability per class (views and temperature as the
  cross-validation chose), the predicted classes, and ``review``: the input checks' findings
  against the training images (medseg.audit.input_checks; ``--qc refuse`` fails such a case)."""

from medseg.tasks.image_plans import fingerprint
from medseg.preprocessing.images2d import preprocess, preprocessed_cases, prepare_image
from medseg.tasks.capabilities import CLASS_SCORES, CROSSVAL
from medseg.tasks.classification.planning import plan
from medseg.tasks.classification.predictor import load_classifier_predictor
from medseg.tasks.classification.predictions_csv import PREDICTIONS_CSV
from medseg.tasks.classification.report import calibrate, crossval, evaluate_predictions, model_info, report_rows, report_score
from medseg.tasks.classification.run import GRADIENT_CLIP, TASK, ClassificationRun, split_keys
from medseg.tasks.registry import Task, register_task

__all__ = ["GRADIENT_CLIP", "PREDICTIONS_CSV", "TASK", "ClassificationRun", "evaluate_predictions", "prepare_image"]

register_task(
    Task(
        name=TASK,
        summary="one label vector (multi-label) or class (multi-class) per 2D image: AUC, F1, balanced accuracy, grouped folds",
        dataset_types=("classification",),
        fingerprint=fingerprint,
        plan=plan,
        preprocess=preprocess,
        preprocessed_cases=preprocessed_cases,
        start_run=ClassificationRun,
        model_info=model_info,
        predictor=load_classifier_predictor,
        capabilities=frozenset({CLASS_SCORES, CROSSVAL}),
        crossval=crossval,
        report_rows=report_rows,
        report_score=report_score,
        split_keys=split_keys,
        calibrate=calibrate,
    )
)
