"""The `medseg` command. Thin: every command calls a public function; heavy imports stay inside
commands so that `medseg --help` answers at once. Errors print as one line (tracebacks with --debug)."""

from __future__ import annotations

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

SERIES_HELP = "Which DICOM series when a folder holds several: largest, an index, a SeriesInstanceUID, number:N, description:TEXT."


def _version(value: bool) -> None:
    if value:
        from medseg import __version__

        console.print(f"medseg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug


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
) -> None:
    """Convert an image between formats, keeping its geometry (e.g. a DICOM series to NIfTI)."""
    from medseg.io import read_image, write_image

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
    for index, series in enumerate(scan.series):
        table.add_row(str(index), series.key, series.modality, series.description, str(series.num_frames), "; ".join(series.notes))
    console.print(table)
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
    console.print("not implemented yet: selective_scan triton/cuda backends, mLSTM kernels", highlight=False)


# ---------------------------------------------------------------------------------------- pipeline
@app.command("plan-and-train")
def plan_and_train(
    task: str = typer.Option(..., "--task", help="Dataset name, id or folder (e.g. AbdomenMRI)."),
    demo: bool = typer.Option(False, "--demo", help="Use the built-in synthetic demo of the task (built if missing)."),
) -> None:
    """Run the self-configuring pipeline on a raw dataset.

    Today this resolves (or, with --demo, builds) the dataset and validates it; fingerprinting,
    planning, preprocessing, training and evaluation join this command as they land."""
    from medseg.pipeline import prepare_task

    folder = prepare_task(task, demo, progress_console=err_console)
    if not run_dataset_check(folder, strict=False, workers=None):
        raise typer.Exit(1)
    console.print(
        f"dataset ready: {folder}\n"
        "pipeline stages available so far: dataset build + validation. "
        "Planning, preprocessing and training are not implemented yet."
    )


def main() -> None:
    from medseg.errors import MedsegError

    try:
        app()
    except MedsegError as error:
        if _state["debug"]:
            raise
        err_console.print(f"[red]error:[/red] {error}", soft_wrap=True, highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as error:  # a bug, not bad input: say so and how to see the traceback
        if _state["debug"]:
            raise
        err_console.print(
            f"[red]error:[/red] unexpected {type(error).__name__}: {error} (rerun with --debug for the traceback)",
            soft_wrap=True,
            highlight=False,
        )
        sys.exit(2)


if __name__ == "__main__":
    main()
