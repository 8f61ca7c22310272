"""ONNX export of a segmentation model folder, and the ONNX Runtime network that replaces PyTorch's.

``export_onnx`` writes a self-contained model folder: plans.json, dataset.json, model.json and
postprocessing.json (the preprocessing and postprocessing metadata, as in any medseg model folder),
input_profile.json when the source has one (inputs are checked whatever the runtime)
plus ``fold_K/network.onnx`` per fold and ``onnx.json`` (opset, input/output names, the largest
difference to PyTorch measured at export). ``medseg predict --runtime onnx -m FOLDER`` runs it with
ONNX Runtime through the same predictor; FOLDER may be that export or a model folder holding one
in ``onnx/``. The batch axis is dynamic; spatial axes are the plan's patch (the sliding window
always feeds whole patches)."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from medseg.atomic import atomic_path, write_json_atomic
from medseg.errors import MedsegError
from medseg.model_folder import ModelFolder

ONNX_FILE = "network.onnx"
EXPORT_INFO = "onnx.json"
DEFAULT_SUBFOLDER = "onnx"
OPSET = 18
TOLERANCE = 1e-3  # largest |logit difference| to PyTorch accepted at export (float32 both; measured ~1e-5)


@dataclass
class ExportGraph:
    """What one fold exports: a task's own graph (``Task.onnx_graph``) where it is not the plan's network."""

    build: Callable[[str], torch.nn.Module]  # fold -> the float32 module, in eval mode
    example: torch.Tensor  # (2, C, *S): the input the export traces and checks with
    output_channels: int
    values: str = "logits"  # what the output holds


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as error:
        raise MedsegError(f"ONNX needs onnx and onnxruntime ({error}); install the extra: pip install 'medseg[onnx]'") from None
    return onnxruntime


def plan_network_graph(folder: ModelFolder, checkpoint: str) -> ExportGraph:
    """The segmentation default: the plan's network, (B, C, *patch) -> (B, K, *patch) logits."""
    from medseg.models.registry import build_model

    plans, configuration = folder.plans, folder.configuration
    if configuration.previous_stage:
        raise MedsegError(f"{folder.path}: exporting a cascade stage ({configuration.name}) to ONNX is not supported yet; its first stage can be exported")
    channels, classes = len(plans.channel_names), plans.num_classes

    def build(fold: str) -> torch.nn.Module:
        network = build_model(configuration.architecture, channels, classes).eval()
        network.load_state_dict(folder.load_module_states(fold, checkpoint)["network"])
        return network

    example = torch.randn(2, channels, *configuration.patch_size, generator=torch.Generator().manual_seed(0))
    return ExportGraph(build, example, classes)


