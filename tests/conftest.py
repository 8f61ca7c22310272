"""Shared fixtures: the real data beside the project, an isolated MEDSEG_ROOT, the real CLI."""

from __future__ import annotations

import importlib.util
import os
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
