"""Shared fixtures: the real data beside the project, an isolated MEDSEG_ROOT, the real CLI."""

from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Without a GPU, Triton kernels run (slowly) in Triton's interpreter on CPU tensors, so every
# registered backend is tested. Set before any kernel module is imported (triton reads it then).
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


def shared_data_dir() -> Path:
    return Path(os.environ.get("MEDSEG_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()


@contextmanager
def installed_plugin(folder: Path, module: str, **environment: str):
    """A plug-in module in ``folder`` found as a lab would install it: on PYTHONPATH with
    $MEDSEG_PLUGINS naming it, for this process and every child (CLI, server, node, Ray actors);
    ``environment``: more variables for the time being. Everything is restored afterwards."""
    keys = ("PYTHONPATH", "MEDSEG_PLUGINS", *environment)
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [str(folder), saved["PYTHONPATH"]])), MEDSEG_PLUGINS=module, **environment)
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def require_peer(module: str) -> None:
    """Skip without the peer library locally; fail in CI, which installs MEDSEG_EXTRAS=dev,peers."""
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI"):
            pytest.fail(f"peer '{module}' must be installed in CI: MEDSEG_EXTRAS=dev,peers")
        pytest.skip(f"peer '{module}' not installed (MEDSEG_EXTRAS=dev,peers bash scripts/install.sh)")


def require_backend(op: str, name: str, device: str = "cpu") -> None:
    """Skip a kernel backend that cannot run on this machine, saying why (e.g. mamba_ssm's CUDA kernel)."""
    import torch

    from medseg_kernels.registry import backends

    backend = next(b for b in backends(op) if b.name == name)
    reason = backend.unavailable_reason(torch.device(device), None)
    if reason and name == "triton" and os.environ.get("CI"):
        pytest.fail(f"{op}/triton must run in CI (MEDSEG_EXTRAS=dev,peers,triton; interpreted on CPU): {reason}")
    if reason:
        pytest.skip(f"{op}/{name}: {reason}")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    folder = shared_data_dir()
    if not folder.is_dir():
        if os.environ.get("CI"):  # CI always has ../shared beside the checkout: absence is a failure
            pytest.fail(f"real test data not found at {folder} in CI")
        pytest.skip(f"real test data not found at {folder} (set MEDSEG_SHARED_DATA)")
    return folder


@pytest.fixture
def medseg_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "medseg_root"
    monkeypatch.setenv("MEDSEG_ROOT", str(root))
    return root


def run_cli(*args: str, root: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run the real `medseg` command line in a subprocess."""
    env = dict(os.environ, COLUMNS="200")
    if root is not None:
        env["MEDSEG_ROOT"] = str(root)
    result = subprocess.run(
        [sys.executable, "-m", "medseg.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(f"medseg {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def free_port() -> int:
    """A loopback TCP port nothing listens on now (for servers the tests start)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


BRIGHT_DATASET = "Dataset990_Bright"


def bright_case(rng):
    """(image, label) MedicalImages: a volume whose bright blobs are the label, a task a tiny network
    learns in a few iterations."""
    import numpy as np
    from scipy import ndimage

    from medseg.io import MedicalImage

    field = ndimage.gaussian_filter(rng.standard_normal((12, 32, 32)), 2.0)
    image = (field - field.mean()) / field.std()
    label = (image > 0.8).astype(np.uint8)
    geometry = ((5.0, 4.0, 4.0), (0.0, 0.0, 0.0), np.eye(3))
    return MedicalImage((image * 200 + 100).astype(np.float32)[None], *geometry), MedicalImage(label[None], *geometry)


def build_bright_dataset(raw_dataset: Path, cases: int = 4, seed: int = 0) -> None:
    """A raw dataset of ``bright_case`` volumes with the label 'liver' (so real scans get non-empty labels)."""
    import numpy as np

    from medseg.data.builder import RawDatasetBuilder

    rng = np.random.default_rng(seed)
    with RawDatasetBuilder(raw_dataset, ".nii.gz") as builder:
        for index in range(cases):
            image, label = bright_case(rng)
            builder.add_image(f"case_{index:03d}", image)
            builder.add_label(f"case_{index:03d}", label)
        builder.finish({"channel_names": {"0": "MR"}, "labels": {"background": 0, "liver": 1}, "numTraining": cases, "file_ending": ".nii.gz"})


@pytest.fixture(scope="session")
def bright_model(tmp_path_factory) -> tuple[Path, Path]:
    """(MEDSEG_ROOT, model folder): a 3D U-Net trained briefly on the bright dataset, shared by the
    hospital-inference, serving and DICOM-node tests."""
    root = tmp_path_factory.mktemp("hospital")
    build_bright_dataset(root / "raw" / BRIGHT_DATASET)
    run_cli("fingerprint", BRIGHT_DATASET, "--workers", "1", root=root, check=True)
    run_cli("plan", BRIGHT_DATASET, root=root, check=True)
    run_cli("preprocess", BRIGHT_DATASET, "-c", "3d_fullres", "--workers", "1", root=root, check=True)
    run_cli("train", BRIGHT_DATASET, "3d_fullres", "0", "--epochs", "4", "--iterations-per-epoch", "15", "--no-validate", root=root, check=True)
    return root, root / "results" / BRIGHT_DATASET / "unet__medsegPlans__3d_fullres"


def copy_bright_images(root: Path, folder: Path, count: int = 3) -> Path:
    """The first ``count`` training images of the bright dataset under MEDSEG_ROOT ``root``, copied into ``folder``."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        name = f"case_{index:03d}_0000.nii.gz"
        shutil.copy(root / "raw" / BRIGHT_DATASET / "imagesTr" / name, folder / name)
    return folder
