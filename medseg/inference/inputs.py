"""What ``medseg predict -i`` was given, as a list of cases.

Accepted, alone or mixed in one folder:
- image files named the nnU-Net way (CASE_0000.nii.gz, CASE_0001.nii.gz: channels of one case) or
  any single NIfTI / NRRD / MHA / PNG / JPEG / TIFF file (a one-channel case of its own);
- DICOM, in any folder below the input (many patients, studies and series): every image series is a
  case, unless ``--series`` rules pick some (applied within each study, like MONAI Deploy's
  series selector): ``largest``, ``modality:CT``, ``description:REGEX``, ``number:N``, ``uid:UID``,
  an index within the study, or several joined by commas (``modality:MR,description:t1,largest``);
- zip files holding any of these.

Case ids are stable between runs (they name the outputs and key ``--resume``): the file name for
images; for a DICOM series the folder holding it (relative to the input), with its series number
and a short hash of its UID when the folder holds several series. An input that cannot be a case
(an unreadable file, a corrupt zip, DICOM files that cannot be parsed) becomes a case that fails
with the reason, so it is listed in the manifest and the batch goes on."""

from __future__ import annotations

import hashlib
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import MedsegError
from medseg.io import DICOM_SUFFIXES, IMAGE_SUFFIXES, ITK_SUFFIXES, NIFTI_SUFFIXES, image_suffix

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
ZIP_SUFFIX = ".zip"
# Volumes found below the top level are cases; 2D pictures there (thumbnails beside DICOM) are not.
NESTED_IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES


@dataclass
class InputCase:
    case_id: str
    files: list[Path]  # channel files, or the DICOM series' files
    series: object | None = None  # medseg.io.dicom.scan.DicomSeries for a DICOM case
    problem: str | None = None  # why this input cannot be read (the case fails with it)
    notes: list[str] = field(default_factory=list)

    @property
    def inputs(self) -> list[str]:
        """What the manifest lists as this case's inputs."""
        if self.series is not None:
            folders = sorted({str(p.parent) for p in self.files})
            return folders if len(folders) < len(self.files) else [str(p) for p in self.files]
        return [str(p) for p in self.files]


