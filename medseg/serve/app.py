"""``medseg serve``: the REST API over the batch predictor (FastAPI; OpenAPI docs at /docs).

    GET    /models              the served models: family, task, labels, input channels, version
    POST   /jobs                multipart: ``model``, ``formats`` (default nifti), ``tta``, and either
                                ``file`` (NIfTI, NRRD, MHA, PNG, or a zip of DICOM/images) or ``path``
                                (a server-side file or folder under an allowed root)
    GET    /jobs/{id}           state, progress, error, outputs; per case the review flag with its
                                reasons and, with the ``measurements`` format, each structure's size
    GET    /jobs/{id}/result    one output file (``?format=nifti``), or a zip of them all
    GET    /jobs/{id}/slices    the jobs' ``slices`` outputs: [{key, count}]
    GET    /jobs/{id}/slices/{i}.png?key=K   slice i's overlay
    DELETE /jobs/{id}           forget a job and its files (not while it runs)
    GET    /                    the web page (medseg/serve/static/index.html): pick a model, upload,
                                watch progress, slide through the overlays beside the review flag and the
                                measurements table, download the outputs

Auth: a bearer token (``MEDSEG_TOKEN`` or ``--token-file``); with no token configured only
loopback clients are served. Bad requests get a 4xx with a one-line ``detail``: no or wrong token
401, a client that is not local without a token 403, unknown model or job 404, path outside the
allowed roots 403, traversal in a file name 400, body over the upload limit 413, unknown file
type 415, an image that does not read 422, the queue full 503."""

import hmac
import queue
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile  # the serve extra
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from medseg.errors import MedsegError
from medseg.serve.jobs import Job, JobStore, Worker

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png")
UPLOAD_SUFFIXES = IMAGE_SUFFIXES + (".zip",)
LOOPBACK = ("127.0.0.1", "::1", "localhost")
PAGE = Path(__file__).with_name("static") / "index.html"


@dataclass
class ServeSettings:
    models: dict[str, Path]  # name -> model folder
    data: Path  # jobs live under DATA/jobs
    token: str | None = None
    max_upload_bytes: int = 512 * 2**20
    allowed_roots: list[Path] = field(default_factory=list)  # server-side paths a job may read
    queue_size: int = 16


def _suffix(name: str) -> str | None:
    lower = name.lower()
    return next((s for s in UPLOAD_SUFFIXES if lower.endswith(s)), None)


