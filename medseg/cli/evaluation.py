"""`medseg evaluate` (predictions against references) and `compare` (families on the same folds)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medseg.cli.app import app, console, err_console, progress_printer, print_report_tables
from medseg.cli.datasets import run_dataset_check
from medseg.cli.training import training_options


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

    from medseg.data.layout import CLASSIFICATION_LAYOUT, SEGMENTATION_LAYOUT
    from medseg.errors import MedsegError
    from medseg.evaluation.report import evaluate_folder
    from medseg.tasks.registry import task_for_dataset

    if predictions.suffix == ".csv":
        from medseg.tasks.classification import evaluate_predictions

        report = evaluate_predictions(predictions, references, dataset_json, output)
        print_report_tables(task_for_dataset(CLASSIFICATION_LAYOUT), {"evaluation": report})
        if "transfer" in report:
            transfer = report["transfer"]
            console.print(
                f"another dataset's model: scored on the classes both name ({', '.join(transfer['shared_classes'])}), "
                f"{transfer['model_classes_ignored']} of its classes ignored", highlight=False, soft_wrap=True, markup=False,
            )
        return

    from medseg.data.layout import parse_labels

    try:
        content = json.loads(dataset_json.read_text())
        ending = content["file_ending"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MedsegError(f"{dataset_json}: cannot read labels and file_ending ({error})") from None
    labels, regions, ignore_label = parse_labels(content, dataset_json)  # regions and the ignore label as training scores them
    tolerances = {}
    for item in tolerance:
        name, _, value = item.rpartition("=")
        try:
            tolerances[name or "default"] = float(value)
        except ValueError:
            raise MedsegError(f"--nsd-tolerance {item!r}: expected MM or CLASS=MM") from None
    report = evaluate_folder(
        predictions, references, labels, ending, tolerances, output=output or predictions / "summary.json", progress=progress_printer("evaluate"),
        allow_missing=allow_missing, regions=regions, ignore_label=ignore_label,
    )
    print_report_tables(task_for_dataset(SEGMENTATION_LAYOUT), {"evaluation": report})
    for case_id, problem in report["scored_as_empty"].items():
        err_console.print(f"[yellow]scored as empty[/yellow] {case_id}: {problem}", highlight=False, soft_wrap=True)
    extra = report.get("unreferenced_predictions", [])
    if extra:
        err_console.print(
            f"[yellow]not scored[/yellow] {len(extra)} prediction(s) without a reference in {references}: {', '.join(extra[:10])}{', ...' if len(extra) > 10 else ''}",
            highlight=False, soft_wrap=True,
        )


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
    precision: str = typer.Option("auto", "--precision", help="Every family's training forward, as `plan-and-train --precision` (families that stay float32 say so)."),
) -> None:
    """Train model families on identical splits under the same budget and compare them (markdown, JSON, PNG)."""
    from medseg.errors import MedsegError
    from medseg.experiment import TrainingBudget
    from medseg.models.spec import parse_model_specs
    from medseg.pipeline import prepare_task, run_compare

    families = [str(spec) for spec in parse_model_specs(models)]
    fold_list = [f.strip() for f in folds.split(",") if f.strip()]
    if not families or not fold_list or "all" in fold_list:
        raise MedsegError("compare needs at least one family and cross-validation folds (not 'all')")
    if time_budget is None and epochs is None:
        raise MedsegError("give every family the same budget: --time-budget MIN (per run) or --epochs N")
    folder = prepare_task(dataset, demo, progress_console=err_console)
    if run_dataset_check(folder, strict=False, workers=None) is None:
        raise typer.Exit(1)
    # the same minutes for every run, also for a run left over when resuming
    options = training_options(epochs, iterations or 250, None, None, None, None, None, True, 0, precision=precision)
    comparison, outputs = run_compare(
        folder, families, fold_list, configuration, options, TrainingBudget(per_run_minutes=time_budget),
        log=lambda m: console.print(m, highlight=False, markup=False),
    )
    console.print(outputs[1].read_text(), highlight=False, markup=False)
    console.print(f"wrote {', '.join(str(p) for p in outputs)}")



@app.command("find-best-configuration")
def find_best_configuration(
    dataset: str = typer.Argument(..., metavar="DATASET", help="Dataset name, id or folder (its results folder holds the trained models)."),
    model_folders: list[str] = typer.Option(
        [], "--model-folder", "-m", help="Only these model folders of the dataset's results (repeatable; e.g. unet__medsegPlans__2d) [default: every cross-validated one]."
    ),
) -> None:
    """Choose between the dataset's cross-validated configurations and their ensembles of two
    (scored on the out-of-fold predictions), with the winner's postprocessing; writes
    results/DATASET/best_configuration.json and says how to predict with the choice."""
    from medseg.cli.app import raw_folder_of
    from medseg.errors import MedsegError
    from medseg.paths import results_root
    from medseg.pipeline import crossvalidated_folders, run_find_best
    from medseg.tasks.registry import get_task

    raw = raw_folder_of(dataset)
    results = results_root() / raw.name
    folders = crossvalidated_folders(results, model_folders or None)
    if len(folders) < 2 and not model_folders:
        found = ", ".join(f.path.name for f in folders) or "none"
        raise MedsegError(f"{results}: one cross-validated model folder or none ({found}); train another configuration first (plan-and-train -c 2d -c 3d_fullres)")
    if not folders:
        raise MedsegError(f"{results}: no cross-validated model folder; train with `medseg plan-and-train` first")
    choice = run_find_best(get_task(folders[0].info.task), results, folders, log=lambda m: console.print(m, highlight=False))
    for candidate in choice["candidates"]:
        score = candidate.get("foreground_dice", candidate.get("score"))
        shown = f"{score:.4f}" if isinstance(score, (int, float)) else f"not scored: {candidate.get('skipped')}"
        console.print(f"  {candidate['name']}: {shown}", highlight=False, soft_wrap=True)
    console.print(f"best: {choice['best']['name']}", highlight=False)
    console.print(f"predict with: {choice['predict']}", highlight=False, soft_wrap=True)
