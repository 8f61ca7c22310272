"""Output formats of ``medseg predict --format``: one writer per format, several per run.

- ``label``     CASE + the model's file ending (its training labels' format; the default), the label
                map in the input's geometry
- ``nifti``     CASE.nii.gz
- ``png``       CASE.png (2D inputs)
- ``dicom-seg`` CASE.seg.dcm: DICOM SEG (highdicom) referencing the source series (DICOM inputs)
- ``rtstruct``  CASE.rtstruct.dcm: RT structure set (rt-utils) on the source series (DICOM volumes)
- ``dicom-sr``  CASE.sr.dcm: a TID 1500 measurement report (medseg.io.dicom.report) referencing the
                SEG's segments (asking for it writes the DICOM SEG too): volumes, mean intensities,
                the review flag and the input-check findings
- ``overlay``   CASE.overlay.png: the image with the labels in colour (3D: a grid of slices
                through the labelled region) for a quick look
- ``slices``    CASE.slices/0000.png ...: every slice's overlay (what ``medseg serve``'s page slides through)
- ``measurements`` CASE.measurements.json: each structure's size, components, box and intensities
                (medseg.audit.measurements); the batch also gets one measurements.csv

Every file is written atomically. A format that does not apply to an input (a DICOM SEG of a NIfTI
file) is skipped with the reason, which the manifest records; a format that applies but fails is
the case's failure. No foreground at all: DICOM SEG and RTSTRUCT need at least one segment, so
they are skipped with that reason (the label image is still written)."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from medseg.errors import MedsegError
from medseg.io import MedicalImage, write_image

FORMATS = ("label", "nifti", "png", "dicom-seg", "rtstruct", "dicom-sr", "overlay", "slices", "measurements")
FILE_NAMES = {
    "label": "{case}{ending}", "nifti": "{case}.nii.gz", "png": "{case}.png", "dicom-seg": "{case}.seg.dcm", "rtstruct": "{case}.rtstruct.dcm",
    "dicom-sr": "{case}.sr.dcm", "overlay": "{case}.overlay.png", "slices": "{case}.slices", "measurements": "{case}.measurements.json",
}


class NotApplicable(Exception):
    """The format does not apply to this input; the message says why."""


class NoSegment(NotApplicable):
    """The prediction has no foreground, so a DICOM object (which needs a segment) is not made: a
    result, not a mismatch between the input and the format."""


@dataclass
class OutputContext:
    """The batch's context: what the writers need besides the prediction (the model's labels, codes
    and identity) and how each input is checked before it is predicted."""

    labels: dict[str, int]
    file_ending: str  # the model's label file format ('.nii.gz', '.png', ...)
    model_folder: Path
    algorithm_name: str
    version: str
    qc: str = "warn"  # input checks (medseg.audit.input_checks): warn, refuse or off
    input_profile: dict | None = None  # the model's training inputs, which the checks compare with
    calibration: dict | None = None  # expected Dice per structure and review thresholds (medseg.audit.calibration)
    _codes: dict = field(default_factory=dict)

    def codes(self) -> dict:
        if not self._codes:
            from medseg.io.dicom.codes import segment_codes

            self._codes.update(segment_codes(self.labels, self.model_folder))
        return self._codes


def parse_formats(text: str | None) -> list[str]:
    """``--format`` (comma-separated) -> formats; None: the model's own label file format."""
    if not text:
        return ["label"]
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise MedsegError(f"--format {text!r}: unknown format(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(FORMATS)}")
    if "dicom-sr" in formats and "dicom-seg" not in formats:  # the report references the SEG's segments
        formats.insert(formats.index("dicom-sr"), "dicom-seg")
    formats = list(dict.fromkeys(formats))
    if "dicom-sr" in formats and formats.index("dicom-sr") < formats.index("dicom-seg"):
        formats.remove("dicom-sr")
        formats.insert(formats.index("dicom-seg") + 1, "dicom-sr")
    return formats