def create_app(settings: ServeSettings) -> FastAPI:
    import medseg
    from medseg.model_folder import model_summary
    from medseg.model_folders import open_model_folder
    from medseg.tasks import get_task
    from medseg.tasks.capabilities import LABEL_MAPS
    from medseg.tasks.prediction import require_capabilities

    folders = {}
    for name, path in settings.models.items():
        folder = open_model_folder(path)  # a bad model folder stops the server at start, named
        require_capabilities(folder, get_task(folder.info.task), {LABEL_MAPS}, "medseg serve")
        folders[name] = folder
    store = JobStore(settings.data)
    roots = [Path(r).resolve() for r in settings.allowed_roots]
    worker = Worker(store, {name: f.path for name, f in folders.items()}, settings.queue_size, roots)
    app = FastAPI(title="medseg", version=medseg.__version__, description="Segmentation jobs over HTTP: upload, poll, download.")

    @app.middleware("http")
    async def upload_limit(request: Request, call_next):
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None:
                return JSONResponse({"detail": "uploads need a Content-Length header"}, status_code=411)
            if int(length) > settings.max_upload_bytes:
                return JSONResponse({"detail": f"upload of {int(length)} bytes exceeds the limit of {settings.max_upload_bytes}"}, status_code=413)
        return await call_next(request)

    def authorised(request: Request) -> None:
        if settings.token is None:
            host = request.client.host if request.client else ""
            if host not in LOOPBACK:
                raise HTTPException(403, "no token is configured, so only local clients are served")
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode(), settings.token.encode()):
            raise HTTPException(401, "wrong token", headers={"WWW-Authenticate": "Bearer"})

    guard = [Depends(authorised)]

    @app.get("/models", dependencies=guard)
    def list_models() -> list[dict]:
        return [model_summary(name, f) for name, f in folders.items()]

    def _job_or_404(job_id: str) -> Job:
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job

    @app.post("/jobs", status_code=202, dependencies=guard)
    def create_job(
        model: str = Form(...), formats: str = Form("nifti"), tta: bool = Form(True),
        file: UploadFile | None = File(None), path: str | None = Form(None),
    ) -> dict:
        from medseg.inference.outputs import parse_formats

        if model not in folders:
            raise HTTPException(404, f"unknown model {model!r} (served: {', '.join(folders)})")
        try:
            chosen = parse_formats(formats)
        except MedsegError as error:
            raise HTTPException(400, str(error)) from None
        if (file is None) == (path is None):
            raise HTTPException(400, "send either a file or a server-side path")
        job = store.new(model, chosen, tta)
        try:
            job.source = str(_receive(file, store.folder(job.id) / "input") if file is not None else _server_path(path))
        except HTTPException:
            store.delete(job.id)
            raise
        store.save(job)
        try:
            worker.submit(job)
        except queue.Full:
            store.delete(job.id)
            raise HTTPException(503, f"the job queue is full ({settings.queue_size} waiting); try again later") from None
        return job.public()

    def _receive(upload: UploadFile, folder: Path) -> Path:
        name = upload.filename or ""
        if not name or "/" in name or "\\" in name or name.startswith(".") or ".." in name:
            raise HTTPException(400, f"file name {name!r} is not a plain file name")
        suffix = _suffix(name)
        if suffix is None:
            raise HTTPException(415, f"{name}: unknown file type (send {', '.join(UPLOAD_SUFFIXES)})")
        target = folder / name
        with open(target, "wb") as handle:
            shutil.copyfileobj(upload.file, handle, 1 << 20)
        if suffix == ".zip":
            if not zipfile.is_zipfile(target):
                raise HTTPException(422, f"{name}: not a readable zip file")
            return target
        _check_readable(target, name)
        return target

    def _check_readable(target: Path, name: str) -> None:
        """Refuse an upload that is no image now (422), rather than as a failed job later."""
        from medseg.io import read_image

        try:
            read_image(target)
        except (MedsegError, OSError, ValueError) as error:
            raise HTTPException(422, f"{name}: {str(error).replace(str(target.parent) + '/', '')}") from None

    def _server_path(text: str) -> Path:
        from medseg.inference.inputs import inside_roots

        if not roots:
            raise HTTPException(403, "server-side paths are not enabled (medseg serve --allow-root DIR)")
        candidate = Path(text)
        resolved = candidate.resolve()
        if ".." in candidate.parts or not inside_roots(candidate, roots):
            raise HTTPException(403, f"{text}: not under an allowed root")
        if not resolved.exists():
            raise HTTPException(404, f"{text}: does not exist")
        return resolved

    @app.get("/jobs/{job_id}", dependencies=guard)
    def job_status(job_id: str) -> dict:
        return _job_or_404(job_id).public()

    @app.get("/jobs/{job_id}/result", dependencies=guard)
    def job_result(job_id: str, format: str | None = None):
        job = _job_or_404(job_id)
        if job.state != "done":
            raise HTTPException(409, f"job {job_id} is {job.state}" + (f": {job.error}" if job.error else ""))
        if format is not None:
            if format not in job.outputs:
                raise HTTPException(404, f"job {job_id} has no {format!r} output (has: {', '.join(sorted(job.outputs))})")
            path = Path(job.outputs[format])
            if path.is_dir():
                raise HTTPException(400, f"{format!r} is a folder of slices: GET /jobs/{job_id}/slices, or the whole result as a zip")
            return FileResponse(path, filename=path.name)
        bundle = Path(tempfile.mkstemp(suffix=".zip", dir=store.folder(job_id))[1])
        with zipfile.ZipFile(bundle, "w") as archive:
            for key, file in sorted(job.outputs.items()):
                path = Path(file)
                for member in sorted(path.rglob("*")) if path.is_dir() else [path]:
                    if member.is_file():
                        archive.write(member, str(member.relative_to(path.parent)))
        return FileResponse(bundle, filename=f"{job_id}.zip", background=_remove_after(bundle))

    def _slice_folders(job_id: str) -> dict[str, Path]:
        job = _job_or_404(job_id)
        if job.state != "done":
            raise HTTPException(409, f"job {job_id} is {job.state}" + (f": {job.error}" if job.error else ""))
        return {key: Path(path) for key, path in job.outputs.items() if key.split("/")[-1] == "slices"}

    @app.get("/jobs/{job_id}/slices", dependencies=guard)
    def job_slices(job_id: str) -> list[dict]:
        return [{"key": key, "count": len(list(folder.glob("*.png")))} for key, folder in sorted(_slice_folders(job_id).items())]

    @app.get("/jobs/{job_id}/slices/{index}.png", dependencies=guard)
    def job_slice(job_id: str, index: int, key: str = "slices"):
        folders = _slice_folders(job_id)
        if key not in folders:
            raise HTTPException(404, f"job {job_id} has no slices {key!r} (ask for the 'slices' format)")
        path = folders[key] / f"{index:04d}.png"
        if index < 0 or not path.is_file():
            raise HTTPException(404, f"job {job_id}: no slice {index} in {key!r}")
        return FileResponse(path, media_type="image/png")

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    @app.delete("/jobs/{job_id}", dependencies=guard)
    def delete_job(job_id: str) -> dict:
        job = _job_or_404(job_id)
        if job.state == "running":
            raise HTTPException(409, f"job {job_id} is running; delete it when it has finished")
        store.delete(job_id)
        return {"deleted": job_id}

    app.state.store, app.state.worker = store, worker
    return app


def _remove_after(path: Path):
    from starlette.background import BackgroundTask

    return BackgroundTask(lambda: path.unlink(missing_ok=True))
