"""NIfTI read/write with nibabel. NIfTI stores RAS world coordinates and (i, j, k) = (x, y, z) index order;
medseg images use LPS world and (Z, Y, X) array order, so both are converted here and nowhere else."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medseg.errors import ImageReadError
from medseg.io.image import MedicalImage
from medseg.io.limits import check_claimed_size

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_REVERSED_AXES = np.eye(4)
_REVERSED_AXES[:3, :3] = np.eye(3)[::-1]


def nifti_affine(affine_lps: np.ndarray) -> np.ndarray:
    """A medseg image's (Z, Y, X) -> LPS affine as NIfTI's (x, y, z) -> RAS one (and back: the map is its own inverse)."""
    return _RAS_TO_LPS @ np.asarray(affine_lps, dtype=np.float64) @ _REVERSED_AXES


def as_nifti_voxels(image: MedicalImage) -> tuple[np.ndarray, np.ndarray]:
    """A 3D image's first channel as NIfTI holds it: voxels (x, y, z) and their RAS affine."""
    return np.transpose(image.array[0], (2, 1, 0)), nifti_affine(image.affine)


def from_nifti_voxels(data: np.ndarray, affine_ras: np.ndarray, metadata: dict | None = None) -> MedicalImage:
    """data: (x, y, z) voxels with their RAS affine -> a one-channel medseg image."""
    return MedicalImage.from_affine(np.ascontiguousarray(np.transpose(data, (2, 1, 0)))[None], nifti_affine(affine_ras), metadata)


def _unpacked_size(path: Path, enough: int) -> int:
    """Bytes the gzip file decompresses to, counted in chunks and capped at ``enough``."""
    import gzip
    import zlib

    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while total < enough:
                chunk = stream.read(1 << 24)
                if not chunk:
                    break
                total += len(chunk)
    except (OSError, EOFError, zlib.error):  # a damaged stream holds what was read before the damage
        pass
    return total


def check_data_size(path: Path, header) -> None:
    """Refuse a header whose shape the file cannot hold, or that exceeds the size limit."""
    shape = tuple(int(n) for n in header.get_data_shape())
    needed = check_claimed_size(path, shape, header.get_data_dtype().itemsize)
    try:
        offset = int(header["vox_offset"])
    except (KeyError, ValueError, TypeError):
        offset = 0
    if str(path).endswith(".gz"):
        if offset + needed < 2**32:
            with open(path, "rb") as handle:  # gzip's last 4 bytes: the uncompressed size modulo 2**32
                handle.seek(-4, os.SEEK_END)
                stored = int.from_bytes(handle.read(4), "little")
        else:  # the stored size wraps at 4 GiB: count what the stream really holds, without keeping it
            stored = _unpacked_size(path, offset + needed)
        if stored < offset + needed:
            raise ImageReadError(path, f"header claims shape {shape} ({offset + needed} bytes) but the file unpacks to {stored} bytes (truncated?)")
    elif path.stat().st_size < offset + needed:
        raise ImageReadError(path, f"header claims shape {shape} ({offset + needed} bytes) but the file has {path.stat().st_size} (truncated?)")


def read_nifti(path: Path) -> MedicalImage:
    import nibabel as nib

    try:
        nifti = nib.load(str(path))
    except Exception as error:  # nibabel raises many types for corrupt files
        raise ImageReadError(path, f"not a readable NIfTI file ({error or type(error).__name__})") from None
    check_data_size(path, nifti.header)
    try:
        data = np.asanyarray(nifti.dataobj)
    except Exception as error:
        raise ImageReadError(path, f"not a readable NIfTI file ({error or type(error).__name__})") from None
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim == 5 and data.shape[3] == 1:  # (x, y, z, t=1, c): vector images written by ITK
        data = data[:, :, :, 0, :]
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise ImageReadError(path, f"expected a 3D image (optionally with channels), got shape {data.shape}")
    # (x, y, z, c) -> (c, z, y, x)
    array = np.ascontiguousarray(np.transpose(data, (3, 2, 1, 0)))
    image = MedicalImage.from_affine(array, nifti_affine(nifti.affine), {"source_format": "nifti"})
    if not np.all(np.isfinite(image.affine)):
        raise ImageReadError(path, "NIfTI header has a non-finite affine")
    return image


def write_nifti(image: MedicalImage, path: Path) -> None:
    import nibabel as nib

    array = image.array
    if image.ndim == 2:
        array = array[:, None]  # a 2D image becomes a one-slice volume along world z
        plane = image.affine  # (row, col, 1) -> (x, y, 1)
        affine = np.eye(4)
        affine[:2, 1:3] = plane[:2, :2]
        affine[:2, 3] = plane[:2, 2]
        affine[2, :] = (1.0, 0.0, 0.0, 0.0)
    else:
        affine = image.affine
    data = np.transpose(array, (3, 2, 1, 0))  # (c, z, y, x) -> (x, y, z, c)
    if data.shape[3] == 1:
        data = data[..., 0]
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    affine_ras = nifti_affine(affine)
    nifti = nib.Nifti1Image(np.ascontiguousarray(data), affine_ras)
    nifti.header.set_qform(affine_ras, code=1)
    nifti.header.set_sform(affine_ras, code=1)
    nib.save(nifti, str(path))
