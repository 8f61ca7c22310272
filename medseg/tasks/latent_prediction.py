"""GMS prediction: an image through the frozen encoder, each fold's mapper and the frozen decoder to
class probabilities (``LatentGraph``), the folds averaged (``LatentPredictor``), in PyTorch or, as
one ONNX graph per fold (encoder, mapper and decoder together), in ONNX Runtime.

The latent-segmentation task (medseg.tasks.latent_segmentation) trains the mappers and registers
``load_latent_predictor`` as its predictor and ``latent_onnx_graph`` as its ONNX export."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medseg.data.autoencoder_images import autoencoder_image, decoded_probabilities
from medseg.errors import MedsegError

AUTOENCODER_FOLDER = "autoencoder"


def mapper_architecture(configuration, autoencoder) -> dict:
    """The plan's gms architecture with the autoencoder's latent channels."""
    architecture = configuration.architecture
    return {"name": architecture["name"], "kwargs": {**architecture["kwargs"], "latent_channels": autoencoder.latent_channels}}


class LatentGraph(nn.Module):
    """(B, 3, s, s) image in [-1, 1] -> (B, K, s, s) class probabilities: encode (the latent mean),
    map (the finest output), decode, read the labels' colours."""

    def __init__(self, autoencoder: nn.Module, mapper: nn.Module, num_classes: int):
        super().__init__()
        self.autoencoder, self.mapper, self.num_classes = autoencoder, mapper, num_classes

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        mean, _ = self.autoencoder.encode(image)
        output = self.mapper(mean)
        output = output[0] if isinstance(output, (list, tuple)) else output
        return decoded_probabilities(self.autoencoder.decode(output), self.num_classes)


class LatentPredictor:
    """A GMS model's predictor (``predict_image``, ``predict_batch``): each fold's graph (a
    ``LatentGraph`` or its ONNX Runtime session) on the image at the plan's side, the probabilities
    averaged and resized back to the image."""

    precision = "float32"

    def __init__(self, model_folder, graphs: list, device: torch.device, folds=("memory",)):
        self.model_folder, self.folder, self.plans = model_folder, model_folder.path, model_folder.plans
        self.graphs = [g.to(device).eval() for g in graphs]
        self.device, self.folds = device, list(folds)
        self.side = model_folder.configuration.patch_size[0]

    def predict_batch(self, request):
        from medseg.inference.batch import predict_cases

        return predict_cases(self, request)

    @torch.no_grad()
    def class_probabilities(self, image) -> np.ndarray:
        """image: MedicalImage (C, H, W) -> (K, H, W) class probabilities (background first), the folds averaged."""
        data = torch.from_numpy(autoencoder_image(image.array, self.side))[None].to(self.device)
        probability = sum(graph(data).float() for graph in self.graphs) / len(self.graphs)
        return F.interpolate(probability, size=list(image.spatial_shape), mode="bilinear", align_corners=False)[0].cpu().numpy()

    def predict_image(self, image, probabilities: bool = False, case_id: str = "case"):
        from medseg.io import MedicalImage
        from medseg.tasks.segmentation.inference.predictor import Prediction, check_input

        check_input(image, self.plans, case_id)
        classes = self.class_probabilities(image)
        labels = classes.argmax(0).astype(np.uint8)  # binary: foreground where its probability exceeds 0.5, as GMS
        segmentation = MedicalImage(labels[None], spacing=image.spacing, origin=image.origin, direction=image.direction, metadata={"source": dict(image.metadata)})
        full = classes.astype(np.float32) if probabilities else None
        return Prediction(segmentation, full, dict(image.metadata))


def _autoencoder(folder, device: torch.device):
    from medseg.models.autoencoders import load_frozen_autoencoder

    autoencoder = load_frozen_autoencoder(folder.path / AUTOENCODER_FOLDER).to(device)
    if getattr(autoencoder, "deterministic", False) and not autoencoder.scaling_fitted:
        raise MedsegError(f"{folder.path / AUTOENCODER_FOLDER}: no latent scaling (latent_scaling.json); no fold was trained with it")
    return autoencoder


def _graphs(folder, folds: list[str], checkpoint: str, device: torch.device, autoencoder=None) -> list[LatentGraph]:
    from medseg.models.registry import build_model

    autoencoder = autoencoder or _autoencoder(folder, device)
    graphs = []
    for fold in folds:
        mapper = build_model(mapper_architecture(folder.configuration, autoencoder), 3, 2)
        try:
            mapper.load_state_dict(folder.load_module_states(fold, checkpoint)["network"])
        except (KeyError, RuntimeError) as error:
            raise MedsegError(f"{folder.checkpoint_path(fold, checkpoint)}: does not fit the gms network of {folder.path / 'plans.json'} ({str(error).splitlines()[0]})") from None
        graphs.append(LatentGraph(autoencoder, mapper, folder.plans.num_classes))
    return graphs


def load_latent_predictor(folder, options) -> LatentPredictor:
    """The task's predictor: PyTorch, or ``options.runtime == "onnx"`` on a GMS ONNX export."""
    if options.runtime == "onnx":
        from medseg.inference.onnx_export import onnx_networks

        sessions, folds = onnx_networks(folder, options.folds)
        return LatentPredictor(folder, sessions, torch.device("cpu"), folds)
    if options.runtime != "torch":
        raise MedsegError(f"GMS models run with the torch or onnx runtime, not {options.runtime}")
    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    folds = list(options.folds or folder.folds())
    if not folds:
        raise MedsegError(f"{folder.path}: no trained folds (fold_*/)")
    return LatentPredictor(folder, _graphs(folder, folds, options.checkpoint, device), device, folds)


def latent_onnx_graph(folder, checkpoint: str):
    """What ``medseg export --format onnx`` writes per fold for a GMS model: the whole ``LatentGraph``
    (image -> class probabilities) as one ONNX graph."""
    from medseg.inference.onnx_export import ExportGraph

    side = folder.configuration.patch_size[0]
    autoencoder = _autoencoder(folder, torch.device("cpu"))  # loaded and checked once, shared by every fold's graph
    return ExportGraph(
        build=lambda fold: _graphs(folder, [fold], checkpoint, torch.device("cpu"), autoencoder)[0].eval(),
        example=torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1,
        output_channels=folder.plans.num_classes, values="class probabilities",
    )
