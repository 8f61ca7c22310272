"""Reading PyTorch files (checkpoints, state dicts) without running code, with one kind of error.

Every loader of weights from outside (medseg checkpoints, nnU-Net and MONAI weights, autoencoders) comes
here: ``torch.load(weights_only=True)`` behind a header check, torch's own warnings kept off stderr (a
damaged file otherwise prints a pickle-protocol warning before medseg's error), and every failure a
MedsegError naming the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterable

from medseg.errors import MedsegError

REFUSED_OBJECTS = "holds Python objects besides tensors and plain values; medseg loads weights without running code, so it refuses this one"


def load_plain(path: Path, what: str = "checkpoint", allowed_globals: Iterable[Any] = ()) -> Any:
    """The content of ``path`` (a torch.save file) unpickled with torch's weights-only loader;
    ``allowed_globals`` are the few extra types a known writer pickles (e.g. numpy scalars)."""
    import torch

    if not path.is_file():
        raise MedsegError(f"{path}: no such {what}")
    with path.open("rb") as stream:
        head = stream.read(2)
    # torch.save writes a zip archive; files from before torch 1.6 start with a pickle's protocol byte
    if head != b"PK" and head[:1] != b"\x80":
        raise MedsegError(f"{path}: not a PyTorch {what} (neither a zip archive nor a pickle; damaged, or another kind of file)")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(allowed_globals)):
            warnings.simplefilter("ignore")  # torch warns of unknown pickle protocols before refusing them
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - zip, pickle and I/O errors alike: the file is named
        text = str(error).strip()
        if "Unsupported global" in text:  # torch's advice to unpickle anyway is not ours to give
            raise MedsegError(f"{path}: {REFUSED_OBJECTS}") from None
        first = text.splitlines()[0] if text else ""
        if "weights_only" in first or "Weights only load failed" in first:  # torch's preamble, not the cause
            first = next((line for line in text.splitlines()[1:] if line.strip() and "weights_only" not in line), "")
        raise MedsegError(f"{path}: unreadable {what} ({type(error).__name__}{': ' + first.strip() if first else ''})") from None
