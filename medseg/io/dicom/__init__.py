"""DICOM series reading: scan a folder, pick a series, build a volume with patient geometry."""

from medseg.errors import ImageReadError
from medseg.io.dicom.scan import DicomSeries, FolderScan, scan_folder, select_series
from medseg.io.dicom.volume import series_to_image

__all__ = ["DicomSeries", "FolderScan", "scan_folder", "select_series", "series_to_image", "read_dicom"]


def read_dicom(path, series: str | None = None):
    """Read the DICOM series under ``path`` (a folder or one file); ``series`` picks among several."""
    try:
        return series_to_image(select_series(scan_folder(path), series))
    except RecursionError:  # pydicom parses nested sequences recursively, lazily, on first access
        raise ImageReadError(path, "DICOM data nested too deeply to read (sequences within sequences)") from None
