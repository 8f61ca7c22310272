"""The predictor of an ensemble folder (medseg.ensemble_folder): each member predicts with its own
plans (spacing, patch, network); their probabilities in the input's geometry are averaged, the most
likely label kept, then the ensemble's postprocessing."""

from __future__ import annotations

from medseg.ensemble_folder import EnsembleModelFolder
from medseg.errors import MedsegError
from medseg.tasks.segmentation.evaluation.ensembles import mean_probabilities
from medseg.tasks.segmentation.inference.label_maps import labels_from_probabilities
from medseg.tasks.segmentation.evaluation.postprocessing import apply_postprocessing
from medseg.tasks.segmentation.inference.predictor import Prediction


class EnsemblePredictor:
    """``members``: the member folders' predictors, without their own postprocessing."""

    def __init__(self, model_folder: EnsembleModelFolder, members: list):
        self.model_folder, self.members = model_folder, members
        self.folds = [f"{member.model_folder.path.name}/fold_{fold}" for member in members for fold in member.folds]
        self.precision = members[0].precision
        self.postprocess = model_folder.postprocessing().get("largest_component_classes", [])

    def predict_image(self, image, probabilities: bool = False, case_id: str = "case"):
        predictions = [member.predict_image(image, probabilities=True, case_id=case_id) for member in self.members]
        mean = mean_probabilities([p.probabilities for p in predictions])
        labels = labels_from_probabilities(mean, self.model_folder.plans)
        if self.postprocess:
            labels = apply_postprocessing(labels, self.postprocess)
        first = predictions[0]
        return Prediction(first.segmentation.with_array(labels[None]), mean if probabilities else None, first.source)

    def confidence(self, prediction: Prediction) -> dict[str, dict[str, float]]:
        from medseg.tasks.segmentation.inference.label_maps import prediction_confidence

        return prediction_confidence(prediction.probabilities, prediction.segmentation.array[0], self.model_folder.plans)

    def predict_batch(self, request):
        from medseg.inference.batch import predict_cases

        return predict_cases(self, request)


def load_ensemble_predictor(folder: EnsembleModelFolder, options, load_member) -> EnsemblePredictor:
    """``load_member(member_folder, options)``: the members' own predictor (without their postprocessing)."""
    from dataclasses import replace

    if options.runtime == "onnx":
        raise MedsegError(f"{folder.path}: an ensemble runs its members in torch or OpenVINO (--runtime torch|openvino), not ONNX")
    if options.folds:
        raise MedsegError(f"{folder.path}: --folds applies to one model folder; an ensemble runs every fold of its members")
    members = [load_member(member, replace(options, folds=None)) for member in folder.members]
    for member in members:
        member.postprocess = []  # the ensemble postprocesses the mean, never the members
    return EnsemblePredictor(folder, members)
