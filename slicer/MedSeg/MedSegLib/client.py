"""The module's logic without Qt or Slicer (standard library only, so it runs in Slicer's Python and
in pytest): list models and run one case, either through a local medseg install (a subprocess) or
through a `medseg serve` URL (HTTP).

Both backends take ``progress(fraction, message)`` (fraction in 0..1, or negative for a message
alone, such as a line of medseg's output) and a ``cancelled()`` callable polled while they wait;
cancelling raises ``Cancelled`` and leaves no output behind. Both return a ``Result``: the label
image, whether medseg recommends a review (and why), and each structure's measurements."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

Progress = Callable[[float, str], None]


class MedSegError(RuntimeError):
    """A failure to show the user as it is (it names the model, file or server and the problem)."""


class Cancelled(MedSegError):
    pass


def _no_review() -> dict:
    return {"flag": False, "reasons": []}


@dataclass
class Result:
    label: Path  # the label image (NIfTI)
    review: dict = field(default_factory=_no_review)  # {"flag", "reasons"}: should a reader look first
    measurements: list[dict] = field(default_factory=list)  # per structure: label, voxels, volume_ml or area_mm2, components, mean_intensity

    def summary(self) -> str:
        """What the module's panel shows under the result."""
        lines = [("Review recommended: " + "; ".join(self.review["reasons"])) if self.review.get("flag") else "No review flag."]
        for row in self.measurements:
            size = f"{row['volume_ml']:.2f} mL" if "volume_ml" in row else f"{row['area_mm2']:.1f} mm²"
            mean = "" if row.get("mean_intensity") is None else f", mean {row['mean_intensity']:.1f} {row.get('intensity_unit', '')}".rstrip()
            lines.append(f"{row['label']}: {size}, {row['components']} component(s){mean}")
        return "\n".join(lines)


def _rows(measurements: dict) -> list[dict]:
    """A measurements JSON (medseg's CASE.measurements.json) as the rows the server's jobs show."""
    rows = []
    for structure in measurements.get("structures", []):
        size = {key: structure[key] for key in ("volume_ml", "area_mm2") if key in structure}
        mean = structure.get("intensity", {}).get("0", {}).get("mean")
        rows.append({"label": structure["label"], "voxels": structure["voxels"], **size, "components": structure["components"],
                     "mean_intensity": mean, "intensity_unit": measurements.get("intensity_unit", "")})
    return rows


def _never() -> bool:
    return False


def _ignore(fraction: float, message: str) -> None:
    pass


class LocalMedSeg:
    """A medseg command on this computer: ``medseg describe`` lists models, ``medseg predict`` runs them."""

    def __init__(self, executable: str = "medseg"):
        found = shutil.which(executable) or (executable if Path(executable).is_file() else None)
        if found is None:
            raise MedSegError(f"medseg executable {executable!r} not found: install medseg or give the path to its 'medseg' command")
        self.command = [found]

    def describe(self, model_folder: Path) -> dict:
        result = subprocess.run([*self.command, "describe", str(model_folder), "--json"], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise MedSegError(f"{model_folder}: {_last_line(result.stderr or result.stdout)}")
        return json.loads(result.stdout)

    def models(self, models_dir: Path) -> list[dict]:
        """Every model folder in ``models_dir`` (folders holding plans.json), with 'path' added."""
        found = []
        for folder in sorted(Path(models_dir).iterdir()):
            if folder.is_dir() and (folder / "plans.json").is_file():
                found.append({**self.describe(folder), "path": str(folder)})
        if not found:
            raise MedSegError(f"{models_dir}: no model folders in it")
        return found

    def segment(self, model: dict, image: Path, output_dir: Path, tta: bool = True, progress: Progress = _ignore, cancelled=_never) -> Result:
        """Run ``medseg predict`` on one image; the label image (NIfTI) lands in ``output_dir``."""
        work = Path(tempfile.mkdtemp(prefix="medseg-run-", dir=output_dir))
        command = [*self.command, "predict", "-i", str(image), "-o", str(work), "-m", model["path"], "--format", "nifti,measurements"]
        if not tta:
            command.append("--no-tta")
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: [lines.append(line.rstrip()) for line in process.stdout], daemon=True)
        reader.start()
        progress(0.0, "started medseg predict")
        shown = 0
        try:
            while process.poll() is None:
                if cancelled():
                    process.terminate()
                    process.wait(timeout=30)
                    raise Cancelled("cancelled: medseg predict was stopped")
                shown = _report(lines, shown, progress)
                time.sleep(0.1)
            reader.join(timeout=5)
            _report(lines, shown, progress)
            if process.returncode != 0:
                raise MedSegError(f"medseg predict failed ({process.returncode}): {_last_line(chr(10).join(lines))}")
            labels = sorted(work.glob("*.nii.gz"))
            if len(labels) != 1:
                raise MedSegError(f"medseg predict wrote {len(labels)} label images in {work}, expected 1")
            target = Path(output_dir) / f"{Path(image).name.split('.')[0]}_medseg.nii.gz"
            shutil.move(str(labels[0]), target)
            [entry] = [json.loads(line) for line in (work / "manifest.jsonl").read_text().splitlines() if line.strip()]
            measured = entry["outputs"].get("measurements")
            progress(1.0, "done")
            return Result(target, entry.get("review") or _no_review(),
                          _rows(json.loads(Path(measured).read_text())) if measured else [])
        finally:
            if process.poll() is None:
                process.kill()
            shutil.rmtree(work, ignore_errors=True)


