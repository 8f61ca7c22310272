"""NRRD, MetaImage (MHA/MHD) and other ITK formats through SimpleITK."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from medseg.errors import ImageReadError
from medseg.io.image import MedicalImage
from medseg.io.limits import check_claimed_size


def image_from_sitk(sitk_image) -> MedicalImage:
    """SimpleITK image (index order x, y, z) -> MedicalImage (array order z, y, x)."""
    import SimpleITK as sitk

    ndim = sitk_image.GetDimension()
    data = sitk.GetArrayFromImage(sitk_image)  # (z, y, x[, c])
    if sitk_image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(data, -1, 0)
    else:
        array = data[None]
    direction_itk = np.asarray(sitk_image.GetDirection(), dtype=np.float64).reshape(ndim, ndim)
    return MedicalImage(
        np.ascontiguousarray(array),
        spacing=tuple(reversed(sitk_image.GetSpacing())),
        origin=tuple(sitk_image.GetOrigin()),
        direction=direction_itk[:, ::-1],
    )


def image_to_sitk(image: MedicalImage):
    import SimpleITK as sitk

    array = image.array
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if image.num_channels == 1:
        sitk_image = sitk.GetImageFromArray(array[0])
    else:
        sitk_image = sitk.GetImageFromArray(np.moveaxis(array, 0, -1), isVector=True)
    sitk_image.SetSpacing(tuple(reversed(image.spacing)))
    sitk_image.SetOrigin(image.origin)
    sitk_image.SetDirection(tuple(image.direction[:, ::-1].ravel()))
    return sitk_image


@contextmanager
def native_stderr_captured() -> Iterator[list[str]]:
    """Collect what C++ libraries print to file descriptor 2 (ITK's MetaIO and NRRD readers print
    their real reason there and raise a vaguer one), instead of letting it reach the terminal."""
    collected: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield collected
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            collected.extend(" ".join(sink.read().decode(errors="replace").split()).splitlines())


def read_itk(path: Path) -> MedicalImage:
    import SimpleITK as sitk

    with native_stderr_captured() as printed:
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()  # the header only: its size is checked before the pixels are allocated
            check_claimed_size(path, reader.GetSize(), 8 * reader.GetNumberOfComponents())  # 8 bytes: the widest pixel type
            sitk_image = reader.Execute()
            error = None
        except RuntimeError as caught:
            error = caught
    if error is not None:
        lines = str(error).strip().splitlines()
        reason = " ".join(printed).strip() or (lines[-1] if lines else "unknown error")
        raise ImageReadError(path, f"SimpleITK cannot read it ({reason})") from None
    if sitk_image.GetDimension() not in (2, 3):
        raise ImageReadError(path, f"expected a 2D or 3D image, got {sitk_image.GetDimension()}D")
    image = image_from_sitk(sitk_image)
    image.metadata["source_format"] = Path(path).suffix.lstrip(".").lower()
    return image


def write_itk(image: MedicalImage, path: Path) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(image_to_sitk(image), str(path), useCompression=True)
