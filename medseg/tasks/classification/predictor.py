"""A classifier's predictor, as the front door (medseg.tasks.open_predictor) opens it: the folds'
probabilities averaged per image, a batch written to predictions.csv."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from medseg.errors import MedsegError
from medseg.precision import autocast, resolve_precision
from medseg.preprocessing.images2d import prepare_image
from medseg.audit.probability_calibration import calibrated, read_probability_calibration
from medseg.tasks.classification.predictions_csv import PREDICTIONS_CSV, write_predictions_csv
from medseg.tasks.classification.report import _multi_label
from medseg.tasks.classification.run import classes_of
from medseg.tasks.classification.test_time import predict_views, view_transforms


def load_thresholds(folder) -> dict[str, float] | None:
    path = folder.path / "thresholds.json"
    if not path.is_file():
        return None
    try:
        return {str(k): float(v) for k, v in json.loads(path.read_text())["thresholds"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise MedsegError(f"{path}: not a thresholds file ({{'thresholds': {{class: number}}}})") from None


class ClassifierPredictor:
    """A classifier's predictor: the folds' networks in memory, their probabilities averaged."""

    def __init__(self, model_folder, networks: list, device: torch.device, folds=("memory",), tta: bool = True, precision: str = "float32"):
        """tta: the test-time views where the cross-validation found they raise the AUC (False: never);
        precision: the forward's (float32, or bfloat16 autocast)."""
        self.model_folder, self.folds, self.device = model_folder, list(folds), device
        self.networks = [n.to(device).eval() for n in networks]
        self.classes, self.multi_label = classes_of(model_folder.plans), _multi_label(model_folder)
        self.channels = len(model_folder.plans.channel_names)
        self.precision = precision
        self.calibration = read_probability_calibration(model_folder.path)
        use_views = bool(tta and self.calibration and self.calibration.get("tta", {}).get("used"))
        self.transforms = view_transforms(model_folder.configuration.augmentation) if use_views else [("identity", None)]
        self.temperature = self.calibration["temperature"].get("tta" if use_views else "plain") if self.calibration else None

    def _raw(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, 1)

    @torch.no_grad()
    def predict_image(self, image, probabilities: bool = True, case_id: str = "case") -> np.ndarray:
        """image: MedicalImage (C, H, W) -> (K,) class probabilities: each fold's averaged over the
        test-time views (when used), calibrated by the temperature, then the folds averaged."""
        if image.num_channels != self.channels:
            raise MedsegError(f"{case_id}: has {image.num_channels} channel(s); the model takes {self.channels}")
        size = self.model_folder.configuration.patch_size
        prepared = torch.from_numpy(prepare_image(image.array, size, case_id))[None].to(self.device)
        scores = [self._fold_probabilities(network, prepared) for network in self.networks]
        return torch.stack(scores).mean(0)[0].float().cpu().numpy()

    def _fold_probabilities(self, network, prepared: torch.Tensor) -> torch.Tensor:
        """prepared: (1, C, H, W) -> (1, K) on the CPU."""
        with autocast(self.device, self.precision):
            averaged = predict_views(network, prepared, self.transforms, self._raw).cpu()
        if self.temperature is None:
            return averaged
        return torch.from_numpy(calibrated(averaged.numpy(), self.temperature, self.multi_label)).float()

    def predict_batch(self, request):
        """Every case -> one row of OUTPUT/predictions.csv (probabilities per class)."""
        from medseg.inference.batch import BatchResult, read_case
        from medseg.inference.inputs import discover

        if request.formats not in (None, "", "csv", ["csv"]):
            shown = ",".join(request.formats) if isinstance(request.formats, list) else request.formats
            raise MedsegError(f"a classifier writes {PREDICTIONS_CSV} (probabilities per class); --format {shown} is for segmentation models")
        from medseg.audit.input_checks import check_input, findings_text, parse_qc

        thresholds = load_thresholds(self.model_folder) if self.multi_label else None
        qc = parse_qc(getattr(request, "qc", None) or "warn")
        profile = self.model_folder.input_profile() if qc != "off" else None
        discovery = discover(request.source, request.series, confine=request.confine)
        result = BatchResult(folds=list(self.folds), ignored=list(discovery.ignored), cases=len(discovery.cases))
        case_ids, rows, reviews = [], [], []
        for index, case in enumerate(discovery.cases):
            try:
                image = read_case(case)
                findings = check_input(profile, image)  # is it like the training images? (none without a profile)
                if findings and qc == "refuse":
                    raise MedsegError(f"{case.case_id}: refused by the input checks (--qc refuse): {findings_text(findings)}")
                rows.append(self.predict_image(image, case_id=case.case_id))
                case_ids.append(case.case_id)
                reviews.append(findings_text(findings) if findings else "")
            except MedsegError as error:
                result.failed[case.case_id] = str(error)
            if request.progress:
                request.progress(index + 1, len(discovery.cases))
        output = Path(request.output)
        output.mkdir(parents=True, exist_ok=True)
        target = output / PREDICTIONS_CSV
        probabilities = np.stack(rows) if rows else np.zeros((0, len(self.classes)))
        write_predictions_csv(
            target, case_ids, probabilities, self.classes, multi_label=self.multi_label, thresholds=thresholds, reviews=reviews if qc != "off" else None,
        )
        result.written.append(target)
        return result


def load_classifier_predictor(folder, options) -> ClassifierPredictor:
    from medseg.models.registry import build_model

    if options.runtime != "torch":
        raise MedsegError(f"--runtime {options.runtime}: classifiers run with the torch runtime")
    if isinstance(options.mirror, list):
        raise MedsegError("--tta-axes chooses mirroring axes of segmentation models; a classifier takes --tta or --no-tta")
    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    folds = options.folds or folder.folds()
    if not folds:
        raise MedsegError(f"{folder.path}: no trained fold")
    channels, classes = len(folder.plans.channel_names), classes_of(folder.plans)
    networks = []
    for fold in folds:
        network = build_model(folder.configuration.architecture, channels, len(classes))
        network.load_state_dict(folder.load_module_states(fold, options.checkpoint)["network"])
        networks.append(network)
    # gradient-routed (HAG) classifiers train in float32: they predict in it too
    precision = resolve_precision(options.precision, device) if not folder.configuration.training.get("gradient_routing") else "float32"
    return ClassifierPredictor(folder, networks, device, folds, tta=bool(options.mirror), precision=precision)
