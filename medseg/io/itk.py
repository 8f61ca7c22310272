"""NRRD, MetaImage (MHA/MHD) and other ITK formats through SimpleITK."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.errors import ImageReadError
from medseg.io.image import MedicalImage


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


def read_itk(path: Path) -> MedicalImage:
    import SimpleITK as sitk

    try:
        sitk_image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise ImageReadError(path, f"SimpleITK cannot read it ({first_line})") from error
    if sitk_image.GetDimension() not in (2, 3):
        raise ImageReadError(path, f"expected a 2D or 3D image, got {sitk_image.GetDimension()}D")
    image = image_from_sitk(sitk_image)
    image.metadata["source_format"] = Path(path).suffix.lstrip(".").lower()
    return image


def write_itk(image: MedicalImage, path: Path) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(image_to_sitk(image), str(path), useCompression=True)
