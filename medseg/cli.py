"""The `medseg` command. Thin: every command calls a public function; heavy imports stay inside
commands so that `medseg --help` answers at once. Errors print as one line (tracebacks with --debug)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(
    help="medseg: self-configuring medical image segmentation and classification.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
datasets_app = typer.Typer(help="Build, convert and check raw datasets.", no_args_is_help=True)
dicom_app = typer.Typer(help="Inspect DICOM folders.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(dicom_app, name="dicom")

console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}

SERIES_HELP = "Which DICOM series when a folder holds several: largest, an index, a SeriesInstanceUID (or uid:UID), number:N, description:TEXT."
BATCH_SERIES_HELP = (
    "Which DICOM series become cases, chosen within each study [default: every image series]: largest, an index, "
    "modality:CT, description:REGEX, number:N, uid:UID; several joined by commas (modality:MR,description:t1,largest)."
)


def _version(value: bool) -> None:
    if value:
        from medseg import __version__

        console.print(f"medseg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    plugins: list[str] = typer.Option(
        [], "--plugin", help="Import this module first: a plug-in that registers model families, tasks, kernels or recipes (repeatable; also $MEDSEG_PLUGINS)."
    ),
) -> None:
    _state["debug"] = debug
    if debug:
        os.environ["MEDSEG_DEBUG"] = "1"  # batch prediction prints per-case tracebacks (medseg.inference.batch.unexpected)
    if plugins:
        from medseg.plugins import add_plugin_modules

        add_plugin_modules(plugins)  # through the environment, so torchrun workers and other children load them too


# ------------------------------------------------------------------------------------------ images
@app.command()
def info(
    path: Path = typer.Argument(..., help="Image file or DICOM folder."),
    series: Optional[str] = typer.Option(None, "--series", help=SERIES_HELP),
) -> None:
    """Print an image's shape, spacing, origin, orientation and intensity range."""
    from medseg.io import orientation_code, read_image

    image = read_image(path, series=series)
    array = image.array
    console.print(f"[bold]{path}[/bold]")
    console.print(f"  array (C, *spatial): {tuple(array.shape)} {array.dtype}")
    console.print(f"  spacing (mm, array order): {tuple(round(s, 5) for s in image.spacing)}")
    console.print(f"  origin (world LPS mm): {tuple(round(o, 4) for o in image.origin)}")
    console.print(f"  orientation (array axes point to): {orientation_code(image.direction)}")
    console.print(f"  values: min {array.min()}, max {array.max()}")
    for note in image.metadata.get("notes", []):
        console.print(f"  note: {note}")


