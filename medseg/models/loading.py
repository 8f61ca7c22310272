"""A network rebuilt from plans and filled with a checkpoint's weights, checked before any memory
is allocated: the architecture is first built on PyTorch's meta device (shapes only), compared with
the checkpoint, and only a network that fits is built for real. A plans file asking for 100000
features per stage is refused in milliseconds instead of allocating terabytes."""

from __future__ import annotations

from pathlib import Path

import torch

from medseg.errors import MedsegError
from medseg.models.registry import build_model


def _shapes(network: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in network.state_dict().items()}


def build_checked(architecture: dict, in_channels: int, num_classes: int, state: dict, plans_file: Path, checkpoint: Path) -> torch.nn.Module:
    """The network of ``architecture`` with ``state`` loaded; a mismatch names both files and the
    first tensor that differs."""
    try:
        with torch.device("meta"):
            skeleton = build_model(architecture, in_channels, num_classes)
    except MedsegError:
        raise
    except Exception as error:  # noqa: BLE001 - an architecture the family cannot build from these values
        raise MedsegError(f"{plans_file}: the architecture {architecture.get('name')!r} cannot be built from its kwargs ({type(error).__name__}: {error})") from None
    expected = _shapes(skeleton)
    given = {name: tuple(tensor.shape) for name, tensor in state.items() if isinstance(tensor, torch.Tensor)}
    missing = [name for name in expected if name not in given]
    unexpected = [name for name in given if name not in expected]
    differing = [name for name in expected if name in given and expected[name] != given[name]]
    if missing or unexpected or differing:
        if differing:
            name = differing[0]
            detail = f"{name} is {list(given[name])} in the checkpoint, {list(expected[name])} in the plans' network"
        elif missing:
            detail = f"{len(missing)} tensor(s) of the plans' network missing from the checkpoint, e.g. {missing[0]}"
        else:
            detail = f"{len(unexpected)} tensor(s) in the checkpoint that the plans' network lacks, e.g. {unexpected[0]}"
        raise MedsegError(f"{checkpoint}: does not fit the network in {plans_file} ({detail})")
    network = build_model(architecture, in_channels, num_classes)
    network.load_state_dict(state)
    return network
