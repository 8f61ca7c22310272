"""Turn one DICOM series (classic single-frame files or an enhanced multi-frame object) into a volume.

Slices are ordered by their position along the slice normal, never by file name or instance number.
Defects that would silently give a wrong volume are refused with a DicomSeriesError naming the
series and the problem: mixed orientations or sizes, several slices at one position (not a volume:
time series, echoes, localisers), gantry tilt (sheared slices), uneven spacing and missing slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.errors import DicomSeriesError
from medseg.io.dicom.scan import DicomSeries
from medseg.io.image import MedicalImage, default_direction

# A gantry tilt below this angle is rounding noise in the headers, not a sheared acquisition.
MAX_TILT_DEGREES = 0.1
# Relative deviation of one slice step from the median step that counts as uneven spacing.
MAX_STEP_DEVIATION = 0.02


@dataclass
class Frame:
    """One 2D plane of the series, with the header values that place and scale it."""

    instance_index: int
    frame_index: int | None  # index inside a multi-frame object; None for single-frame files
    position: np.ndarray | None  # ImagePositionPatient (3,)
    orientation: np.ndarray | None  # ImageOrientationPatient (6,): row cosines, column cosines
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    slope: float
    intercept: float
    sop_instance_uid: str


def _float_list(value) -> np.ndarray | None:
    if value is None or len(value) == 0:
        return None
    return np.asarray([float(v) for v in value], dtype=np.float64)


def _pixel_spacing(header) -> tuple[float, float]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = header.get(keyword)
        if value is not None and len(value) == 2 and float(value[0]) > 0 and float(value[1]) > 0:
            return float(value[0]), float(value[1])
    return 1.0, 1.0


def _classic_frames(series: DicomSeries) -> list[Frame]:
    frames = []
    for index, instance in enumerate(series.instances):
        header = instance.header
        frames.append(
            Frame(
                index,
                None,
                _float_list(header.get("ImagePositionPatient")),
                _float_list(header.get("ImageOrientationPatient")),
                _pixel_spacing(header),
                float(header.get("RescaleSlope", 1.0) or 1.0),
                float(header.get("RescaleIntercept", 0.0) or 0.0),
                str(header.get("SOPInstanceUID", "")),
            )
        )
    return frames


def _functional_item(per_frame, shared, sequence: str):
    """An item of a functional-group macro, per-frame first, then shared (the enhanced IOD rule)."""
    for group in (per_frame, shared):
        items = group.get(sequence) if group is not None else None
        if items:
            return items[0]
    return None


def _enhanced_frames(series: DicomSeries) -> list[Frame]:
    if len(series.instances) != 1:
        raise DicomSeriesError(series.label, f"{len(series.instances)} multi-frame objects in one series; expected one")
    header = series.instances[0].header
    shared_seq = header.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    per_frame_seq = header.get("PerFrameFunctionalGroupsSequence") or [None] * series.instances[0].number_of_frames
    frames = []
    for frame_index, per_frame in enumerate(per_frame_seq):
        position = _functional_item(per_frame, shared, "PlanePositionSequence")
        orientation = _functional_item(per_frame, shared, "PlaneOrientationSequence")
        measures = _functional_item(per_frame, shared, "PixelMeasuresSequence")
        transform = _functional_item(per_frame, shared, "PixelValueTransformationSequence")
        frames.append(
            Frame(
                0,
                frame_index,
                _float_list(position.get("ImagePositionPatient")) if position is not None else None,
                _float_list(orientation.get("ImageOrientationPatient")) if orientation is not None else None,
                _pixel_spacing(measures) if measures is not None else _pixel_spacing(header),
                float((transform or header).get("RescaleSlope", 1.0) or 1.0),
                float((transform or header).get("RescaleIntercept", 0.0) or 0.0),
                str(header.get("SOPInstanceUID", "")),
            )
        )
    return frames


def _check_consistent(series: DicomSeries, frames: list[Frame]) -> None:
    missing = [f for f in frames if f.position is None or f.orientation is None or len(f.orientation) != 6]
    if missing and len(frames) > 1:
        raise DicomSeriesError(
            series.label, f"{len(missing)} of {len(frames)} slices lack ImagePositionPatient/ImageOrientationPatient"
        )
    if not missing:
        groups: list[tuple[np.ndarray, int]] = []
        for frame in frames:
            for i, (orientation, count) in enumerate(groups):
                if np.allclose(orientation, frame.orientation, atol=1e-4):
                    groups[i] = (orientation, count + 1)
                    break
            else:
                groups.append((frame.orientation, 1))
        if len(groups) > 1:
            described = ", ".join(f"{count} slices at {np.round(o, 3).tolist()}" for o, count in groups)
            raise DicomSeriesError(series.label, f"mixed slice orientations ({described}); not one volume")
    sizes = {(int(series.instances[f.instance_index].header.Rows), int(series.instances[f.instance_index].header.Columns)) for f in frames}
    if len(sizes) > 1:
        raise DicomSeriesError(series.label, f"slices have different sizes {sorted(sizes)}")
    spacings = {tuple(round(s, 4) for s in f.pixel_spacing) for f in frames}
    if len(spacings) > 1:
        raise DicomSeriesError(series.label, f"slices have different pixel spacings {sorted(spacings)}")


def _slice_geometry(series: DicomSeries, frames: list[Frame]) -> tuple[list[Frame], np.ndarray, float]:
    """Sort frames along the normal; return them, the slice direction (3,) and the slice spacing."""
    row_cosines, column_cosines = frames[0].orientation[:3], frames[0].orientation[3:]
    normal = np.cross(row_cosines, column_cosines)
    normal /= np.linalg.norm(normal)
    if len(frames) == 1:
        thickness = float(series.instances[0].header.get("SliceThickness", 0) or 0)
        return frames, normal, thickness if thickness > 0 else 1.0
    ordered = sorted(frames, key=lambda f: float(np.dot(f.position, normal)))
    heights = np.asarray([float(np.dot(f.position, normal)) for f in ordered])
    steps = np.diff(heights)
    if np.any(steps < 1e-3):
        duplicates = int(np.sum(steps < 1e-3))
        raise DicomSeriesError(
            series.label,
            f"not a volume: {duplicates + 1} slices share a position (time series, echoes or repeated acquisitions?)",
        )
    span = ordered[-1].position - ordered[0].position
    cos_angle = abs(float(np.dot(span, normal))) / float(np.linalg.norm(span))
    tilt = float(np.degrees(np.arccos(min(1.0, cos_angle))))
    if tilt > MAX_TILT_DEGREES:
        raise DicomSeriesError(
            series.label, f"gantry tilt of {tilt:.2f} degrees (slices are sheared); reslice it before use"
        )
    median = float(np.median(steps))
    deviation = np.abs(steps - median) / median
    if np.any(deviation > MAX_STEP_DEVIATION):
        worst = int(np.argmax(deviation))
        ratio = steps[worst] / median
        if abs(ratio - round(ratio)) < MAX_STEP_DEVIATION and round(ratio) >= 2:
            problem = (
                f"missing slices: a gap of {steps[worst]:.3g} mm ({int(round(ratio)) - 1} slice(s) missing) "
                f"after position {heights[worst]:.3g} mm where the spacing is {median:.3g} mm"
            )
        else:
            problem = f"uneven slice spacing: steps from {steps.min():.4g} to {steps.max():.4g} mm"
        raise DicomSeriesError(series.label, problem)
    direction = span / np.linalg.norm(span)
    return ordered, direction, float(np.mean(steps))


def read_with_pixels(path):
    """The whole dataset. Files without the file meta header (no preamble, no transfer syntax) are
    read as the scan read them (forced, as SimpleITK does), their encoding taken from the data."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    dataset = pydicom.dcmread(path, force=True)
    meta = getattr(dataset, "file_meta", None)
    if meta is None:
        meta = dataset.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = getattr(dataset, "original_encoding", (True, True))
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return dataset


