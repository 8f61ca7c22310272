"""What medseg carries: `medseg kernels`, `models`, `tasks`, `plans`, and `describe` for a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medseg.cli.app import app, console


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


@app.command()
def describe(
    model: Path = typer.Argument(..., help="Model folder (medseg or nnU-Net v2)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object, as `medseg serve` lists models (for scripts and the Slicer module)."),
) -> None:
    """A trained model's family, configuration, labels with their colours, inputs and folds."""
    import json

    from medseg.model_folder import model_summary
    from medseg.model_folders import open_model_folder

    summary = model_summary(model.name, open_model_folder(model))
    if as_json:
        print(json.dumps(summary))
        return
    card, calibration = summary.pop("card", None), summary.pop("calibration", None)
    for key, value in summary.items():
        console.print(f"{key}: {value}", highlight=False, soft_wrap=True, markup=False)
    for line in calibration_lines(calibration) if calibration else ["calibration: none (`medseg calibrate MODEL_FOLDER` fits one on its cross-validation)"]:
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    if card is None:
        console.print("card: none (medseg card MODEL_FOLDER writes one)", highlight=False, markup=False)
        return
    for line in card_lines(card):
        console.print(line, highlight=False, soft_wrap=True, markup=False)


def calibration_lines(calibration: dict) -> list[str]:
    """A calibration's quality as a person reads it: per structure, how well its expected Dice finds
    the poor out-of-fold cases against the plain baseline, and its error (a classifier's: its temperature)."""
    if calibration.get("kind") == "temperature":
        from medseg.audit.probability_calibration import calibration_lines as temperature_lines

        return temperature_lines(calibration)
    lines = [f"calibration: expected Dice from the {calibration['feature']}, a review below each structure's threshold "
             f"(poor: Dice under {calibration['poor_dice']})"]
    for name, fitted in calibration["labels"].items():
        quality = calibration["quality"].get(name, {})
        auroc, baseline = quality.get("auroc"), quality.get("baseline_auroc")
        shown = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(
            f"  {name}: threshold {fitted['threshold']:.3f}, {fitted['cases']} cases ({fitted['poor_cases']} poor), "
            f"AUROC {shown(auroc)} vs {shown(baseline)} (mean max softmax), mean absolute error {shown(quality.get('mean_absolute_error'))}"
            + ("" if fitted["fitted"] else f" [too few cases to fit: the {calibration['feature']} itself]")
        )
    return lines


def card_lines(card: dict) -> list[str]:
    """A model card as a person reads it."""
    crossval = card.get("cross_validation", {})
    foreground = crossval.get("foreground_mean", {})
    scores = ", ".join(f"{k} {v:.4f}" for k, v in foreground.items() if isinstance(v, (int, float))) or "not run"
    data = card.get("training_data", {})
    return [
        f"card: {card.get('name')} version {card.get('version')}",
        f"  licence: {card.get('licence')}",
        f"  intended use: {card.get('intended_use')}",
        f"  limits: {card.get('limits')}",
        f"  authors: {card.get('authors')}",
        f"  training data: {data.get('dataset')}, {data.get('cases')} cases, from {data.get('source')} (licence: {data.get('licence')})",
        f"  cross-validation: {scores}" + (f" over {crossval['num_cases']} cases, folds {','.join(map(str, crossval.get('folds', [])))}" if "num_cases" in crossval else ""),
        f"  made by: medseg {card.get('medseg', {}).get('version')} (commit {card.get('medseg', {}).get('commit')})",
        f"  weights: {len(card.get('weights', {}))} file(s) with sha256, checked on every load",
    ]


@app.command()
def card(
    model: Path = typer.Argument(..., help="A medseg model folder."),
    settings: list[str] = typer.Option([], "--set", help="key=value (repeatable): name, version, licence, intended_use, limits, authors, training_data.dataset|cases|source|licence."),
    as_json: bool = typer.Option(False, "--json", help="Print the card as JSON."),
) -> None:
    """Write or update a model folder's card (card.json): what plan-and-train measured (training data,
    cross-validation, medseg version and commit, a sha256 of every weight file) plus what --set gives;
    fields set before are kept."""
    import json

    from medseg.model_card import parse_settings, write_card
    from medseg.model_folder import ModelFolder

    written = write_card(ModelFolder.open(model), parse_settings(settings))
    if as_json:
        print(json.dumps(written, indent=1))
        return
    for line in card_lines(written):
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    console.print(f"wrote {model / 'card.json'}", highlight=False, markup=False)


models_app = typer.Typer(help="Model families (no subcommand: list them) and installed model packages.")
app.add_typer(models_app, name="models")


