"""`medseg info`, `convert` and `dicom list`: look at images and DICOM folders."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medseg.cli.app import app, dicom_app, console, SERIES_HELP


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
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """Convert an image between formats, keeping its geometry (e.g. a DICOM series to NIfTI)."""
    from medseg.errors import MedsegError
    from medseg.io import read_image, write_image

    if target.exists() and source.exists() and target.resolve() == source.resolve():
        raise MedsegError(f"{target}: is the input itself; choose another output")
    if target.is_dir():
        raise MedsegError(f"{target}: is a folder; give an output file name (its suffix picks the format)")
    if target.exists() and not overwrite:
        raise MedsegError(f"{target}: exists; pass --overwrite to replace it")
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
    table.columns[1].no_wrap = True  # a UID is copied whole (into --series uid:...), never cut at the terminal's width
    rows = [(str(i), s.key, s.modality, s.description, str(s.num_frames), "; ".join(s.notes)) for i, s in enumerate(scan.series)]
    for row in rows:
        table.add_row(*row)
    needed = sum(max([len(r[c]) for r in rows] + [8]) for c in range(6)) + 3 * 6 + 1
    console.print(table, width=max(console.width, min(needed, 400)))
    for path, kind in scan.non_image:
        console.print(f"non-image object: {path} ({kind})")
    if scan.skipped:
        console.print(f"{len(scan.skipped)} file(s) skipped: " + ", ".join(f"{p.name} ({why})" for p, why in scan.skipped[:5]))

