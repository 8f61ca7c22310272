"""Checkpoints that are written atomically and hold everything --continue needs."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from medseg.atomic import atomic_path
from medseg.errors import MedsegError


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(path: Path, content: dict) -> None:
    with atomic_path(path) as temporary:
        torch.save(content, temporary)


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise MedsegError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise MedsegError(f"{path}: unreadable checkpoint ({type(error).__name__}: {error})") from None


def module_states(content: dict, path: Path) -> dict[str, dict]:
    """The modules' state dicts by name; checkpoints written before tasks were plug-ins hold one
    network under "network"."""
    if isinstance(content.get("modules"), dict):
        return content["modules"]
    if isinstance(content.get("network"), dict):
        return {"network": content["network"]}
    raise MedsegError(f"{path}: not a medseg checkpoint (no trained modules in it)")