def output_path(output: Path, case_id: str, fmt: str, file_ending: str) -> Path:
    """A file directly in ``output``: case ids and file endings are checked where they are made
    (inputs, model.json); this refuses anything that would still leave the folder."""
    name = FILE_NAMES[fmt].format(case=case_id, ending=file_ending)
    if "/" in name or "\\" in name or name.startswith("."):
        raise MedsegError(f"{case_id}: output name {name!r} would leave the output folder {output}")
    return output / name


def _label_map(segmentation: MedicalImage) -> np.ndarray:
    return np.asarray(segmentation.array[0])


# A writer: (segmentation, input image, context, target) -> (the path written, notes for the manifest)
Written = tuple[Path, list[str]]


def _write_label_image(segmentation: MedicalImage, image: MedicalImage, context: OutputContext, target: Path) -> Written:
    if target.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp") and segmentation.ndim != 2:
        raise NotApplicable(f"PNG holds 2D label maps; this prediction is {segmentation.ndim}D (use nifti)")
    return write_image(segmentation, target), []


def _sources(segmentation: MedicalImage, case_id: str):
    from medseg.io.dicom.sources import has_dicom_source, load_sources

    source = segmentation.metadata.get("source", {})
    if not has_dicom_source(source):
        raise NotApplicable(f"the input is not a DICOM series ({source.get('source_format', 'unknown format')})")
    return load_sources(source, case_id)


def _write_derived(writer_name: str) -> Callable:
    def write(segmentation: MedicalImage, image: MedicalImage, context: OutputContext, target: Path) -> Written:
        from medseg.io.dicom import derived

        sources = _sources(segmentation, target.name)
        algorithm = derived.Algorithm(context.algorithm_name, context.version)
        try:
            written = getattr(derived, writer_name)(_label_map(segmentation), context.labels, context.codes(), sources, algorithm, target)
        except derived.UnsupportedSource as reason:
            raise NotApplicable(str(reason)) from None
        if written is None:
            raise NoSegment("no label was found in this case; a DICOM object needs at least one segment")
        return written, sources.notes

    return write


def _write_report(segmentation: MedicalImage, image: MedicalImage, context: OutputContext, target: Path) -> Written:
    from medseg.audit.measurements import measure_structures
    from medseg.io.dicom import derived
    from medseg.io.dicom.report import write_dicom_sr

    sources = _sources(segmentation, target.name)
    seg = target.with_name(FILE_NAMES["dicom-seg"].format(case=target.name.removesuffix(".sr.dcm")))
    if not seg.is_file():
        raise NoSegment("no DICOM SEG was made for this case (no label was found), so the report has no segment to reference")
    measurements = measure_structures(_label_map(segmentation), image, context.labels)
    audit = image.metadata.get("audit", {})
    return write_dicom_sr(seg, measurements, audit, sources, derived.Algorithm(context.algorithm_name, context.version), target), sources.notes


def _write_overlay(segmentation: MedicalImage, image: MedicalImage, context: OutputContext, target: Path) -> Written:
    from medseg.inference.overlay import overlay_png

    return overlay_png(image.array, _label_map(segmentation), target), []


def _write_slices(segmentation: MedicalImage, image: MedicalImage, context: OutputContext, target: Path) -> Written:
    from medseg.inference.overlay import overlay_slice_pngs

    return overlay_slice_pngs(image.array, _label_map(segmentation), target), []


def _write_measurements(segmentation: MedicalImage, image: MedicalImage, context: OutputContext, target: Path) -> Written:
    from medseg.atomic import write_text_atomic
    from medseg.audit.measurements import measure_structures, measurements_json

    measurements = measure_structures(_label_map(segmentation), image, context.labels)
    write_text_atomic(target, measurements_json(measurements))
    return target, []


WRITERS: dict[str, Callable] = {
    "label": _write_label_image, "nifti": _write_label_image, "png": _write_label_image, "dicom-seg": _write_derived("write_dicom_seg"),
    "rtstruct": _write_derived("write_rtstruct"), "dicom-sr": _write_report, "overlay": _write_overlay, "slices": _write_slices, "measurements": _write_measurements,
}


