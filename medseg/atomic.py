"""Write files so that a crash never leaves a half-written file under the final name: write a
hidden temporary beside the target (same suffix, so format-sniffing writers work), then rename."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yields the temporary path to write; renamed onto ``path`` when the block succeeds."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")  # per process: DDP ranks write the same files
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
