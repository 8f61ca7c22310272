"""The self-configuring pipeline, stage by stage: dataset -> fingerprint -> plans -> preprocessed
data -> trained folds -> cross-validation report. Each stage reads and writes files under
MEDSEG_ROOT, so every stage can also be run on its own from the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Sequence

from medseg.atomic import write_json_atomic
from medseg.errors import DatasetError, MedsegError
from medseg.paths import find_raw_dataset, model_folder, preprocessed_root, raw_root

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


def preprocessed_folder(raw_folder: Path) -> Path:
    return preprocessed_root() / raw_folder.name


def plans_path(raw_folder: Path, plans_name: str) -> Path:
    return preprocessed_folder(raw_folder) / f"{plans_name}.json"


def run_fingerprint(raw_folder: Path, workers: int | None = None, progress: Progress = None) -> Path:
    from medseg.data.layout import load_dataset_description
    from medseg.planning.fingerprint import extract_fingerprint

    description = load_dataset_description(raw_folder)
    fingerprint = extract_fingerprint(description, workers, progress)
    target = preprocessed_folder(raw_folder)
    fingerprint.save(target / "fingerprint.json")
    shutil.copyfile(raw_folder / "dataset.json", target / "dataset.json")
    return target / "fingerprint.json"


def run_plan(
    raw_folder: Path, model: str = "unet", memory_gb: float | None = None, step_seconds: float | None = None, plans_name: str = "medsegPlans",
    training_seconds: float | None = None,
):
    """Plan from the fingerprint; ``training_seconds`` (one run's budget) lets a CPU plan trade
    resolution for passes over the data."""
    from medseg.data.layout import load_dataset_description
    from medseg.planning.device import default_budget
    from medseg.planning.fingerprint import Fingerprint
    from medseg.planning.planner import plan_experiment

    fingerprint_file = preprocessed_folder(raw_folder) / "fingerprint.json"
    if not fingerprint_file.is_file():
        raise MedsegError(f"{fingerprint_file}: missing; run `medseg fingerprint {raw_folder.name}` first")
    fingerprint = Fingerprint.load(fingerprint_file)
    description = load_dataset_description(raw_folder)
    budget = default_budget(model, memory_gb, step_seconds, training_seconds=training_seconds)
    plans = plan_experiment(fingerprint, description, budget, model, plans_name)
    plans.save(plans_path(raw_folder, plans_name))
    return plans


def load_plans(raw_folder: Path, plans_name: str = "medsegPlans"):
    from medseg.planning.plans import Plans

    return Plans.load(plans_path(raw_folder, plans_name))


def run_preprocess(
    raw_folder: Path, configurations: Sequence[str], plans_name: str = "medsegPlans", workers: int | None = None,
    progress_factory: Callable[[str], Progress] | None = None,
) -> dict[str, tuple[int, int]]:
    from medseg.data.layout import load_dataset_description
    from medseg.preprocessing.dataset import preprocess_dataset

    plans = load_plans(raw_folder, plans_name)
    description = load_dataset_description(raw_folder)
    done = {}
    for name in configurations:
        configuration = plans.configuration(name)
        if configuration.previous_stage:
            raise MedsegError(f"configuration {name} is a cascade stage; cascades are not supported yet (train {configuration.previous_stage} and 3d_fullres)")
        folder = preprocessed_folder(raw_folder) / configuration.data_identifier
        progress = progress_factory(name) if progress_factory else None
        done[name] = preprocess_dataset(description, plans, configuration, folder, workers, progress)
    return done


def configuration_model_folder(raw_folder: Path, plans, configuration_name: str) -> Path:
    architecture = plans.configuration(configuration_name).architecture["name"]
    return model_folder(raw_folder.name, architecture, plans.plans_name, configuration_name)


def write_model_folder(raw_folder: Path, plans, configuration_name: str) -> Path:
    """Make the model folder self-describing: plans, dataset.json and what inference needs."""
    from medseg.data.layout import load_dataset_description
    from medseg.training.trainer import augmentation_for

    configuration = plans.configuration(configuration_name)
    folder = configuration_model_folder(raw_folder, plans, configuration_name)
    folder.mkdir(parents=True, exist_ok=True)
    plans.save(folder / "plans.json")
    shutil.copyfile(raw_folder / "dataset.json", folder / "dataset.json")
    description = load_dataset_description(raw_folder)
    info = {
        "configuration": configuration_name,
        "model": configuration.architecture["name"],
        "dataset_name": raw_folder.name,
        "raw_folder": str(raw_folder),
        "preprocessed_folder": str(preprocessed_folder(raw_folder) / configuration.data_identifier),
        "file_ending": description.file_ending,
        "labels": description.labels,
        "mirror_axes": list(augmentation_for(configuration).mirror_axes),
    }
    write_json_atomic(folder / "model.json", info)
    return folder


def run_train(raw_folder: Path, configuration_name: str, fold: str, options, plans_name: str = "medsegPlans", log=print) -> dict | None:
    from medseg.preprocessing.dataset import check_signature, preprocessed_case_ids
    from medseg.training.splits import fold_cases, load_or_create_splits
    from medseg.training.trainer import Trainer

    plans = load_plans(raw_folder, plans_name)
    configuration = plans.configuration(configuration_name)
    data_folder = preprocessed_folder(raw_folder) / configuration.data_identifier
    case_ids = preprocessed_case_ids(data_folder) if data_folder.is_dir() else []
    if not case_ids:
        raise MedsegError(f"{data_folder}: no preprocessed cases; run `medseg preprocess {raw_folder.name} -c {configuration_name}` first")
    check_signature(data_folder, plans, configuration)
    splits = load_or_create_splits(preprocessed_folder(raw_folder), raw_folder, case_ids)
    train, val = fold_cases(splits, fold, case_ids)
    missing = sorted(set(train + val) - set(case_ids))
    if missing:
        raise MedsegError(f"{data_folder}: cases in the splits are not preprocessed: {', '.join(missing[:5])}; rerun `medseg preprocess`")
    folder = write_model_folder(raw_folder, plans, configuration_name)
    trainer = Trainer(plans, configuration, data_folder, folder / f"fold_{fold}", train, val, options, log)
    return trainer.run()


def default_configurations(plans, device: str | None = None) -> list[str]:
    """On a GPU every trainable configuration; on a CPU the one that fits the data best (3d_fullres
    for volumes, 2d otherwise), because each extra configuration costs a full cross-validation."""
    import torch

    trainable = [name for name, c in plans.configurations.items() if not c.previous_stage]
    on_gpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if on_gpu:
        return trainable
    return ["3d_fullres"] if "3d_fullres" in trainable else ["2d"]


def fold_finished(folder: Path) -> bool:
    return (folder / "checkpoint_final.pt").is_file() and (folder / "validation" / "summary.json").is_file()


def run_plan_and_train(
    raw_folder: Path,
    configurations: Sequence[str] | None,
    folds: Sequence[str],
    options_factory: Callable[[int], object],
    memory_gb: float | None = None,
    plans_name: str = "medsegPlans",
    replan: bool = False,
    workers: int | None = None,
    log: Callable[[str], None] = print,
    training_seconds: float | None = None,
    model: str = "unet",
) -> dict[str, dict]:
    """fingerprint -> plan -> preprocess -> train each fold -> cross-validation report per
    configuration. Resumable: finished folds are kept, interrupted ones continue from their
    latest checkpoint. ``options_factory(num_runs)`` gives the training options of each run;
    ``training_seconds`` is one run's budget, for the plan; ``model`` the registered family planned."""
    from medseg.evaluation.crossval import best_configuration, collect_crossval
    from medseg.planning.fingerprint import Fingerprint

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
        plans = run_plan(raw_folder, model, memory_gb=memory_gb, plans_name=plans_name, training_seconds=training_seconds)
        log(f"plans: {plans_file} ({plans.planner['mode']} budget)")
    else:
        plans = load_plans(raw_folder, plans_name)
        log(f"plans: reusing {plans_file} (--replan to plan again)")
        planned = {c.architecture["name"] for c in plans.configurations.values()}
        if planned != {model}:
            raise MedsegError(f"{plans_file} plans {', '.join(sorted(planned))}, not {model}: use another plans name or --replan")
    chosen = list(configurations) if configurations else default_configurations(plans)
    for name in chosen:
        c = plans.configuration(name)
        log(f"  {name}: patch {c.patch_size}, batch {c.batch_size}, spacing {[round(s, 3) for s in c.spacing]}, "
            f"{c.architecture['name']} features {c.architecture['kwargs'].get('features_per_stage')}")
    run_preprocess(raw_folder, chosen, plans_name, workers)
    log("preprocessing: done")
    runs = [(name, fold) for name in chosen for fold in folds]
    remaining = [(n, f) for n, f in runs if not fold_finished(configuration_model_folder(raw_folder, plans, n) / f"fold_{f}")]
    reports = {}
    for name, fold in runs:
        folder = configuration_model_folder(raw_folder, plans, name) / f"fold_{fold}"
        if fold_finished(folder):
            log(f"{name} fold {fold}: already trained")
            continue
        options = options_factory(len(remaining))
        options.continue_training = (folder / "checkpoint_latest.pt").is_file()
        log(f"{name} fold {fold}:")
        run_train(raw_folder, name, fold, options, plans_name, log)
    for name in chosen:
        folder = configuration_model_folder(raw_folder, plans, name)
        if all(f != "all" for f in folds):
            reports[name] = collect_crossval(folder, [f for f in folds])
    if len(reports) > 1:
        best = best_configuration(folder.parent, reports)
        log(f"best configuration: {best}")
    return reports
