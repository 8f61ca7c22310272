"""Read and write medical images with their geometry; see medseg.io.image for the axis convention."""

from __future__ import annotations

import os
from pathlib import Path

from medseg.atomic import atomic_path
from medseg.errors import ImageReadError, ImageWriteError
from medseg.io.image import MedicalImage, orientation_code, to_canonical

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
NATURAL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES + NATURAL_SUFFIXES

__all__ = [
    "MedicalImage",
    "orientation_code",
    "to_canonical",
    "read_image",
    "write_image",
    "image_suffix",
    "IMAGE_SUFFIXES",
]


def image_suffix(path: str | Path) -> str:
    """The format suffix of a path, lower case, including double suffixes such as '.nii.gz'."""
    name = Path(path).name.lower()
    for suffix in NIFTI_SUFFIXES + ITK_SUFFIXES + NATURAL_SUFFIXES + DICOM_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(path).suffix.lower()


def read_image(path: str | Path, series: str | None = None) -> MedicalImage:
    """Read any supported image: NIfTI, NRRD/MHA, PNG/JPEG/TIFF/BMP, or a DICOM file or folder.

    ``series`` selects one series when a DICOM folder holds several (see medseg.io.dicom.select_series).
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "no such file or folder")
    suffix = image_suffix(path)
    if path.is_dir() or suffix in DICOM_SUFFIXES or suffix == "":
        from medseg.io.dicom import read_dicom

        return read_dicom(path, series)
    if suffix in NIFTI_SUFFIXES:
        from medseg.io.nifti import read_nifti

        return read_nifti(path)
    if suffix in ITK_SUFFIXES:
        from medseg.io.itk import read_itk

        return read_itk(path)
    if suffix in NATURAL_SUFFIXES:
        from medseg.io.natural import read_natural

        return read_natural(path)
    raise ImageReadError(path, f"unknown image format '{suffix}' (known: {', '.join(IMAGE_SUFFIXES)}, DICOM)")


def write_image(image: MedicalImage, path: str | Path) -> Path:
    """Write ``image`` to ``path`` (format from the suffix) atomically: a temporary file is renamed
    into place, so a crash never leaves a half-written file under the final name."""
    path = Path(path)
    suffix = image_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        from medseg.io.nifti import write_nifti as writer
    elif suffix in ITK_SUFFIXES:
        from medseg.io.itk import write_itk as writer
    elif suffix in NATURAL_SUFFIXES:
        from medseg.io.natural import write_natural as writer
    else:
        raise ImageWriteError(path, f"cannot write format '{suffix}' (known: {', '.join(IMAGE_SUFFIXES)})")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK | os.X_OK):  # some writers (SimpleITK) would say less
            raise ImageWriteError(path, f"cannot write: the folder {path.parent} is not writable")
        with atomic_path(path, suffix) as temporary:  # a temporary of the same format, renamed into place
            writer(image, temporary)
    except ImageWriteError as error:  # a writer names the temporary it was given: name the output instead
        raise ImageWriteError(path, error.problem) from None
    except OSError as error:  # no permission, a file where a folder should be, disk full
        raise ImageWriteError(path, f"cannot write ({error.strerror or error})") from None
    return path
