"""The self-configuring pipeline, stage by stage: dataset -> fingerprint -> plans -> preprocessed
data -> trained folds -> cross-validation report. Each stage reads and writes files under
MEDSEG_ROOT, so every stage can also be run on its own from the CLI. What a stage does for a kind
of problem comes from the registered task (medseg.tasks) of the model family being trained."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from medseg.errors import DatasetError, MedsegError
from medseg.experiment import (
    DEFAULT_PLANS_NAME, configuration_model_folder, default_plans_name, load_plans, plans_path, preprocessed_folder,
)
from medseg.paths import find_raw_dataset, model_folder, raw_root, results_root

Progress = Callable[[int, int], None] | None


def prepare_task(task: str, demo: bool = False, progress_console=None) -> Path:
    """Folder of the task's raw dataset. With ``demo``, the task's synthetic demo, built when missing."""
    from medseg_datasets import get_recipe, list_recipes

    if demo:
        try:
            recipe = get_recipe(task if task.endswith("-demo") else f"{task}-demo")
        except DatasetError:
            demos = ", ".join(r.name.removesuffix("-demo") for r in list_recipes() if r.synthetic)
            raise DatasetError(f"task '{task}' has no built-in demo (tasks with one: {demos})") from None
        folder = raw_root() / recipe.folder_name
        if not (folder / "dataset.json").is_file():
            if progress_console is not None:
                progress_console.print(f"building the {recipe.name} dataset in {folder}")
            recipe.synthesize(folder, overwrite=folder.exists())
        return folder
    try:
        return find_raw_dataset(task)
    except DatasetError as error:
        hint = ""
        try:
            recipe = get_recipe(task)
            hint = f"; build it with `medseg datasets convert {recipe.name} --src DIR`"
            if any(r.name == f"{recipe.name}-demo" for r in list_recipes()):
                hint += " or run the built-in demo with --demo"
        except DatasetError:
            pass
        raise DatasetError(f"{error}{hint}") from None


def _description(raw_folder: Path):
    from medseg.data.layout import load_dataset_description

    return load_dataset_description(raw_folder)


def plans_task(plans, description=None):
    """The task that trains the plans' model family, checked against the dataset's layout."""
    from medseg.tasks.registry import task_for_model

    models = {c.architecture["name"] for c in plans.configurations.values()}
    if len(models) != 1:
        raise MedsegError(f"plans {plans.plans_name} of {plans.dataset_name} mix model families ({', '.join(sorted(models))})")
    dataset_type = description.task_type if description is not None else None
    return task_for_model(models.pop(), dataset_type, description.folder.name if description is not None else "the dataset")


def run_fingerprint(raw_folder: Path, workers: int | None = None, progress: Progress = None) -> Path:
    import shutil

    from medseg.tasks.registry import task_for_dataset

    description = _description(raw_folder)
    task = task_for_dataset(description.task_type, raw_folder.name)
    fingerprint = task.fingerprint(description, workers, progress)
    target = preprocessed_folder(raw_folder)
    fingerprint.save(target / "fingerprint.json")
    shutil.copyfile(raw_folder / "dataset.json", target / "dataset.json")
    return target / "fingerprint.json"


def run_plan(
    raw_folder: Path, model: str = "unet", memory_gb: float | None = None, step_seconds: float | None = None, plans_name: str | None = None,
    training_seconds: float | None = None, preset: str | None = None, plan_settings: dict | None = None,
):
    """Plan from the fingerprint; ``training_seconds`` (one run's budget) lets a CPU plan trade
    resolution for passes over the data; ``preset`` names shipped planner settings (medseg_plans);
    ``plan_settings`` are the task's own planning choices (PlanRequest.settings)."""
    from medseg.models.spec import parse_model_spec
    from medseg.tasks.registry import PlanRequest, task_for_model
    from medseg_plans import get_preset

    spec = parse_model_spec(model)
    description = _description(raw_folder)
    task = task_for_model(spec.family, description.task_type, raw_folder.name)
    settings = get_preset(preset).settings_for(task.name, spec.family) if preset else None
    fingerprint_file = preprocessed_folder(raw_folder) / "fingerprint.json"
    if not fingerprint_file.is_file():
        raise MedsegError(f"{fingerprint_file}: missing; run `medseg fingerprint {raw_folder.name}` first")
    plans_name = plans_name or default_plans_name(model)
    request = PlanRequest(spec.family, plans_name, memory_gb, step_seconds, training_seconds, settings, spec.options or None, plan_settings)
    plans = task.plan(fingerprint_file, description, request)
    plans.save(plans_path(raw_folder, plans_name))
    return plans


def run_preprocess(
    raw_folder: Path, configurations: Sequence[str], plans_name: str = DEFAULT_PLANS_NAME, workers: int | None = None,
    progress_factory: Callable[[str], Progress] | None = None,
) -> dict[str, tuple[int, int]]:
    plans = load_plans(raw_folder, plans_name)
    description = _description(raw_folder)
    task = plans_task(plans, description)
    done = {}
    for name in configurations:
        configuration = plans.configuration(name)
        folder = preprocessed_folder(raw_folder) / configuration.data_identifier
        progress = progress_factory(name) if progress_factory else None
        done[name] = task.preprocess(description, plans, configuration, folder, workers, progress)
    return done


def write_model_folder(raw_folder: Path, plans, configuration_name: str, description=None, task=None):
    """Make the model folder self-describing: plans, dataset.json and what inference needs."""
    from medseg.model_folder import ModelFolder, ModelInfo

    description = description or _description(raw_folder)
    task = task or plans_task(plans, description)
    configuration = plans.configuration(configuration_name)
    info = ModelInfo(
        configuration=configuration_name,
        model=configuration.architecture["name"],
        dataset_name=raw_folder.name,
        raw_folder=str(raw_folder),
        preprocessed_folder=str(preprocessed_folder(raw_folder) / configuration.data_identifier),
        file_ending=description.file_ending,
        labels={name: int(value) for name, value in description.labels.items()},
        task=task.name,
        **task.model_info(configuration),
    )
    return ModelFolder.create(configuration_model_folder(raw_folder, plans, configuration_name), plans, raw_folder / "dataset.json", info)


def run_train(raw_folder: Path, configuration_name: str, fold: str, options, plans_name: str = DEFAULT_PLANS_NAME, log=print) -> dict | None:
    from medseg.tasks.registry import RunContext
    from medseg.training.splits import fold_cases, load_or_create_splits
    from medseg.training.trainer import Trainer

    plans = load_plans(raw_folder, plans_name)
    description = _description(raw_folder)
    task = plans_task(plans, description)
    configuration = plans.configuration(configuration_name)
    data_folder = preprocessed_folder(raw_folder) / configuration.data_identifier
    case_ids = task.preprocessed_cases(data_folder, plans, configuration)
    if not case_ids:
        raise MedsegError(f"{data_folder}: no preprocessed cases; run `medseg preprocess {raw_folder.name} -c {configuration_name}` first")
    if fold == "all":  # no splits needed (nor written: pretraining's cases include the test images)
        train, val = sorted(case_ids), []
    else:
        groups, strata = task.split_keys(description, case_ids) if task.split_keys else (None, None)
        splits = load_or_create_splits(preprocessed_folder(raw_folder), raw_folder, case_ids, groups, strata)
        train, val = fold_cases(splits, fold, case_ids)
    missing = sorted(set(train + val) - set(case_ids))
    if missing:
        raise MedsegError(f"{data_folder}: cases in the splits are not preprocessed: {', '.join(missing[:5])}; rerun `medseg preprocess`")
    folder = write_model_folder(raw_folder, plans, configuration_name, description, task)
    context = RunContext(
        plans=plans, configuration=configuration, model_folder=folder, fold_folder=folder.fold_folder(fold), data_folder=data_folder,
        train_cases=train, val_cases=val, options=options, device=None, world_size=1, log=log,
    )
    return Trainer(task, context, log).run()


def default_configurations(plans, device: str | None = None) -> list[str]:
    """On a GPU every trainable configuration; on a CPU the one that fits the data best (3d_fullres
    for volumes, 2d otherwise), because each extra configuration costs a full cross-validation."""
    import torch

    trainable = [name for name, c in plans.configurations.items() if not c.previous_stage]
    on_gpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if on_gpu:
        return trainable
    for preferred in ("3d_fullres", "2d"):
        if preferred in trainable:
            return [preferred]
    return trainable[:1]


def run_plan_and_train(
    raw_folder: Path,
    configurations: Sequence[str] | None,
    folds: Sequence[str],
    options_factory: Callable[[int], object],
    memory_gb: float | None = None,
    plans_name: str | None = None,
    replan: bool = False,
    workers: int | None = None,
    log: Callable[[str], None] = print,
    training_seconds: float | None = None,
    model: str = "unet",
    preset: str | None = None,
    plan_settings: dict | None = None,
) -> dict[str, dict]:
    """fingerprint -> plan -> preprocess -> train each fold -> cross-validation report per
    configuration. Resumable: finished folds are kept, interrupted ones continue from their
    latest checkpoint. ``options_factory(num_runs)`` gives the training options of each run;
    ``training_seconds`` is one run's budget, for the plan; ``model`` the registered family planned
    or a model spec (medseg.models.spec)."""
    from medseg.model_folder import ModelFolder
    from medseg.models.spec import parse_model_spec
    from medseg.planning.fingerprint import Fingerprint
    from medseg.tasks.registry import task_for_model

    spec = parse_model_spec(model)
    task = task_for_model(spec.family, _description(raw_folder).task_type, raw_folder.name)  # a mismatch fails before any work
    plans_name = plans_name or default_plans_name(model)
    fingerprint_file = preprocessed_folder(raw_folder) / "fingerprint.json"
    stale = None
    if fingerprint_file.is_file() and not replan:
        try:
            Fingerprint.load(fingerprint_file)  # validates the version
        except MedsegError as error:
            stale = error
            log(f"fingerprint: recomputing ({error})")
    if replan or stale or not fingerprint_file.is_file():
        run_fingerprint(raw_folder, workers)
        log(f"fingerprint: {fingerprint_file}")
    plans_file = plans_path(raw_folder, plans_name)
    if replan or stale or not plans_file.is_file():
        plans = run_plan(
            raw_folder, model, memory_gb=memory_gb, plans_name=plans_name, training_seconds=training_seconds, preset=preset, plan_settings=plan_settings,
        )
        log(f"plans: {plans_file} ({plans.planner['mode']} budget{', preset ' + preset if preset else ''})")
    else:
        plans = load_plans(raw_folder, plans_name)
        log(f"plans: reusing {plans_file} (--replan to plan again)")
        planned = {c.architecture["name"] for c in plans.configurations.values()}
        options = plans.planner.get("model_options", {})
        if planned != {spec.family} or options != spec.options:
            shown = ", ".join(sorted(planned)) + (f" with {options}" if options else "")
            raise MedsegError(f"{plans_file} plans {shown}, not {spec}: use another plans name or --replan")
    chosen = list(configurations) if configurations else default_configurations(plans)
    for name in chosen:
        c = plans.configuration(name)
        features = c.architecture["kwargs"].get("features_per_stage")
        log(f"  {name}: patch {c.patch_size}, batch {c.batch_size}, spacing {[round(s, 3) for s in c.spacing]}, "
            f"{c.architecture['name']}" + (f" features {features}" if features else ""))
    run_preprocess(raw_folder, chosen, plans_name, workers)
    log("preprocessing: done")
    runs = [(name, fold) for name in chosen for fold in folds]

    def finished(name: str, fold: str) -> bool:
        folder = configuration_model_folder(raw_folder, plans, name)
        return ModelFolder.open(folder).fold_finished(fold) if (folder / "model.json").is_file() else False

    remaining = [(n, f) for n, f in runs if not finished(n, f)]
    for name, fold in runs:
        if finished(name, fold):
            log(f"{name} fold {fold}: already trained")
            continue
        options = options_factory(len(remaining))
        options.continue_training = (configuration_model_folder(raw_folder, plans, name) / f"fold_{fold}" / "checkpoint_latest.pt").is_file()
        log(f"{name} fold {fold}:")
        run_train(raw_folder, name, fold, options, plans_name, log)
    reports = {}
    if all(f != "all" for f in folds) and task.crossval is not None:
        for name in chosen:
            reports[name] = task.crossval(ModelFolder.open(configuration_model_folder(raw_folder, plans, name)), list(folds))
    if len(reports) > 1:
        best = best_configuration(model_folder(raw_folder.name, spec.family, plans_name, chosen[0]).parent, reports, task.report_score)
        log(f"best configuration: {best}")
    return reports


def best_configuration(dataset_results: Path, reports: dict[str, dict], score: Callable[[dict], float]) -> str:
    """The configuration whose cross-validation report scores highest; written to best_configuration.json."""
    from medseg.atomic import write_json_atomic

    best = max(reports, key=lambda name: score(reports[name]))
    write_json_atomic(dataset_results / "best_configuration.json", {"best": best, "scores": {name: score(r) for name, r in reports.items()}})
    return best


def run_compare(
    raw_folder: Path, models: Sequence[str], folds: Sequence[str], configuration: str | None, train_arguments: Sequence[str],
    log: Callable[[str], None] = print,
) -> tuple[dict, list[Path]]:
    """Train every family on the same splits and budget (each `plan-and-train` in its own process,
    so its peak memory is its own; resumable like plan-and-train), then compare them."""
    import os
    import subprocess
    import sys

    from medseg.evaluation.compare import BASELINE, compare_families, write_comparison
    from medseg.model_folder import ModelFolder
    from medseg.models.spec import parse_model_spec
    from medseg.tasks.capabilities import CROSSVAL, LABEL_MAPS
    from medseg.tasks.registry import task_for_model

    dataset_type = _description(raw_folder).task_type
    for model in models:
        task = task_for_model(parse_model_spec(model).family, dataset_type, raw_folder.name)  # every family checked before any training
        if not {LABEL_MAPS, CROSSVAL} <= task.capabilities:  # folds that write Dice/NSD/HD95 reports
            raise MedsegError(f"compare scores segmentations; {model} is trained by the {task.name} task")
    folders = {}
    for model in models:
        log(f"== {model}")
        command = [sys.executable, "-m", "medseg.cli", "plan-and-train", "--dataset", str(raw_folder), "--model", model, "--folds", ",".join(folds)]
        command += (["-c", configuration] if configuration else []) + list(train_arguments)
        if subprocess.run(command, env=dict(os.environ)).returncode != 0:
            raise MedsegError(f"training {model} failed (its error is above); rerun to resume")
        plans = load_plans(raw_folder, default_plans_name(model))
        name = configuration or default_configurations(plans)[0]
        folders[model] = ModelFolder.open(configuration_model_folder(raw_folder, plans, name))
    chosen = {folder.info.configuration for folder in folders.values()}
    if len(chosen) != 1:
        raise MedsegError(f"the families trained different configurations ({', '.join(sorted(chosen))}); pass -c CONFIG")
    name = chosen.pop()
    comparison = compare_families(folders, list(folds), BASELINE)
    target = results_root() / raw_folder.name / f"compare__{name}"
    return comparison, write_comparison(target, comparison, f"{raw_folder.name} {name}")
