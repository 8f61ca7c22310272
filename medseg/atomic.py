"""Write files so that a crash never leaves a half-written file under the final name: write a
hidden temporary beside the target (same suffix, so format-sniffing writers work), then rename.

Temporaries are named ``.NAME.PID.tmpSUFFIX``: per process (DDP ranks write the same files), and
recognisable, so a later run can remove those a killed process left behind."""

from __future__ import annotations

import json
import os
import shutil
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from medseg.errors import MedsegError

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp(\.[A-Za-z0-9.]+)?$")


def temporary_path(path: Path, suffix: str | None = None) -> Path:
    """Where ``path`` is written before it is renamed into place."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix if suffix is None else suffix}")


@contextmanager
def atomic_path(path: Path, suffix: str | None = None) -> Iterator[Path]:
    """Yields the temporary path to write; renamed onto ``path`` when the block succeeds.
    ``suffix``: the temporary's suffix when the format needs more than the last one ('.nii.gz')."""
    path = Path(path)
    temporary = temporary_path(path, suffix)
    try:
        yield temporary
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_json_atomic(path: Path, content, indent: int = 1) -> None:
    write_text_atomic(path, json.dumps(content, indent=indent))


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporaries that killed medseg processes left in ``folder``; returns them."""
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _TEMPORARY.match(path.name)
        if match and not process_alive(int(match["pid"])):
            if path.is_dir():  # a folder output (the ``slices`` format) being written
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def prepare_output_folder(folder: Path, what: str = "output folder") -> Path:
    """Create ``folder`` (and its parents) or check the existing one can take files; a clear error
    names the path otherwise (an existing file, a file on the way, no write permission)."""
    folder = Path(folder)
    for parent in [folder, *folder.parents]:
        if parent.exists():
            if not parent.is_dir():
                where = "" if parent == folder else f" ({parent} is a file)"
                raise MedsegError(f"{folder}: cannot be the {what}: not a folder{where}")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MedsegError(f"{folder}: cannot create the {what} ({error.strerror or error})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MedsegError(f"{folder}: the {what} is not writable")
    return folder
