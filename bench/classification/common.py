"""What the classification benches share: the medseg CLI in a given MEDSEG_ROOT, and one arm's
root whose raw dataset is a symlink to the bench's converted copy (so every arm has its own plans,
preprocessed data and model folders over the same images)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("MEDSEG_SHARED_DATA", REPO.parent / "shared" / "data"))


def medseg(*args, root: Path) -> str:
    env = dict(os.environ, MEDSEG_ROOT=str(root), COLUMNS="200")
    result = subprocess.run([sys.executable, "-m", "medseg.cli", *map(str, args)], env=env, capture_output=True, text=True)
    print(result.stdout[-2000:], flush=True)
    if result.returncode != 0:
        raise SystemExit(f"medseg {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result.stdout


def arm_root(work: Path, name: str, dataset: str) -> Path:
    root = work / name
    raw = root / "raw" / dataset
    if not raw.exists():
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.symlink_to(work / "raw" / dataset, target_is_directory=True)
    return root
