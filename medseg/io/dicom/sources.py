"""The source DICOM instances of a prediction, as DICOM SEG and RTSTRUCT writers must reference them.

A prediction made from a DICOM series keeps the series' files in slice order
(``metadata["source"]["source_files"]``, axis 0 of the label map). They are read again here, headers
only, and their identifying UIDs checked: a derived object that references an instance by an empty
UID cannot be attached to anything. Real exports do have empty UIDs; what can be completed is,
and every completion is reported in ``notes`` (it reaches the batch manifest), never silent:

- SOP Class/Instance UID from the file meta's Media Storage SOP Class/Instance UID (the standard
  makes them equal, and a PACS indexes the instance under the file meta's value);
- an empty Study or Series Instance UID (or Frame of Reference UID of a volume) by a UID derived
  from the instances' own UIDs (stable between runs), so the derived object is valid; it cannot
  join the original study in a PACS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import MedsegError


@dataclass
class DicomSources:
    datasets: list  # pydicom Datasets (headers) in the label map's slice order, UIDs completed
    multiframe: bool  # one enhanced multi-frame object (frames in ``frames`` order) rather than a file per slice
    frames: list[int | None]  # per slice of the label map: its frame in the multi-frame object
    notes: list[str] = field(default_factory=list)


def has_dicom_source(source: dict) -> bool:
    return source.get("source_format") == "dicom" and bool(source.get("source_files"))


def _derived_uid(kind: str, seeds: list[str]) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=None, entropy_srcs=[f"medseg:{kind}", *seeds]))


def load_sources(source: dict, case_id: str) -> DicomSources:
    """``source``: the input image's metadata (medseg.io.dicom.volume.series_to_image), with the
    headers the folder scan read (``source_headers``), so the source files are not read again."""
    import copy

    import pydicom

    if not has_dicom_source(source):
        raise MedsegError(f"{case_id}: not read from DICOM ({source.get('source_format', 'unknown format')}); DICOM outputs need a DICOM input series")
    files = [Path(p) for p in source["source_files"]]
    frames = list(source.get("source_frames") or [None] * len(files))
    unique = list(dict.fromkeys(files))
    multiframe = any(f is not None for f in frames)
    if multiframe and len(unique) > 1:
        raise MedsegError(f"{case_id}: a volume assembled from {len(unique)} multi-frame objects; DICOM outputs support one multi-frame object or one file per slice")
    known = dict(zip(files, source.get("source_headers") or []))
    datasets = {}
    for path in unique:
        header = known.get(path)
        if header is not None and "TransferSyntaxUID" in getattr(header, "file_meta", {}):
            datasets[path] = copy.deepcopy(header)  # the scan's header (this case's own copy: it is completed below)
            continue
        try:
            datasets[path] = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as error:
            raise MedsegError(f"{path}: cannot read the source DICOM file again ({error}); was it moved or changed since prediction started?") from None
    notes: list[str] = []
    _complete_instance_uids(list(datasets.values()), case_id, notes)
    _complete_series_uids(list(datasets.values()), notes)
    if multiframe:
        _share_frame_geometry(datasets[unique[0]])
    else:
        _complete_slice_thickness([datasets[path] for path in files], notes)
    _repair_copied_values(list(datasets.values()), notes)
    ordered = [datasets[unique[0]]] if multiframe else [datasets[path] for path in files]
    return DicomSources(ordered, multiframe, frames, notes)


def _complete_instance_uids(datasets: list, case_id: str, notes: list[str]) -> None:
    completed = 0
    for dataset in datasets:
        meta = getattr(dataset, "file_meta", None)
        for keyword, meta_keyword in (("SOPInstanceUID", "MediaStorageSOPInstanceUID"), ("SOPClassUID", "MediaStorageSOPClassUID")):
            if str(dataset.get(keyword, "") or "").strip():
                continue
            value = str(meta.get(meta_keyword, "") or "").strip() if meta is not None else ""
            if not value:
                raise MedsegError(
                    f"{case_id}: {getattr(dataset, 'filename', 'a source file')} has no {keyword}, in its data set or file meta; "
                    "a DICOM SEG or RTSTRUCT cannot reference it"
                )
            setattr(dataset, keyword, value)
            completed += 1
    if completed:
        notes.append(f"{completed} empty SOP Class/Instance UIDs of the source were taken from the files' meta information")
    uids = [str(d.SOPInstanceUID) for d in datasets]
    if len(set(uids)) != len(uids):
        raise MedsegError(f"{case_id}: source instances share SOP Instance UIDs; a DICOM SEG or RTSTRUCT cannot tell them apart")


# What DICOM SEG / RTSTRUCT copy from the source (patient, general study, patient study modules):
# a value that breaks its VR would make the derived object invalid, whoever wrote it first.
COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientSize", "PatientWeight",
          "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName", "StudyDescription")


# Enumerated values among them (PS3.3 C.7.1.1: Patient's Sex is M, F or O): real headers carry
# '0000', 'MALE', 'f'; common spellings are mapped, anything else is left empty (type 2), with a note.
ENUMERATED = {"PatientSex": {"M": "M", "F": "F", "O": "O", "MALE": "M", "FEMALE": "F", "OTHER": "O"}}


def _enumerated_value(keyword: str, value) -> str | None:
    """The valid spelling of an enumerated value, '' when it has none; None when ``keyword`` is not enumerated."""
    if keyword not in ENUMERATED:
        return None
    return ENUMERATED[keyword].get(str(value).strip().upper(), "")


def _repair_copied_values(datasets: list, notes: list[str]) -> None:
    import re

    from pydicom import config
    from pydicom.valuerep import validate_value

    for keyword in COPIED:
        for dataset in datasets:
            if keyword not in dataset or dataset[keyword].value in (None, ""):
                continue
            element = dataset[keyword]
            enumerated = _enumerated_value(keyword, element.value)
            if enumerated is not None:
                if enumerated != element.value:
                    note = f"the source's {keyword} {str(element.value)!r} is not one of its DICOM values ({', '.join(sorted(set(ENUMERATED[keyword].values())))}): {'written as ' + repr(enumerated) if enumerated else 'left empty'} in the output"
                    element.value = enumerated
                    if note not in notes:
                        notes.append(note)
                continue
            try:
                validate_value(element.VR, element.value, config.RAISE)
                continue
            except (ValueError, TypeError):
                pass
            old = str(element.value)
            age = re.fullmatch(r"(\d{1,3})([DWMY])", old.strip()) if keyword == "PatientAge" else None
            element.value = f"{int(age[1]):03d}{age[2]}" if age else ""
            note = f"the source's {keyword} {old!r} is not a valid {element.VR} value: {'written as ' + repr(element.value) if age else 'left empty'} in the output"
            if note not in notes:
                notes.append(note)


def _share_frame_geometry(dataset) -> None:
    """A multi-frame object may keep pixel measures and plane orientation per frame only; the
    derived objects' writers look in the shared functional groups. The frames were checked to agree
    on both when the volume was read, so the first frame's values are every frame's."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    if "PerFrameFunctionalGroupsSequence" not in dataset:
        return
    if "SharedFunctionalGroupsSequence" not in dataset or not dataset.SharedFunctionalGroupsSequence:
        dataset.SharedFunctionalGroupsSequence = Sequence([Dataset()])
    shared, first = dataset.SharedFunctionalGroupsSequence[0], dataset.PerFrameFunctionalGroupsSequence[0]
    for keyword in ("PixelMeasuresSequence", "PlaneOrientationSequence"):
        if keyword not in shared and keyword in first:
            setattr(shared, keyword, first[keyword].value)