def _decode(series: DicomSeries, frames: list[Frame]) -> np.ndarray:
    """Stored pixel values for ``frames`` in order: (S, rows, cols) or (S, rows, cols, samples)."""

    cache: dict[int, np.ndarray] = {}
    planes = []
    for frame in frames:
        if frame.instance_index not in cache:
            instance = series.instances[frame.instance_index]
            try:
                dataset = read_with_pixels(instance.path)
            except Exception as error:
                raise DicomSeriesError(series.label, f"cannot read {instance.path.name} ({error})") from None
            try:
                pixels = dataset.pixel_array
            except Exception as error:
                syntax = dataset.file_meta.get("TransferSyntaxUID", "unknown transfer syntax")
                name = getattr(syntax, "name", syntax)
                raise DicomSeriesError(series.label, f"cannot decode pixels of {instance.path.name} ({name}: {error})") from error
            if str(dataset.get("PhotometricInterpretation", "")) == "MONOCHROME1":
                pixels = pixels.max() + pixels.min() - pixels  # higher value = brighter, as MONOCHROME2
            cache.clear()
            cache[frame.instance_index] = pixels
        pixels = cache[frame.instance_index]
        planes.append(pixels[frame.frame_index] if frame.frame_index is not None else pixels)
    return np.stack(planes)