@app.command()
def calibrate(model: Path = typer.Argument(..., help="A medseg model folder, or an nnU-Net v2 one whose validation kept its probabilities (--npz).")) -> None:
    """Write what a model folder needs to audit its predictions (also for folders trained before
    medseg kept it): input_profile.json (the training images' spacing, size, orientation and
    intensities, which `medseg predict --qc` checks every input against) and calibration.json (the
    expected Dice per structure and its review threshold, fitted on the cross-validation's
    out-of-fold predictions; folds validated before are predicted again for it). An nnU-Net v2
    folder is calibrated from its own validation (summary.json and the --npz probabilities); a
    classifier gets its temperature and test-time-view choice (probability_calibration.json)."""
    from medseg.model_folders import open_model_folder
    from medseg.pipeline import refit_input_profile
    from medseg.tasks.registry import get_task

    folder = open_model_folder(model)
    if folder.info.extra.get("source") == "nnunetv2":  # its profile is read from its dataset_fingerprint.json at prediction
        console.print("input profile: nnU-Net's dataset_fingerprint.json (spacing and cropped sizes), read when predicting", highlight=False, markup=False)
    else:
        written, source = refit_input_profile(folder)
        console.print(f"wrote {written} (from {source})", highlight=False, markup=False)
    task = get_task(folder.info.task)
    if task.calibrate is None:
        console.print(f"no calibration: {task.name} models have no expected-quality calibration", highlight=False, markup=False)
        return
    calibration = task.calibrate(folder, lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True))
    if calibration is None:
        return
    console.print(f"wrote {calibration.get('path') or folder.path / 'calibration.json'}", highlight=False, markup=False)
    for line in calibration_lines(calibration):
        console.print(line, highlight=False, markup=False)


@models_app.callback(invoke_without_command=True)
def models(context: typer.Context) -> None:
    """List the registered model families: task type, dimensions, kernels, self-configurable, options
    (subcommands: install, installed, catalogue)."""
    if context.invoked_subcommand is not None:
        return
    from rich.table import Table

    from medseg.models import list_models
    from medseg.tasks import get_task
    from medseg.tasks.capabilities import PATCH_PLANNING

    table = Table("model", "task", "dims", "kernels", "planner", "options (FAMILY[option=value])", "summary")
    for family in list_models():
        planned = family.architecture_for_patch or PATCH_PLANNING not in get_task(family.task_type).capabilities
        table.add_row(
            family.name, family.task_type, "/".join(f"{d}D" for d in family.dims), ", ".join(family.kernels) or "-",
            "yes" if planned else "presets", ", ".join(family.options) or "-", family.summary,
        )
    console.print(table)


@app.command()
def tasks() -> None:
    """List the registered tasks: what each learns and from which dataset layouts."""
    from rich.table import Table

    from medseg.models import list_models
    from medseg.tasks import list_tasks

    table = Table("task", "datasets", "model families", "capabilities", "summary")
    for task in list_tasks():
        families = ", ".join(f.name for f in list_models() if f.task_type == task.name) or "-"
        table.add_row(task.name, "/".join(task.dataset_types), families, ", ".join(sorted(task.capabilities)) or "-", task.summary)
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



@models_app.command("install")
def models_install(
    source: str = typer.Argument(..., help="A package archive (medseg export --format package) or an http(s) URL of one."),
    sha256: Optional[str] = typer.Option(None, "--sha256", help="The archive's expected sha256 (hex); a different archive is refused."),
    name: Optional[str] = typer.Option(None, "--name", help="Install under this name [default: the package's]."),
    force: bool = typer.Option(False, "--force", help="Replace an installed model of the same name."),
) -> None:
    """Install a model package into $MEDSEG_MODELS (default: ~/.local/share/medseg/models); then
    `-m NAME` runs it wherever a model folder is taken."""
    from medseg.model_packages import install_package

    target = install_package(source, sha256, name, force)
    console.print(f"installed {target.name} in {target} (use: -m {target.name})", highlight=False, soft_wrap=True, markup=False)


@models_app.command("installed")
def models_installed(as_json: bool = typer.Option(False, "--json", help="One JSON list.")) -> None:
    """The installed model packages with their cards."""
    import json

    from medseg.model_packages import installed_models, models_root

    found = installed_models()
    if as_json:
        print(json.dumps([{"name": n, "path": str(p), "card": c} for n, p, c in found]))
        return
    if not found:
        console.print(f"no models installed in {models_root()}", highlight=False, markup=False)
    for name, path, card in found:
        console.print(f"{name}: {path}", highlight=False, soft_wrap=True, markup=False)
        for line in card_lines(card) if card else ["  card: none"]:
            console.print(f"  {line}", highlight=False, soft_wrap=True, markup=False)


@models_app.command("catalogue")
def models_catalogue(as_json: bool = typer.Option(False, "--json", help="The catalogue as JSON.")) -> None:
    """Public pretrained models medseg knows of: source, licence, and what medseg runs of each."""
    import json

    from medseg.model_packages import catalogue

    content = catalogue()
    if as_json:
        print(json.dumps(content, indent=1))
        return
    console.print(content["about"], highlight=False, soft_wrap=True, markup=False)
    for entry in content["models"]:
        console.print(f"\n{entry['name']} ({entry['kind']}, {entry['modality']}): {entry['task']}", highlight=False, soft_wrap=True, markup=False)
        for key in ("network", "source", "licence", "medseg_runs"):
            console.print(f"  {key.replace('_', ' ')}: {entry[key]}", highlight=False, soft_wrap=True, markup=False)
