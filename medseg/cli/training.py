"""The self-configuring pipeline's stages: `fingerprint`, `plan`, `preprocess`, `train`, `plan-and-train`, `pretrain`, `pretrain-ae`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medseg.cli.app import (
    AUTOENCODER_HELP, BUDGET_HELP, DATASET_HELP, EPOCHS_HELP, MODEL_HELP, PLANS_NAME_HELP, PRESET_HELP, PRETRAINED_HELP, app, console, err_console, print_report_tables,
    model_for, progress_printer, raw_folder_of,
)
from medseg.cli.datasets import run_dataset_check

INPUT_SIZE_HELP = (
    "2D image tasks (classifiers, MAE / autoencoder pretraining, GMS): the square side images are resized to, instead of the planner's "
    "choice (a multiple of a ViT's patch or a CNN's stride of 32); the CPU plan then sizes only the batch."
)


DEMO_TIME_BUDGET_MINUTES = 12.0


@app.command()
def fingerprint(
    dataset: str = typer.Argument(..., metavar="DATASET", help=DATASET_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes [default: CPU count]."),
) -> None:
    """Extract the dataset fingerprint (spacings, cropped shapes, foreground intensities)."""
    from medseg.data.layout import load_dataset_description
    from medseg.pipeline import run_fingerprint

    path = run_fingerprint(load_dataset_description(raw_folder_of(dataset)), workers, progress_printer("fingerprint"))
    console.print(f"wrote {path}")


@app.command()
def plan(
    dataset: str = typer.Argument(..., metavar="DATASET", help=DATASET_HELP),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    memory_gb: Optional[float] = typer.Option(None, "--memory-gb", help="Size for this much GPU memory, nnU-Net's rule [default: GPU memory on a GPU, a time budget per step on a CPU]."),
    step_seconds: Optional[float] = typer.Option(None, "--step-seconds", help="CPU planning: target seconds per training step [default: 1]."),
    plans_name: Optional[str] = typer.Option(None, "--plans-name", help=PLANS_NAME_HELP),
    time_budget: Optional[float] = typer.Option(
        None, "--time-budget", help="CPU planning: training minutes of one run; too few passes over the data at full resolution plan a coarser one."
    ),
    preset: Optional[str] = typer.Option(None, "--preset", help=PRESET_HELP),
    precision: str = typer.Option("auto", "--precision", help="CPU planning: time training steps in this precision (as `train --precision`; auto resolved here)."),
    input_size: Optional[int] = typer.Option(None, "--input-size", help=INPUT_SIZE_HELP),
) -> None:
    """Plan configurations (2d, 3d_fullres, 3d_lowres) from the fingerprint."""
    import torch

    from medseg.experiment import Experiment
    from medseg.pipeline import run_plan
    from medseg.precision import resolve_precision

    experiment = Experiment.open(raw_folder_of(dataset), model_for(model, preset), plans_name)
    precision = resolve_precision(precision, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    plans = run_plan(experiment, memory_gb, step_seconds, time_budget * 60 if time_budget else None, preset, precision=precision, plan_settings=input_settings(input_size))
    for name, c in plans.configurations.items():
        console.print(f"{name}: patch {c.patch_size} batch {c.batch_size} spacing {[round(s, 4) for s in c.spacing]} strides {c.architecture['kwargs'].get('strides')}")
    console.print(f"wrote {experiment.plans_file} ({plans.planner})")


@app.command()
def preprocess(
    dataset: str = typer.Argument(..., metavar="DATASET", help=DATASET_HELP),
    configurations: list[str] = typer.Option(["3d_fullres"], "-c", "--configuration", help="Configuration(s) to preprocess (repeatable)."),
    plans_name: str = typer.Option("medsegPlans", "--plans-name"),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes [default: CPU count]."),
) -> None:
    """Crop, normalise and resample the training cases (resumable: finished cases are kept)."""
    from medseg.experiment import Experiment
    from medseg.pipeline import run_preprocess

    done = run_preprocess(Experiment.from_plans(raw_folder_of(dataset), plans_name), configurations, workers, progress_printer)
    for name, (new, kept) in done.items():
        console.print(f"{name}: {new} case(s) preprocessed, {kept} already done")


def training_options(epochs, iterations, learning_rate, optimizer, batch_size, time_budget, device, validate, seed, pretrained=None, precision="float32"):
    from medseg.training.trainer import TrainingOptions

    return TrainingOptions(
        epochs=epochs, iterations_per_epoch=iterations, learning_rate=learning_rate, optimizer=optimizer, batch_size=batch_size,
        time_budget_s=time_budget * 60 if time_budget else None, device=device, final_validation=validate, seed=seed,
        pretrained=str(pretrained) if pretrained else None, precision=precision,
    )


def starting_weights(experiment, pretrained: Path | None, autoencoder: Path | None) -> Path | None:
    """--pretrained, or --autoencoder for a task that segments in a latent space (GMS)."""
    from medseg.errors import MedsegError
    from medseg.tasks.capabilities import LATENT_SPACE

    if autoencoder is None:
        return pretrained
    if LATENT_SPACE not in experiment.task.capabilities:
        raise MedsegError(f"--autoencoder is for models that segment in an autoencoder's latent space (gms); {experiment.spec.family} is trained by the {experiment.task.name} task")
    if pretrained is not None and Path(pretrained).resolve() != Path(autoencoder).resolve():
        raise MedsegError(f"--pretrained {pretrained} and --autoencoder {autoencoder} name different folders; give one")
    return autoencoder


PRECISION_HELP = (
    "Training forward: auto (bfloat16 on CPUs with native bf16, where it trained 1.6-1.9x more samples at an equal or better Dice "
    "in 10 minutes: README; else float32), float32, or bfloat16 (autocast; weights, optimizer and loss stay float32). "
    "Tasks that do not train in bf16 yet say so and use float32."
)


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
    autoencoder: Optional[Path] = typer.Option(None, "--autoencoder", help=AUTOENCODER_HELP),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    save_probabilities: bool = typer.Option(
        False, "--save-probabilities", help="The final validation also keeps each held-out case's probabilities (what find-best-configuration ensembles).",
    ),
) -> None:
    """Train one fold of one configuration (multi-process: launch with torchrun)."""
    from medseg.experiment import Experiment
    from medseg.pipeline import run_train

    experiment = Experiment.from_plans(raw_folder_of(dataset), plans_name)
    pretrained = starting_weights(experiment, pretrained, autoencoder)
    options = training_options(epochs, iterations, learning_rate, optimizer, batch_size, time_budget, device, validate, seed, pretrained, precision)
    options.continue_training, options.save_probabilities = resume, save_probabilities
    report = run_train(experiment, configuration, fold, options, log=lambda m: console.print(m, highlight=False))
    if report:
        print_report_tables(experiment.task, {configuration: report})


@app.command("plan-and-train")
def plan_and_train(
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset name, id or folder (e.g. AbdomenMRI)."),
    task: Optional[str] = typer.Option(None, "--task", help="Same as --dataset (the name nnU-Net users know)."),
    demo: bool = typer.Option(False, "--demo", help="Use the built-in synthetic demo of the dataset (built if missing)."),
    configurations: list[str] = typer.Option([], "-c", "--configuration", help="Configurations to train [default: all on a GPU; 3d_fullres (or 2d) on a CPU]."),
    folds: str = typer.Option("0,1,2,3,4", "--folds", help="Comma-separated folds, or 'all'."),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help="Total minutes of the whole run (planning, preprocessing, training, final validations), shared by configurations x folds: each run trains for what is left, less what a run took beyond its training [default with --demo: 12]."),
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
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    preset: Optional[str] = typer.Option(None, "--preset", help=PRESET_HELP),
    pretrained: Optional[Path] = typer.Option(None, "--pretrained", help=PRETRAINED_HELP),
    autoencoder: Optional[Path] = typer.Option(None, "--autoencoder", help=AUTOENCODER_HELP),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    plans_name: Optional[str] = typer.Option(None, "--plans-name", help=PLANS_NAME_HELP + " An existing plans file of that name is used as it is (edited by hand, as nnU-Net's -p), unless --replan."),
    input_size: Optional[int] = typer.Option(None, "--input-size", help=INPUT_SIZE_HELP),
) -> None:
    """Run the whole self-configuring pipeline and print the cross-validation table.

    Resumable: rerunning keeps finished folds and continues interrupted ones."""
    from medseg.errors import MedsegError
    from medseg.experiment import Experiment, TrainingBudget
    from medseg.paths import preprocessed_folder
    from medseg.pipeline import prepare_task, run_plan_and_train

    if dataset and task and dataset != task:
        raise MedsegError(f"--dataset {dataset} and --task {task} name different datasets; give one")
    name = dataset or task
    if not name:
        raise MedsegError("name the dataset: --dataset NAME (or --task NAME)")
    folder = prepare_task(name, demo, progress_console=err_console)
    if demo and time_budget is None and run_budget is None and epochs is None:
        time_budget = DEMO_TIME_BUDGET_MINUTES
    budget = TrainingBudget(time_budget, run_budget)
    fingerprinting = replan or not (preprocessed_folder(folder) / "fingerprint.json").is_file()
    check = run_dataset_check(folder, strict=False, workers=workers, fingerprint=fingerprinting)  # one pass: the fingerprint keeps what it read
    if check is None:
        raise typer.Exit(1)
    experiment = Experiment.open(folder, model_for(model, preset), plans_name, check=check)
    pretrained = starting_weights(experiment, pretrained, autoencoder)
    options = training_options(epochs, iterations, learning_rate, optimizer, None, None, device, True, 0, pretrained, precision)
    reports = run_plan_and_train(
        experiment, configurations or None, [f.strip() for f in folds.split(",") if f.strip()], options, budget, memory_gb, replan=replan,
        workers=workers, log=lambda m: console.print(m, highlight=False), preset=preset, plan_settings=input_settings(input_size),
    )
    print_report_tables(experiment.task, {f"{name} cross-validation": report for name, report in reports.items()})


def input_settings(input_size: int | None) -> dict | None:
    if input_size is None:
        return None
    if input_size <= 0:
        from medseg.errors import MedsegError

        raise MedsegError(f"--input-size {input_size}: expected a side in pixels")
    return {"input_size": input_size}


def _pretrain(dataset, model, time_budget, epochs, iterations, learning_rate, test_images, replan, device, workers, extra_images=(), pretrained=None, precision="float32", input_size=None) -> Path:
    """Plan and train a pretraining family on fold 'all'; returns its fold folder."""
    from medseg.errors import MedsegError
    from medseg.experiment import Experiment, TrainingBudget
    from medseg.pipeline import prepare_task, run_plan_and_train
    from medseg.tasks.capabilities import PRETRAINS

    folder = prepare_task(dataset, False, progress_console=err_console)
    experiment = Experiment.open(folder, model)
    task, family = experiment.task, experiment.spec.family
    if PRETRAINS not in task.capabilities:
        raise MedsegError(f"{family} is trained by the {task.name} task; pretraining runs mae_vit (`medseg pretrain`) or kl_autoencoder (`medseg pretrain-ae`)")
    if time_budget is None and epochs is None:
        raise MedsegError("give the pretraining a budget: --time-budget MIN or --epochs N")
    if run_dataset_check(folder, strict=False, workers=workers) is None:
        raise typer.Exit(1)
    options = training_options(epochs, iterations, learning_rate, None, None, None, device, False, 0, pretrained, precision)
    settings = {"include_test": test_images, "extra_images": [str(Path(p).resolve()) for p in extra_images], **(input_settings(input_size) or {})}
    run_plan_and_train(
        experiment, None, ["all"], options, TrainingBudget(per_run_minutes=time_budget), replan=replan, workers=workers,
        log=lambda m: console.print(m, highlight=False, markup=False, soft_wrap=True), plan_settings=settings,
    )
    return experiment.model_folder_path("2d") / "fold_all"


@app.command()
def pretrain(
    dataset: str = typer.Option(..., "--dataset", "--task", help="Dataset name, id or folder."),
    model: str = typer.Option("mae_vit", "--model", help="A pretraining family, e.g. mae_vit or 'mae_vit[mask_ratio=0.75]' (see `medseg models`)."),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help="Training minutes."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help=EPOCHS_HELP),
    iterations: int = typer.Option(250, "--iterations-per-epoch"),
    learning_rate: Optional[float] = typer.Option(None, "--learning-rate"),
    test_images: bool = typer.Option(True, "--test-images/--no-test-images", help="Learn from the unlabelled imagesTs too (labels are never used)."),
    images: list[Path] = typer.Option([], "--images", help="More image folders to learn from (repeatable; colour turned to grayscale for a grayscale dataset)."),
    pretrained: Optional[Path] = typer.Option(None, "--pretrained", help="Continue from this encoder.pt (an earlier run's, or another dataset's of the same width, depth and patch); the decoder starts fresh."),
    input_size: Optional[int] = typer.Option(None, "--input-size", help="Pretrain at this image side (e.g. the classifier's planned side, so that pretraining and fine-tuning see one scale) instead of the side the budget plans."),
    replan: bool = typer.Option(False, "--replan", help="Fingerprint and plan again even if plans exist."),
    device: Optional[str] = typer.Option(None, "--device"),
    workers: Optional[int] = typer.Option(None, "--workers"),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
) -> None:
    """Self-supervised pretraining on a dataset's images (labels unused): writes the encoder that
    `plan-and-train --model vit --pretrained ENCODER` fine-tunes, and reconstruction PNGs per epoch."""
    fold = _pretrain(dataset, model, time_budget, epochs, iterations, learning_rate, test_images, replan, device, workers, images, pretrained, precision, input_size)
    if (fold / "encoder.pt").is_file():
        console.print(f"encoder: {fold / 'encoder.pt'}\nfine-tune: medseg plan-and-train --dataset {dataset} --model vit --pretrained {fold / 'encoder.pt'}", highlight=False, markup=False, soft_wrap=True)
    else:
        console.print(f"autoencoder: {fold / 'autoencoder'}\nGMS: medseg plan-and-train --dataset {dataset} --model gms --autoencoder {fold / 'autoencoder'}", highlight=False, markup=False, soft_wrap=True)


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

