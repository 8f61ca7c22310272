"""Checkpoints that are written atomically and hold everything --continue needs.

They hold only tensors and plain Python values (numbers, strings, lists, dicts), so they are read
with ``torch.load(weights_only=True)``: a model folder from elsewhere (a vendor, a colleague) cannot
run code when it is loaded. Anything else in a file is refused, naming it."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from medseg.atomic import atomic_path
from medseg.errors import MedsegError
from medseg.torch_files import load_plain


def rng_state() -> dict:
    """The random generators' states as tensors and plain values."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    numpy_state = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position), "has_gauss": int(has_gauss), "cached": float(cached)}
    return {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: Path, content: dict) -> None:
    with atomic_path(path) as temporary:
        torch.save(content, temporary)


def load_checkpoint(path: Path) -> dict:
    return load_plain(path, "checkpoint")


def module_states(content: dict, path: Path) -> dict[str, dict]:
    """The modules' state dicts by name; checkpoints written before tasks were plug-ins hold one
    network under "network"."""
    if isinstance(content.get("modules"), dict):
        return content["modules"]
    if isinstance(content.get("network"), dict):
        return {"network": content["network"]}
    raise MedsegError(f"{path}: not a medseg checkpoint (no trained modules in it)")
