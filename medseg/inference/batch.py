"""Predict a folder (nnU-Net imagesTs naming: CASE_XXXX.ext per channel), single images, or one
DICOM series folder, one case at a time; a failing case is reported and skipped, never the end of
the batch. A DICOM folder is always one input (a series, chosen with ``series`` when it holds
several), never read file by file."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from medseg.atomic import atomic_path, prepare_output_folder, remove_stale_temporaries
from medseg.errors import MedsegError
from medseg.data.cases import stack_channel_files
from medseg.io import DICOM_SUFFIXES, IMAGE_SUFFIXES, image_suffix, read_image, write_image

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class BatchResult:
    written: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    folds: list[str] = field(default_factory=list)  # the folds that made the outputs


def is_dicom_file(path: Path) -> bool:
    """A DICOM suffix, or no known image suffix and the 'DICM' marker of a DICOM file (PACS exports
    have no suffix or UID-like names such as CT.1.3.12.2...)."""
    suffix = image_suffix(path)
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix in IMAGE_SUFFIXES:
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def group_inputs(source: Path, num_channels: int) -> dict[str, list[Path]]:
    """Case id -> channel files. A file not named CASE_XXXX is a single-channel case of its own. A
    folder of DICOM files (or of folders only, as a DICOM study is) is one case: [the folder]."""
    if source.is_dir():
        entries = [p for p in source.iterdir() if not p.name.startswith(".")]
        files = sorted(p for p in entries if p.is_file())
        dicom = [p for p in files if is_dicom_file(p)]
        if dicom and len(dicom) < len(files):
            others = ", ".join([p.name for p in files if p not in dicom][:3])
            raise MedsegError(f"{source}: mixes DICOM files with other files ({others}); give a DICOM series folder or a folder of images")
        if dicom or (not files and any(p.is_dir() for p in entries)):
            return {source.name: [source]}
    else:
        files = [source]
    cases: dict[str, dict[int, Path]] = {}
    for path in files:
        suffix = image_suffix(path)
        stem = path.name[: -len(suffix)] if suffix else path.name
        match = _CHANNEL.match(stem)
        if match:
            cases.setdefault(match["case"], {})[int(match["channel"])] = path
        else:
            cases.setdefault(stem, {})[0] = path
    return {case: [channels[k] for k in sorted(channels)] for case, channels in cases.items()}


def predict_folder(
    predictor, source: Path, output: Path, file_ending: str, save_probabilities: bool = False,
    progress: Callable[[int, int], None] | None = None, series: str | None = None,
) -> BatchResult:
    """``series``: which series of a DICOM folder input (medseg.io.dicom.select_series rules)."""
    if not source.exists():
        raise MedsegError(f"{source}: no such file or folder")
    num_channels = len(predictor.plans.channel_names)
    cases = group_inputs(source, num_channels)
    if not cases:
        raise MedsegError(f"{source}: no input images")
    prepare_output_folder(output)
    remove_stale_temporaries(output)  # left by a run that was killed mid-write
    result = BatchResult()
    for index, (case_id, files) in enumerate(sorted(cases.items())):
        try:
            image = read_image(files[0], series=series) if files[0].is_dir() else stack_channel_files(files)
            prediction = predictor.predict_image(image, probabilities=save_probabilities, case_id=str(files[0]))
            target = output / f"{case_id}{file_ending}"
            write_image(prediction.segmentation, target)
            if save_probabilities:
                with atomic_path(output / f"{case_id}.probabilities.npz") as temporary:
                    np.savez_compressed(temporary, probabilities=prediction.probabilities.astype(np.float16))
            result.written.append(target)
        except MedsegError as error:
            result.failed[case_id] = str(error)
        except Exception as error:  # an unexpected failure on one case must not end the batch
            result.failed[case_id] = f"{files[0]}: unexpected {type(error).__name__}: {error} (a medseg bug: please report it)"
        if progress:
            progress(index + 1, len(cases))
    return result
