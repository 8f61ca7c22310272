"""Find the DICOM image series in a folder: read headers only, group by SeriesInstanceUID.

Real folders mix series, hold non-image objects (SEG, RTSTRUCT, SR, presentation states) and stray
files, and sometimes carry empty UIDs. Scanning never fails for one bad file: it is listed in
``FolderScan.skipped`` with the reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import ImageReadError

# Storage classes that carry no image to turn into a volume (they are reported, not read).
NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation",
    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation",
    "1.2.840.10008.5.1.4.1.1.66.8": "Height Map Segmentation",
    "1.2.840.10008.5.1.4.1.1.66.5": "Surface Segmentation",
    "1.2.840.10008.5.1.4.1.1.66.1": "Spatial Registration",
    "1.2.840.10008.5.1.4.1.1.66.3": "Deformable Spatial Registration",
    "1.2.840.10008.5.1.4.1.1.66.2": "Spatial Fiducials",
    "1.2.840.10008.5.1.4.1.1.67": "Real World Value Mapping",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set",
    "1.2.840.10008.5.1.4.1.1.481.5": "RT Plan",
    "1.2.840.10008.5.1.4.1.1.66": "Raw Data",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.88.59": "Key Object Selection",
    "1.2.840.10008.5.1.4.1.1.11.1": "Grayscale Softcopy Presentation State",
}
# Modalities of derived, non-image objects: a storage class newer than the table above (a label map
# SEG is 2024's) is still recognised by its Modality and never segmented as if it were an image.
NON_IMAGE_MODALITIES = {"SEG": "Segmentation", "RTSTRUCT": "RT Structure Set", "RTPLAN": "RT Plan", "RTDOSE": "RT Dose",
                        "RTRECORD": "RT Treatment Record", "SR": "Structured Report", "KO": "Key Object Selection",
                        "PR": "Presentation State", "REG": "Registration", "FID": "Fiducials", "RWV": "Real World Value Map", "DOC": "Document"}


@dataclass
class DicomInstance:
    path: Path
    header: object  # pydicom Dataset without pixel data

    @property
    def number_of_frames(self) -> int:
        return int(self.header.get("NumberOfFrames", 1) or 1)


@dataclass
class DicomSeries:
    key: str  # SeriesInstanceUID, or a stable stand-in when the UID is empty
    instances: list[DicomInstance]
    notes: list[str] = field(default_factory=list)

    def _first(self, keyword: str, default: str = "") -> str:
        value = self.instances[0].header.get(keyword, default)
        return str(value) if value is not None else default

    @property
    def uid(self) -> str:
        return self._first("SeriesInstanceUID")

    @property
    def modality(self) -> str:
        return self._first("Modality")

    @property
    def description(self) -> str:
        return self._first("SeriesDescription")

    @property
    def series_number(self) -> str:
        return self._first("SeriesNumber")

    @property
    def num_frames(self) -> int:
        return sum(instance.number_of_frames for instance in self.instances)

    @property
    def label(self) -> str:
        """Short name used in error messages: number, description and key."""
        parts = [p for p in (f"#{self.series_number}" if self.series_number else "", self.description) if p]
        return f"{' '.join(parts)} [{self.key}]" if parts else f"[{self.key}]"


UNREADABLE_DICOM = "unreadable DICOM"


@dataclass
class FolderScan:
    root: Path
    series: list[DicomSeries]
    non_image: list[tuple[Path, str]]  # DICOM objects that are not images (SEG, SR, ...)
    skipped: list[tuple[Path, str]]  # files that are not DICOM or cannot be parsed

    @property
    def unreadable(self) -> list[tuple[Path, str]]:
        """DICOM files (by their marker) that could not be parsed: possibly slices of a series."""
        return [(path, why) for path, why in self.skipped if why.startswith(UNREADABLE_DICOM)]


def _series_key(header, path: Path, root: Path) -> tuple[str, str | None]:
    uid = str(header.get("SeriesInstanceUID", "") or "").strip()
    if uid:
        return uid, None
    # No UID: group what must belong together anyway. Folder + series number + acquisition geometry.
    parts = [
        str(path.parent.relative_to(root)) if path.parent != root else ".",
        str(header.get("StudyInstanceUID", "")),
        str(header.get("SeriesNumber", "")),
        str(header.get("Modality", "")),
        str(header.get("SeriesDescription", "")),
        str(header.get("Rows", "")),
        str(header.get("Columns", "")),
    ]
    digest = hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]
    note = "SeriesInstanceUID is empty; files grouped by folder, series number, modality, description and size"
    return f"no-uid-{digest}", note


def _candidate_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def scan_folder(root: str | Path) -> FolderScan:
    """Read the headers of every file under ``root`` (or the one file) and group image series."""
    root = Path(root)
    if not root.exists():
        raise ImageReadError(root, "no such file or folder")
    return scan_files(root, _candidate_files(root))


def scan_files(root: Path, files: list[Path]) -> FolderScan:
    """Read the headers of ``files`` (found under ``root``) and group image series."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    root = Path(root)
    by_key: dict[str, DicomSeries] = {}
    non_image: list[tuple[Path, str]] = []
    skipped: list[tuple[Path, str]] = []
    base = root if root.is_dir() else root.parent
    for path in files:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            try:  # files without the 128-byte preamble are still common in the wild
                header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
                if "SOPClassUID" not in header and "Rows" not in header:
                    raise InvalidDicomError("no DICOM elements")
            except Exception:
                skipped.append((path, "not a DICOM file"))
                continue
        except RecursionError:  # pydicom parses nested sequences recursively
            skipped.append((path, f"{UNREADABLE_DICOM} (sequences nested too deeply)"))
            continue
        except Exception as error:
            skipped.append((path, f"{UNREADABLE_DICOM} ({error})"))
            continue
        sop_class = str(header.get("SOPClassUID", ""))
        modality = str(header.get("Modality", "")).strip().upper()
        if sop_class in NON_IMAGE_SOP_CLASSES or modality in NON_IMAGE_MODALITIES:
            non_image.append((path, NON_IMAGE_SOP_CLASSES.get(sop_class) or f"{NON_IMAGE_MODALITIES[modality]} (Modality {modality})"))
            continue
        if "Rows" not in header or "Columns" not in header:
            non_image.append((path, "no image pixels (no Rows/Columns)"))
            continue
        key, note = _series_key(header, path, base)
        series = by_key.setdefault(key, DicomSeries(key, []))
        if note and note not in series.notes:
            series.notes.append(note)
        series.instances.append(DicomInstance(path, header))
    ordered = sorted(by_key.values(), key=lambda s: (-s.num_frames, s.key))
    return FolderScan(root, ordered, non_image, skipped)


