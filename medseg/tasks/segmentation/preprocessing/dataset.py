"""Preprocess a whole raw dataset for one configuration: parallel, resumable, atomic per case.

Layout of ``preprocessed/DatasetXXX_Name/<data_identifier>/``: per case ``ID.npy`` (C, *S) float32,
``ID_seg.npy`` (1, *S) int8 (a cascade stage: (2, *S), the previous stage's out-of-fold segmentation second), ``ID_locations.npz`` and ``ID.json`` (CaseProperties), the JSON
written last so a case counts as done only when all its files are complete. ``preprocessing.json``
records the parts of the plan that shaped the data; a changed plan (say, re-planned at another
spacing) reprocesses every case instead of mixing old and new ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from medseg.atomic import atomic_path, write_json_atomic
from medseg.data.layout import Case, DatasetDescription, list_cases
from medseg.errors import DatasetError, MedsegError
from medseg.parallel import map_parallel
from medseg.planning.plans import ConfigurationPlan, Plans


SIGNATURE_FILE = "preprocessing.json"


def data_signature(plans: Plans, configuration: ConfigurationPlan) -> dict:
    """Everything in the plan that changes the preprocessed arrays."""
    return {
        "transpose_forward": plans.transpose_forward,
        "labels": plans.labels,
        **({"ignore_label": plans.ignore_label} if plans.ignore_label is not None else {}),
        "spacing": configuration.spacing,
        "normalization": configuration.normalization,
        "resampling": configuration.resampling,
        **({"previous_stage": configuration.previous_stage} if configuration.previous_stage else {}),
    }


def signature_matches(folder: Path, plans: Plans, configuration: ConfigurationPlan) -> bool:
    path = folder / SIGNATURE_FILE
    return path.is_file() and json.loads(path.read_text()) == json.loads(json.dumps(data_signature(plans, configuration)))


def check_signature(folder: Path, plans: Plans, configuration: ConfigurationPlan) -> None:
    """Refuse preprocessed data made for a different plan (training on them would be silently wrong)."""
    if not signature_matches(folder, plans, configuration):
        raise MedsegError(f"{folder}: preprocessed for a different plan (or an older medseg); rerun `medseg preprocess -c {configuration.name}`")


def case_done(folder: Path, case_id: str) -> bool:
    return (folder / f"{case_id}.json").is_file()


def _with_previous(cropped, previous: Path, case: Case):
    """The cropped case with the previous stage's segmentation (original geometry) as label channel 1."""
    from medseg.io import read_image
    from medseg.tasks.segmentation.preprocessing.cropping import box_slices

    segmentation = read_image(previous)
    if list(segmentation.spatial_shape) != list(cropped.shape) or not np.allclose(segmentation.spacing, cropped.spacing, rtol=1e-4):
        raise MedsegError(f"{previous}: the previous stage's prediction of {case.case_id} does not match its image's grid {cropped.shape}")
    cropped.seg = np.concatenate([cropped.seg, segmentation.array[(slice(None),) + box_slices(cropped.box)].astype(cropped.seg.dtype)])
    return cropped


def _preprocess_job(job: tuple[Case, Plans, ConfigurationPlan, Path, Path | None, Path | None]) -> tuple[str, str | None]:
    from medseg.data.cases import load_case_images, load_case_label
    from medseg.tasks.segmentation.preprocessing.case import class_locations, preprocess_cropped
    from medseg.tasks.segmentation.preprocessing.cropping import crop_case, load_cropped_case

    case, plans, configuration, folder, cropped_folder, previous = job
    try:
        cropped = load_cropped_case(cropped_folder, case) if cropped_folder is not None else None
        if cropped is None:
            image = load_case_images(case)
            cropped = crop_case(image, load_case_label(case, image).array)
        if previous is not None:
            cropped = _with_previous(cropped, previous, case)
        data, seg, properties = preprocess_cropped(cropped, plans, configuration, case.case_id)
        for name, array in ((f"{case.case_id}.npy", data), (f"{case.case_id}_seg.npy", seg)):
            with atomic_path(folder / name) as temporary:
                np.save(temporary, array)
        with atomic_path(folder / f"{case.case_id}_locations.npz") as temporary:
            np.savez(temporary, **class_locations(seg, ignore_label=plans.ignore_label))
        write_json_atomic(folder / f"{case.case_id}.json", properties.to_dict())  # last: marks the case done
        return case.case_id, None
    except MedsegError as error:
        return case.case_id, str(error)
    except Exception as error:  # one bad case is reported, not fatal to the batch
        return case.case_id, f"{case.images[0]}: {type(error).__name__}: {error}"


def preprocess_dataset(
    description: DatasetDescription,
    plans: Plans,
    configuration: ConfigurationPlan,
    output_folder: Path,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
    cropped_folder: Path | None = None,
    previous_stage: dict[str, Path] | None = None,
) -> tuple[int, int]:
    """Preprocess the training cases not yet done. Returns (processed now, already done).
    ``cropped_folder``: where the dataset check kept the cases it read (medseg.tasks.segmentation.preprocessing.cropping);
    a case found there unchanged is not read again. ``previous_stage``: a cascade stage's previous-stage
    segmentation of every case (medseg.tasks.segmentation.cascade)."""
    cases, problems = list_cases(description, "Tr")
    if problems:
        raise DatasetError(f"{description.folder}: " + "; ".join(problems[:5]) + " (run `medseg datasets check`)")
    output_folder.mkdir(parents=True, exist_ok=True)
    signature_path = output_folder / SIGNATURE_FILE
    if not signature_matches(output_folder, plans, configuration):
        overwrite = True  # made for another plan: no old case may survive
        for stale in output_folder.glob("*.json"):
            stale.unlink()  # the per-case "done" markers first, so an interruption leaves nothing counted done
        signature_path.unlink(missing_ok=True)
    todo = [case for case in cases if overwrite or not case_done(output_folder, case.case_id)]
    jobs = [(case, plans, configuration, output_folder, cropped_folder, (previous_stage or {}).get(case.case_id)) for case in todo]
    if configuration.previous_stage and any(job[-1] is None for job in jobs):
        raise MedsegError(f"{configuration.name}: preprocessing a cascade stage needs the previous stage's segmentation of every case")
    results = map_parallel(_preprocess_job, jobs, workers, progress)
    failures = [f"{case_id}: {error}" for case_id, error in results if error]
    if failures:
        raise DatasetError(f"{len(failures)} case(s) failed preprocessing (the others are saved; rerun to resume): " + "; ".join(failures[:5]))
    write_json_atomic(signature_path, data_signature(plans, configuration))
    return len(todo), len(cases) - len(todo)


def load_preprocessed_case(folder: Path, case_id: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    mode = "r" if mmap else None
    data = np.load(folder / f"{case_id}.npy", mmap_mode=mode)
    seg = np.load(folder / f"{case_id}_seg.npy", mmap_mode=mode)
    properties = json.loads((folder / f"{case_id}.json").read_text())
    return data, seg, properties


def load_locations(folder: Path, case_id: str) -> dict[int, np.ndarray]:
    with np.load(folder / f"{case_id}_locations.npz") as content:
        return {int(key): content[key] for key in content.files}


def preprocessed_case_ids(folder: Path) -> list[str]:
    return sorted(path.stem for path in folder.glob("*.json") if not path.name.startswith(".") and path.name != SIGNATURE_FILE)  # skip temporaries
