"""What makes a prediction auditable: input checks, measurements, confidence and its calibration."""

from __future__ import annotations

import json
from pathlib import Path

from medseg.errors import MedsegError


def read_audit_file(folder: Path, name: str, version: int, required: str, what: str) -> dict | None:
    """A model folder's audit JSON (``name``) of ``version`` holding ``required``; None when absent
    (a folder trained before it was kept), an error naming the file when it is damaged or stale."""
    path = Path(folder) / name
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise MedsegError(f"{path}: unreadable ({error})") from None
    if not isinstance(content, dict) or content.get("version") != version or required not in content:
        raise MedsegError(f"{path}: not {what} of version {version}; rerun `medseg calibrate {Path(folder)}`")
    return content
