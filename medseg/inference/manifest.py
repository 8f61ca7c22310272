"""The batch manifest: ``OUTPUT/manifest.jsonl``, one JSON line per case as it finishes.

    {"case": "...", "status": "done" | "failed", "inputs": [...], "outputs": {"nifti": "...", ...},
     "skipped": {"dicom-seg": "why"}, "error": null, "notes": [...], "timings": {"read_s": .., ...},
     "model": "...", "model_name": "...", "folds": [...], "medseg_version": "...", "finished": "ISO time",
     "input_checks": [{"check": "spacing", "message": "...", "values": {...}}] | null (not checked),
     "review": {"flag": true | false, "reasons": ["..."]}}

Lines are appended and flushed to disk one case at a time, so a run killed at any moment leaves
every finished case recorded and at most one torn last line, which reading ignores. ``--resume``
keeps the manifest and skips a case whose last line says done with the same formats and whose
output files all exist (outputs are written atomically: existing means complete); the cases it
redoes lose their earlier line, so the manifest holds one line per case, with an ``attempt`` count."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from medseg.errors import MedsegError

MANIFEST_NAME = "manifest.jsonl"


def read_manifest(path: Path) -> list[dict]:
    """Every well-formed line; a torn line (a run killed mid-write) is ignored."""
    entries = []
    if not path.is_file():
        return entries
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "case" in entry:
            entries.append(entry)
    return entries


class Manifest:
    def __init__(self, folder: Path, resume: bool):
        self.path = Path(folder) / MANIFEST_NAME
        self.previous = {entry["case"]: entry for entry in read_manifest(self.path)} if resume else {}
        try:
            if resume and self.path.is_file():
                self._repair_torn_line()
            else:
                self.path.write_text("")
        except OSError as error:
            raise MedsegError(f"{self.path}: cannot be written ({error.strerror or error})") from None

    def _repair_torn_line(self) -> None:
        """A killed run may have left half a line: end it, so the next line starts clean."""
        content = self.path.read_bytes()
        if content and not content.endswith(b"\n"):
            with open(self.path, "ab") as handle:
                handle.write(b"\n")

    def keep_only_except(self, redone: set[str]) -> None:
        """Before a resumed run redoes ``redone``: the manifest is rewritten (atomically) with the
        latest line of every other case, so each case keeps one line, its latest state."""
        from medseg.atomic import write_text_atomic

        kept = [entry for case, entry in self.previous.items() if case not in redone]
        try:
            write_text_atomic(self.path, "".join(json.dumps(entry, default=str) + "\n" for entry in kept))
        except OSError as error:
            raise MedsegError(f"{self.path}: cannot be rewritten ({error.strerror or error})") from None

    def attempt(self, case_id: str) -> int:
        """This run's attempt at the case: one more than the manifest's last."""
        if case_id not in self.previous:
            return 1
        return int(self.previous[case_id].get("attempt", 1)) + 1  # lines written before attempts were counted: 1

    def completed(self, case_id: str, formats: list[str]) -> dict | None:
        """The earlier entry when this case is done for every format and its files exist."""
        entry = self.previous.get(case_id)
        if not entry or entry.get("status") != "done":
            return None
        outputs, skipped = entry.get("outputs", {}), entry.get("skipped", {})
        if any(fmt not in outputs and fmt not in skipped for fmt in formats):
            return None
        if not all(Path(path).exists() for fmt, path in outputs.items() if fmt in formats):
            return None
        return entry

    def append(self, entry: dict) -> None:
        """A case that cannot be recorded ends the batch (a full disk takes every later case too),
        with an error naming the manifest; the lines written before stay whole."""
        line = (json.dumps(entry, default=str) + "\n").encode()
        try:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as error:
            raise MedsegError(f"{self.path}: cannot record case {entry.get('case')} ({error.strerror or error}); the batch stops") from None
        start = os.lseek(descriptor, 0, os.SEEK_END)
        try:
            if os.write(descriptor, line) != len(line):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(descriptor)
        except OSError as error:
            try:
                os.ftruncate(descriptor, start)  # no torn line left behind
            except OSError:
                pass
            raise MedsegError(
                f"{self.path}: cannot record case {entry.get('case')} ({error.strerror or error}); the batch stops. "
                "Free space, then rerun with --resume: recorded cases are kept"
            ) from None
        finally:
            os.close(descriptor)
