"""MSD: a Medical Segmentation Decathlon task folder -> the raw layout, as nnU-Net's
``nnUNetv2_convert_MSD_dataset`` does it.

The Decathlon's dataset.json lists ``modality`` (channel index -> name), ``labels`` (value -> name)
and the ``training`` (image, label pairs) and ``test`` (images) files. A multi-modal image is one 4D
NIfTI; it becomes one file per channel. Releases mix dtypes (float32 or uint8 images, float32
labels holding integers): single-channel images are copied byte for byte, labels are rewritten as
unsigned integers, and a label with a non-integer or non-finite value is refused naming the file.
Every case is checked (readable, channel count, label geometry) in worker processes; a bad case is
skipped and listed, never silently kept."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.data.builder import ConversionSummary, RawDatasetBuilder, put_image
from medseg.errors import DatasetError, MedsegError
from medseg.io import MedicalImage, read_image, write_image
from medseg.parallel import map_parallel
from medseg_datasets.registry import Recipe, register_recipe

# The ten Decathlon tasks: a folder renamed on download (no TaskNN_ prefix) still gets its number.
DECATHLON_TASKS = {
    "BrainTumour": 1, "Heart": 2, "Liver": 3, "Hippocampus": 4, "Prostate": 5,
    "Lung": 6, "Pancreas": 7, "HepaticVessel": 8, "Spleen": 9, "Colon": 10,
}
_TASK_FOLDER = re.compile(r"^Task(\d+)_(.+)$")
_SUFFIX = ".nii.gz"


@dataclass(frozen=True)
class MsdTask:
    folder: Path
    name: str
    dataset_id: int | None  # None: unknown, --id is required
    channel_names: dict[str, str]
    labels: dict[str, int]  # name -> value, the raw layout's direction
    training: list[tuple[Path, Path]]
    test: list[Path]
    description: dict


def _listed_path(folder: Path, entry, what: str, dataset_json: Path) -> Path:
    if not isinstance(entry, str) or not entry.endswith(_SUFFIX):
        raise DatasetError(f"{dataset_json}: {what} entry {entry!r} is not a .nii.gz path")
    return (folder / entry).resolve()


def read_msd_task(folder: str | Path) -> MsdTask:
    """Parse a Decathlon task folder's dataset.json; an unusable one is an error naming the field."""
    folder = Path(folder)
    dataset_json = folder / "dataset.json"
    if not dataset_json.is_file():
        raise DatasetError(f"{folder}: expected a Decathlon task folder (dataset.json, imagesTr/, labelsTr/)")
    try:
        raw = json.loads(dataset_json.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DatasetError(f"{dataset_json}: not readable JSON ({error})") from error
    for key in ("modality", "labels", "training"):
        if key not in raw:
            raise DatasetError(f"{dataset_json}: no '{key}' (a Decathlon dataset.json has modality, labels and training)")
    if not isinstance(raw["modality"], dict) or not raw["modality"]:
        raise DatasetError(f"{dataset_json}: 'modality' must map channel indices to names")
    channels = sorted(raw["modality"].items(), key=lambda item: int(item[0]))
    if [int(index) for index, _ in channels] != list(range(len(channels))):
        raise DatasetError(f"{dataset_json}: 'modality' indices must be 0..{len(channels) - 1}, got {[i for i, _ in channels]}")
    try:
        labels = {str(name): int(value) for value, name in raw["labels"].items()}
    except (AttributeError, ValueError) as error:
        raise DatasetError(f"{dataset_json}: 'labels' must map integer values to names ({error})") from error
    if len(labels) != len(raw["labels"]):
        raise DatasetError(f"{dataset_json}: two label values share a name: {raw['labels']}")
    if 0 not in labels.values():
        raise DatasetError(f"{dataset_json}: 'labels' has no value 0 (background)")
    training = []
    for entry in raw["training"]:
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DatasetError(f"{dataset_json}: training entry {entry!r} needs 'image' and 'label'")
        training.append((_listed_path(folder, entry["image"], "training image", dataset_json),
                         _listed_path(folder, entry["label"], "training label", dataset_json)))
    test = [_listed_path(folder, entry, "test", dataset_json) for entry in raw.get("test", [])]
    name = str(raw.get("name") or folder.name).strip().replace(" ", "")
    task_match = _TASK_FOLDER.match(folder.resolve().name)
    dataset_id = int(task_match.group(1)) if task_match else DECATHLON_TASKS.get(name)
    if task_match and not raw.get("name"):
        name = task_match.group(2)
    return MsdTask(
        folder=folder, name=name, dataset_id=dataset_id, channel_names={index: str(n) for index, n in channels},
        labels=labels, training=training, test=test, description=raw,
    )


def integer_label(label: MedicalImage, path: Path) -> MedicalImage:
    """The label as unsigned integers; a fractional, negative or non-finite value is an error."""
    values = label.array
    if values.shape[0] != 1:
        raise MedsegError(f"{path}: a label must have one channel, got {values.shape[0]}")
    if np.issubdtype(values.dtype, np.integer) and values.min(initial=0) >= 0:
        return label
    if not np.all(np.isfinite(values)):
        raise MedsegError(f"{path}: label holds NaN or infinite values")
    if not np.array_equal(values, np.round(values)):
        fractional = values[values != np.round(values)]
        raise MedsegError(f"{path}: label holds non-integer values (e.g. {float(fractional.flat[0]):g}); labels must be whole class values")
    if values.min(initial=0) < 0:
        raise MedsegError(f"{path}: label holds negative values (min {float(values.min()):g})")
    dtype = np.uint8 if values.max(initial=0) <= np.iinfo(np.uint8).max else np.uint16
    return label.with_array(values.astype(dtype))


@dataclass(frozen=True)
class _CaseJob:
    case_id: str
    image: Path
    label: Path | None  # None for test images
    channels: int
    staging: Path
    split: str


def _convert_case(job: _CaseJob) -> str | None:
    """Write one case into the staging folder; the reason it cannot be converted, or None."""
    images = job.staging / f"images{job.split}"
    try:
        if not job.image.is_file():
            raise MedsegError(f"{job.image}: listed in dataset.json but missing")
        image = read_image(job.image)
        if image.ndim != 3:
            raise MedsegError(f"{job.image}: expected a 3D image, got {image.ndim}D")
        if image.num_channels != job.channels:
            raise MedsegError(f"{job.image}: {image.num_channels} channel(s), dataset.json's modality lists {job.channels}")
        label = None
        if job.label is not None:
            if not job.label.is_file():
                raise MedsegError(f"{job.label}: listed in dataset.json but missing")
            raw_label = read_image(job.label)
            label = integer_label(raw_label, job.label)
            differences = image.geometry_differences(label, names=("image", "label"))
            if differences:
                raise MedsegError(f"{job.label}: geometry differs from image: {'; '.join(differences)}")
    except MedsegError as error:
        return str(error)
    if image.num_channels == 1:
        put_image(job.image, images / f"{job.case_id}_0000{_SUFFIX}")
    else:
        for channel in range(image.num_channels):
            write_image(image.with_array(image.array[channel : channel + 1]), images / f"{job.case_id}_{channel:04d}{_SUFFIX}")
    if label is not None:
        target = job.staging / "labelsTr" / f"{job.case_id}{_SUFFIX}"
        put_image(job.label if label is raw_label else label, target)
    return None


def _case_id(path: Path) -> str:
    return path.name[: -len(_SUFFIX)]


def convert(src: Path, out: Path, overwrite: bool = False, progress=None, workers: int | None = None) -> ConversionSummary:
    task = read_msd_task(src)
    with RawDatasetBuilder(out, _SUFFIX, overwrite, progress) as builder:
        for folder in ("imagesTr", "imagesTs", "labelsTr"):  # the workers write into them
            (builder.staging / folder).mkdir()
        channels = len(task.channel_names)
        jobs = [_CaseJob(_case_id(image), image, label, channels, builder.staging, "Tr") for image, label in task.training]
        jobs += [_CaseJob(_case_id(image), image, None, channels, builder.staging, "Ts") for image in task.test]
        listed = Counter((job.case_id, job.split) for job in jobs)
        duplicates = {case_id for (case_id, _), count in listed.items() if count > 1}
        if duplicates:
            raise DatasetError(f"{src}/dataset.json: case(s) listed twice: {', '.join(sorted(duplicates))}")
        report = (lambda done, total: progress(done)) if progress else None
        reasons = map_parallel(_convert_case, jobs, workers=workers, progress=report)
        for job, reason in zip(jobs, reasons):
            if reason is not None:
                builder.skip(str(job.image), reason)
            elif job.split == "Tr":
                builder.summary.num_training += 1
            else:
                builder.summary.num_test += 1
        test_folder = builder.staging / "imagesTs"
        if not any(test_folder.iterdir()):
            test_folder.rmdir()
        description = {
            "name": task.name,
            "description": str(task.description.get("description", f"Medical Segmentation Decathlon {task.name}")),
            "channel_names": task.channel_names,
            "labels": task.labels,
            "numTraining": builder.summary.num_training,
            "file_ending": _SUFFIX,
            "licence": str(task.description.get("licence", task.description.get("license", "see the Decathlon release"))),
            "converted_from": f"Medical Segmentation Decathlon layout ({task.description.get('release', 'release not stated')})",
        }
        if "reference" in task.description:
            description["reference"] = str(task.description["reference"])
        return builder.finish(description)


def folder_name(src: Path, dataset_id: int | None) -> tuple[int, str]:
    """(dataset id, name) of the converted task: ``--id`` wins, then the TaskNN_ prefix or the
    Decathlon's own task number, as nnU-Net numbers them."""
    task = read_msd_task(src)
    chosen = dataset_id if dataset_id is not None else task.dataset_id
    if chosen is None:
        raise DatasetError(f"{src}: not a Decathlon task number (no TaskNN_ folder name, name {task.name!r}); pass --id N")
    return chosen, task.name


RECIPE = register_recipe(
    Recipe(
        name="MSD",
        dataset_id=0,  # per task: see folder_name
        task_type="segmentation",
        summary="any Medical Segmentation Decathlon task (3D NIfTI; 4D multi-modal images split per channel), as nnUNetv2_convert_MSD_dataset",
        source="a Decathlon task folder (TaskNN_Name/ with dataset.json, imagesTr/, labelsTr/, imagesTs/)",
        convert=convert,
        name_for_source=folder_name,
    )
)
