"""`medseg datasets ...`: list, convert, synthesize and check raw datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medseg.cli.app import datasets_app, console, err_console


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
    console.print(f"wrote {summary.output}: {summary.num_training} training cases, {summary.num_test} test cases", soft_wrap=True, highlight=False)
    if summary.skipped:
        console.print(f"[yellow]skipped {len(summary.skipped)} source case(s):[/yellow]")
        for source, reason in summary.skipped:
            console.print(f"  {reason}" if source in reason else f"  {source}: {reason}", soft_wrap=True, highlight=False)  # a file name is never broken


def _refuse_taken_id(output: Path) -> None:
    """Two raw datasets with one number make `--dataset N` ambiguous (nnU-Net refuses them too)."""
    from medseg.errors import DatasetError
    from medseg.paths import split_dataset_name

    dataset_id, _ = split_dataset_name(output.name)
    for other in sorted(output.parent.glob(f"Dataset{dataset_id:03d}_*")) if output.parent.is_dir() else []:
        if other.name != output.name and other.is_dir():
            raise DatasetError(f"{other} already has number {dataset_id}: pass --id N with a free number")


@datasets_app.command("convert")
def datasets_convert(
    name: str = typer.Argument(..., help="Recipe name (see `medseg datasets list`)."),
    src: Path = typer.Option(..., "--src", help="The public release as downloaded."),
    out: Optional[Path] = typer.Option(None, "--out", help="Dataset folder to create [default: $MEDSEG_ROOT/raw/DatasetNNN_Name]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dataset folder."),
    dataset_id: Optional[int] = typer.Option(
        None, "--id", min=1, max=999, help="Dataset number [default: the recipe's; MSD: the Decathlon task number]."
    ),
) -> None:
    """Convert a public release into a raw dataset (nnU-Net v2 layout, or a labels table)."""
    from medseg.errors import DatasetError
    from medseg_datasets import get_recipe

    recipe = get_recipe(name)
    if recipe.convert is None:
        raise DatasetError(f"{recipe.name} is synthetic: build it with `medseg datasets synth {recipe.name}`")
    if not src.is_dir():
        raise DatasetError(f"{src}: no such folder (expected {recipe.source})")
    output = _default_output(recipe.folder_name_for(src, dataset_id), out)
    if out is None:
        _refuse_taken_id(output)
    with _counting_progress(f"converting {recipe.name}") as progress:
        task = progress.add_task("convert", total=None)
        summary = recipe.convert(src, output, overwrite, lambda n: progress.update(task, completed=n))
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


def run_dataset_check(path: Path, strict: bool, workers: Optional[int], fingerprint: bool = False):
    """Check a dataset with a progress bar, print every problem; its report when it passes (with
    dataset.json as parsed and, with ``fingerprint``, each case's fingerprint analysis and its
    training cases kept cropped for the preprocessing), else None."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from medseg.data.check import check_dataset
    from medseg.paths import cropped_cases_folder

    with Progress(TextColumn("checking"), BarColumn(), MofNCompleteColumn(), console=err_console) as progress:
        task = progress.add_task("check", total=None)
        report = check_dataset(
            path, workers=workers, progress=lambda done, total: progress.update(task, completed=done, total=total), fingerprint=fingerprint,
            keep_cropped=cropped_cases_folder(Path(path)) if fingerprint else None,
        )
    for problem in report.problems:
        style = "red" if problem.severity == "error" else "yellow"
        console.print(f"[{style}]{problem.severity}[/{style}]: {problem.message}", soft_wrap=True, highlight=False)
    verdict = "passes" if report.ok(strict) else "FAILS"
    console.print(f"{path}: {report.num_cases} training cases, {len(report.errors)} error(s), {len(report.warnings)} warning(s): {verdict}")
    return report if report.ok(strict) else None


@datasets_app.command("check")
def datasets_check(
    path: Path = typer.Argument(..., help="Raw dataset folder (DatasetXXX_Name) or its name/id under $MEDSEG_ROOT/raw."),
    strict: bool = typer.Option(False, "--strict", help="Fail on warnings (e.g. empty labels) too."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Parallel readers [default: all cores]."),
    fix_duplicates: bool = typer.Option(
        False, "--fix-duplicates",
        help="Set exact duplicate cases aside (the first of each set stays): their files and table rows move to DATASET/duplicates_removed/ "
        "(listed in removed.csv; nothing is deleted), numTraining follows; then check again.",
    ),
) -> None:
    """Validate a dataset and list ALL problems with file names; exit 1 if any error."""
    from medseg.data.check import check_dataset
    from medseg.paths import find_raw_dataset

    folder = path if path.is_dir() else find_raw_dataset(str(path))
    if fix_duplicates:
        from medseg.data.duplicates import FOLDER, set_aside_duplicates

        found = check_dataset(folder, workers=workers).duplicates
        for entry in set_aside_duplicates(folder, found) if found else []:
            console.print(f"set aside {entry['case']} ({entry['split']}): the same image as {entry['kept_case']}", highlight=False, soft_wrap=True)
        if found:
            console.print(f"{len(found)} duplicate case(s) moved to {folder / FOLDER} (removed.csv lists them)", highlight=False, soft_wrap=True)
    if run_dataset_check(folder, strict, workers) is None:
        raise typer.Exit(1)

