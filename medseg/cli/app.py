"""The `medseg` command's Typer app, its global options and what every command group shares.
Thin: every command calls a public function; heavy imports stay inside commands so that
`medseg --help` answers at once. Errors print as one line (tracebacks with --debug)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
DATASET_HELP = "Raw dataset: name, id or folder."
PLANS_NAME_HELP = "Name of the plans file [default: medsegPlans for unet, medsegPlans_<model> for other families]."
MODEL_HELP = (
    "Registered model family (see `medseg models`), or FAMILY[option=value,...] to set its architecture options, e.g. "
    "'xlstm_unet_bot[vil_directions=forward]'; plans are named medsegPlans_<model> for anything but unet [default: unet, "
    "or the family a --preset is made for]."
)
PRESET_HELP = (
    "Preset planner settings shipped with medseg (see `medseg plans`), e.g. fast, cpu, nnunet, resenc_m, resenc_l, resenc_xl "
    "(a preset made for one family, as resenc_* for resenc_unet, plans that family when --model is not given)."
)


def model_for(model: str | None, preset: str | None) -> str:
    """--model as given; else the one family a preset is made for; else the plain U-Net."""
    if model:
        return model
    if preset:
        from medseg_plans import get_preset

        families = get_preset(preset).models
        if families and len(families) == 1:
            return families[0]
    return "unet"
PRETRAINED_HELP = "Start from a pretrained encoder (the encoder.pt `medseg pretrain` writes; ViT classifiers); for GMS the same as --autoencoder."
AUTOENCODER_HELP = (
    "GMS: the frozen autoencoder to segment in: a KL autoencoder folder (diffusers' AutoencoderKL layout) or a TAESD-family folder "
    "(NAME_encoder.pth + NAME_decoder.pth, e.g. the natural-image TAEF2) [default: the one `medseg pretrain-ae` trained on the dataset]."
)
EPOCHS_HELP = "Epochs [default: 1000, or what --time-budget buys]."
BUDGET_HELP = "Training time budget in minutes: epochs are fitted to it from the measured step time."


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


def progress_printer(label: str):
    """A progress callback printing to stderr at most ~20 times."""
    def report(done: int, total: int) -> None:
        if done == total or done % max(1, total // 20) == 0:
            err_console.print(f"  {label}: {done}/{total}", highlight=False)
    return report


def raw_folder_of(dataset: str) -> Path:
    from medseg.pipeline import prepare_task

    return prepare_task(dataset)


def one_line(error: Exception) -> str:
    """An error as one line: libraries put newlines in their messages."""
    from rich.markup import escape

    return escape(" ".join(str(error).split()))  # and no rich markup taken from file names or messages


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
        calibration = report.get("calibration")
        if isinstance(calibration, dict) and calibration.get("kind") == "temperature":  # a classifier's
            from medseg.audit.probability_calibration import calibration_lines

            for line in calibration_lines(calibration):
                console.print(line, highlight=False, soft_wrap=True, markup=False)


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

