"""The DICOM node's store on disk: received instances, the series being processed, their results,
and one persisted state file per series, so that a restart or a pause never splits a series.

    STORE/incoming/SERIES_UID/SOP_UID.dcm   received instances, written atomically before success is answered
    STORE/processing/SERIES_UID/input/      a series being segmented (back to incoming/ at start after a crash)
    STORE/done/SERIES_UID[-N]/              input/ (the instances) and output/ (what the prediction wrote)
    STORE/failed/SERIES_UID[-N]/            the same, with error.txt
    STORE/series/SERIES_UID.json            the series' state: its results so far (a series that grows after
                                            it was processed is processed again whole, the earlier result superseded)

A series is ready when nothing of it arrived for the quiet period, counted from the node's start
too (instances received before a restart do not make a series look finished), and when what DICOM
says of its extent agrees: ImagesInAcquisition, instance numbers without gaps, slice positions on a
regular grid. One that still looks incomplete waits (up to ``incomplete_wait`` seconds)."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

from medseg.atomic import write_json_atomic


class SeriesStore:
    """The folders of received series and the moves between them (each one a rename: atomic)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        for name in ("incoming", "processing", "done", "failed", "series"):
            (self.root / name).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ per-series state
    def state(self, series: str) -> dict:
        path = self.root / "series" / f"{series}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {"series": series, "results": []}

    def save_state(self, series: str, state: dict) -> None:
        write_json_atomic(self.root / "series" / f"{series}.json", state)

    # ------------------------------------------------------------------ instances
    def recover(self) -> list[str]:
        """At start: series left in processing/ (a crash) go back to incoming/; half-written files go."""
        recovered = []
        for folder in sorted((self.root / "processing").iterdir()):
            target = self.root / "incoming" / folder.name
            target.mkdir(exist_ok=True)
            for item in (folder / "input").glob("*.dcm"):
                os.replace(item, target / item.name)
            shutil.rmtree(folder, ignore_errors=True)
            recovered.append(folder.name)
        for partial in (self.root / "incoming").glob("*/.*.partial"):
            partial.unlink(missing_ok=True)
        return recovered

    def save_instance(self, series: str, sop: str, write) -> Path:
        """``write(path)`` writes the instance; it appears under its final name only when complete."""
        folder = self.root / "incoming" / series
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{sop}.dcm"
        partial = folder / f".{sop}.{uuid.uuid4().hex[:8]}.partial"
        try:
            write(partial)
            with partial.open("rb") as handle:
                os.fsync(handle.fileno())
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target

    def quiet_series(self, quiet_seconds: float, since: float = 0.0) -> list[tuple[str, float]]:
        """(series, seconds since its last instance) for series in incoming/ quiet for ``quiet_seconds``;
        ``since``: the node's start, before which nothing counts as quiet (the sender may resume)."""
        ready, now = [], time.time()
        for folder in sorted((self.root / "incoming").iterdir()):
            times = [p.stat().st_mtime for p in folder.glob("*.dcm")]
            if times and now - max(max(times), since) >= quiet_seconds:
                ready.append((folder.name, now - max(times)))
        return ready

    def earlier_instances(self, series: str) -> list[Path]:
        """The instances of the series' latest successful result (a series that grew is processed whole)."""
        results = [r for r in self.state(series)["results"] if r.get("outcome") == "done" and not r.get("superseded")]
        if not results:
            return []
        folder = self.root / results[-1]["kept"] / "input"
        return sorted(folder.glob("*.dcm")) if folder.is_dir() else []

    def all_instances(self, series: str) -> list[Path]:
        """What processing the series now would read: the new instances plus the earlier result's."""
        new = {p.name: p for p in (self.root / "incoming" / series).glob("*.dcm")}
        earlier = {p.name: p for p in self.earlier_instances(series) if p.name not in new}
        return sorted([*new.values(), *earlier.values()])

    def claim(self, series: str) -> tuple[Path, int]:
        """incoming/SERIES -> processing/SERIES/input, with the earlier result's instances linked in;
        returns processing/SERIES and how many earlier instances joined."""
        target = self.root / "processing" / series
        target.mkdir()
        os.replace(self.root / "incoming" / series, target / "input")
        joined = 0
        for path in self.earlier_instances(series):
            destination = target / "input" / path.name
            if not destination.exists():
                try:
                    os.link(path, destination)
                except OSError:
                    shutil.copy2(path, destination)
                joined += 1
        return target, joined

    def finish(self, folder: Path, outcome: str) -> Path:
        """processing/SERIES -> done/ or failed/, with a suffix when the series came before."""
        base = self.root / outcome / folder.name
        target, count = base, 1
        while target.exists():
            count += 1
            target = base.with_name(f"{folder.name}-{count}")
        os.replace(folder, target)
        return target

    def record(self, series: str, outcome: str, kept: Path, instances: int) -> dict | None:
        """Add a result to the series' state; returns the earlier result it supersedes, if any."""
        state = self.state(series)
        superseded = None
        if outcome == "done":
            for result in state["results"]:
                if result.get("outcome") == "done" and not result.get("superseded"):
                    result["superseded"] = True
                    superseded = result
        state["results"].append({"outcome": outcome, "kept": str(kept.relative_to(self.root)), "instances": instances, "time": time.time()})
        self.save_state(series, state)
        return superseded


def incomplete_reason(paths: list[Path]) -> str | None:
    """Why these instances do not look like a whole series, from what DICOM records of its extent;
    None when nothing says so. Only headers are read."""
    import numpy as np
    from pydicom import dcmread

    headers = []
    for path in paths:
        try:
            headers.append(dcmread(path, stop_before_pixels=True))
        except Exception:  # noqa: BLE001 - an unreadable instance is the reader's to report, not a sign of incompleteness
            continue
    if not headers:
        return None
    expected = {int(h.ImagesInAcquisition) for h in headers if "ImagesInAcquisition" in h and str(h.ImagesInAcquisition).strip().isdigit()}
    acquisitions = {str(h.get("AcquisitionNumber", "")) for h in headers}
    if len(expected) == 1 and len(acquisitions) == 1 and len(headers) < next(iter(expected)):
        return f"{len(headers)} of {next(iter(expected))} instances (ImagesInAcquisition)"
    numbers = sorted(int(h.InstanceNumber) for h in headers if "InstanceNumber" in h and str(h.InstanceNumber).strip().lstrip("-").isdigit())
    if len(numbers) == len(headers) and len(set(numbers)) == len(numbers) and numbers[-1] - numbers[0] + 1 > len(numbers):
        missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        return f"instance numbers {numbers[0]} to {numbers[-1]} lack {len(missing)}: {shown}"
    planes = [h for h in headers if "ImagePositionPatient" in h and "ImageOrientationPatient" in h and int(h.get("NumberOfFrames", 1) or 1) == 1]
    if len(planes) == len(headers) >= 3:
        orientation = np.asarray(planes[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        positions = np.sort([float(np.dot(normal, np.asarray(h.ImagePositionPatient, dtype=float))) for h in planes])
        steps = np.diff(positions)
        steps = steps[steps > 1e-3]
        if len(steps) >= 2:
            typical = float(np.median(steps))
            gaps = steps[steps > 1.5 * typical]
            if len(gaps):
                return f"slice positions leave a gap of {float(gaps.max()):.2f} mm where the spacing is {typical:.2f} mm"
    return None