def _rescale(series: DicomSeries, stored: np.ndarray, frames: list[Frame]) -> np.ndarray:
    """Apply RescaleSlope/Intercept; keep integers when the result is exactly integral and fits."""
    slopes = np.asarray([f.slope for f in frames])
    intercepts = np.asarray([f.intercept for f in frames])
    if np.all(slopes == 1.0) and np.all(intercepts == 0.0):
        return stored
    shape = (-1,) + (1,) * (stored.ndim - 1)
    if np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts)):
        values = stored.astype(np.int64) * slopes.astype(np.int64).reshape(shape) + intercepts.astype(np.int64).reshape(shape)
        for dtype in (np.int16, np.int32):
            info = np.iinfo(dtype)
            if values.min() >= info.min and values.max() <= info.max:
                return values.astype(dtype)
        return values.astype(np.float64)
    return (stored.astype(np.float64) * slopes.reshape(shape) + intercepts.reshape(shape)).astype(np.float32)


def series_to_image(series: DicomSeries) -> MedicalImage:
    """Read one series as a MedicalImage: (C, Z, Y, X) for volumes, (C, Y, X) for projection images."""
    enhanced = any(instance.number_of_frames > 1 for instance in series.instances)
    frames = _enhanced_frames(series) if enhanced else _classic_frames(series)
    _check_consistent(series, frames)
    header = series.instances[0].header
    metadata = {
        "source_format": "dicom",
        "series_instance_uid": series.uid,
        "study_instance_uid": str(header.get("StudyInstanceUID", "")),
        "frame_of_reference_uid": str(header.get("FrameOfReferenceUID", "")),
        "modality": series.modality,
        "series_description": series.description,
        "patient_id": str(header.get("PatientID", "")),
        "notes": list(series.notes),
    }
    if frames[0].position is None:  # projection image (X-ray, endoscopy): 2D, no patient geometry
        pixels = _rescale(series, _decode(series, frames), frames)[0]
        array = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
        metadata["sop_instance_uids"] = [frames[0].sop_instance_uid]
        metadata["source_files"] = [str(series.instances[frames[0].instance_index].path)]
        metadata["source_headers"] = [series.instances[frames[0].instance_index].header]
        metadata["source_frames"] = [frames[0].frame_index]
        return MedicalImage(np.ascontiguousarray(array), frames[0].pixel_spacing, (0.0, 0.0), default_direction(2), metadata)
    ordered, slice_direction, slice_spacing = _slice_geometry(series, frames)
    pixels = _rescale(series, _decode(series, ordered), ordered)
    if pixels.ndim == 4:  # colour volume (S, rows, cols, samples) -> (samples, S, rows, cols)
        array = np.moveaxis(pixels, -1, 0)
    else:
        array = pixels[None]
    row_cosines, column_cosines = ordered[0].orientation[:3], ordered[0].orientation[3:]
    # array axes: 0 = slice, 1 = row index (moves along column cosines), 2 = column index (row cosines)
    direction = np.stack([slice_direction, column_cosines, row_cosines], axis=1)
    spacing = (slice_spacing, ordered[0].pixel_spacing[0], ordered[0].pixel_spacing[1])
    metadata["sop_instance_uids"] = [f.sop_instance_uid for f in ordered]
    metadata["source_files"] = [str(series.instances[f.instance_index].path) for f in ordered]
    metadata["source_headers"] = [series.instances[f.instance_index].header for f in ordered]  # as the scan read them: not read again
    metadata["source_frames"] = [f.frame_index for f in ordered]  # frame of a multi-frame object; None: a file per slice
    return MedicalImage(np.ascontiguousarray(array), spacing, tuple(ordered[0].position), direction, metadata)
