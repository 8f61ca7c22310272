"""`medseg predict` through the front door (medseg.tasks.open_predictor), and `export`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medseg.cli.app import app, console, err_console, BATCH_SERIES_HELP, progress_printer, one_line


@app.command()
def predict(
    input: Path = typer.Option(
        ..., "-i", "--input",
        help="Image file, DICOM folder (searched recursively: every image series is a case), zip, or a folder mixing them (CASE_XXXX.ext per channel).",
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder (outputs and manifest.jsonl)."),
    model: Path = typer.Option(
        ..., "-m", "--model",
        help="Model folder: medseg's (results/DatasetXXX/unet__medsegPlans__3d_fullres), nnU-Net v2's (nnUNetTrainer__nnUNetPlans__3d_fullres), "
        "a MONAI bundle, an installed model's name, or a TotalSegmentator task (total, total_mr, lung_vessels, ...: its weights where TotalSegmentator "
        "keeps them, or WEIGHTS_DIR/TASK).",
    ),
    formats: Optional[str] = typer.Option(
        None, "--format", help="Comma-separated outputs: label (the model's file format, default), nifti, png, dicom-seg, rtstruct, overlay, slices, measurements (per-structure volume, components, box, intensities; the batch also gets measurements.csv).",
    ),
    resume: bool = typer.Option(False, "--resume", help="Skip cases the output folder's manifest.jsonl records as complete."),
    qc: str = typer.Option(
        "warn", "--qc", help="Check each input against the model's training images (spacing, field of view, slices, orientation, DICOM modality, "
        "intensities): warn (record the findings and flag the case for review), refuse (fail the case) or off.",
    ),
    workers: int = typer.Option(0, "--workers", help="Threads reading cases ahead and writing outputs behind the network (0: none); with --backend ray, Ray actors (0: CPUs / 2)."),
    folds: Optional[str] = typer.Option(None, "--folds", help="Comma-separated folds to ensemble [default: all trained]."),
    checkpoint: str = typer.Option("auto", "--checkpoint", help="final, best or auto (final, else best)."),
    overlap: float = typer.Option(0.5, "--overlap", help="Sliding-window overlap, 0-0.95."),
    windows_per_batch: Optional[int] = typer.Option(None, "--windows-per-batch", help="Windows per forward pass. Default: on CPUs 1 or 2, whichever a timed forward of each runs faster per window (PyTorch runs one small 3D window through a slower convolution); 4 on GPUs (1.6x faster than 1 on an H200)."),
    tta: bool = typer.Option(True, "--tta/--no-tta", help="Mirroring test-time augmentation."),
    tta_axes: Optional[str] = typer.Option(
        None, "--tta-axes", help="Mirror only these spatial axes (comma-separated, of those the model allows): each axis doubles the forward passes.",
    ),
    save_probabilities: bool = typer.Option(False, "--save-probabilities", help="Also write CASE.probabilities.npz (K, *spatial)."),
    device: Optional[str] = typer.Option(None, "--device"),
    series: Optional[str] = typer.Option(None, "--series", help=BATCH_SERIES_HELP),
    runtime: str = typer.Option(
        "torch", "--runtime",
        help="torch; onnx: the folder's ONNX export (medseg export) run by ONNX Runtime; openvino: the networks compiled by OpenVINO (cached per machine; "
        "float32 or bfloat16 as --precision says); auto: the fastest of those installed whose labels equal PyTorch float32's on the model's own "
        "validation case (measured once per model and machine, then remembered).",
    ),
    precision: str = typer.Option(
        "auto", "--precision",
        help="auto (bfloat16 on CPUs with native bf16 instructions, else float32), float32, or bfloat16: the forward under bf16 autocast, logits summed in float32.",
    ),
    backend: str = typer.Option("local", "--backend", help="local, or ray: cases spread over a Ray cluster (--workers: actors, default CPUs/2)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (HOST:PORT or auto) [default: start a local Ray]."),
    fast: bool = typer.Option(False, "--fast", help="TotalSegmentator tasks (-m total, -m total_mr): the 3 mm model instead of the 1.5 mm parts."),
    roi_subset: Optional[str] = typer.Option(
        None, "--roi-subset", help="TotalSegmentator tasks: only these structures (comma-separated class names); only the parts that hold them run, on a crop around them.",
    ),
) -> None:
    """Apply a trained model folder (medseg's, or an nnU-Net v2 one) to images (fold ensemble);
    segmentations come out in their original geometry."""
    from medseg.errors import MedsegError
    from medseg.tasks import BatchRequest, PredictorOptions, open_predictor

    mirror: bool | list[int] = tta
    if tta_axes is not None:
        if not tta:
            raise MedsegError("--tta-axes and --no-tta contradict each other")
        try:
            mirror = [int(a) for a in tta_axes.split(",") if a.strip()]
        except ValueError:
            raise MedsegError(f"--tta-axes {tta_axes!r}: expected comma-separated axis numbers such as 1,2") from None
    options = PredictorOptions(
        folds=folds.split(",") if folds else None, checkpoint=checkpoint, device=device, overlap=overlap, mirror=mirror,
        windows_per_batch=windows_per_batch, runtime=runtime, precision=precision, backend=backend, address=address,
        fast=fast, roi_subset=[name.strip() for name in roi_subset.split(",") if name.strip()] if roi_subset else None,
    )
    predictor = open_predictor(model, options, surface="medseg predict")
    if getattr(predictor, "runtime_choice", None):
        console.print(runtime_choice_line(predictor.runtime_choice), highlight=False, soft_wrap=True)
    request = BatchRequest(
        source=input, output=output, formats=formats, save_probabilities=save_probabilities, series=series, resume=resume, workers=workers,
        progress=progress_printer("predict"), qc=qc,
    )
    result = predictor.predict_batch(request)
    _print_batch_summary(result, output)
    if result.failed:
        raise typer.Exit(1)


def runtime_choice_line(choice: dict) -> str:
    """'runtime auto: openvino (0.41 s vs torch 0.93 s on case_007, labels equal; measured)'."""
    tried = choice.get("tried", {})
    timings = ", ".join(f"{name} {entry['seconds']:.3g} s" if "seconds" in entry else f"{name} failed" for name, entry in tried.items())
    how = "remembered" if "cached" in choice else "measured" if "measured" in choice else choice.get("why", "")
    fallback = "; none matched PyTorch float32's labels, so torch float32" if choice.get("float32_fallback") else ""
    return f"runtime auto: {choice['runtime']}" + (f" ({timings} on {choice.get('case')}{fallback}; {how})" if tried else f" ({how})")


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
    for entry in getattr(result, "entries", []):
        if entry.get("review", {}).get("flag") and not entry.get("error"):
            reasons = entry["review"]["reasons"]
            console.print(f"[yellow]review[/yellow] {entry['case']}: {one_line(reasons[0])}{f' (+{len(reasons) - 1} more)' if len(reasons) > 1 else ''}", highlight=False, soft_wrap=True)
    for case_id, error in result.failed.items():
        err_console.print(f"[red]failed[/red] {case_id}: {one_line(error)}", highlight=False, soft_wrap=True)
    if getattr(result, "manifest", None):
        console.print(f"manifest: {result.manifest}", highlight=False)
    if getattr(result, "measurements_csv", None):
        console.print(f"measurements: {result.measurements_csv}", highlight=False)


@app.command()
def export(
    model: Path = typer.Argument(..., help="Model folder (medseg's or nnU-Net v2's)."),
    format: str = typer.Option("onnx", "--format", help="onnx (networks for ONNX Runtime) or package (one archive for `medseg models install`)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Export folder [default: MODEL/onnx]; for a package the archive or its folder [default: beside MODEL]."),
    folds: Optional[str] = typer.Option(None, "--folds", help="Comma-separated folds [default: all trained]."),
    checkpoint: str = typer.Option("auto", "--checkpoint", help="final, best or auto (final, else best)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing export."),
) -> None:
    """Export a segmentation model's networks to ONNX with its plans, labels and postprocessing, so
    `medseg predict --runtime onnx` runs it through ONNX Runtime; or the whole model as one package
    (weights, plans, card) that `medseg models install` installs."""
    from medseg.errors import MedsegError
    from medseg.inference.onnx_export import DEFAULT_SUBFOLDER, export_onnx
    from medseg.model_folders import open_model_folder
    from medseg.tasks import get_task
    from medseg.tasks.capabilities import ONNX
    from medseg.tasks.prediction import require_capabilities

    if format not in ("onnx", "package"):
        raise MedsegError(f"--format {format!r}: choose onnx or package")
    folder = open_model_folder(model)
    if format == "package":
        from medseg.model_folder import ModelFolder
        from medseg.model_packages import export_package

        if type(folder) is not ModelFolder:
            raise MedsegError(f"{model}: only medseg's own model folders are packaged (this one is read by another reader)")
        archive, digest = export_package(folder, output, folds.split(",") if folds else None, checkpoint)
        console.print(f"wrote {archive}\nsha256 {digest} (also in {archive.name}.sha256)", highlight=False, soft_wrap=True, markup=False)
        return
    task = get_task(folder.info.task)
    require_capabilities(folder, task, {ONNX}, "medseg export --format onnx")
    target = output or folder.path / DEFAULT_SUBFOLDER
    graph = task.onnx_graph(folder, checkpoint) if task.onnx_graph else None
    info = export_onnx(folder, target, folds.split(",") if folds else None, checkpoint, overwrite=overwrite, graph=graph)
    worst = max(info["max_abs_difference_vs_torch"].values())
    console.print(f"exported fold(s) {', '.join(info['folds'])} to {target} (opset {info['opset']}; largest {info['output']['values']} difference to PyTorch {worst:.1e})", highlight=False, soft_wrap=True)