def select_series(scan: FolderScan, rule: str | None = None) -> DicomSeries:
    """Pick one series. ``rule``: None (the only one), 'largest', an index ('0'), a SeriesInstanceUID
    (bare or 'uid:UID'), 'number:N' (SeriesNumber) or 'description:TEXT' (case-insensitive substring)."""
    series = scan.series
    if scan.unreadable:  # a series read without some of its slices would be silently wrong
        path, why = scan.unreadable[0]
        raise ImageReadError(path, f"{why}; {len(scan.unreadable)} unreadable DICOM file(s) under {scan.root}, so no series is read from it")
    if not series:
        found = f"; {len(scan.non_image)} non-image objects" if scan.non_image else ""
        raise ImageReadError(scan.root, f"no DICOM image series found ({len(scan.skipped)} non-DICOM files{found})")
    listing = "; ".join(f"{i}: {s.label} {s.modality} {s.num_frames} frames" for i, s in enumerate(series))
    if rule is None:
        if len(series) == 1:
            return series[0]
        raise ImageReadError(
            scan.root, f"holds {len(series)} image series, choose one (largest, index, uid:UID, number:N, description:TEXT): {listing}"
        )
    if rule == "largest":
        return series[0]
    if rule.isdigit() and int(rule) < len(series):
        return series[int(rule)]
    if rule.startswith("uid:"):
        matches = [s for s in series if s.key == rule.split(":", 1)[1] or s.uid == rule.split(":", 1)[1]]
    elif rule.startswith("number:"):
        matches = [s for s in series if s.series_number == rule.split(":", 1)[1]]
    elif rule.startswith("description:"):
        text = rule.split(":", 1)[1].lower()
        matches = [s for s in series if text in s.description.lower()]
    else:
        matches = [s for s in series if s.key == rule]
    if len(matches) != 1:
        raise ImageReadError(scan.root, f"series rule '{rule}' matches {len(matches)} series: {listing}")
    return matches[0]