def export_onnx(
    folder: ModelFolder, output: Path, folds: Sequence[str] | None = None, checkpoint: str = "auto", opset: int = OPSET, overwrite: bool = False,
    graph: ExportGraph | None = None,
) -> dict:
    """Export every (or the given) fold's network (``graph``: a task's own; default the plan's
    network); return the onnx.json content. The folder's task must export to ONNX (its caller
    checks the capability: medseg.tasks.capabilities.ONNX)."""
    runtime = _require_onnx()
    folds = list(folds) if folds else [f for f in folder.folds() if _has_checkpoint(folder, f, checkpoint)]
    if not folds:
        raise MedsegError(f"{folder.path}: no trained folds to export")
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise MedsegError(f"{output}: exists and is not empty; pass --overwrite to replace the export")
    plans = folder.plans
    graph = graph or plan_network_graph(folder, checkpoint)
    example = graph.example
    staging = output.with_name(output.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    differences = {}
    for fold in folds:
        network = graph.build(fold)
        target = staging / f"fold_{fold}" / ONNX_FILE
        target.parent.mkdir(parents=True)
        export_network(network, example, target, opset, folder.info.model)
        differences[fold] = _check_against_torch(runtime, network, example, target)
        if differences[fold] > TOLERANCE:
            raise MedsegError(f"{target}: ONNX Runtime differs from PyTorch by {differences[fold]:.2e} (> {TOLERANCE}); export refused")
    plans.save(staging / "plans.json")
    shutil.copyfile(folder.path / "dataset.json", staging / "dataset.json")
    write_json_atomic(staging / "model.json", asdict(folder.info))
    write_json_atomic(staging / "postprocessing.json", folder.postprocessing())
    profile = folder.input_profile()  # inputs are checked against the training images whatever the runtime
    if profile is not None:
        write_json_atomic(staging / "input_profile.json", profile)
    info = {
        "format": "onnx", "opset": opset, "folds": folds, "source_model_folder": str(folder.path), "checkpoint": checkpoint,
        "input": {"name": "image", "shape": ["batch", *example.shape[1:]], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["batch", graph.output_channels, *example.shape[2:]], "dtype": "float32", "values": graph.values},
        "max_abs_difference_vs_torch": differences, "tolerance": TOLERANCE,
    }
    write_json_atomic(staging / EXPORT_INFO, info)
    if output.exists():
        shutil.rmtree(output)
    staging.rename(output)  # the export appears whole or not at all
    return info


def _has_checkpoint(folder: ModelFolder, fold: str, checkpoint: str) -> bool:
    try:
        folder.checkpoint_path(fold, checkpoint)
        return True
    except MedsegError:
        return False


def export_network(network: torch.nn.Module, example: torch.Tensor, target: Path, opset: int, family: str) -> None:
    batch = torch.export.Dim("batch", min=1, max=1024)
    try:
        with atomic_path(target) as temporary, torch.no_grad():
            torch.onnx.export(
                network, (example,), str(temporary), input_names=["image"], output_names=["logits"], opset_version=opset,
                dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False,
            )
    except MedsegError:
        raise
    except Exception as error:  # the exporter's own errors are long; the first line says what failed
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MedsegError(f"model family '{family}' could not be exported to ONNX: {first}") from None


def _check_against_torch(runtime, network: torch.nn.Module, example: torch.Tensor, path: Path) -> float:
    session = runtime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (theirs,) = session.run(["logits"], {"image": example.numpy()})
    with torch.no_grad():
        ours = network(example).numpy()
    return float(np.abs(theirs - ours).max())


# ------------------------------------------------------------------------------------- runtime
class OnnxNetwork:
    """An ONNX Runtime session called like the PyTorch network: (B, C, *patch) -> (B, K, *patch)."""

    def __init__(self, path: Path, threads: int | None = None):
        runtime = _require_onnx()
        options = runtime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = runtime.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = runtime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - ORT raises its own types for damaged files
            raise MedsegError(f"{path}: not a loadable ONNX model ({str(error).strip().splitlines()[0]})") from None
        self.path = path

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(["logits"], {"image": image.detach().to("cpu", torch.float32).contiguous().numpy()})
        return torch.from_numpy(logits)

    def eval(self) -> "OnnxNetwork":
        return self

    def to(self, *args, **kwargs) -> "OnnxNetwork":
        return self


def onnx_export_folder(path: Path) -> Path:
    """The export a ``--runtime onnx`` model path means: the folder itself, or its onnx/ subfolder."""
    path = Path(path)
    for candidate in (path, path / DEFAULT_SUBFOLDER):
        if (candidate / EXPORT_INFO).is_file():
            return candidate
    raise MedsegError(f"{path}: no ONNX export here (run `medseg export {path} --format onnx` first)")


def onnx_networks(folder: ModelFolder, folds: Sequence[str] | None) -> tuple[list[OnnxNetwork], list[str]]:
    try:
        info = json.loads((folder.path / EXPORT_INFO).read_text())
    except (OSError, ValueError) as error:
        raise MedsegError(f"{folder.path / EXPORT_INFO}: unreadable ({error})") from None
    exported = [str(f) for f in info.get("folds", [])]
    folds = list(folds) if folds else exported
    missing = [f for f in folds if f not in exported]
    if missing:
        raise MedsegError(f"{folder.path}: fold(s) {', '.join(missing)} were not exported (exported: {', '.join(exported)})")
    return [OnnxNetwork(folder.fold_folder(f) / ONNX_FILE) for f in folds], folds
