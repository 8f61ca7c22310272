"""Validate a raw dataset and report every problem at once, each naming its file.

Errors make a dataset unusable for training (unreadable or missing files, geometry mismatches,
undeclared label values, NaN/Inf, duplicate cases); warnings are legal but suspicious (a training
label with no foreground).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.data.classification import read_labels_table
from medseg.data.layout import SEGMENTATION_LAYOUT, Case, DatasetDescription, list_cases, parse_dataset_json
from medseg.errors import MedsegError
from medseg.parallel import map_parallel


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" or "warning"
    message: str  # starts with the file it concerns

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"


@dataclass
class CheckReport:
    folder: Path
    num_cases: int = 0
    problems: list[Problem] = field(default_factory=list)
    description: DatasetDescription | None = None  # dataset.json as parsed, for the stages after the check
    analyses: dict[str, dict] = field(default_factory=dict)  # case id -> its fingerprint analysis, when asked for
    duplicates: list[tuple[Case, str]] = field(default_factory=list)  # (a case, the earlier case with the same image content)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def ok(self, strict: bool = False) -> bool:
        return not self.errors and not (strict and self.warnings)


@dataclass
class _CaseResult:
    problems: list[Problem]
    image_digest: str | None
    analysis: dict | None = None  # medseg.tasks.segmentation.planning.fingerprint.analyze_loaded_case of the images read here


def _error(message: str) -> Problem:
    return Problem("error", message)


def _read(path: Path, problems: list[Problem]):
    from medseg.io import read_image

    if not path.is_file():
        problems.append(_error(f"{path}: missing file"))
        return None
    try:
        return read_image(path)
    except MedsegError as error:
        problems.append(_error(str(error)))
    except Exception as error:  # a reader failing without saying why: a medseg bug, reported against the file
        problems.append(_error(f"{path}: unreadable (unexpected {type(error).__name__}: {error})"))
    return None


def _check_finite(path: Path, array: np.ndarray, problems: list[Problem]) -> None:
    if array.dtype.kind in "fc":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            problems.append(_error(f"{path}: {bad} NaN/Inf voxel(s)"))


def check_case(
    case: Case, description: DatasetDescription, fingerprint_samples: int | None = None, keep_cropped: Path | None = None,
) -> _CaseResult:
    """Read every file of one case and check channels, values and geometry; with
    ``fingerprint_samples``, a case without errors is also analysed for the fingerprint from the
    arrays read here, and with ``keep_cropped`` kept there cropped for preprocessing
    (medseg.tasks.segmentation.preprocessing.cropping): the only pass over the raw images before training."""
    problems: list[Problem] = []
    images = [(path, _read(path, problems)) for path in case.images]
    reference = None
    digest = hashlib.sha1()
    for path, image in images:
        if image is None:
            continue
        expected_channels = description.num_channels if case.multichannel_file else 1
        if image.num_channels != expected_channels:
            problems.append(_error(f"{path}: holds {image.num_channels} channel(s), expected {expected_channels}"))
        _check_finite(path, image.array, problems)
        if reference is None:
            reference = (path, image)
        else:
            differences = reference[1].geometry_differences(image, names=(reference[0].name, path.name))
            if differences:
                problems.append(_error(f"{path}: geometry differs from {reference[0].name}: {'; '.join(differences)}"))
        digest.update(np.ascontiguousarray(image.array).tobytes())
    if case.label is not None:
        label = _read(case.label, problems)
        if label is not None:
            _check_label(case.label, label, description, problems)
            if reference is not None:
                differences = reference[1].geometry_differences(label, names=("image", "label"))
                if differences:
                    problems.append(
                        _error(f"{case.label}: geometry differs from image {reference[0].name}: {'; '.join(differences)}")
                    )
    analysis = None
    if fingerprint_samples and case.label is not None and label is not None and not any(p.severity == "error" for p in problems):
        analysis = _analysis(case, [image for _, image in images], label, fingerprint_samples, keep_cropped)
    return _CaseResult(problems, digest.hexdigest() if reference is not None else None, analysis)


def _analysis(case: Case, images: list, label, samples: int, keep_cropped: Path | None) -> dict | None:
    from medseg.data.cases import as_label_map, stack_channel_images
    from medseg.tasks.segmentation.planning.fingerprint import analyze_loaded_case
    from medseg.tasks.segmentation.preprocessing.cropping import crop_case, save_cropped_case

    try:
        image = stack_channel_images(case.images, images)
        label = as_label_map(case.label, label, image)
    except MedsegError:
        return None  # the fingerprint reads this case itself and names the problem
    cropped = crop_case(image, label.array)
    if keep_cropped is not None:
        try:
            save_cropped_case(keep_cropped, case, cropped)
        except OSError:
            pass  # a hand-off only: preprocessing then reads the raw files of this case
    return analyze_loaded_case(case, image, label, samples, cropped)


def _check_label(path: Path, label, description: DatasetDescription, problems: list[Problem]) -> None:
    if label.num_channels != 1:
        problems.append(_error(f"{path}: label map must have one channel, has {label.num_channels}"))
        return
    values = label.array
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)):
            problems.append(_error(f"{path}: NaN/Inf in label map"))
            return
        if not np.all(values == np.round(values)):
            problems.append(_error(f"{path}: label map holds non-integer values"))
            return
    present = {int(v) for v in np.unique(values)}
    undeclared = sorted(present - description.label_values)
    if undeclared:
        problems.append(
            _error(f"{path}: label value(s) {undeclared} not declared in dataset.json labels {sorted(description.label_values)}")
        )
    if present <= {0}:
        problems.append(Problem("warning", f"{path}: empty label map (background only)"))


def _check_case_job(job: tuple[Case, DatasetDescription, int | None, Path | None]) -> _CaseResult:
    return check_case(*job)


def check_dataset(
    folder: str | Path, workers: int | None = None, progress: Callable[[int, int], None] | None = None, fingerprint: bool = False,
    keep_cropped: Path | None = None,
) -> CheckReport:
    """Validate everything in a raw dataset folder; never stops at the first problem. With
    ``fingerprint``, the training cases of a segmentation dataset are also analysed for the
    fingerprint as they are read (``report.analyses``) and, with ``keep_cropped``, written there
    cropped for the preprocessing that follows."""
    folder = Path(folder)
    report = CheckReport(folder)
    if not folder.is_dir():
        report.problems.append(_error(f"{folder}: no such dataset folder"))
        return report
    description, json_problems = parse_dataset_json(folder)
    report.problems += [_error(p) for p in json_problems]
    if description is None:
        return report
    report.description = description
    cases_by_split: dict[str, list[Case]] = {}
    for split in ("Tr", "Ts"):
        cases_by_split[split], naming_problems = list_cases(description, split)
        report.problems += [_error(p) for p in naming_problems]
    report.num_cases = len(cases_by_split["Tr"])
    report.problems += [_error(p) for p in _split_level_problems(description, cases_by_split)]
    samples = None
    if fingerprint and description.task_type == SEGMENTATION_LAYOUT:
        from medseg.tasks.segmentation.planning.fingerprint import samples_per_case

        samples = samples_per_case(len(cases_by_split["Tr"]))
    jobs = [
        (case, description, samples if split == "Tr" else None, keep_cropped if samples and split == "Tr" else None)
        for split, cases in cases_by_split.items() for case in cases
    ]
    results = map_parallel(_check_case_job, jobs, workers, progress)
    seen: dict[str, str] = {}
    for (case, *_), result in zip(jobs, results):
        report.problems += result.problems
        if result.analysis is not None:
            report.analyses[case.case_id] = result.analysis
        if result.image_digest is None:
            continue
        if result.image_digest in seen:
            report.problems.append(
                _error(f"{case.images[0]}: duplicate case: same image content as case {seen[result.image_digest]!r} (`medseg datasets check --fix-duplicates` sets such cases aside)")
            )
            report.duplicates.append((case, seen[result.image_digest]))
        else:
            seen[result.image_digest] = case.case_id
    return report


def _split_level_problems(description: DatasetDescription, cases_by_split: dict[str, list[Case]]) -> list[str]:
    """Problems visible from the file listing alone: orphans, counts, classification table rows."""
    problems = []
    folder = description.folder
    cases = cases_by_split["Tr"]
    case_ids = {case.case_id for case in cases}
    lowered: dict[str, str] = {}
    for case_id in sorted(case_ids):
        if case_id.lower() in lowered:
            problems.append(f"{folder / 'imagesTr'}: duplicate case ids differing only in case: {lowered[case_id.lower()]!r}, {case_id!r}")
        lowered[case_id.lower()] = case_id
    if description.num_training is not None and description.num_training != len(cases):
        problems.append(f"{folder / 'dataset.json'}: numTraining is {description.num_training} but imagesTr holds {len(cases)} cases")
    if description.task_type == SEGMENTATION_LAYOUT:
        labels_folder = folder / "labelsTr"
        if not labels_folder.is_dir():
            problems.append(f"{labels_folder}: missing folder")
        else:
            for path in sorted(labels_folder.iterdir()):
                if path.name.startswith("."):
                    continue
                if not path.name.endswith(description.file_ending):
                    problems.append(f"{path}: does not end with the dataset's file_ending {description.file_ending!r}")
                elif path.name[: -len(description.file_ending)] not in case_ids:
                    problems.append(f"{path}: label without images in imagesTr")
    else:
        for split, split_list in cases_by_split.items():
            table, table_problems = read_labels_table(description, split)
            problems += table_problems
            if table is None:
                continue
            split_cases = {case.case_id for case in split_list}
            for case_id in sorted(set(table.targets) - split_cases):
                problems.append(f"{table.path}: case {case_id!r} has no images in images{split}")
            for case_id in sorted(split_cases - set(table.targets)):
                problems.append(f"{table.path}: case {case_id!r} in images{split} has no row")
    return problems
