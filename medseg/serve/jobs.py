"""Jobs of ``medseg serve``, kept on disk so a restart loses nothing:

    DATA/jobs/ID/job.json   state (queued, running, done, failed), model, formats, progress, error, outputs
    DATA/jobs/ID/input/     the uploaded file (or nothing: a server-side path is read where it is)
    DATA/jobs/ID/output/    what ``medseg predict`` wrote, with its manifest.jsonl

One worker thread runs the jobs in order from a bounded queue through the batch predictor
(medseg.inference.batch), keeping each model loaded between jobs. A job that was queued or running
when the server stopped is queued again at start."""

from __future__ import annotations

import json
import queue
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medseg.atomic import write_json_atomic
from medseg.errors import MedsegError

STATES = ("queued", "running", "done", "failed")


@dataclass
class Job:
    id: str
    model: str
    formats: list[str]
    tta: bool
    source: str  # the uploaded file or the server-side path
    state: str = "queued"
    progress: float = 0.0
    error: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # format -> file (single case) or case/format -> file
    review: dict[str, dict] = field(default_factory=dict)  # case -> {"flag", "reasons"}: whether a reader should look (medseg.audit)
    measurements: dict[str, list[dict]] = field(default_factory=dict)  # case -> one row per structure, when measurements were asked for
    created: float = field(default_factory=time.time)
    finished: float | None = None

    def public(self) -> dict:
        """What GET /jobs/{id} shows: no server paths."""
        content = asdict(self)
        content["source"] = Path(self.source).name
        content["outputs"] = sorted(self.outputs)
        return content


class JobStore:
    def __init__(self, data: Path):
        self.root = Path(data) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.jobs: dict[str, Job] = {}
        for path in sorted(self.root.glob("*/job.json")):
            try:
                self.jobs[path.parent.name] = Job(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue  # a job folder damaged outside the server: not served

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def new(self, model: str, formats: list[str], tta: bool) -> Job:
        job = Job(id=uuid.uuid4().hex, model=model, formats=formats, tta=tta, source="")
        (self.folder(job.id) / "input").mkdir(parents=True)
        return job

    def save(self, job: Job) -> None:
        with self.lock:
            self.jobs[job.id] = job
            write_json_atomic(self.folder(job.id) / "job.json", asdict(job))

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def delete(self, job_id: str) -> None:
        with self.lock:
            self.jobs.pop(job_id, None)
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def unfinished(self) -> list[Job]:
        with self.lock:
            return sorted((j for j in self.jobs.values() if j.state in ("queued", "running")), key=lambda j: j.created)


class Worker:
    """The one thread that runs jobs; models stay loaded between jobs."""

    def __init__(self, store: JobStore, models: dict[str, Path], queue_size: int, roots: list[Path] | None = None):
        """``roots``: the folders server-side paths may read; every file a job reads must resolve
        into them or into the job's own upload folder (a link under an allowed folder that leads
        elsewhere is refused, not followed)."""
        self.store, self.models, self.roots = store, models, list(roots or [])
        self.queue: queue.Queue[str] = queue.Queue(maxsize=queue_size)
        self.predictors: dict[tuple[str, bool], object] = {}
        self.thread = threading.Thread(target=self._loop, name="medseg-serve-worker", daemon=True)
        for job in store.unfinished():  # the server stopped before these finished
            job.state, job.progress = "queued", 0.0
            store.save(job)
            self.queue.put(job.id)
        self.thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job; queue.Full when the queue is at its bound (the caller answers 503)."""
        self.queue.put_nowait(job.id)

    def _predictor(self, model: str, tta: bool):
        from medseg.tasks import PredictorOptions, open_predictor
        from medseg.tasks.capabilities import LABEL_MAPS

        key = (model, tta)
        if key not in self.predictors:
            self.predictors[key] = open_predictor(self.models[model], PredictorOptions(mirror=tta), needs={LABEL_MAPS}, surface="medseg serve")
        return self.predictors[key]

    def _loop(self) -> None:
        while True:
            job = self.store.get(self.queue.get())
            if job is None or job.state != "queued":  # deleted while queued
                continue
            job.state = "running"
            self.store.save(job)
            try:
                self._run(job)
            except MedsegError as error:
                job.state, job.error = "failed", str(error)
            except Exception as error:  # noqa: BLE001 - one job never stops the server
                job.state, job.error = "failed", f"unexpected {type(error).__name__}: {error} (a medseg bug: please report it)"
            job.error = self._without_server_paths(job)
            job.finished = time.time()
            if self.store.get(job.id) is not None:  # not deleted meanwhile
                self.store.save(job)

    def _without_server_paths(self, job: Job) -> str | None:
        """A job's error as its client may read it: the server's data folder is not shown."""
        if not job.error:
            return job.error
        text = job.error
        for folder in (self.store.folder(job.id) / "input", self.store.folder(job.id) / "output", self.store.root):
            for form in {str(folder), str(folder.resolve())}:
                text = text.replace(form + "/", "")
        return text

    def _run(self, job: Job) -> None:
        from medseg.tasks import BatchRequest

        predictor = self._predictor(job.model, job.tta)
        output = self.store.folder(job.id) / "output"
        if output.exists():  # a restart re-runs the job from the start
            shutil.rmtree(output)

        def progress(done: int, total: int) -> None:
            job.progress = round(done / max(total, 1), 3)
            self.store.save(job)

        confine = [*self.roots, self.store.folder(job.id) / "input"]
        result = predictor.predict_batch(BatchRequest(Path(job.source), output, formats=list(job.formats), progress=progress, confine=confine))
        entries = result.entries
        single = len(entries) == 1
        job.outputs = {
            (fmt if single else f"{entry['case']}/{fmt}"): path for entry in entries for fmt, path in entry["outputs"].items()
        }
        job.review = {entry["case"]: entry.get("review", {"flag": False, "reasons": []}) for entry in entries if entry["status"] == "done"}
        job.measurements = {entry["case"]: _measurement_rows(Path(entry["outputs"]["measurements"])) for entry in entries if "measurements" in entry["outputs"]}
        if result.failed:
            job.state = "failed"
            job.error = "; ".join(f"{case}: {error}" for case, error in result.failed.items())
        else:
            job.state, job.progress = "done", 1.0


def _measurement_rows(path: Path) -> list[dict]:
    """What the web page's table shows of a case's measurements (medseg.audit.measurements)."""
    content = json.loads(path.read_text())
    rows = []
    for structure in content["structures"]:
        mean = structure["intensity"].get("0", {}).get("mean")
        size = {"volume_ml": structure["volume_ml"]} if "volume_ml" in structure else {"area_mm2": structure["area_mm2"]}
        rows.append({"label": structure["label"], "voxels": structure["voxels"], **size, "components": structure["components"],
                     "mean_intensity": mean, "intensity_unit": content["intensity_unit"]})
    return rows
