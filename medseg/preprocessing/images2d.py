"""2D images as the image tasks train on them: resized (antialiased) to the planned input size,
z-scored per channel, float16 on disk (one .npz per case), prepared again when the plan changes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medseg.atomic import atomic_path, write_json_atomic
from medseg.errors import DatasetError, MedsegError


def prepare_image(array: np.ndarray, size: list[int], source: str = "the image") -> np.ndarray:
    """array: (C, H, W) -> (C, *size) float32, resized (antialiased) and z-scored per channel."""
    if array.ndim != 3:
        raise MedsegError(f"{source}: a 2D image was expected, got an array of shape {list(array.shape[1:])}")
    if not np.isfinite(array).all():
        raise MedsegError(f"{source}: {int((~np.isfinite(array)).sum())} pixels are NaN or infinite")
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    if list(tensor.shape[2:]) != list(size):
        tensor = F.interpolate(tensor, size=list(size), mode="bilinear", align_corners=False, antialias=True)
    flat = tensor[0].flatten(1)
    mean, std = flat.mean(1), flat.std(1).clamp_min(1e-6)
    return ((tensor[0] - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)).numpy()


def _signature(configuration) -> dict:
    signature = {"input_size": list(configuration.patch_size), "normalization": configuration.normalization, "version": 1}
    extra = configuration.training.get("extra_images")
    return {**signature, "extra_images": extra} if extra else signature  # classifiers' signatures unchanged


EXTRA_PREFIX = "extra__"  # images from --images folders (pretraining): never a dataset case id
EXTRA_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".nii.gz", ".nii", ".nrrd", ".mha")
LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL converts RGB to L


def extra_image_files(folders: list[str]) -> list[Path]:
    """Every image file under the --images folders, sorted; a folder that is missing or holds none is refused."""
    files = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise MedsegError(f"--images {folder}: not a folder")
        found = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(EXTRA_SUFFIXES))
        if not found:
            raise MedsegError(f"--images {folder}: no images in it ({', '.join(EXTRA_SUFFIXES)})")
        files += found
    return files


def extra_targets(folder: Path, extra_folders: list[str]) -> list[tuple[Path, Path]]:
    """(image file, its .npz in ``folder``) for every file under the --images folders, the .npz named
    by the file's path, size and modification time (an edited image is prepared again); .npz files
    of images no longer there are removed."""
    targets = []
    for path in extra_image_files(extra_folders):
        status = path.stat()
        key = hashlib.sha1(f"{path.resolve()}|{status.st_size}|{status.st_mtime_ns}".encode()).hexdigest()[:20]
        targets.append((path, folder / f"{EXTRA_PREFIX}{key}.npz"))
    wanted = {target.name for _, target in targets}
    for stale in folder.glob(f"{EXTRA_PREFIX}*.npz"):
        if stale.name not in wanted:
            stale.unlink()
    return targets


def with_channels(array: np.ndarray, channels: int, source: str) -> np.ndarray:
    """array: (C, H, W) of an extra image -> (channels, H, W): colour to grayscale (luminance) for a
    grayscale dataset; anything else that differs is refused, naming the file."""
    if array.shape[0] == channels:
        return array
    if channels == 1 and array.shape[0] in (3, 4):
        return np.tensordot(np.asarray(LUMINANCE, dtype=np.float32), array[:3].astype(np.float32), axes=1)[None]
    raise MedsegError(f"{source}: {array.shape[0]} channel(s); the dataset's images have {channels}")


def _preprocess_case(job) -> str | None:
    """job: (a dataset case, or an extra image file, its .npz, the input size, the dataset's channels)."""
    source, target, size, channels = job
    from medseg.data.cases import load_case_images
    from medseg.io import read_image

    name = str(source) if isinstance(source, Path) else str(source.images[0])
    try:
        array = with_channels(read_image(source).array, channels, name) if isinstance(source, Path) else load_case_images(source).array
        image = prepare_image(array, size, name)
    except MedsegError as error:
        return str(error)
    except Exception as error:
        return f"{name}: unreadable ({type(error).__name__}: {error})"
    with atomic_path(target) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, image=image.astype(np.float16))
    return None


def fresh_folder(folder: Path, expected: dict) -> None:
    """Create the preprocessed folder; a changed plan (signature) removes what an older plan prepared."""
    folder.mkdir(parents=True, exist_ok=True)
    signature_file = folder / "signature.json"
    if signature_file.is_file() and json.loads(signature_file.read_text()) != expected:
        for stale in folder.glob("*.npz"):
            stale.unlink()  # the plan changed: every case is prepared again
    write_json_atomic(signature_file, expected)


TEST_PREFIX = "imagesTs__"  # preprocessed test images (masked pretraining may learn from them): never a training case id


def case_targets(description, folder: Path, include_test: bool) -> list[tuple]:
    """(case, its .npz in ``folder``) for every training image, and every test image (under
    TEST_PREFIX) when ``include_test``."""
    from medseg.data.layout import list_cases

    targets = []
    for split in ("Tr", "Ts") if include_test else ("Tr",):
        if split == "Ts" and not (description.folder / "imagesTs").is_dir():
            continue
        cases, problems = list_cases(description, split)
        if problems:
            raise DatasetError(f"{description.folder}: " + "; ".join(problems[:5]) + " (run `medseg datasets check`)")
        prefix = TEST_PREFIX if split == "Ts" else ""
        targets += [(case, folder / f"{prefix}{case.case_id}.npz") for case in cases]
    return targets


def preprocess(description, plans, configuration, folder: Path, workers, progress) -> tuple[int, int]:
    """Every training image (and the test images, and the --images files, when the plan includes
    them) at the input size."""
    from medseg.parallel import map_parallel

    fresh_folder(folder, _signature(configuration))
    targets = case_targets(description, folder, bool(configuration.training.get("include_test")))
    targets += extra_targets(folder, configuration.training.get("extra_images", []))
    channels = description.num_channels
    jobs = [(case, target, configuration.patch_size, channels) for case, target in targets if not target.is_file()]
    errors = [e for e in map_parallel(_preprocess_case, jobs, workers, progress) if e]
    if errors:
        raise DatasetError(f"{len(errors)} image(s) could not be preprocessed: " + "; ".join(errors[:5]))
    return len(jobs), len(targets) - len(jobs)


def preprocessed_cases(data_folder: Path, plans, configuration) -> list[str]:
    if not data_folder.is_dir():
        return []
    signature_file = data_folder / "signature.json"
    if signature_file.is_file() and json.loads(signature_file.read_text()) != _signature(configuration):
        raise MedsegError(f"{data_folder}: preprocessed for another plan; rerun `medseg preprocess`")
    return sorted(p.stem for p in data_folder.glob("*.npz") if not p.name.startswith(".") and not p.stem.startswith((TEST_PREFIX, EXTRA_PREFIX)))


def load_images(data_folder: Path, case_ids: list[str], key: str = "image") -> torch.Tensor:
    """(N, C, H, W) float16 images of the cases, in order (``key``: another array of the case files)."""
    arrays = []
    for case_id in case_ids:
        with np.load(data_folder / f"{case_id}.npz") as content:
            arrays.append(content[key])
    return torch.from_numpy(np.stack(arrays))
