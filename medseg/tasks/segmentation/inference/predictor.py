"""Predictor: a trained model folder (one or more folds) applied to images of any size, output in
the original geometry. The trainer's final validation runs through the same code."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medseg.errors import MedsegError
from medseg.io import MedicalImage
from medseg.model_folder import ModelFolder
from medseg.precision import check_precision, resolve_precision
from medseg.tasks.segmentation.preprocessing.case import CaseProperties, preprocess_case
from medseg.tasks.segmentation.cascade import with_previous_stage
from medseg.tasks.segmentation.inference.label_maps import labels_from_probabilities
from medseg.tasks.segmentation.preprocessing.resampling import coarse_axis, resample_probabilities
from medseg.tasks.segmentation.inference.sliding_window import fastest_windows_per_batch, predict_logits


def chosen_mirror_axes(mirror: bool | Sequence[int], allowed: tuple[int, ...], folder: Path) -> tuple[int, ...]:
    """``mirror``: True (every axis the training augmentation mirrored), False (none) or a subset:
    each mirrored axis doubles the forward passes, so a subset trades some TTA for time."""
    if mirror is True:
        return allowed
    if mirror is False:
        return ()
    axes = tuple(sorted({int(a) for a in mirror}))
    refused = [a for a in axes if a not in allowed]
    if refused:
        raise MedsegError(f"{folder}: test-time mirroring of axis {refused} was not trained (the model allows {list(allowed) or 'none'})")
    return axes


@dataclass
class Prediction:
    segmentation: MedicalImage  # (1, *original spatial) label values; metadata["source"]: the input image's metadata
    probabilities: np.ndarray | None  # (K, *original spatial) float32, when asked for
    source: dict = field(default_factory=dict)  # what the input image knew (format; for DICOM: SOP instance UIDs, files)


def check_input(image: MedicalImage, plans, case_id: str) -> None:
    """Refuse what would give a wrong segmentation that looks right: other channels or
    dimensionality than the model was trained on, NaN/Inf intensities."""
    expected = len(plans.channel_names)
    if image.num_channels != expected:
        raise MedsegError(f"{case_id}: has {image.num_channels} channel(s), the model expects {expected} ({', '.join(plans.channel_names)})")
    ndim = len(plans.transpose_forward)  # the training images' dimensionality
    if image.ndim != ndim:
        raise MedsegError(f"{case_id}: is a {image.ndim}D image {image.spatial_shape}; the model was trained on {ndim}D images")
    if image.array.dtype.kind in "fc":
        finite = np.isfinite(image.array)
        if not finite.all():
            raise MedsegError(
                f"{case_id}: {int(finite.size - finite.sum())} of {finite.size} voxels are NaN or infinite; "
                "medseg does not segment images with undefined intensities (replace or mask them first)"
            )


def check_segmentation_labels(folder: ModelFolder) -> None:
    """Every class the network outputs needs a named label: model.json's labels must be the plans'
    labels, values 0 (background) to K-1 for a K-class network; otherwise a predicted class would
    be written as a value nobody declared."""
    info_labels, plans_labels = folder.info.labels, folder.plans.labels
    source = folder.path / "model.json"
    if sorted(info_labels.values()) != sorted(plans_labels.values()):
        raise MedsegError(f"{source}: labels {info_labels} are not the labels the network was planned with ({plans_labels} in plans.json)")
    values = sorted(info_labels.values())
    regions = folder.plans.regions
    if regions:  # one output per region, each writing its own declared value
        missing = [name for name in regions if name not in plans_labels or plans_labels[name] == 0]
        if missing:
            raise MedsegError(f"{folder.path / 'plans.json'}: regions {missing} have no label value (regions_class_order)")
        return
    if len(values) < 2 or values != list(range(len(values))):
        raise MedsegError(f"{source}: labels {info_labels}: expected the values 0 (background) to {len(values) - 1}, one per network output")


def check_predictor_folder(folder: ModelFolder, mirror: bool | Sequence[int]) -> tuple[int, ...]:
    """What a label-map predictor needs of a model folder before any weights load; -> mirror axes."""
    check_segmentation_labels(folder)
    allowed, ndim = tuple(folder.info.mirror_axes), folder.configuration.ndim
    if any(axis >= ndim for axis in allowed):
        raise MedsegError(f"{folder.path / 'model.json'}: mirror_axes = {list(allowed)}: a {ndim}D model has axes 0..{ndim - 1}")
    return chosen_mirror_axes(mirror, allowed, folder.path)


class Predictor:
    """Label maps from images with networks in memory: what ``load_predictor`` builds from a model
    folder's folds, and what the trainer's final validation builds around the network it trained."""

    def __init__(
        self,
        model_folder: ModelFolder,
        networks: list,
        device: torch.device,
        folds: Sequence[str] = ("memory",),
        step_fraction: float = 0.5,
        mirror: bool | Sequence[int] = True,
        windows_per_batch: int | None = None,
        precision: str = "float32",
        postprocess: Sequence[int] = (),
        previous: "Predictor | None" = None,
    ):
        """``precision``: "float32", or "bfloat16": the forward under bf16 autocast (window logits
        still accumulated in float32). ``postprocess``: classes kept to their largest component.
        ``previous``: a cascade stage's previous-stage predictor, whose segmentation joins the image
        (medseg.tasks.segmentation.cascade)."""
        self.model_folder, self.folder = model_folder, model_folder.path
        self.plans, self.configuration = model_folder.plans, model_folder.configuration
        self.mirror_axes = check_predictor_folder(model_folder, mirror)
        if windows_per_batch is None and device.type == "cuda":  # 4 windows per forward ran 1.6x faster than 1 (bench/results/gpu_inference.json)
            windows_per_batch = 4
        self.device, self.step_fraction, self.windows_per_batch = device, step_fraction, windows_per_batch
        self.networks = [n.eval() for n in networks]
        self.folds, self.precision, self.postprocess = list(folds), precision, list(postprocess)
        self.previous = previous

    def confidence(self, prediction: "Prediction") -> dict[str, dict[str, float]]:
        """Each structure's confidence features (medseg.audit.confidence) of a prediction made with probabilities."""
        from medseg.tasks.segmentation.inference.label_maps import prediction_confidence

        return prediction_confidence(prediction.probabilities, prediction.segmentation.array[0], self.plans)

    def predict_batch(self, request):
        """request: medseg.tasks.prediction.BatchRequest -> medseg.inference.batch.BatchResult."""
        from medseg.inference.batch import predict_cases

        return predict_cases(self, request)

    def _logits(self, data: np.ndarray) -> torch.Tensor:
        """data: (C, *S) preprocessed -> fold-averaged logits (K, *S)."""
        configuration = self.configuration
        tensor = torch.from_numpy(np.ascontiguousarray(data))
        total = None
        for network in self.networks:
            if configuration.ndim == 2 and tensor.ndim == 4:  # 3D image, 2D model: slice by slice
                logits = torch.stack(
                    [self._window(network, tensor[:, z]) for z in range(tensor.shape[1])], dim=1
                )
            else:
                logits = self._window(network, tensor)
            total = logits if total is None else total + logits
        return total / len(self.networks)

    def _window(self, network, tensor: torch.Tensor) -> torch.Tensor:
        axes = [a for a in self.mirror_axes if a < tensor.ndim - 1]
        if self.windows_per_batch is None:  # CPU: measured once per network and window (sliding_window)
            measurable = isinstance(network, torch.nn.Module) and self.precision == "float32"
            window = (tensor.shape[0], *self.configuration.patch_size)
            self.windows_per_batch = fastest_windows_per_batch(network, window) if measurable else 1
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16"):
            return predict_logits(
                network, tensor, self.configuration.patch_size, self.plans.num_classes,
                self.step_fraction, axes, self.windows_per_batch, self.device,
            )

    def predict_preprocessed(
        self, data: np.ndarray, properties: CaseProperties | dict, probabilities: bool = False, source: dict | None = None
    ) -> Prediction:
        """data: (C, *S) preprocessed; ``source``: the input image's metadata, carried to the prediction."""
        props = properties if isinstance(properties, dict) else properties.to_dict()
        logits = self._logits(data).numpy()
        axis = coarse_axis(props["target_spacing"], props["spacing_after_crop"], self.configuration.resampling["anisotropy_threshold"])
        logits = resample_probabilities(logits, props["shape_after_crop"], axis, self.configuration.resampling["out_of_plane_order"])
        regions = bool(self.plans.regions)  # one sigmoid per region, else softmax over classes
        probs = (torch.sigmoid if regions else lambda t: torch.softmax(t, dim=0))(torch.from_numpy(logits)).numpy()
        full = np.zeros((probs.shape[0], *props["shape_before_crop"]), dtype=np.float32)
        if not regions:
            full[0] = 1.0  # outside the crop box is background
        box = tuple(slice(a, b) for a, b in props["bbox"])
        full[(slice(None),) + box] = probs
        backward = self.plans.transpose_backward if full.ndim == 4 else list(range(full.ndim - 1))
        full = full.transpose([0, *[axis + 1 for axis in backward]])
        labels = labels_from_probabilities(full, self.plans)
        if self.postprocess:
            from medseg.tasks.segmentation.evaluation.postprocessing import apply_postprocessing

            labels = apply_postprocessing(labels, self.postprocess)
        source = dict(source or {})
        segmentation = MedicalImage(
            labels[None],
            spacing=tuple(props["original_spacing"]),
            origin=tuple(props["origin"]),
            direction=np.asarray(props["direction"]),
            metadata={"source": source},
        )
        return Prediction(segmentation, full if probabilities else None, source)

    def predict_image(self, image: MedicalImage, probabilities: bool = False, case_id: str = "case") -> Prediction:
        check_input(image, self.plans, case_id)
        if self.configuration.previous_stage and self.previous is None:
            raise MedsegError(f"{self.folder}: a cascade stage ({self.configuration.name}) predicts images with its previous stage's predictor")
        if self.previous is None:
            data, _, properties = preprocess_case(image, None, self.plans, self.configuration, case_id)
        else:  # the cascade: the previous stage segments first; its labels, on this stage's grid, join the image
            previous = self.previous.predict_image(image, case_id=case_id).segmentation.array
            data, resampled, properties = preprocess_case(image, previous, self.plans, self.configuration, case_id)
            data = with_previous_stage(data, resampled[0], self.plans.label_map_size)
        return self.predict_preprocessed(data, properties, probabilities, source=image.metadata)