@dataclass
class CaseOutputs:
    written: dict[str, str] = field(default_factory=dict)  # format -> path
    skipped: dict[str, str] = field(default_factory=dict)  # format -> why it does not apply
    notes: list[str] = field(default_factory=list)


STAGING_PREFIX = ".medseg-case-"  # OUTPUT/.medseg-case-PID-XXXX: a case's outputs before they are all written
FAILED_FOLDER = "failed"  # OUTPUT/failed/: what a failed case had written, kept for a look, apart from finished outputs


def write_outputs(segmentation: MedicalImage, image: MedicalImage, case_id: str, output: Path, formats: list[str], context: OutputContext) -> CaseOutputs:
    """Write every format into a hidden staging folder, then move them into ``output`` together: a
    case appears there only when all its formats were written (a failed DICOM SEG never leaves a
    NIfTI beside it that looks finished). A MedsegError of one format fails the case after the others
    ran; what they wrote goes to ``output/failed/`` (listed in the failure). A full disk or another
    OS error is a MedsegError naming the file."""
    import shutil
    import tempfile

    result = CaseOutputs()
    errors, mismatched = [], []
    try:
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=output))
    except OSError as error:
        raise MedsegError(f"{output}: cannot write {case_id}'s outputs ({error.strerror or error})") from None
    try:
        for fmt in formats:
            target = output_path(staging, case_id, fmt, context.file_ending)
            if str(target) in result.written.values():  # 'label' and 'nifti' of a NIfTI model: one file
                result.written[fmt] = str(target)
                continue
            try:
                path, notes = WRITERS[fmt](segmentation, image, context, target)
                result.written[fmt] = str(path)
                result.notes.extend(note for note in notes if note not in result.notes)
            except NotApplicable as reason:
                result.skipped[fmt] = str(reason)
                if not isinstance(reason, NoSegment):
                    mismatched.append(fmt)
            except MedsegError as error:
                errors.append(f"{fmt}: {error}")
            except OSError as error:
                errors.append(f"{fmt}: {output_path(output, case_id, fmt, context.file_ending)}: cannot be written ({error.strerror or error})")
                if error.errno == errno.ENOSPC:
                    break  # nothing else fits either
        if mismatched and len(mismatched) == len(formats):  # e.g. a NIfTI input with only DICOM formats: nothing to write
            errors.append("none of the formats asked for applies to this input: " + "; ".join(f"{fmt}: {result.skipped[fmt]}" for fmt in mismatched))
        destination = output / FAILED_FOLDER if errors else output
        try:
            if result.written:
                destination.mkdir(exist_ok=True)
            moved = {path: str(_move_into(Path(path), destination)) for path in dict.fromkeys(result.written.values())}
            result.written = {fmt: moved[path] for fmt, path in result.written.items()}
            if not errors:  # an earlier failed attempt's leftovers of this case are superseded
                for path in moved.values():
                    _remove(output / FAILED_FOLDER / Path(path).name)
        except OSError as error:
            raise OutputsFailed(CaseOutputs(skipped=result.skipped), f"{case_id}: outputs cannot be moved into {destination} ({error.strerror or error})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if errors:
        kept = f" (what was written is in {output / FAILED_FOLDER})" if result.written else ""
        raise OutputsFailed(result, "; ".join(errors) + kept)
    return result


def _move_into(path: Path, folder: Path) -> Path:
    """Rename a staged file or folder into ``folder`` (replacing an earlier run's output of that name)."""
    import shutil

    target = folder / path.name
    if target.is_dir() and not target.is_symlink():
        old = target.with_name(f".{target.name}.{os.getpid()}.tmp.old")
        os.replace(target, old)
        os.replace(path, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(path, target)
    return target


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class OutputsFailed(MedsegError):
    def __init__(self, partial: CaseOutputs, message: str):
        super().__init__(message)
        self.partial = partial