def _complete_slice_thickness(ordered: list, notes: list[str]) -> None:
    """Anonymised exports drop SliceThickness, which the SEG's pixel measures need: the distance
    between neighbouring slices stands in for it."""
    missing = [d for d in ordered if str(d.get("SliceThickness", "") or "").strip() == ""]
    positions = [d.get("ImagePositionPatient") for d in ordered]
    if not missing or any(p is None for p in positions):
        return
    import numpy as np

    step = float(np.linalg.norm(np.asarray(positions[1], float) - np.asarray(positions[0], float))) if len(ordered) > 1 else 1.0
    for dataset in missing:
        dataset.SliceThickness = round(step, 6)
    notes.append(f"the source series has no SliceThickness: the slice spacing {step:.4g} mm was used")


def _complete_series_uids(datasets: list, notes: list[str]) -> None:
    seeds = sorted(str(d.SOPInstanceUID) for d in datasets)
    identifiers = [("StudyInstanceUID", "study"), ("SeriesInstanceUID", "series")]
    if any("ImagePositionPatient" in d or "SharedFunctionalGroupsSequence" in d for d in datasets):  # patient geometry: a frame of reference is required
        identifiers.append(("FrameOfReferenceUID", "frame-of-reference"))
    for keyword, kind in identifiers:
        values = {str(d.get(keyword, "") or "").strip() for d in datasets}
        if values == {""} or "" in values:
            existing = sorted(values - {""})
            uid = existing[0] if existing else _derived_uid(kind, seeds)
            for dataset in datasets:
                setattr(dataset, keyword, uid)
            notes.append(
                f"the source series has no {keyword}: used {uid}"
                + (" (from its other instances)" if existing else ", derived from its instances; the output will not join the original study in a PACS")
            )
    for keyword, default in (("StudyDate", ""), ("StudyTime", ""), ("StudyID", ""), ("AccessionNumber", ""), ("PatientID", ""),
                             ("PatientName", ""), ("PatientBirthDate", ""), ("PatientSex", ""), ("ReferringPhysicianName", "")):
        for dataset in datasets:  # type 2 attributes the derived objects copy: present, possibly empty
            if keyword not in dataset:
                setattr(dataset, keyword, default)