def load_predictor(model_folder: ModelFolder, options) -> Predictor:
    """The predictor of a model folder's trained folds (the segmentation task's ``predictor``);
    ``options``: medseg.tasks.prediction.PredictorOptions. ``runtime`` "onnx" runs the folder's ONNX
    export (medseg.inference.onnx_export); ``precision`` "auto" is bfloat16 on CPUs with native bf16
    instructions, where it halves the time at no measured Dice cost
    (bench/results/inference_bf16_dice.json), float32 elsewhere."""
    from medseg.models.loading import build_checked

    if not 0 <= options.overlap < 1:
        raise MedsegError(f"--overlap must be in [0, 1), got {options.overlap}")
    check_precision(options.precision)
    if options.precision == "bfloat16" and options.runtime == "onnx":
        raise MedsegError("--precision bfloat16 applies to the torch runtime; the ONNX export runs in float32")
    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if options.runtime in ("onnx", "openvino"):
        device = torch.device("cpu")  # their CPU devices; results come back as CPU tensors
    check_predictor_folder(model_folder, options.mirror)  # before any weights load
    postprocess = model_folder.postprocessing().get("largest_component_classes", [])
    if options.runtime == "onnx":
        from medseg.inference.onnx_export import onnx_networks

        networks, folds = onnx_networks(model_folder, options.folds)
        precision = "float32"
    else:
        folds = list(options.folds) if options.folds else model_folder.folds()
        if not folds:
            raise MedsegError(f"{model_folder.path}: no trained folds (fold_*/)")
        plans, architecture = model_folder.plans, model_folder.configuration.architecture
        networks = []
        for fold in folds:
            states = model_folder.load_module_states(fold, options.checkpoint)
            path = model_folder.checkpoint_path(fold, options.checkpoint)
            if "network" not in states:
                raise MedsegError(f"{path}: holds no 'network' weights")
            network = build_checked(architecture, plans.input_channels(model_folder.configuration), plans.num_classes, states["network"], model_folder.path / "plans.json", path)
            networks.append(network.to(device))
        precision = resolve_precision(options.precision, device)
        if options.runtime == "openvino":
            from medseg.inference.openvino_runtime import openvino_networks

            patch = (1, plans.input_channels(model_folder.configuration), *model_folder.configuration.patch_size)
            networks = openvino_networks(networks, folds, patch, precision, model_folder.path)
    previous = _previous_stage_predictor(model_folder, options) if model_folder.configuration.previous_stage else None
    return Predictor(
        model_folder, networks, device, folds, 1 - options.overlap, options.mirror, options.windows_per_batch, precision, postprocess, previous,
    )


def _previous_stage_predictor(model_folder: ModelFolder, options) -> Predictor:
    """The cascade's first stage, from its model folder beside this one, every fold, no postprocessing."""
    from dataclasses import replace

    from medseg.model_folders import open_model_folder
    from medseg.tasks.segmentation.cascade import previous_stage_folder

    if options.runtime == "onnx":
        raise MedsegError(f"{model_folder.path}: a cascade stage runs in torch or OpenVINO (--runtime torch|openvino), not ONNX yet")
    path = previous_stage_folder(model_folder.path, model_folder.configuration)
    if not path.is_dir():
        raise MedsegError(f"{model_folder.path}: a cascade stage needs its previous stage's model folder {path.name} beside it")
    previous = load_predictor(open_model_folder(path), replace(options, folds=None))
    previous.postprocess = []  # nnU-Net's cascade sees the first stage's raw segmentation, as in training
    return previous
