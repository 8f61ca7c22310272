"""The self-configuring pipeline, stage by stage: dataset -> fingerprint -> plans -> preprocessed
data -> trained folds -> cross-validation report. Each stage reads and writes files under
MEDSEG_ROOT, so every stage can also be run on its own from the CLI; a run builds one
``Experiment`` (medseg.experiment) and hands it to every stage. What a stage does for a kind of
problem comes from the registered task (medseg.tasks) of the model family being trained."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from medseg.errors import DatasetError, MedsegError
from medseg.training.splits import NUM_FOLDS
from medseg.experiment import Experiment, TrainingBudget
from medseg.paths import find_raw_dataset, raw_root, results_root

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


def run_fingerprint(description, workers: int | None = None, progress: Progress = None, analyses: dict | None = None) -> Path:
    """The dataset's fingerprint (by the task made for its layout: no model is chosen yet);
    ``analyses``: what the dataset check found while reading the cases (medseg.data.check)."""
    import shutil

    from medseg.paths import preprocessed_folder
    from medseg.tasks.registry import task_for_dataset

    raw_folder = description.folder
    task = task_for_dataset(description.task_type, raw_folder.name)
    fingerprint = task.fingerprint(description, workers, progress, analyses)
    target = preprocessed_folder(raw_folder)
    fingerprint.save(target / "fingerprint.json")
    shutil.copyfile(raw_folder / "dataset.json", target / "dataset.json")
    return target / "fingerprint.json"


def run_plan(
    experiment: Experiment, memory_gb: float | None = None, step_seconds: float | None = None, training_seconds: float | None = None,
    preset: str | None = None, plan_settings: dict | None = None, precision: str = "float32",
):
    """Plan from the fingerprint; ``training_seconds`` (one run's budget) lets a CPU plan trade
    resolution for passes over the data; ``preset`` names shipped planner settings (medseg_plans);
    ``plan_settings`` are the task's own planning choices (PlanRequest.settings); ``precision``: the
    training forward's, resolved (a CPU plan times its steps in it). The plans are saved and kept
    by the experiment."""
    from medseg.tasks.registry import PlanRequest
    from medseg_plans import get_preset

    task, spec = experiment.task, experiment.spec
    settings = get_preset(preset).settings_for(task.name, spec.family) if preset else None
    if not experiment.fingerprint_file.is_file():
        raise MedsegError(f"{experiment.fingerprint_file}: missing; run `medseg fingerprint {experiment.raw_folder.name}` first")
    request = PlanRequest(
        spec.family, experiment.plans_name, memory_gb, step_seconds, training_seconds, settings, spec.options or None, plan_settings, precision,
    )
    plans = task.plan(experiment.fingerprint_file, experiment.description, request)
    if plan_settings and "input_size" in plan_settings:
        plans.planner["input_size"] = plan_settings["input_size"]  # asked for: a reused plan must have been asked the same
    plans.save(experiment.plans_file)
    experiment.plans = plans
    return plans


def run_preprocess(
    experiment: Experiment, configurations: Sequence[str], workers: int | None = None, progress_factory: Callable[[str], Progress] | None = None,
) -> dict[str, tuple[int, int]]:
    from medseg.paths import cropped_cases_folder
    from medseg.tasks.segmentation.preprocessing.cropping import remove_cropped_cases

    done = {}
    for name in configurations:
        configuration = experiment.plans.configuration(name)
        progress = progress_factory(name) if progress_factory else None
        done[name] = experiment.task.preprocess(
            experiment.description, experiment.plans, configuration, experiment.data_folder(name), workers, progress,
        )
    remove_cropped_cases(cropped_cases_folder(experiment.raw_folder))  # the check's hand-off has served
    return done


def run_train(experiment: Experiment, configuration_name: str, fold: str, options, log=print) -> dict | None:
    from medseg.tasks.registry import RunContext
    from medseg.training.splits import fold_cases, load_or_create_splits
    from medseg.training.trainer import Trainer

    task, plans, raw_folder = experiment.task, experiment.plans, experiment.raw_folder
    configuration = plans.configuration(configuration_name)
    data_folder = experiment.data_folder(configuration_name)
    case_ids = task.preprocessed_cases(data_folder, plans, configuration)
    if not case_ids:
        raise MedsegError(f"{data_folder}: no preprocessed cases; run `medseg preprocess {raw_folder.name} -c {configuration_name}` first")
    if fold == "all":  # no splits needed (nor written: pretraining's cases include the test images)
        train, val = sorted(case_ids), []
    else:
        groups, strata = task.split_keys(experiment.description, case_ids) if task.split_keys else (None, None)
        splits = load_or_create_splits(experiment.preprocessed_folder, raw_folder, case_ids, groups, strata)
        train, val = fold_cases(splits, fold, case_ids)
    missing = sorted(set(train + val) - set(case_ids))
    if missing:
        raise MedsegError(f"{data_folder}: cases in the splits are not preprocessed: {', '.join(missing[:5])}; rerun `medseg preprocess`")
    folder = experiment.model_folder(configuration_name)
    context = RunContext(
        plans=plans, configuration=configuration, model_folder=folder, fold_folder=folder.fold_folder(fold), data_folder=data_folder,
        train_cases=train, val_cases=val, options=options, device=None, world_size=1, log=log, description=experiment.description,
    )
    return Trainer(task, context, log).run()


def training_precision(options) -> str:
    """The precision the runs' forward will use (``auto`` resolved for the training device)."""
    import torch

    from medseg.precision import resolve_precision

    return resolve_precision(options.precision, torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu")))


def with_previous_stages(plans, configurations: list[str], log: Callable[[str], None] = print) -> list[str]:
    """The configurations in training order, each cascade stage after the stage it builds on (added
    when not asked for: the cascade trains on its cross-validation)."""
    ordered: list[str] = []
    for name in configurations:
        previous = plans.configuration(name).previous_stage
        if previous and previous not in ordered:
            if previous not in configurations:
                log(f"{name} builds on {previous}: training {previous} first")
            ordered.append(previous)
        if name not in ordered:
            ordered.append(name)
    return ordered


def default_configurations(plans, device: str | None = None) -> list[str]:
    """On a GPU every configuration, the cascade included (nnU-Net's default); on a CPU the one that
    fits the data best (3d_fullres for volumes, 2d otherwise), because each extra configuration
    costs a full cross-validation."""
    import torch

    trainable = [name for name, c in plans.configurations.items() if not c.previous_stage]
    on_gpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if on_gpu:
        return list(plans.configurations)
    for preferred in ("3d_fullres", "2d"):
        if preferred in trainable:
            return [preferred]
    return trainable[:1]


def _fingerprint_and_plan(
    experiment: Experiment, replan: bool, workers: int | None, log: Callable[[str], None], training_seconds: float | None, memory_gb, preset, plan_settings,
    precision: str,
):
    """Reuse the fingerprint and plans when they fit the experiment, else make them."""
    from medseg.planning.fingerprint import Fingerprint

    fingerprint_file, stale = experiment.fingerprint_file, None
    if fingerprint_file.is_file() and not replan:
        try:
            Fingerprint.load(fingerprint_file)  # validates the version
        except MedsegError as error:
            stale = error
            log(f"fingerprint: recomputing ({error})")
    if replan or stale or not fingerprint_file.is_file():
        run_fingerprint(experiment.description, workers, analyses=experiment.case_analyses)
        log(f"fingerprint: {fingerprint_file}")
    plans_file = experiment.plans_file
    if replan or stale or not plans_file.is_file():
        plans = run_plan(experiment, memory_gb=memory_gb, training_seconds=training_seconds, preset=preset, plan_settings=plan_settings, precision=precision)
        log(f"plans: {plans_file} ({plans.planner['mode']} budget{', preset ' + preset if preset else ''})")
        return plans
    plans = experiment.plans
    log(f"plans: reusing {plans_file} (--replan to plan again)")
    planned_precision = plans.planner.get("precision", "float32")
    if plans.planner.get("mode") == "time" and planned_precision != precision:
        log(f"  the plans were sized for {planned_precision} training steps, training runs in {precision}: --replan to size for it")
    asked = (plan_settings or {}).get("input_size")
    if asked is not None and plans.planner.get("input_size") != asked:
        raise MedsegError(f"{plans_file} was planned without --input-size {asked} (input size {plans.planner.get('input_size', 'chosen by the planner')}): add --replan to plan again")
    for name, configuration in plans.configurations.items():  # e.g. pretraining's image sources: never silently the old ones
        differing = [key for key, value in (plan_settings or {}).items() if key in configuration.training and configuration.training[key] != value]
        if differing:
            shown = "; ".join(f"{key} planned {configuration.training[key]!r}, asked {plan_settings[key]!r}" for key in differing)
            raise MedsegError(f"{plans_file} ({name}) was planned with other settings ({shown}): add --replan to plan again")
    planned = {c.architecture["name"] for c in plans.configurations.values()}
    options = plans.planner.get("model_options", {})
    if planned != {experiment.spec.family} or options != experiment.spec.options:
        shown = ", ".join(sorted(planned)) + (f" with {options}" if options else "")
        raise MedsegError(f"{plans_file} plans {shown}, not {experiment.spec}: use another plans name or --replan")
    return plans


def run_plan_and_train(
    experiment: Experiment,
    configurations: Sequence[str] | None,
    folds: Sequence[str],
    options,
    budget: TrainingBudget | None = None,
    memory_gb: float | None = None,
    replan: bool = False,
    workers: int | None = None,
    log: Callable[[str], None] = print,
    preset: str | None = None,
    plan_settings: dict | None = None,
) -> dict[str, dict]:
    """fingerprint -> plan -> preprocess -> train each fold -> cross-validation report per
    configuration. Resumable: finished folds are kept, interrupted ones continue from their
    latest checkpoint. ``options``: every run's training options (medseg.training.trainer);
    ``budget``: how training minutes are shared by the runs (the plan sizes for one run's share)."""
    from dataclasses import replace

    started = time.monotonic()  # a total budget covers the whole run: planning, preprocessing and validations too
    budget = budget or TrainingBudget()
    planned_runs = max(len(configurations or []), 1) * len(folds)  # the plan is made before the configurations are known
    precision = training_precision(options)
    plans = _fingerprint_and_plan(experiment, replan, workers, log, budget.planned_run_seconds(planned_runs), memory_gb, preset, plan_settings, precision)
    chosen = with_previous_stages(plans, list(configurations) if configurations else default_configurations(plans), log)
    for name in chosen:
        c = plans.configuration(name)
        features = c.architecture["kwargs"].get("features_per_stage")
        log(f"  {name}: patch {c.patch_size}, batch {c.batch_size}, spacing {[round(s, 3) for s in c.spacing]}, "
            f"{c.architecture['name']}" + (f" features {features}" if features else ""))
    cascades = [name for name in chosen if plans.configuration(name).previous_stage]
    if cascades and sorted(folds) != [str(k) for k in range(NUM_FOLDS)]:
        raise MedsegError(
            f"{cascades[0]} trains on {plans.configuration(cascades[0]).previous_stage}'s out-of-fold predictions of every case: "
            f"train every fold (--folds {','.join(str(k) for k in range(NUM_FOLDS))})"
        )
    run_preprocess(experiment, [name for name in chosen if name not in cascades], workers)
    log("preprocessing: done" + (f" ({', '.join(cascades)} after {', '.join(plans.configuration(n).previous_stage for n in cascades)})" if cascades else ""))
    runs = [(name, fold) for name in chosen for fold in folds]

    def finished(name: str, fold: str) -> bool:
        folder = experiment.model_folder_path(name)
        return (folder / "model.json").is_file() and experiment.model_folder(name).fold_finished(fold)

    remaining = [(n, f) for n, f in runs if not finished(n, f)]
    if len(chosen) > 1 and experiment.task.keeps_probabilities:
        options = replace(options, save_probabilities=True)  # the configuration search scores ensembles on them
    overheads = []  # minutes each run took beyond its training minutes
    # before any run has finished: what the plan measured a run's final validation to cost (classifiers)
    expected_overhead = float(plans.planner.get("validation_seconds") or 0.0) / 60
    for name, fold in runs:
        if finished(name, fold):
            log(f"{name} fold {fold}: already trained")
            continue
        if name in cascades:  # its data carry the previous stage's out-of-fold segmentations, known only now
            cascades.remove(name)
            run_preprocess(experiment, [name], workers)
            log(f"preprocessing {name}: done")
        minutes = budget.run_minutes(
            len(remaining) - len(overheads), (time.monotonic() - started) / 60, sum(overheads) / len(overheads) if overheads else expected_overhead
        )
        run_options = replace(
            options, time_budget_s=minutes * 60 if minutes else options.time_budget_s,
            continue_training=(experiment.model_folder_path(name) / f"fold_{fold}" / "checkpoint_latest.pt").is_file(),
        )
        log(f"{name} fold {fold}:")
        run_started = time.monotonic()
        run_train(experiment, name, fold, run_options, log)
        overheads.append(max((time.monotonic() - run_started) / 60 - (minutes or 0.0), 0.0))
    reports = {}
    task = experiment.task
    if all(f != "all" for f in folds) and task.crossval is not None:
        from medseg.model_card import write_card

        for name in chosen:
            reports[name] = task.crossval(experiment.model_folder(name), list(folds))
            write_card(experiment.model_folder(name), dataset=experiment.description.raw)  # data, cross-validation, checksums
    if len(reports) > 1:
        folders = [experiment.model_folder(name) for name in reports]
        choice = run_find_best(task, experiment.model_folder_path(chosen[0]).parent, folders, log)
        log(f"best configuration: {choice['best']['name']} ({choice['predict']})")
    return reports


def crossvalidated_folders(results: Path, names: Sequence[str] | None = None) -> list:
    """The dataset's model folders with a finished cross-validation (``names``: only these), all of one task."""
    from medseg.model_folders import open_model_folder

    paths = sorted(p for p in results.iterdir() if p.is_dir() and (p / "crossval_summary.json").is_file()) if results.is_dir() else []
    folders = [open_model_folder(path) for path in paths if not names or path.name in names]
    missing = sorted(set(names or []) - {f.path.name for f in folders})
    if missing:
        raise MedsegError(f"{results}: no finished cross-validation for {', '.join(missing)}")
    tasks = sorted({folder.info.task for folder in folders})
    if len(tasks) > 1:
        raise MedsegError(f"{results}: the cross-validated folders are of several tasks ({', '.join(tasks)}); name the ones to compare with -m")
    return folders


def run_find_best(task, dataset_results: Path, folders: list, log: Callable[[str], None] = print) -> dict:
    """The task's configuration search (segmentation: configurations and their ensembles of two), or
    the folder whose cross-validation report scores highest; written to best_configuration.json."""
    import json

    from medseg.atomic import write_json_atomic

    if task.find_best is not None:
        return task.find_best(dataset_results, folders, log)
    scores = {folder.path.name: task.report_score(json.loads(folder.crossval_summary_path().read_text())) for folder in folders}
    best = max(folders, key=lambda folder: scores[folder.path.name])
    choice = {
        "best": {"name": best.path.name, "members": [best.path.name], "model_folder": str(best.path)},
        "candidates": [{"name": name, "score": score} for name, score in scores.items()],
        "predict": f"medseg predict -m {best.path} -i INPUT -o OUTPUT",
    }
    write_json_atomic(dataset_results / "best_configuration.json", choice)
    return choice


def train_for_comparison(raw_folder: str, model: str, folds: list[str], configuration: str | None, options, budget: TrainingBudget) -> str:
    """One family's plan-and-train for ``compare`` (run in a process of its own, so its peak memory
    is its own); returns the trained model folder."""
    experiment = Experiment.open(Path(raw_folder), model)
    run_plan_and_train(experiment, [configuration] if configuration else None, folds, options, budget, log=lambda m: print(m, flush=True))
    name = configuration or default_configurations(experiment.plans)[0]
    return str(experiment.model_folder_path(name))


def run_compare(
    raw_folder: Path, models: Sequence[str], folds: Sequence[str], configuration: str | None, options, budget: TrainingBudget,
    log: Callable[[str], None] = print,
) -> tuple[dict, list[Path]]:
    """Train every family on the same splits and budget (each in its own spawned process, through
    ``train_for_comparison``; resumable like plan-and-train), then compare them."""
    from medseg.data.layout import load_dataset_description
    from medseg.evaluation.compare import BASELINE, compare_families, write_comparison
    from medseg.model_folder import ModelFolder
    from medseg.parallel import run_in_own_process
    from medseg.tasks.capabilities import CROSSVAL, LABEL_MAPS

    description = load_dataset_description(raw_folder)
    for model in models:
        task = Experiment.open(raw_folder, model, description=description).task  # every family checked before any training
        if not {LABEL_MAPS, CROSSVAL} <= task.capabilities:  # folds that write Dice/NSD/HD95 reports
            raise MedsegError(f"compare scores segmentations; {model} is trained by the {task.name} task")
    folders = {}
    for model in models:
        log(f"== {model}")
        try:
            path = run_in_own_process(train_for_comparison, str(raw_folder), model, list(folds), configuration, options, budget)
        except MedsegError as error:
            raise MedsegError(f"training {model} failed: {error}; rerun to resume") from None
        folders[model] = ModelFolder.open(Path(path))
    chosen = {folder.info.configuration for folder in folders.values()}
    if len(chosen) != 1:
        raise MedsegError(f"the families trained different configurations ({', '.join(sorted(chosen))}); pass -c CONFIG")
    name = chosen.pop()
    comparison = compare_families(folders, list(folds), BASELINE)
    target = results_root() / raw_folder.name / f"compare__{name}"
    return comparison, write_comparison(target, comparison, f"{raw_folder.name} {name}")


def refit_input_profile(folder) -> tuple[Path, str]:
    """``medseg calibrate``'s first part: the profile of a medseg model folder trained before
    profiles were kept, from its dataset's fingerprint when that has whole-image intensities, else
    from a fingerprint of the raw training images (read again). Returns the file and where it came from."""
    from medseg.audit.input_profile import profile_from_fingerprint, write_profile
    from medseg.data.layout import load_dataset_description
    from medseg.planning.fingerprint import Fingerprint

    normalization = [channel.get("scheme") for channel in folder.configuration.normalization]
    fingerprint_file = Path(folder.info.preprocessed_folder).parent / "fingerprint.json"
    source = None
    if fingerprint_file.is_file():
        fingerprint = Fingerprint.load(fingerprint_file)
        if fingerprint.image_intensities:
            source = str(fingerprint_file)
    if source is None:
        raw = Path(folder.info.raw_folder)
        if not (raw / "dataset.json").is_file():
            raise MedsegError(f"{folder.path}: its raw dataset {raw} is not here and its fingerprint has no whole-image intensities; "
                              "an input profile cannot be made (train again, or copy the raw dataset back)")
        from medseg.tasks.registry import get_task

        fingerprint = get_task(folder.info.task).fingerprint(load_dataset_description(raw), None, None)
        source = f"the training images in {raw}"
    return write_profile(folder.path, profile_from_fingerprint(fingerprint, normalization)), source
