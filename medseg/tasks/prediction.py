"""The one front door for prediction: every surface (``medseg predict``, the REST server, the DICOM
node, Ray actors, the Slicer module) opens a model folder's predictor here and calls it.

    predictor = open_predictor(model_folder, PredictorOptions(...), needs={LABEL_MAPS}, surface="medseg serve")
    result = predictor.predict_batch(BatchRequest(source, output, formats=...))   # -> BatchResult
    prediction = predictor.predict_image(image)                                   # one image in memory

A task builds its predictor (``Task.predictor``) and declares what it can do (``Task.capabilities``);
surfaces ask for capabilities, never for a task's name, and a model whose task lacks one is
refused naming both."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from medseg.errors import MedsegError
from medseg.tasks.capabilities import ONNX, OPENVINO, RAY, capability_list

RUNTIMES = ("torch", "onnx", "openvino", "auto")


@dataclass
class PredictorOptions:
    """How to run a model folder, whatever it is asked to predict."""

    folds: list[str] | None = None  # None: every trained fold
    checkpoint: str = "auto"
    device: str | None = None
    overlap: float = 0.5  # sliding-window overlap, where the task slides a window
    mirror: bool | list[int] = True  # test-time mirroring where the task allows it: all allowed axes, none, or these
    windows_per_batch: int | None = None  # None: the predictor's default for its device
    runtime: str = "torch"  # or "onnx": an ONNX export run by ONNX Runtime (medseg.inference.onnx_export); "openvino" (medseg.inference.openvino_runtime); "auto" (medseg.inference.runtime_choice)
    precision: str = "auto"  # float32, bfloat16 (bf16 autocast forward) or auto (medseg.tasks.segmentation.inference.predictor)
    backend: str = "local"  # or "ray": cases spread over a Ray cluster (medseg.inference.ray_backend)
    address: str | None = None  # the Ray cluster (None: a local one started for the batch)
    fast: bool = False  # a TotalSegmentator task's 3 mm model (medseg.totalsegmentator_folder)
    roi_subset: list[str] | None = None  # a TotalSegmentator task's structures to segment (only the parts that hold them run)


@dataclass
class BatchRequest:
    """What a batch predicts and where it writes."""

    source: Path
    output: Path
    formats: str | list[str] | None = None  # comma-separated output formats (medseg.inference.outputs); None: the model's default
    save_probabilities: bool = False
    series: str | None = None  # which DICOM series become cases (medseg.inference.inputs rules)
    resume: bool = False  # skip cases the output folder's manifest records as complete
    workers: int = 0  # threads reading ahead and writing behind the forward; with Ray, actors (0: CPUs / 2)
    progress: Callable[[int, int], None] | None = None
    confine: list[Path] | None = None  # folders every input file must resolve into (a server's allowed roots)
    qc: str = "warn"  # input checks against the model's training inputs: warn (flag for review), refuse (fail the case) or off

    def __post_init__(self) -> None:
        self.source, self.output = Path(self.source), Path(self.output)


class TaskPredictor(Protocol):
    """What a task's predictor offers every surface."""

    model_folder: Any  # medseg.model_folder.ModelFolder
    folds: list[str]  # the folds it ensembles
    precision: str | None  # the forward's precision, where the task has a choice

    def predict_image(self, image, probabilities: bool = False, case_id: str = "case") -> Any:
        """One image in memory -> the task's prediction (label maps: medseg.tasks.segmentation.inference.predictor.Prediction)."""

    def predict_batch(self, request: BatchRequest) -> Any:
        """Every case under ``request.source`` -> medseg.inference.batch.BatchResult with per-case entries."""


def require_capabilities(folder, task, needs: Iterable[str], surface: str) -> None:
    """Refuse a model whose task lacks what ``surface`` needs, naming the model, its task, the need."""
    missing = [need for need in needs if need not in task.capabilities]
    if missing:
        hint = f"; {task.instead(folder.path)}" if task.instead else ""
        raise MedsegError(
            f"{folder.path}: a {task.name} model ({folder.info.model}) does not {capability_list(missing, ' or ')}, "
            f"which {surface} needs (its models {capability_list(task.capabilities)}){hint}"
        )


def implied_needs(options: PredictorOptions) -> set[str]:
    """What the options themselves ask of the task."""
    needs = set()
    if options.runtime == "onnx":
        needs.add(ONNX)
    if options.runtime == "openvino":
        needs.add(OPENVINO)
    if options.backend == "ray":
        needs.add(RAY)
    return needs


def open_predictor(model, options: PredictorOptions | None = None, needs: Iterable[str] = (), surface: str = "medseg predict") -> TaskPredictor:
    """The predictor of a model folder (a path or an open ``ModelFolder``), checked against what
    ``surface`` needs; with ``options.backend == "ray"`` one that spreads batches over Ray actors,
    each of which opens its own predictor here."""
    from medseg.model_folder import ModelFolder
    from medseg.model_folders import open_model_folder
    from medseg.tasks.registry import get_task

    options = options or PredictorOptions()
    if options.runtime not in RUNTIMES:
        raise MedsegError(f"--runtime {options.runtime!r}: choose {' or '.join(RUNTIMES)}")
    if options.runtime == "onnx" and not isinstance(model, ModelFolder):
        from medseg.inference.onnx_export import onnx_export_folder

        model = onnx_export_folder(model)  # the export is a model folder of its own
    folder = model if isinstance(model, ModelFolder) else open_model_folder(Path(model))
    if (options.fast or options.roi_subset) and folder.info.extra.get("source") != "totalsegmentator":
        raise MedsegError(f"{folder.path}: --fast and --roi-subset are for TotalSegmentator tasks (-m total, -m total_mr, ...)")
    task = get_task(folder.info.task)
    if task.predictor is None:
        why = task.instead(folder.path) if task.instead else "its task does not predict"
        raise MedsegError(f"{folder.path} is a {task.name} model ({folder.info.model}): {why}")
    choice = None
    if options.runtime == "auto":  # measured once per model and machine, before any actor starts
        from medseg.inference.runtime_choice import choose_runtime

        runtime, precision, choice = choose_runtime(folder, OPENVINO in task.capabilities, replace(options, backend="local"), lambda f, o: task.predictor(f, o))
        options = replace(options, runtime=runtime, precision=precision or options.precision)
    require_capabilities(folder, task, {*needs, *implied_needs(options)}, surface)
    predictor = _open(folder, task, options)
    if choice is not None:
        predictor.runtime_choice = choice
    return predictor


def _open(folder, task, options: PredictorOptions) -> TaskPredictor:
    if options.backend == "ray":
        from medseg.inference.ray_backend import RayPredictor

        return RayPredictor(folder, replace(options, backend="local"), open_predictor)
    if options.backend != "local":
        raise MedsegError(f"--backend {options.backend!r}: choose local or ray")
    return task.predictor(folder, options)
