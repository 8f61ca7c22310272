"""Predictor: a trained model folder (one or more folds) applied to images of any size, output in
the original geometry. The trainer's final validation runs through the same code."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medseg.errors import MedsegError
from medseg.io import MedicalImage
from medseg.model_folder import ModelFolder
from medseg.preprocessing.case import CaseProperties, preprocess_case
from medseg.preprocessing.resampling import coarse_axis, resample_probabilities
from medseg.inference.sliding_window import predict_logits

RUNTIMES = ("torch", "onnx")
PRECISIONS = ("auto", "float32", "bfloat16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 arithmetic; elsewhere bf16 is emulated and slower


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:  # not Linux: no way to tell cheaply, stay in float32
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


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


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    return "bfloat16" if device.type == "cpu" and cpu_has_native_bf16() else "float32"


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
    if len(values) < 2 or values != list(range(len(values))):
        raise MedsegError(f"{source}: labels {info_labels}: expected the values 0 (background) to {len(values) - 1}, one per network output")


class Predictor:
    def __init__(
        self,
        model_folder: Path | ModelFolder,
        folds: Sequence[str] | None = None,
        checkpoint: str = "auto",
        device: str | None = None,
        step_fraction: float = 0.5,
        mirror: bool | Sequence[int] = True,
        windows_per_batch: int | None = None,
        runtime: str = "torch",
        precision: str = "auto",
    ):
        """``runtime``: "torch", or "onnx" for an ONNX export folder (medseg.inference.onnx_export).
        ``precision``: "float32"; "bfloat16": the network's forward under bf16 autocast (window
        logits are still accumulated in float32); "auto": bfloat16 on CPUs with native bf16
        instructions, where it halves the time at no measured Dice cost
        (bench/results/inference_bf16_dice.json), float32 elsewhere."""
        if precision not in PRECISIONS:
            raise MedsegError(f"unknown precision '{precision}' (choose {', '.join(PRECISIONS)})")
        if precision == "bfloat16" and runtime == "onnx":
            raise MedsegError("--precision bfloat16 applies to the torch runtime; the ONNX export runs in float32")
        from medseg.models.loading import build_checked

        if runtime not in RUNTIMES:
            raise MedsegError(f"unknown runtime '{runtime}' (choose {', '.join(RUNTIMES)})")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if runtime == "onnx":
            device = torch.device("cpu")  # ONNX Runtime's CPU provider; results come back as CPU tensors
        self.precision = "float32" if runtime == "onnx" else resolve_precision(precision, device)
        if windows_per_batch is None:  # GPUs: 4 windows per forward ran 1.6x faster than 1 (bench/results/gpu_inference.json)
            windows_per_batch = 4 if device.type == "cuda" else 1
        self._load_folder(model_folder, device, step_fraction, windows_per_batch, mirror)
        self.postprocess = list(self.model_folder.postprocessing().get("largest_component_classes", []))
        if runtime == "onnx":
            from medseg.inference.onnx_export import onnx_networks

            self.networks, self.folds = onnx_networks(self.model_folder, folds)
            return
        folds = list(folds) if folds else self.model_folder.folds()
        if not folds:
            raise MedsegError(f"{self.folder}: no trained folds (fold_*/)")
        self.networks = []
        for fold in folds:
            states = self.model_folder.load_module_states(fold, checkpoint)
            path = self.model_folder.checkpoint_path(fold, checkpoint)
            if "network" not in states:
                raise MedsegError(f"{path}: holds no 'network' weights")
            network = build_checked(self.configuration.architecture, len(self.plans.channel_names), self.plans.num_classes, states["network"], self.folder / "plans.json", path)
            self.networks.append(network.to(self.device).eval())
        self.folds = folds

    @classmethod
    def from_networks(cls, model_folder: ModelFolder, networks: list, device: torch.device, mirror: bool = True, step_fraction: float = 0.5):
        """A predictor around networks already in memory (the trainer's final validation)."""
        predictor = cls.__new__(cls)
        predictor._load_folder(model_folder, device, step_fraction, 4 if device.type == "cuda" else 1, mirror)
        predictor.networks, predictor.folds = [n.eval() for n in networks], ["memory"]
        predictor.precision = "float32"
        predictor.postprocess = []  # cross-validation scores the raw prediction
        return predictor

    def _load_folder(self, model_folder: Path | ModelFolder, device: torch.device, step_fraction: float, windows_per_batch: int, mirror) -> None:
        self.model_folder = model_folder if isinstance(model_folder, ModelFolder) else ModelFolder.open(model_folder)
        self.folder = self.model_folder.path
        self.plans = self.model_folder.plans
        self.configuration = self.model_folder.configuration
        self.device, self.step_fraction, self.windows_per_batch = device, step_fraction, windows_per_batch
        self.mirror_axes = chosen_mirror_axes(mirror, tuple(self.model_folder.info.mirror_axes), self.folder)
        check_segmentation_labels(self.model_folder)
        if any(axis >= self.configuration.ndim for axis in self.model_folder.info.mirror_axes):
            raise MedsegError(f"{self.folder / 'model.json'}: mirror_axes = {self.model_folder.info.mirror_axes}: a {self.configuration.ndim}D model has axes 0..{self.configuration.ndim - 1}")

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
        probs = torch.softmax(torch.from_numpy(logits), dim=0).numpy()
        full = np.zeros((probs.shape[0], *props["shape_before_crop"]), dtype=np.float32)
        full[0] = 1.0  # outside the crop box is background
        box = tuple(slice(a, b) for a, b in props["bbox"])
        full[(slice(None),) + box] = probs
        backward = self.plans.transpose_backward if full.ndim == 4 else list(range(full.ndim - 1))
        full = full.transpose([0, *[axis + 1 for axis in backward]])
        labels = np.argmax(full, axis=0).astype(np.uint8 if full.shape[0] <= 256 else np.int16)
        if self.postprocess:
            from medseg.evaluation.postprocessing import apply_postprocessing

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
        data, _, properties = preprocess_case(image, None, self.plans, self.configuration, case_id)
        return self.predict_preprocessed(data, properties, probabilities, source=image.metadata)
