"""2D natural-image formats (PNG, JPEG, TIFF, BMP) with Pillow. They carry no geometry: spacing 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.errors import ImageReadError, ImageWriteError
from medseg.io.image import MedicalImage, default_direction


def read_natural(path: Path) -> MedicalImage:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as pil:
            frames = getattr(pil, "n_frames", 1)
            if frames > 1:
                raise ImageReadError(path, f"multi-page image with {frames} pages; store volumes as NIfTI")
            mode = pil.mode
            if mode in ("RGBA", "LA"):  # alpha is transparency, not image content
                pil = pil.convert("RGB" if mode == "RGBA" else "L")
            elif mode in ("CMYK", "YCbCr", "HSV", "LAB", "1"):
                pil = pil.convert("RGB" if mode != "1" else "L")
            palette = _palette(pil)
            data = np.asarray(pil)  # palette ('P') images keep their indices: label maps
    except Image.DecompressionBombError as error:  # a small file that would unpack to gigabytes
        raise ImageReadError(path, f"refused: {error}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(path, f"not a readable image ({error or type(error).__name__})") from None
    array = data[None] if data.ndim == 2 else np.moveaxis(data, -1, 0)
    metadata = {"source_format": path.suffix.lower(), **({"palette": palette} if palette is not None else {})}
    return MedicalImage(np.ascontiguousarray(array), (1.0, 1.0), (0.0, 0.0), default_direction(2), metadata)


def _palette(pil) -> list[list[int]] | None:
    """A palette image's colours (index -> RGB), None for other modes."""
    if pil.mode != "P":
        return None
    colours = np.asarray(pil.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)
    return colours.tolist()


def palette_as_colours(image: MedicalImage) -> MedicalImage:
    """An image read from a palette PNG as what it shows: grey (1 channel) when every colour of its
    palette is grey, else RGB. Label maps keep their indices; images to segment need this."""
    palette = image.metadata.get("palette")
    if palette is None:
        return image
    colours = np.zeros((256, 3), np.uint8)
    colours[: len(palette)] = np.asarray(palette, np.uint8)[:256]
    rgb = np.moveaxis(colours[image.array[0].astype(np.intp)], -1, 0)
    grey = bool((colours[:, 0] == colours[:, 1]).all() and (colours[:, 1] == colours[:, 2]).all())
    metadata = {k: v for k, v in image.metadata.items() if k != "palette"}
    return MedicalImage(np.ascontiguousarray(rgb[:1] if grey else rgb), image.spacing, image.origin, image.direction, metadata)


def write_natural(image: MedicalImage, path: Path) -> None:
    from PIL import Image

    if image.ndim != 2:
        raise ImageWriteError(path, f"{path.suffix} holds 2D images; this image is 3D {image.spatial_shape}")
    array = image.array
    suffix = path.suffix.lower()
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if image.num_channels == 3:
        if array.dtype != np.uint8:
            raise ImageWriteError(path, f"RGB images must be uint8 to write {suffix}, got {array.dtype}")
        pil = Image.fromarray(np.ascontiguousarray(np.moveaxis(array, 0, -1)), mode="RGB")
    elif image.num_channels == 1:
        plane = array[0]
        if plane.dtype == np.uint8:
            pil = Image.fromarray(plane, mode="L")
        elif plane.dtype in (np.uint16, np.int16, np.int32, np.int64, np.uint32) and suffix == ".png":
            if plane.min() < 0 or plane.max() > 65535:
                raise ImageWriteError(path, "PNG holds integers 0..65535; values are out of that range")
            pil = Image.fromarray(plane.astype(np.uint16))
        elif suffix in (".tif", ".tiff"):
            pil = Image.fromarray(plane.astype(np.float32) if plane.dtype.kind == "f" else plane.astype(np.int32))
        else:
            raise ImageWriteError(path, f"cannot store {plane.dtype} pixels in {suffix}; use .tif or .nii.gz")
    else:
        raise ImageWriteError(path, f"{suffix} holds 1 or 3 channels, this image has {image.num_channels}")
    save_format = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}[suffix]
    options = {"quality": 95} if save_format == "JPEG" else {}
    pil.save(path, format=save_format, **options)