def is_dicom_file(path: Path) -> bool:
    """A DICOM suffix, or no known image suffix and the 'DICM' marker of a DICOM file (PACS exports
    have no suffix or UID-like names such as CT.1.3.12.2...)."""
    suffix = image_suffix(path)
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix in IMAGE_SUFFIXES or path.suffix.lower() == ZIP_SUFFIX:
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def safe_id(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("._") or "case"


@dataclass
class Discovery:
    cases: list[InputCase]
    ignored: list[tuple[Path, str]] = field(default_factory=list)  # files below the input that are neither DICOM nor cases


def discover(source: Path, series_rule: str | None = None, unpack_to: Path | None = None, confine: list[Path] | None = None) -> Discovery:
    """Cases under ``source`` (a file or folder), sorted by case id. Top-level files are images,
    DICOM files or zips; everything in subfolders is searched for DICOM series. ``unpack_to``: where
    zip files are extracted. ``confine``: folders every file read must resolve into (a server's
    allowed roots): a file or folder link under ``source`` that leads elsewhere fails as a case of
    its own and is never read."""
    source = Path(source)
    if not source.exists():
        raise MedsegError(f"{source}: no such file or folder")
    return _discover_with_rules(source, parse_series_rule(series_rule), unpack_to, confine)


def inside_roots(path: Path, roots: list[Path]) -> bool:
    """``path``, links resolved, is one of ``roots`` (resolved already) or below one."""
    resolved = path.resolve()
    return any(resolved == root or root in resolved.parents for root in roots)


def _leading_outside(source: Path, files: list[Path], roots: list[Path]) -> tuple[list[Path], list[InputCase]]:
    """``files`` split into those inside the roots and one failed case per top-level entry of
    ``source`` through which others lead outside (named as under ``source``, not by their target)."""
    kept, outside = [], {}
    for path in files:
        if inside_roots(path, roots):
            kept.append(path)
        else:
            entry = path.relative_to(source).parts[0] if path != source else path.name
            outside.setdefault(entry, []).append(path)
    cases = [
        InputCase(safe_id(entry), [], problem=f"{entry}: a link leading outside the allowed folders ({len(paths)} file(s)); not read")
        for entry, paths in outside.items()
    ]
    return kept, cases


def _discover_with_rules(source: Path, rules: list, unpack_to: Path | None, confine: list[Path] | None = None) -> Discovery:
    if confine is not None:
        roots = [Path(root).resolve() for root in confine]
        if not inside_roots(source, roots):
            raise MedsegError(f"{source.name}: outside the allowed folders")
    if source.is_file():
        if source.suffix.lower() == ZIP_SUFFIX:
            return _unique(_zip_cases(source, rules, unpack_to))
        if is_dicom_file(source):
            cases, ignored = _dicom_cases([source], rules, source.parent, safe_id(source.name))
            return _unique(cases, ignored)
        return _unique(_image_cases([source]))
    top = [p for p in sorted(source.iterdir()) if not p.name.startswith(".")]
    files = [p for p in top if p.is_file()]
    nested = [p for d in top if d.is_dir() for p in sorted(d.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    refused: list[InputCase] = []
    if confine is not None:
        files, refused = _leading_outside(source, files + nested, roots)
        nested = [p for p in files if p.parent != source]
        files = [p for p in files if p.parent == source]
    archives = [p for p in files if p.suffix.lower() == ZIP_SUFFIX]
    images = [p for p in files if _is_plain_image(p)]
    top_dicom = [p for p in files if p not in archives and p not in images and is_dicom_file(p)]
    unknown = [p for p in files if p not in archives and p not in images and p not in top_dicom]
    volumes = [p for p in nested if image_suffix(p) in NESTED_IMAGE_SUFFIXES]  # NIfTI/NRRD/MHA below the top: cases too
    nested = [p for p in nested if p not in volumes]
    cases = _image_cases(images) + _image_cases(volumes, source) + refused
    ignored: list[tuple[Path, str]] = []
    if top_dicom or nested:
        found, ignored = _dicom_cases(top_dicom + nested, rules, source, safe_id(source.name))
        cases += found
    for archive in archives:
        cases += _zip_cases(archive, rules, unpack_to)
    cases += [InputCase(safe_id(p.name), [p], problem=f"{p}: neither an image medseg reads nor a DICOM file") for p in unknown]
    return _unique(cases, ignored)


def _is_plain_image(path: Path) -> bool:
    return image_suffix(path) in IMAGE_SUFFIXES and image_suffix(path) not in DICOM_SUFFIXES


def _image_cases(files: list[Path], base: Path | None = None) -> list[InputCase]:
    """Image files as cases; ``base``: files below it are named by their folders too
    (``scans/a/x_0000.nii.gz`` is case ``scans_a_x``)."""
    grouped: dict[str, dict[int, Path]] = {}
    for path in files:
        suffix = image_suffix(path)
        stem = path.name[: -len(suffix)] if suffix else path.name
        if base is not None:
            stem = "_".join([*path.parent.relative_to(base).parts, stem])
        match = _CHANNEL.match(stem)
        if match:
            grouped.setdefault(match["case"], {})[int(match["channel"])] = path
        else:
            grouped.setdefault(stem, {})[0] = path
    cases = []
    for case_id, channels in grouped.items():
        case = InputCase(safe_id(case_id), [channels[k] for k in sorted(channels)])
        if sorted(channels) != list(range(len(channels))):
            case.problem = f"{case_id}: channel files {sorted(channels)} are not numbered 0000, 0001, ... without gaps"
        cases.append(case)
    return cases


# ------------------------------------------------------------------------------------- DICOM series
@dataclass
class SeriesRule:
    kind: str  # largest | modality | description | number | uid | index
    value: str = ""


def parse_series_rule(rule: str | None) -> list[SeriesRule]:
    if not rule:
        return []
    rules = []
    for part in (p.strip() for p in rule.split(",")):
        kind, _, value = part.partition(":")
        if part == "largest":
            rules.append(SeriesRule("largest"))
        elif part.isdigit():
            rules.append(SeriesRule("index", part))
        elif kind in ("modality", "description", "number", "uid") and value:
            if kind == "description":
                try:
                    re.compile(value)
                except re.error as error:
                    raise MedsegError(f"--series description:{value}: not a regular expression ({error})") from None
            rules.append(SeriesRule(kind, value))
        elif not value and part:
            rules.append(SeriesRule("uid", part))  # a bare UID, as select_series accepts
        else:
            raise MedsegError(f"--series '{part}': expected largest, N, modality:M, description:REGEX, number:N or uid:UID")
    return rules


def _study_key(series) -> str:
    header = series.instances[0].header
    return str(header.get("StudyInstanceUID", "") or "").strip() or f"folder:{series.instances[0].path.parent}"


def apply_series_rules(all_series: list, rules: list[SeriesRule]) -> list:
    """The series the rules pick, within each study (all image series when there is no rule)."""
    studies: dict[str, list] = {}
    for series in all_series:
        studies.setdefault(_study_key(series), []).append(series)
    chosen = []
    for members in studies.values():
        for rule in rules:
            if rule.kind == "largest":
                members = members[:1]  # scan order: most frames first
            elif rule.kind == "index":
                members = members[int(rule.value): int(rule.value) + 1]
            elif rule.kind == "modality":
                members = [s for s in members if s.modality.upper() == rule.value.upper()]
            elif rule.kind == "description":
                members = [s for s in members if re.search(rule.value, s.description, re.IGNORECASE)]
            elif rule.kind == "number":
                members = [s for s in members if s.series_number == rule.value]
            elif rule.kind == "uid":
                members = [s for s in members if rule.value in (s.uid, s.key)]
        chosen.extend(members)
    return chosen


def _dicom_cases(files: list[Path], rules: list[SeriesRule], base: Path, base_id: str) -> tuple[list[InputCase], list[tuple[Path, str]]]:
    """One case per picked image series in ``files``; files that are not DICOM come back as ignored."""
    from medseg.io.dicom.scan import UNREADABLE_DICOM, scan_files

    scan = scan_files(base, files)

    def folder_id(folder: Path) -> str:
        return safe_id("_".join(folder.relative_to(base).parts)) if folder != base else base_id

    cases: list[InputCase] = []
    unreadable: dict[Path, list[tuple[Path, str]]] = {}
    for path, why in scan.unreadable:
        unreadable.setdefault(path.parent, []).append((path, why))
    picked = apply_series_rules(scan.series, rules)
    if rules and not picked and scan.series:
        listing = "; ".join(f"{s.label} {s.modality} {s.num_frames} frames" for s in scan.series)
        cases.append(InputCase(base_id, [], problem=f"{base}: --series picks none of its DICOM series: {listing}"))
    folders = {series.key: _series_folder(series) for series in scan.series}
    per_folder: dict[Path, int] = {}
    for folder in folders.values():
        per_folder[folder] = per_folder.get(folder, 0) + 1
    for series in picked:
        folder = folders[series.key]
        case_id = folder_id(folder)
        if per_folder[folder] > 1:  # several series in one folder: number and UID tell them apart
            digest = hashlib.sha1(series.key.encode()).hexdigest()[:8]
            case_id = f"{case_id}_s{safe_id(series.series_number or 'x')}_{digest}"
        case = InputCase(case_id, [instance.path for instance in series.instances], series=series, notes=list(series.notes))
        bad = [item for folder_ in sorted({p.parent for p in case.files}) for item in unreadable.get(folder_, [])]
        if bad:
            path, why = bad[0]
            case.problem = f"{path}: {why}; {len(bad)} unreadable DICOM file(s) beside this series' slices, so it is not read (slices could be missing)"
        cases.append(case)
    covered = {p.parent for case in cases for p in case.files}
    for folder, bad in unreadable.items():
        if folder not in covered:  # unreadable DICOM files with no readable series beside them
            path, why = bad[0]
            cases.append(InputCase(folder_id(folder), [p for p, _ in bad], problem=f"{path}: {why}"))
    ignored = [(path, why) for path, why in scan.skipped if not why.startswith(UNREADABLE_DICOM)]
    ignored += list(scan.non_image)
    return cases, ignored


def _series_folder(series) -> Path:
    folders = sorted({instance.path.parent for instance in series.instances})
    return folders[0] if len(folders) == 1 else Path(*_common_parts(folders))


def _common_parts(folders: list[Path]) -> tuple[str, ...]:
    parts = folders[0].parts
    for folder in folders[1:]:
        length = 0
        while length < min(len(parts), len(folder.parts)) and parts[length] == folder.parts[length]:
            length += 1
        parts = parts[:length]
    return parts


# ---------------------------------------------------------------------------------------- zip files
def _zip_cases(archive: Path, rules: list[SeriesRule], unpack_to: Path | None) -> list[InputCase]:
    prefix = safe_id(archive.name[: -len(ZIP_SUFFIX)])
    if unpack_to is None:
        return [InputCase(prefix, [archive], problem=f"{archive}: zip inputs are not read here (no folder to unpack into)")]
    target = Path(unpack_to) / prefix
    try:
        with zipfile.ZipFile(archive) as handle:
            members = [m for m in handle.infolist() if not m.is_dir()]
            size = archive.stat().st_size
            cap = zip_unpack_cap(size)
            if len(members) > MAX_ZIP_MEMBERS:
                raise MedsegError(f"{archive.name}: holds {len(members)} files, above the limit of {MAX_ZIP_MEMBERS}")
            total = sum(m.file_size for m in members)
            if total > cap:
                raise MedsegError(f"{archive.name}: would unpack to {total / 1024**2:.0f} MB, above the limit of {cap / 1024**2:.0f} MB for a {size / 1024**2:.1f} MB archive (a zip bomb?)")
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            unpacked = 0
            for member in members:
                name = Path(member.filename)
                if name.is_absolute() or ".." in name.parts:
                    raise MedsegError(f"{archive.name}: member {member.filename!r} points outside the archive")
                unpacked += _extract_capped(handle, member, target / name, cap - unpacked, archive.name)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as error:
        detail = str(error).replace(str(target), prefix)  # the hidden unpack folder is ours, not the user's
        return [InputCase(prefix, [archive], problem=f"{archive.name}: not a readable zip file ({detail})")]
    except MedsegError as error:
        return [InputCase(prefix, [archive], problem=str(error))]
    inner = _discover_with_rules(target, rules, target / ".nested").cases
    for case in inner:
        case.case_id = f"{prefix}__{case.case_id}" if case.case_id != prefix else prefix
    if not inner:
        return [InputCase(prefix, [archive], problem=f"{archive}: holds no image or DICOM file")]
    return inner


MAX_ZIP_MEMBERS = 100_000
ZIP_RATIO = 100  # unpacked bytes per archive byte beyond the floor: DICOM and NIfTI zips compress 2-10x
ZIP_FLOOR = 256 * 1024**2


def zip_unpack_cap(archive_bytes: int) -> int:
    """How much a zip of this size may unpack to: 100x its size (at least 256 MB), never above the
    image size limit ($MEDSEG_MAX_IMAGE_GB)."""
    from medseg.io.limits import max_image_bytes

    return min(max_image_bytes(), max(ZIP_FLOOR, ZIP_RATIO * archive_bytes))


def _extract_capped(handle: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path, allowed: int, name: str) -> int:
    """Stream one member out, counting real bytes (a member's declared size can lie); returns them."""
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with handle.open(member) as source, open(target, "wb") as sink:
        while chunk := source.read(1 << 20):
            written += len(chunk)
            if written > min(allowed, member.file_size):
                raise MedsegError(f"{name}: member {member.filename!r} unpacks to more than {'it declares' if written > member.file_size else 'the limit'} (a zip bomb?)")
            sink.write(chunk)
    return written


def _unique(cases: list[InputCase], ignored: list[tuple[Path, str]] | None = None) -> Discovery:
    """Sorted by id; an id given twice gets _2, _3, ... in a stable order."""
    cases = sorted(cases, key=lambda c: (c.case_id, [str(p) for p in c.files]))
    seen: dict[str, int] = {}
    for case in cases:
        count = seen.get(case.case_id, 0)
        seen[case.case_id] = count + 1
        if count:
            case.case_id = f"{case.case_id}_{count + 1}"
    return Discovery(cases, ignored or [])
