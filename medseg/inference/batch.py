"""Predict a folder (nnU-Net imagesTs naming: CASE_XXXX.ext per channel) or single images, one
case at a time; a failing case is reported and skipped, never the end of the batch."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from medseg.atomic import atomic_path
from medseg.errors import MedsegError
from medseg.data.cases import stack_channel_files
from medseg.io import image_suffix, write_image

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class BatchResult:
    written: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    folds: list[str] = field(default_factory=list)  # the folds that made the outputs


def group_inputs(source: Path, num_channels: int) -> dict[str, list[Path]]:
    """Case id -> channel files. A file not named CASE_XXXX is a single-channel case of its own."""
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
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
    progress: Callable[[int, int], None] | None = None,
) -> BatchResult:
    if not source.exists():
        raise MedsegError(f"{source}: no such file or folder")
    num_channels = len(predictor.plans.channel_names)
    cases = group_inputs(source, num_channels)
    if not cases:
        raise MedsegError(f"{source}: no input images")
    output.mkdir(parents=True, exist_ok=True)
    result = BatchResult()
    for index, (case_id, files) in enumerate(sorted(cases.items())):
        try:
            image = stack_channel_files(files)
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
            result.failed[case_id] = f"{files[0]}: {type(error).__name__}: {error}"
        if progress:
            progress(index + 1, len(cases))
    return result