def _report(lines: list[str], shown: int, progress: Progress) -> int:
    """Pass new output lines on; 'predict: K/N' lines (the CLI's per-case count) move the fraction."""
    for line in lines[shown:]:
        text = line.strip()
        fraction = None
        if text.startswith("predict:") and "/" in text:
            done, _, total = text.split(":", 1)[1].strip().partition("/")
            if done.isdigit() and total.isdigit() and int(total):
                fraction = int(done) / int(total)
        progress(fraction if fraction is not None else -1.0, text)
    return len(lines)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


class MedSegServer:
    """A `medseg serve` URL: GET /models, POST /jobs, poll, GET /jobs/{id}/result."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0):
        self.url, self.token, self.timeout = url.rstrip("/"), token or None, timeout

    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> bytes:
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=dict(headers or {}))
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            try:
                detail = json.loads(error.read()).get("detail", error.reason)
            except ValueError:
                detail = error.reason
            raise MedSegError(f"{self.url}{path}: HTTP {error.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as error:
            raise MedSegError(f"{self.url}: cannot reach the server ({getattr(error, 'reason', error)})") from None

    def models(self) -> list[dict]:
        return json.loads(self._request("GET", "/models"))

    def segment(self, model: dict, image: Path, output_dir: Path, tta: bool = True, progress: Progress = _ignore, cancelled=_never) -> Result:
        fields = {"model": model["name"], "formats": "nifti,measurements", "tta": "true" if tta else "false"}
        body, content_type = _multipart(fields, Path(image))
        job = json.loads(self._request("POST", "/jobs", body, {"Content-Type": content_type}))
        progress(0.0, f"job {job['id']} queued")
        while job["state"] in ("queued", "running"):
            if cancelled():
                raise Cancelled(f"cancelled: stopped waiting for job {job['id']} (the server finishes it)")
            time.sleep(0.3)
            job = json.loads(self._request("GET", f"/jobs/{job['id']}"))
            progress(float(job.get("progress", 0.0)), f"job {job['id']}: {job['state']}")
        if job["state"] != "done":
            raise MedSegError(f"job {job['id']} failed: {job.get('error')}")
        target = Path(output_dir) / f"{Path(image).name.split('.')[0]}_medseg.nii.gz"
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:6]}.partial")
        partial.write_bytes(self._request("GET", f"/jobs/{job['id']}/result?format=nifti"))
        partial.replace(target)
        progress(1.0, "done")
        [review] = job.get("review", {}).values() or [None]
        [rows] = job.get("measurements", {}).values() or [[]]
        return Result(target, review or _no_review(), rows)


def _multipart(fields: dict[str, str], file: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode() for name, value in fields.items()]
    filename = urllib.parse.quote(file.name)
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode())
    parts += [file.read_bytes(), f"\r\n--{boundary}--\r\n".encode()]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def segment_specs(model: dict) -> list[dict]:
    """The model's foreground labels as segments: value, name and colour (RGB in 0..1), label order."""
    colours = model.get("colours", {})
    specs = []
    for name, value in sorted(model["labels"].items(), key=lambda item: item[1]):
        if value <= 0:
            continue
        hex_colour = colours.get(name, "#808080").lstrip("#")
        specs.append({"value": int(value), "name": name, "colour": tuple(int(hex_colour[i:i + 2], 16) / 255 for i in (0, 2, 4))})
    return specs
