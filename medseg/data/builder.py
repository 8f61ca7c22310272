"""Build a raw dataset folder atomically: everything is written into a hidden staging folder that is
renamed into place only when complete, so an interrupted conversion never leaves a dataset that
looks finished, and an existing dataset is never touched unless overwrite is asked for."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from medseg.data.layout import write_dataset_json
from medseg.errors import DatasetError
from medseg.io import MedicalImage, write_image


@dataclass
class ConversionSummary:
    output: Path
    num_training: int = 0
    num_test: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source file or case, reason)


def put_image(image: MedicalImage | Path, target: Path) -> None:
    """Write ``image`` to ``target``; a file already in the right format is copied byte for byte."""
    if isinstance(image, Path):
        shutil.copyfile(image, target)
    else:
        write_image(image, target)


class RawDatasetBuilder:
    """Usage: ``with RawDatasetBuilder(out, file_ending) as b: b.add_image(...); b.finish(json)``."""

    def __init__(
        self, output: str | Path, file_ending: str, overwrite: bool = False, progress: Callable[[int], None] | None = None
    ):
        self.progress = progress  # called with the number of cases written so far
        self._cases_written = 0
        self.output = Path(output).resolve()
        self.file_ending = file_ending
        if self.output.exists() and not overwrite:
            raise DatasetError(f"{self.output}: already exists; pass --overwrite to replace it")
        self.overwrite = overwrite
        self.staging = self.output.parent / f".{self.output.name}.partial"
        self.summary = ConversionSummary(self.output)
        self._finished = False

    def __enter__(self) -> "RawDatasetBuilder":
        if self.staging.exists():
            shutil.rmtree(self.staging)
        self.staging.mkdir(parents=True)
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if not self._finished and self.staging.exists():
            shutil.rmtree(self.staging)

    def path(self, relative: str) -> Path:
        target = self.staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def add_image(self, case_id: str, image: MedicalImage | Path, channel: int = 0, split: str = "Tr") -> None:
        """Write one channel of a case; ``image`` may also be a file in the right format, copied as is."""
        put_image(image, self.path(f"images{split}/{case_id}_{channel:04d}{self.file_ending}"))
        if channel == 0:
            self._cases_written += 1
            if self.progress:
                self.progress(self._cases_written)

    def add_label(self, case_id: str, label: MedicalImage | Path) -> None:
        put_image(label, self.path(f"labelsTr/{case_id}{self.file_ending}"))

    def skip(self, source: str, reason: str) -> None:
        self.summary.skipped.append((source, reason))

    def finish(self, dataset_json: dict) -> ConversionSummary:
        images_tr = self.staging / "imagesTr"
        if not images_tr.is_dir() or not any(images_tr.iterdir()):
            raise DatasetError(f"{self.output}: no training case could be converted ({len(self.summary.skipped)} skipped)")
        write_dataset_json(self.staging, dataset_json)
        if self.output.exists():
            shutil.rmtree(self.output)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.staging.rename(self.output)
        self._finished = True
        return self.summary
