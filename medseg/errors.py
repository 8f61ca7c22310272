"""Errors that reach users as one clear line (the CLI prints them without a traceback)."""

from __future__ import annotations

from pathlib import Path


class MedsegError(Exception):
    """Base class for every error medseg raises on purpose: bad input, bad configuration."""


class ImageReadError(MedsegError):
    """A file could not be read as an image; names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ImageWriteError(MedsegError):
    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DicomSeriesError(MedsegError):
    """A DICOM series cannot be turned into a volume; names the series and the problem."""

    def __init__(self, series: str, problem: str):
        self.series = series
        self.problem = problem
        super().__init__(f"DICOM series {series}: {problem}")


class DatasetError(MedsegError):
    """A dataset folder is malformed (layout, dataset.json)."""


class MissingDependencyError(MedsegError):
    """An optional heavy dependency is needed for this feature; says what to install."""

    def __init__(self, package: str, extra: str, feature: str):
        super().__init__(
            f"{feature} needs the optional package '{package}': pip install 'medseg[{extra}]'"
        )