@app.command()
def convert(
    source: Path = typer.Argument(..., help="Image file or DICOM folder."),
    target: Path = typer.Argument(..., help="Output file; format from the suffix (.nii.gz, .nrrd, .mha, .png, .tif)."),
    series: Optional[str] = typer.Option(None, "--series", help=SERIES_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """Convert an image between formats, keeping its geometry (e.g. a DICOM series to NIfTI)."""
    from medseg.errors import MedsegError
    from medseg.io import read_image, write_image

    if target.exists() and source.exists() and target.resolve() == source.resolve():
        raise MedsegError(f"{target}: is the input itself; choose another output")
    if target.is_dir():
        raise MedsegError(f"{target}: is a folder; give an output file name (its suffix picks the format)")
    if target.exists() and not overwrite:
        raise MedsegError(f"{target}: exists; pass --overwrite to replace it")
    image = read_image(source, series=series)
    write_image(image, target)
    console.print(f"wrote {target} {tuple(image.array.shape)}")


@dicom_app.command("list")
def dicom_list(folder: Path = typer.Argument(..., help="Folder to scan (recursively).")) -> None:
    """List the image series in a folder, and the files that are not images."""
    from rich.table import Table

    from medseg.io.dicom import scan_folder

    scan = scan_folder(folder)
    table = Table("index", "series", "modality", "description", "frames", "notes")
    table.columns[1].no_wrap = True  # a UID is copied whole (into --series uid:...), never cut at the terminal's width
    rows = [(str(i), s.key, s.modality, s.description, str(s.num_frames), "; ".join(s.notes)) for i, s in enumerate(scan.series)]
    for row in rows:
        table.add_row(*row)
    needed = sum(max([len(r[c]) for r in rows] + [8]) for c in range(6)) + 3 * 6 + 1
    console.print(table, width=max(console.width, min(needed, 400)))
    for path, kind in scan.non_image:
        console.print(f"non-image object: {path} ({kind})")
    if scan.skipped:
        console.print(f"{len(scan.skipped)} file(s) skipped: " + ", ".join(f"{p.name} ({why})" for p, why in scan.skipped[:5]))


# ---------------------------------------------------------------------------------------- datasets
@datasets_app.command("list")
def datasets_list() -> None:
    """List the dataset recipes: converters of public releases and synthetic demos."""
    from medseg_datasets import list_recipes

    for recipe in list_recipes():
        how = f"medseg datasets synth {recipe.name}" if recipe.synthetic else f"medseg datasets convert {recipe.name} --src DIR"
        console.print(f"[bold]{recipe.name}[/bold] ({recipe.task_type}, {recipe.folder_name}): {recipe.summary}", highlight=False)
        console.print(f"    {how}" + ("" if recipe.synthetic else f"   DIR: {recipe.source}"), highlight=False)


def _default_output(folder_name: str, out: Optional[Path]) -> Path:
    from medseg.paths import raw_root

    return out if out is not None else raw_root() / folder_name


def _counting_progress(description: str):
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn(description + " {task.completed} cases"), TimeElapsedColumn(), console=err_console)


def _report_conversion(summary) -> None:
    console.print(f"wrote {summary.output}: {summary.num_training} training cases, {summary.num_test} test cases")
    if summary.skipped:
        console.print(f"[yellow]skipped {len(summary.skipped)} source case(s):[/yellow]")
        for source, reason in summary.skipped:
            console.print(f"  {reason}" if source in reason else f"  {source}: {reason}")


@datasets_app.command("convert")
def datasets_convert(
    name: str = typer.Argument(..., help="Recipe name (see `medseg datasets list`)."),
    src: Path = typer.Option(..., "--src", help="The public release as downloaded."),
    out: Optional[Path] = typer.Option(None, "--out", help="Dataset folder to create [default: $MEDSEG_ROOT/raw/DatasetNNN_Name]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dataset folder."),
) -> None:
    """Convert a public release into a raw dataset (nnU-Net v2 layout, or a labels table)."""
    from medseg.errors import DatasetError
    from medseg_datasets import get_recipe

    recipe = get_recipe(name)
    if recipe.convert is None:
        raise DatasetError(f"{recipe.name} is synthetic: build it with `medseg datasets synth {recipe.name}`")
    if not src.is_dir():
        raise DatasetError(f"{src}: no such folder (expected {recipe.source})")
    with _counting_progress(f"converting {recipe.name}") as progress:
        task = progress.add_task("convert", total=None)
        summary = recipe.convert(src, _default_output(recipe.folder_name, out), overwrite, lambda n: progress.update(task, completed=n))
    _report_conversion(summary)


@datasets_app.command("synth")
def datasets_synth(
    name: str = typer.Argument("AbdomenMRI-demo", help="Synthetic recipe name."),
    out: Optional[Path] = typer.Option(None, "--out", help="Dataset folder to create [default: $MEDSEG_ROOT/raw/DatasetNNN_Name]."),
    num_cases: int = typer.Option(30, "--num-cases", min=1, help="Number of cases."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same dataset."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dataset folder."),
) -> None:
    """Build a synthetic dataset (the built-in demo)."""
    from medseg.errors import DatasetError
    from medseg_datasets import get_recipe

    recipe = get_recipe(name)
    if recipe.synthesize is None:
        raise DatasetError(f"{recipe.name} converts a public release: use `medseg datasets convert {recipe.name} --src DIR`")
    with _counting_progress(f"synthesizing {recipe.name}") as progress:
        task = progress.add_task("synth", total=num_cases)
        summary = recipe.synthesize(
            _default_output(recipe.folder_name, out), overwrite, num_cases, seed, lambda n: progress.update(task, completed=n)
        )
    _report_conversion(summary)


def run_dataset_check(path: Path, strict: bool, workers: Optional[int]) -> bool:
    """Check a dataset with a progress bar, print every problem; True when it passes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from medseg.data.check import check_dataset

    with Progress(TextColumn("checking"), BarColumn(), MofNCompleteColumn(), console=err_console) as progress:
        task = progress.add_task("check", total=None)
        report = check_dataset(path, workers=workers, progress=lambda done, total: progress.update(task, completed=done, total=total))
    for problem in report.problems:
        style = "red" if problem.severity == "error" else "yellow"
        console.print(f"[{style}]{problem.severity}[/{style}]: {problem.message}", soft_wrap=True, highlight=False)
    verdict = "passes" if report.ok(strict) else "FAILS"
    console.print(f"{path}: {report.num_cases} training cases, {len(report.errors)} error(s), {len(report.warnings)} warning(s): {verdict}")
    return report.ok(strict)


@datasets_app.command("check")
def datasets_check(
    path: Path = typer.Argument(..., help="Raw dataset folder (DatasetXXX_Name) or its name/id under $MEDSEG_ROOT/raw."),
    strict: bool = typer.Option(False, "--strict", help="Fail on warnings (e.g. empty labels) too."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Parallel readers [default: all cores]."),
) -> None:
    """Validate a dataset and list ALL problems with file names; exit 1 if any error."""
    from medseg.paths import find_raw_dataset

    folder = path if path.is_dir() else find_raw_dataset(str(path))
    if not run_dataset_check(folder, strict, workers):
        raise typer.Exit(1)


@app.command()
def kernels() -> None:
    """List the kernel ops and backends, and why a backend cannot run on this machine."""
    import torch

    from medseg_kernels import load_all_ops
    from medseg_kernels.registry import all_ops, backends

    load_all_ops()
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    for op in all_ops():
        console.print(f"[bold]{op}[/bold] (auto picks the first available on {device.type})")
        for backend in backends(op):
            reason = backend.unavailable_reason(device, torch.float32)
            state = "available" if reason is None else f"unavailable: {reason}"
            console.print(f"  {backend.name:8s} {state} - {backend.summary}", highlight=False)


# ---------------------------------------------------------------------------------------- pipeline
def _progress(label: str):
    """A progress callback printing to stderr at most ~20 times."""
    def report(done: int, total: int) -> None:
        if done == total or done % max(1, total // 20) == 0:
            err_console.print(f"  {label}: {done}/{total}", highlight=False)
    return report


def _raw_folder(dataset: str) -> Path:
    from medseg.pipeline import prepare_task

    return prepare_task(dataset)


DATASET_HELP = "Raw dataset: name, id or folder."


@app.command()
def describe(
    model: Path = typer.Argument(..., help="Model folder (medseg or nnU-Net v2)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object, as `medseg serve` lists models (for scripts and the Slicer module)."),
) -> None:
    """A trained model's family, configuration, labels with their colours, inputs and folds."""
    import json

    from medseg.model_folder import ModelFolder, model_summary

    summary = model_summary(model.name, ModelFolder.open(model))
    if as_json:
        print(json.dumps(summary))
        return
    for key, value in summary.items():
        console.print(f"{key}: {value}", highlight=False, soft_wrap=True, markup=False)


@app.command()
def models() -> None:
    """List the registered model families: task type, dimensions, kernels, self-configurable, options."""
    from rich.table import Table

    from medseg.models import list_models

    table = Table("model", "task", "dims", "kernels", "planner", "options (FAMILY[option=value])", "summary")
    for family in list_models():
        table.add_row(
            family.name, family.task_type, "/".join(f"{d}D" for d in family.dims), ", ".join(family.kernels) or "-",
            "yes" if family.architecture_for_patch or family.task_type != "segmentation" else "presets", ", ".join(family.options) or "-", family.summary,
        )
    console.print(table)


@app.command()
def tasks() -> None:
    """List the registered tasks: what each learns and from which dataset layouts."""
    from rich.table import Table

    from medseg.models import list_models
    from medseg.tasks import list_tasks

    table = Table("task", "datasets", "model families", "summary")
    for task in list_tasks():
        families = ", ".join(f.name for f in list_models() if f.task_type == task.name) or "-"
        table.add_row(task.name, "/".join(task.dataset_types), families, task.summary)
    console.print(table)


@app.command("plans")
def plans_command() -> None:
    """List the preset plans shipped with medseg (use one with `plan --preset NAME`)."""
    from rich.table import Table

    from medseg_plans import list_presets

    table = Table("preset", "task", "models", "settings", "summary")
    for preset in list_presets():
        settings = ", ".join(f"{k}={v}" for k, v in preset.settings.items())
        table.add_row(preset.name, preset.task, ", ".join(preset.models) if preset.models else "all", settings, preset.summary)
    console.print(table)


@app.command()
def fingerprint(
    dataset: str = typer.Argument(..., metavar="DATASET", help=DATASET_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes [default: CPU count]."),
) -> None:
    """Extract the dataset fingerprint (spacings, cropped shapes, foreground intensities)."""
    from medseg.pipeline import run_fingerprint

    path = run_fingerprint(_raw_folder(dataset), workers, _progress("fingerprint"))
    console.print(f"wrote {path}")


PLANS_NAME_HELP = "Name of the plans file [default: medsegPlans for unet, medsegPlans_<model> for other families]."
MODEL_HELP = "Registered model family (see `medseg models`), or FAMILY[option=value,...] to set its architecture options, e.g. 'xlstm_unet_bot[vil_directions=forward]'; plans are named medsegPlans_<model> for anything but unet."
PRESET_HELP = "Preset planner settings shipped with medseg (see `medseg plans`), e.g. fast, cpu, nnunet."


@app.command()
def plan(
    dataset: str = typer.Argument(..., metavar="DATASET", help=DATASET_HELP),
    model: str = typer.Option("unet", "--model", help=MODEL_HELP),
    memory_gb: Optional[float] = typer.Option(None, "--memory-gb", help="Size for this much GPU memory, nnU-Net's rule [default: GPU memory on a GPU, a time budget per step on a CPU]."),
    step_seconds: Optional[float] = typer.Option(None, "--step-seconds", help="CPU planning: target seconds per training step [default: 1]."),
    plans_name: Optional[str] = typer.Option(None, "--plans-name", help=PLANS_NAME_HELP),
    time_budget: Optional[float] = typer.Option(
        None, "--time-budget", help="CPU planning: training minutes of one run; too few passes over the data at full resolution plan a coarser one."
    ),
    preset: Optional[str] = typer.Option(None, "--preset", help=PRESET_HELP),
) -> None:
    """Plan configurations (2d, 3d_fullres, 3d_lowres) from the fingerprint."""
    from medseg.pipeline import plans_path, run_plan

    folder = _raw_folder(dataset)
    plans = run_plan(folder, model, memory_gb, step_seconds, plans_name, time_budget * 60 if time_budget else None, preset)
    for name, c in plans.configurations.items():
        console.print(f"{name}: patch {c.patch_size} batch {c.batch_size} spacing {[round(s, 4) for s in c.spacing]} strides {c.architecture['kwargs'].get('strides')}")
    console.print(f"wrote {plans_path(folder, plans.plans_name)} ({plans.planner})")


@app.command()
def preprocess(
    dataset: str = typer.Argument(..., metavar="DATASET", help=DATASET_HELP),
    configurations: list[str] = typer.Option(["3d_fullres"], "-c", "--configuration", help="Configuration(s) to preprocess (repeatable)."),
    plans_name: str = typer.Option("medsegPlans", "--plans-name"),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes [default: CPU count]."),
) -> None:
    """Crop, normalise and resample the training cases (resumable: finished cases are kept)."""
    from medseg.pipeline import run_preprocess

    done = run_preprocess(_raw_folder(dataset), configurations, plans_name, workers, _progress)
    for name, (new, kept) in done.items():
        console.print(f"{name}: {new} case(s) preprocessed, {kept} already done")


def _training_options(epochs, iterations, learning_rate, optimizer, batch_size, time_budget, device, validate, seed, pretrained=None):
    from medseg.training.trainer import TrainingOptions

    return TrainingOptions(
        epochs=epochs, iterations_per_epoch=iterations, learning_rate=learning_rate, optimizer=optimizer, batch_size=batch_size,
        time_budget_s=time_budget * 60 if time_budget else None, device=device, final_validation=validate, seed=seed,
        pretrained=str(pretrained) if pretrained else None,
    )


PRETRAINED_HELP = "Start from a pretrained encoder (the encoder.pt `medseg pretrain` writes; ViT classifiers), or GMS's autoencoder folder (diffusers' AutoencoderKL layout; default: the one `medseg pretrain-ae` trained on the dataset)."


EPOCHS_HELP = "Epochs [default: 1000, or what --time-budget buys]."
BUDGET_HELP = "Training time budget in minutes: epochs are fitted to it from the measured step time."


@app.command()
def train(
    dataset: str = typer.Argument(..., metavar="DATASET", help=DATASET_HELP),
    configuration: str = typer.Argument(..., help="Configuration, e.g. 2d or 3d_fullres."),
    fold: str = typer.Argument(..., help="Fold 0-4, or 'all'."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help=EPOCHS_HELP),
    iterations: int = typer.Option(250, "--iterations-per-epoch"),
    learning_rate: Optional[float] = typer.Option(None, "--learning-rate", help="Initial learning rate [default: the plan's]."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="sgd (nnU-Net's) or adamw [default: the plan's]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="[default: the plan's]"),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help=BUDGET_HELP),
    resume: bool = typer.Option(False, "--continue", help="Resume from the fold's latest checkpoint."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 [default: cuda if available]."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Predict and score the held-out cases at the end."),
    plans_name: str = typer.Option("medsegPlans", "--plans-name"),
    seed: int = typer.Option(0, "--seed"),
    pretrained: Optional[Path] = typer.Option(None, "--pretrained", help=PRETRAINED_HELP),
) -> None:
    """Train one fold of one configuration (multi-process: launch with torchrun)."""
    from medseg.pipeline import run_train

    options = _training_options(epochs, iterations, learning_rate, optimizer, batch_size, time_budget, device, validate, seed, pretrained)
    options.continue_training = resume
    folder = _raw_folder(dataset)
    report = run_train(folder, configuration, fold, options, plans_name, log=lambda m: console.print(m, highlight=False))
    if report:
        print_report_tables(_plans_task(folder, plans_name), {configuration: report})


@app.command()
def predict(
    input: Path = typer.Option(
        ..., "-i", "--input",
        help="Image file, DICOM folder (searched recursively: every image series is a case), zip, or a folder mixing them (CASE_XXXX.ext per channel).",
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder (outputs and manifest.jsonl)."),
    model: Path = typer.Option(
        ..., "-m", "--model",
        help="Model folder: medseg's (results/DatasetXXX/unet__medsegPlans__3d_fullres) or nnU-Net v2's (nnUNetTrainer__nnUNetPlans__3d_fullres).",
    ),
    formats: Optional[str] = typer.Option(
        None, "--format", help="Comma-separated outputs: label (the model's file format, default), nifti, png, dicom-seg, rtstruct, overlay.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Skip cases the output folder's manifest.jsonl records as complete."),
    workers: int = typer.Option(0, "--workers", help="Threads reading cases ahead and writing outputs behind the network (0: none); with --backend ray, Ray actors (0: CPUs / 2)."),
    folds: Optional[str] = typer.Option(None, "--folds", help="Comma-separated folds to ensemble [default: all trained]."),
    checkpoint: str = typer.Option("auto", "--checkpoint", help="final, best or auto (final, else best)."),
    overlap: float = typer.Option(0.5, "--overlap", help="Sliding-window overlap, 0-0.95."),
    windows_per_batch: Optional[int] = typer.Option(None, "--windows-per-batch", help="Windows per forward pass. Default: 1 on CPUs (as fast, half the activations), 4 on GPUs (1.6x faster than 1 on an H200)."),
    tta: bool = typer.Option(True, "--tta/--no-tta", help="Mirroring test-time augmentation."),
    tta_axes: Optional[str] = typer.Option(
        None, "--tta-axes", help="Mirror only these spatial axes (comma-separated, of those the model allows): each axis doubles the forward passes.",
    ),
    save_probabilities: bool = typer.Option(False, "--save-probabilities", help="Also write CASE.probabilities.npz (K, *spatial)."),
    device: Optional[str] = typer.Option(None, "--device"),
    series: Optional[str] = typer.Option(None, "--series", help=BATCH_SERIES_HELP),
    runtime: str = typer.Option("torch", "--runtime", help="torch, or onnx: the folder's ONNX export (medseg export) run by ONNX Runtime."),
    precision: str = typer.Option(
        "auto", "--precision",
        help="auto (bfloat16 on CPUs with native bf16 instructions, else float32), float32, or bfloat16: the forward under bf16 autocast, logits summed in float32.",
    ),
    backend: str = typer.Option("local", "--backend", help="local, or ray: cases spread over a Ray cluster (--workers: actors, default CPUs/2)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (HOST:PORT or auto) [default: start a local Ray]."),
) -> None:
    """Apply a trained model folder (medseg's, or an nnU-Net v2 one) to images (fold ensemble);
    segmentations come out in their original geometry."""
    from medseg.errors import MedsegError
    from medseg.model_folder import ModelFolder
    from medseg.tasks import PredictRequest, get_task

    mirror: bool | list[int] = tta
    if tta_axes is not None:
        if not tta:
            raise MedsegError("--tta-axes and --no-tta contradict each other")
        try:
            mirror = [int(a) for a in tta_axes.split(",") if a.strip()]
        except ValueError:
            raise MedsegError(f"--tta-axes {tta_axes!r}: expected comma-separated axis numbers such as 1,2") from None
    if runtime == "onnx":
        from medseg.inference.onnx_export import onnx_export_folder

        model = onnx_export_folder(model)
    elif runtime != "torch":
        raise MedsegError(f"--runtime {runtime!r}: choose torch or onnx")
    folder = ModelFolder.open(model)
    if runtime == "onnx" and folder.info.task != "segmentation":
        raise MedsegError(f"{model}: --runtime onnx runs segmentation models; this one is a {folder.info.task} model")
    request = PredictRequest(
        source=input, output=output, folds=folds.split(",") if folds else None, checkpoint=checkpoint, device=device,
        overlap=overlap, mirror=mirror, windows_per_batch=windows_per_batch, save_probabilities=save_probabilities, progress=_progress("predict"),
        series=series, formats=formats, resume=resume, workers=workers, runtime=runtime, precision=precision, backend=backend, address=address,
    )
    result = get_task(folder.info.task).predict(folder, request)
    _print_batch_summary(result, output)
    if result.failed:
        raise typer.Exit(1)


def _print_batch_summary(result, output: Path) -> None:
    resumed = getattr(result, "resumed", [])
    cases = getattr(result, "cases", 0)
    done = cases - len(result.failed) - len(resumed) if cases else None
    counts = f"{done} case(s) done, {len(result.failed)} failed" + (f", {len(resumed)} already complete (resumed)" if resumed else "") if done is not None else ""
    console.print(f"wrote {len(result.written)} output(s) to {output} (folds {', '.join(result.folds)}){': ' + counts if counts else ''}")
    for case_id, skipped in getattr(result, "skipped_outputs", {}).items():
        for fmt, why in skipped.items():
            console.print(f"[yellow]no {fmt}[/yellow] for {case_id}: {one_line(why)}", highlight=False, soft_wrap=True)
    ignored = getattr(result, "ignored", [])
    if ignored:
        shown = "; ".join(f"{path} ({why})" for path, why in ignored[:3])
        console.print(f"[yellow]ignored {len(ignored)} file(s)[/yellow] that are no image series: {shown}{' ...' if len(ignored) > 3 else ''}", highlight=False, soft_wrap=True)
    for case_id, error in result.failed.items():
        err_console.print(f"[red]failed[/red] {case_id}: {one_line(error)}", highlight=False, soft_wrap=True)
    if getattr(result, "manifest", None):
        console.print(f"manifest: {result.manifest}", highlight=False)


@app.command()
def export(
    model: Path = typer.Argument(..., help="Model folder (medseg's or nnU-Net v2's)."),
    format: str = typer.Option("onnx", "--format", help="onnx (the only format so far)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Export folder [default: MODEL/onnx]."),
    folds: Optional[str] = typer.Option(None, "--folds", help="Comma-separated folds [default: all trained]."),
    checkpoint: str = typer.Option("auto", "--checkpoint", help="final, best or auto (final, else best)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing export."),
) -> None:
    """Export a segmentation model's networks to ONNX with its plans, labels and postprocessing, so
    `medseg predict --runtime onnx` runs it through ONNX Runtime."""
    from medseg.errors import MedsegError
    from medseg.inference.onnx_export import DEFAULT_SUBFOLDER, export_onnx
    from medseg.model_folder import ModelFolder

    if format != "onnx":
        raise MedsegError(f"--format {format!r}: only onnx is supported")
    folder = ModelFolder.open(model)
    target = output or folder.path / DEFAULT_SUBFOLDER
    info = export_onnx(folder, target, folds.split(",") if folds else None, checkpoint, overwrite=overwrite)
    worst = max(info["max_abs_difference_vs_torch"].values())
    console.print(f"exported fold(s) {', '.join(info['folds'])} to {target} (opset {info['opset']}; largest logit difference to PyTorch {worst:.1e})", highlight=False, soft_wrap=True)


@app.command()
def serve(
    models: list[str] = typer.Option([], "--model", "-m", help="NAME=MODEL_FOLDER to serve (repeatable)."),
    models_dir: Optional[Path] = typer.Option(None, "--models-dir", help="Serve every model folder in DIR, named by its folder (the container's default: /models)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0: every interface; set a token)."),
    port: int = typer.Option(8000, "--port"),
    data: Path = typer.Option(Path("medseg_serve"), "--data", help="Where jobs (uploads, outputs, state) are kept across restarts."),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="File holding the bearer token [default: $MEDSEG_TOKEN; none: loopback clients only]."),
    max_upload_mb: float = typer.Option(512.0, "--max-upload-mb", help="Largest request body accepted."),
    allow_root: list[Path] = typer.Option([], "--allow-root", help="Server-side folder jobs may read by path (repeatable)."),
    queue_size: int = typer.Option(16, "--queue", min=1, help="Jobs waiting at most; more get 503."),
) -> None:
    """REST server: GET /models, POST /jobs, GET /jobs/{id}, GET /jobs/{id}/result, DELETE /jobs/{id} (docs at /docs)."""
    import os

    from medseg.errors import MedsegError

    try:
        import uvicorn

        from medseg.serve.app import ServeSettings, create_app
    except ImportError as error:
        raise MedsegError(f"medseg serve needs the serve extra ({error}): pip install 'medseg[serve]'") from None
    named = {}
    for item in models:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise MedsegError(f"--model {item!r}: expected NAME=MODEL_FOLDER")
        named[name] = Path(folder)
    if models_dir is not None:
        if not models_dir.is_dir():
            raise MedsegError(f"--models-dir {models_dir}: not a folder")
        found = {p.name: p for p in sorted(models_dir.iterdir()) if p.is_dir() and (p / "plans.json").is_file()}
        if not found:
            raise MedsegError(f"--models-dir {models_dir}: no model folders in it (folders holding plans.json, as `medseg train` or nnU-Net write them)")
        named.update(found)
    if not named:
        raise MedsegError("nothing to serve: give --model NAME=MODEL_FOLDER or --models-dir DIR")
    token = os.environ.get("MEDSEG_TOKEN") or None
    if token_file is not None:
        try:
            token = token_file.read_text().strip() or None
        except OSError as error:
            raise MedsegError(f"{token_file}: cannot read the token ({error.strerror})") from None
        if token is None:
            raise MedsegError(f"{token_file}: empty token file")
    settings = ServeSettings(named, data, token, int(max_upload_mb * 2**20), list(allow_root), queue_size)
    application = create_app(settings)
    console.print(f"serving {', '.join(named)} on http://{host}:{port} ({'bearer token' if token else 'loopback clients only, no token'})", highlight=False, soft_wrap=True)
    uvicorn.run(application, host=host, port=port, log_level="warning")


@app.command("dicom-node")
def dicom_node(
    model: Path = typer.Option(..., "--model", "-m", help="Model folder that segments every received series."),
    store: Path = typer.Option(Path("medseg_dicom_node"), "--store", help="Where received series, outputs and node.log are kept (survives restarts)."),
    ae_title: str = typer.Option("MEDSEG", "--ae-title", help="This node's AE title."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(11112, "--port"),
    allow: list[str] = typer.Option([], "--allow", help="Calling AE title allowed to associate (repeatable) [default: any]."),
    quiet_seconds: float = typer.Option(10.0, "--quiet-seconds", min=0.0, help="A series is complete when nothing of it arrived for this long."),
    send_to: Optional[str] = typer.Option(None, "--send-to", help="C-STORE the outputs to AET@HOST:PORT."),
    stow_url: Optional[str] = typer.Option(None, "--stow-url", help="STOW-RS the outputs to this DICOMweb root (URL/studies)."),
    formats: str = typer.Option("dicom-seg", "--format", help="Outputs to send: dicom-seg, rtstruct or both (comma-separated)."),
    tta: bool = typer.Option(True, "--tta/--no-tta", help="Test-time mirroring, as trained."),
    incomplete_wait: float = typer.Option(600.0, "--incomplete-wait", min=0.0, help="How long a quiet series whose headers say it is incomplete waits for the rest."),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="DICOM TLS: this node's certificate (PEM); with --tls-key the SCP accepts TLS only."),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="DICOM TLS: the certificate's private key (PEM)."),
    tls_ca: Optional[Path] = typer.Option(None, "--tls-ca", help="DICOM TLS: CA certificates peers must chain to (clients of the SCP must then present one)."),
    send_tls: bool = typer.Option(False, "--send-tls", help="C-STORE to --send-to over TLS (verified against --tls-ca)."),
    retry_seconds: float = typer.Option(30.0, "--retry-seconds", min=0.0, help="A failed delivery is retried after this, doubled per attempt (at most an hour)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="At start, retry every pending delivery now (node.log lists them as 'pending')."),
) -> None:
    """DICOM node: C-STORE SCP (and C-ECHO) that segments each complete series and sends DICOM SEG / RTSTRUCT back."""
    import importlib.util
    import signal
    import threading

    from medseg.errors import MedsegError
    from medseg.serve.dicom_node import Destination, DicomNode, NodeConfig, TlsSettings

    if importlib.util.find_spec("pynetdicom") is None:
        raise MedsegError("medseg dicom-node needs pynetdicom: pip install 'medseg[dicom]'")
    if bool(tls_cert) != bool(tls_key):
        raise MedsegError("--tls-cert and --tls-key go together")
    if send_tls and not send_to:
        raise MedsegError("--send-tls applies to --send-to")
    tls = TlsSettings(tls_cert, tls_key, tls_ca) if (tls_cert or tls_ca) else None
    config = NodeConfig(
        model=model, store=store, ae_title=ae_title, host=host, port=port, allowed=list(allow), quiet_seconds=quiet_seconds,
        send_to=Destination.parse(send_to) if send_to else None, stow_url=stow_url,
        formats=[f.strip() for f in formats.split(",") if f.strip()], tta=tta, incomplete_wait=incomplete_wait,
        tls=tls, send_tls=send_tls, retry_base_seconds=retry_seconds, retry_failed=retry_failed,
    )
    node = DicomNode(config, echo=lambda line: console.print(line, highlight=False, soft_wrap=True, markup=False))
    if not (send_to or stow_url):
        console.print("no --send-to or --stow-url: outputs stay in the store only", highlight=False)
    node.start()
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    node.stop()


@app.command()
def evaluate(
    predictions: Path = typer.Argument(..., help="Folder of predicted label maps, or a classifier's predictions.csv."),
    references: Path = typer.Argument(..., help="Folder of reference label maps (same file names), or a labels table (labelsTs.csv)."),
    dataset_json: Path = typer.Option(..., "-j", "--dataset-json", help="dataset.json naming the labels (classes) and file ending."),
    tolerance: list[str] = typer.Option([], "--nsd-tolerance", help="NSD tolerance in mm: a number for all classes or CLASS=MM (repeatable) [default: 2]."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Summary JSON [default: PREDICTIONS/summary.json]."),
    allow_missing: bool = typer.Option(
        False, "--allow-missing", help="Score missing or unusable predictions as empty (Dice 0) instead of failing; they are listed."
    ),
) -> None:
    """Dice, NSD and HD95 per class and case (segmentation), or AUC, F1, balanced accuracy,
    sensitivity and specificity per class (a classifier's predictions.csv), with a summary JSON."""
    import json

    from medseg.errors import MedsegError
    from medseg.evaluation.report import evaluate_folder
    from medseg.tasks import get_task

    if predictions.suffix == ".csv":
        from medseg.tasks.classification import evaluate_predictions

        report = evaluate_predictions(predictions, references, dataset_json, output)
        print_report_tables(get_task("classification"), {"evaluation": report})
        return

    try:
        content = json.loads(dataset_json.read_text())
        labels = {k: int(v) for k, v in content["labels"].items()}
        ending = content["file_ending"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MedsegError(f"{dataset_json}: cannot read labels and file_ending ({error})") from None
    tolerances = {}
    for item in tolerance:
        name, _, value = item.rpartition("=")
        try:
            tolerances[name or "default"] = float(value)
        except ValueError:
            raise MedsegError(f"--nsd-tolerance {item!r}: expected MM or CLASS=MM") from None
    report = evaluate_folder(
        predictions, references, labels, ending, tolerances, output=output or predictions / "summary.json", progress=_progress("evaluate"),
        allow_missing=allow_missing,
    )
    print_report_tables(get_task("segmentation"), {"evaluation": report})
    for case_id, problem in report["scored_as_empty"].items():
        err_console.print(f"[yellow]scored as empty[/yellow] {case_id}: {problem}", highlight=False, soft_wrap=True)
    extra = report.get("unreferenced_predictions", [])
    if extra:
        err_console.print(
            f"[yellow]not scored[/yellow] {len(extra)} prediction(s) without a reference in {references}: {', '.join(extra[:10])}{', ...' if len(extra) > 10 else ''}",
            highlight=False, soft_wrap=True,
        )


def _plans_task(folder: Path, plans_name: str):
    from medseg.pipeline import load_plans, plans_task

    return plans_task(load_plans(folder, plans_name))


def print_report_tables(task, reports: dict) -> None:
    """One table per report, laid out by the task that made it."""
    from rich.table import Table

    for name, report in reports.items():
        header, rows = task.report_rows(report)
        console.print(f"[bold]{name}[/bold]: {report['num_cases']} cases", highlight=False)  # not a table title: narrow tables wrap it
        table = Table(*header)
        for row in rows:
            table.add_row(*row)
        console.print(table)


DEMO_TIME_BUDGET_MINUTES = 12.0


@app.command("plan-and-train")
def plan_and_train(
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset name, id or folder (e.g. AbdomenMRI)."),
    task: Optional[str] = typer.Option(None, "--task", help="Same as --dataset (the name nnU-Net users know)."),
    demo: bool = typer.Option(False, "--demo", help="Use the built-in synthetic demo of the dataset (built if missing)."),
    configurations: list[str] = typer.Option([], "-c", "--configuration", help="Configurations to train [default: all on a GPU; 3d_fullres (or 2d) on a CPU]."),
    folds: str = typer.Option("0,1,2,3,4", "--folds", help="Comma-separated folds, or 'all'."),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help="Total training minutes, split over configurations x folds [default with --demo: 12]."),
    run_budget: Optional[float] = typer.Option(
        None, "--time-budget-per-run", help="Or training minutes for each run (configuration x fold), also for runs left when resuming (what compare uses).",
    ),
    epochs: Optional[int] = typer.Option(None, "--epochs", help=EPOCHS_HELP),
    iterations: int = typer.Option(250, "--iterations-per-epoch"),
    learning_rate: Optional[float] = typer.Option(None, "--learning-rate"),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="sgd or adamw [default: the plan's]."),
    memory_gb: Optional[float] = typer.Option(None, "--memory-gb", help="Plan for this much GPU memory (nnU-Net's rule)."),
    replan: bool = typer.Option(False, "--replan", help="Fingerprint and plan again even if plans exist."),
    device: Optional[str] = typer.Option(None, "--device"),
    workers: Optional[int] = typer.Option(None, "--workers"),
    model: str = typer.Option("unet", "--model", help=MODEL_HELP),
    preset: Optional[str] = typer.Option(None, "--preset", help=PRESET_HELP),
    pretrained: Optional[Path] = typer.Option(None, "--pretrained", help=PRETRAINED_HELP),
) -> None:
    """Run the whole self-configuring pipeline and print the cross-validation table.

    Resumable: rerunning keeps finished folds and continues interrupted ones."""
    from medseg.errors import MedsegError
    from medseg.models.spec import parse_model_spec
    from medseg.pipeline import prepare_task, run_plan_and_train
    from medseg.tasks.registry import task_for_model

    if dataset and task and dataset != task:
        raise MedsegError(f"--dataset {dataset} and --task {task} name different datasets; give one")
    name = dataset or task
    if not name:
        raise MedsegError("name the dataset: --dataset NAME (or --task NAME)")
    folder = prepare_task(name, demo, progress_console=err_console)
    if not run_dataset_check(folder, strict=False, workers=workers):
        raise typer.Exit(1)
    if time_budget is not None and run_budget is not None:
        raise MedsegError("give --time-budget (total) or --time-budget-per-run, not both")
    if demo and time_budget is None and run_budget is None and epochs is None:
        time_budget = DEMO_TIME_BUDGET_MINUTES
    fold_list = [f.strip() for f in folds.split(",") if f.strip()]
    # the plan is made before the configurations are known: on a CPU one trains by default
    runs = max(len(configurations), 1) * len(fold_list)
    per_run = run_budget if run_budget is not None else (time_budget / runs if time_budget else None)

    def options_for(num_runs: int):
        # a total budget is shared by the runs still to train; a per-run budget is every run's, resumed or not
        budget = run_budget if run_budget is not None else (time_budget / max(num_runs, 1) if time_budget else None)
        return _training_options(epochs, iterations, learning_rate, optimizer, None, budget, device, True, 0, pretrained)

    reports = run_plan_and_train(
        folder, configurations or None, fold_list, options_for, memory_gb, replan=replan, workers=workers,
        log=lambda m: console.print(m, highlight=False), training_seconds=per_run * 60 if per_run else None,
        model=model, preset=preset,
    )
    print_report_tables(task_for_model(parse_model_spec(model).family), {f"{name} cross-validation": report for name, report in reports.items()})


def one_line(error: Exception) -> str:
    """An error as one line: libraries put newlines in their messages."""
    from rich.markup import escape

    return escape(" ".join(str(error).split()))  # and no rich markup taken from file names or messages


PRETRAINING_TASKS = ("masked_pretraining", "autoencoder_pretraining")


def _pretrain(dataset, model, time_budget, epochs, iterations, learning_rate, test_images, replan, device, workers, extra_images=()) -> Path:
    """Plan and train a pretraining family on fold 'all'; returns its fold folder."""
    from medseg.data.layout import load_dataset_description
    from medseg.errors import MedsegError
    from medseg.models.spec import parse_model_spec
    from medseg.pipeline import configuration_model_folder, default_plans_name, load_plans, prepare_task, run_plan_and_train
    from medseg.tasks.registry import task_for_model

    spec = parse_model_spec(model)
    folder = prepare_task(dataset, False, progress_console=err_console)
    task = task_for_model(spec.family, load_dataset_description(folder).task_type, folder.name)
    if task.name not in PRETRAINING_TASKS:
        raise MedsegError(f"{spec.family} is trained by the {task.name} task; pretraining runs mae_vit (`medseg pretrain`) or kl_autoencoder (`medseg pretrain-ae`)")
    if time_budget is None and epochs is None:
        raise MedsegError("give the pretraining a budget: --time-budget MIN or --epochs N")
    if not run_dataset_check(folder, strict=False, workers=workers):
        raise typer.Exit(1)

    def options_for(num_runs: int):
        return _training_options(epochs, iterations, learning_rate, None, None, time_budget, device, False, 0)

    settings = {"include_test": test_images, **({"extra_images": [str(p) for p in extra_images]} if extra_images else {})}
    run_plan_and_train(
        folder, None, ["all"], options_for, replan=replan, workers=workers, log=lambda m: console.print(m, highlight=False, markup=False),
        training_seconds=time_budget * 60 if time_budget else None, model=str(spec), plan_settings=settings,
    )
    return configuration_model_folder(folder, load_plans(folder, default_plans_name(str(spec))), "2d") / "fold_all"


@app.command()
def pretrain(
    dataset: str = typer.Option(..., "--dataset", "--task", help="Dataset name, id or folder."),
    model: str = typer.Option("mae_vit", "--model", help="A pretraining family, e.g. mae_vit or 'mae_vit[mask_ratio=0.75]' (see `medseg models`)."),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help="Training minutes."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help=EPOCHS_HELP),
    iterations: int = typer.Option(250, "--iterations-per-epoch"),
    learning_rate: Optional[float] = typer.Option(None, "--learning-rate"),
    test_images: bool = typer.Option(True, "--test-images/--no-test-images", help="Learn from the unlabelled imagesTs too (labels are never used)."),
    replan: bool = typer.Option(False, "--replan", help="Fingerprint and plan again even if plans exist."),
    device: Optional[str] = typer.Option(None, "--device"),
    workers: Optional[int] = typer.Option(None, "--workers"),
) -> None:
    """Self-supervised pretraining on a dataset's images (labels unused): writes the encoder that
    `plan-and-train --model vit --pretrained ENCODER` fine-tunes, and reconstruction PNGs per epoch."""
    fold = _pretrain(dataset, model, time_budget, epochs, iterations, learning_rate, test_images, replan, device, workers)
    if (fold / "encoder.pt").is_file():
        console.print(f"encoder: {fold / 'encoder.pt'}\nfine-tune: medseg plan-and-train --dataset {dataset} --model vit --pretrained {fold / 'encoder.pt'}", highlight=False, markup=False, soft_wrap=True)
    else:
        console.print(f"autoencoder: {fold / 'autoencoder'}\nGMS: medseg plan-and-train --dataset {dataset} --model gms --pretrained {fold / 'autoencoder'}", highlight=False, markup=False, soft_wrap=True)


@app.command("pretrain-ae")
def pretrain_ae(
    dataset: str = typer.Option(..., "--dataset", "--task", help="Dataset name, id or folder."),
    images: list[Path] = typer.Option([], "--images", help="More image folders to learn from (repeatable; labels are never used)."),
    model: str = typer.Option("kl_autoencoder", "--model", help="kl_autoencoder or e.g. 'kl_autoencoder[block_out_channels=[64,128,256,256]]'."),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help="Training minutes."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help=EPOCHS_HELP),
    iterations: int = typer.Option(250, "--iterations-per-epoch"),
    learning_rate: Optional[float] = typer.Option(None, "--learning-rate"),
    test_images: bool = typer.Option(True, "--test-images/--no-test-images", help="Learn from the unlabelled imagesTs too."),
    replan: bool = typer.Option(False, "--replan", help="Fingerprint and plan again even if plans exist."),
    device: Optional[str] = typer.Option(None, "--device"),
    workers: Optional[int] = typer.Option(None, "--workers"),
) -> None:
    """Train a small KL autoencoder (f=8, 4 latent channels) on a dataset's images, for GMS to segment in
    its latent space: writes FOLD/autoencoder (diffusers' AutoencoderKL layout) and reconstruction PNGs."""
    fold = _pretrain(dataset, model, time_budget, epochs, iterations, learning_rate, test_images, replan, device, workers, images)
    console.print(f"autoencoder: {fold / 'autoencoder'}\nGMS: medseg plan-and-train --dataset {dataset} --model gms", highlight=False, markup=False, soft_wrap=True)


@app.command()
def compare(
    dataset: str = typer.Option(..., "--dataset", "--task", help="Dataset name, id or folder."),
    models: str = typer.Option("unet,umamba_bot,umamba_enc,xlstm_unet_bot,xlstm_unet_enc", "--models", help="Comma-separated families or model specs such as 'xlstm_unet_bot[vil_directions=forward]' (unet is the baseline)."),
    demo: bool = typer.Option(False, "--demo", help="Use the built-in synthetic demo of the dataset (built if missing)."),
    folds: str = typer.Option("0,1,2,3,4", "--folds", help="Comma-separated folds, the same for every family."),
    configuration: Optional[str] = typer.Option(None, "-c", "--configuration", help="[default: 3d_fullres for volumes, else 2d]"),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help="Training minutes per run (one family, one fold), the same for every family."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Or the same number of epochs for every family."),
    iterations: Optional[int] = typer.Option(None, "--iterations-per-epoch"),
) -> None:
    """Train model families on identical splits under the same budget and compare them (markdown, JSON, PNG)."""
    from medseg.errors import MedsegError
    from medseg.models.spec import parse_model_specs
    from medseg.pipeline import prepare_task, run_compare

    families = [str(spec) for spec in parse_model_specs(models)]
    fold_list = [f.strip() for f in folds.split(",") if f.strip()]
    if not families or not fold_list or "all" in fold_list:
        raise MedsegError("compare needs at least one family and cross-validation folds (not 'all')")
    if time_budget is None and epochs is None:
        raise MedsegError("give every family the same budget: --time-budget MIN (per run) or --epochs N")
    folder = prepare_task(dataset, demo, progress_console=err_console)
    arguments = []
    if time_budget is not None:
        arguments += ["--time-budget-per-run", str(time_budget)]  # the same for a run left over when resuming
    if epochs is not None:
        arguments += ["--epochs", str(epochs)]
    if iterations is not None:
        arguments += ["--iterations-per-epoch", str(iterations)]
    comparison, outputs = run_compare(folder, families, fold_list, configuration, arguments, log=lambda m: console.print(m, highlight=False, markup=False))
    console.print(outputs[1].read_text(), highlight=False, markup=False)
    console.print(f"wrote {', '.join(str(p) for p in outputs)}")


def main() -> None:
    from medseg.errors import MedsegError

    try:
        app()
    except MedsegError as error:
        if _state["debug"]:
            raise
        err_console.print(f"[red]error:[/red] {one_line(error)}", soft_wrap=True, highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as error:  # a bug, not bad input: say so and how to see the traceback
        if _state["debug"]:
            raise
        err_console.print(
            f"[red]error:[/red] unexpected {type(error).__name__}: {one_line(error)} (rerun with --debug for the traceback)",
            soft_wrap=True,
            highlight=False,
        )
        sys.exit(2)


if __name__ == "__main__":
    main()
