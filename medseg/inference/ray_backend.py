"""Batch prediction spread over a Ray cluster (``medseg predict --backend ray [--address ADDR]``).

The driver discovers the cases, keeps the manifest and decides what to resume, exactly as a local
run (medseg.inference.batch). Each Ray actor loads the model once and then reads, predicts and
writes whole cases (outputs written atomically by the actor); each case is submitted once, and the
driver alone appends its manifest line as its result comes back, so every case's outputs and
manifest line are written exactly once. An actor that dies (its node lost) fails the case it held,
with the reason in the manifest; the other actors go on, and ``--resume`` redoes that case later.

Actors read inputs and write outputs by path: on a multi-node cluster the input and output folders
(and the model folder) must be on a filesystem every node mounts at the same path, and medseg must
be installed on every node. Scheduling is Ray's; nothing here is a scheduler of its own."""

from __future__ import annotations

import os
from pathlib import Path

from medseg.errors import MedsegError


def _require_ray():
    try:
        import ray
    except ImportError:
        raise MedsegError("--backend ray needs Ray: pip install 'medseg[ray]'") from None
    return ray


AUTH_MODE_VARIABLE = "RAY_AUTH_MODE"
TOKEN_VARIABLES = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def authenticate_as_ray_start_does() -> None:
    """Connect to an existing cluster in the authentication mode `ray start` chose for it here:
    with RAY_AUTH_MODE unset, `ray start` turns token authentication on when a token exists
    (~/.ray/auth_token, which any local `ray.init()` writes), but a client connecting by address
    does not, and is refused. An explicit RAY_AUTH_MODE is left as the user set it."""
    if AUTH_MODE_VARIABLE in os.environ:
        return
    if any(os.environ.get(name) for name in TOKEN_VARIABLES) or (Path.home() / ".ray" / "auth_token").is_file():
        os.environ[AUTH_MODE_VARIABLE] = "token"


class _CaseWorker:
    """One Ray actor: the predictor is opened once (through the front door), then any number of
    cases run through it."""

    def __init__(self, model_folder: str, predictor_options, threads: int, opener):
        import torch

        torch.set_num_threads(max(1, threads))
        self.predictor = opener(Path(model_folder), predictor_options, surface="a Ray worker")

    def folds(self) -> list[str]:
        return list(self.predictor.folds)

    def run(self, case, output: str, formats: list[str], context, save_probabilities: bool) -> dict:
        from medseg.inference.batch import process_case

        entry = process_case(self.predictor, case, Path(output), formats, context, save_probabilities)
        entry["worker"] = {"node": os.uname().nodename, "pid": os.getpid()}
        return entry


class RayPredictor:
    """What the front door (medseg.tasks.open_predictor) returns for ``backend="ray"``: batches run
    on Ray actors at ``options.address`` (None: a local Ray started for the batch), each actor
    opening the model's own predictor with ``options`` (backend local) through ``opener`` (the front
    door, medseg.tasks.open_predictor: passed in, so this module needs nothing of the tasks)."""

    def __init__(self, model_folder, options, opener):
        self.model_folder, self.options, self.opener = model_folder, options, opener
        self.folds: list[str] = list(options.folds or [])
        self.precision = None  # each actor's, recorded per case

    def predict_image(self, image, probabilities: bool = False, case_id: str = "case"):
        raise MedsegError("a Ray predictor runs batches (predict_batch); open a local predictor to predict one image")

    def predict_batch(self, request):
        from medseg.inference.batch import predict_cases

        runner = RayRunner(self.model_folder.path, self.options, self.opener, self.options.address, request.workers)
        try:
            result = predict_cases(self, request, runner=runner)
        finally:
            runner.shutdown()
        result.folds = self.folds = list(runner.folds)
        return result


class RayRunner:
    """A ``predict_folder`` runner: actors on the cluster at ``address`` (None: a local Ray started here)."""

    def __init__(self, model_folder: Path, predictor_options, opener, address: str | None = None, actors: int = 0):
        if address:
            authenticate_as_ray_start_does()  # before Ray is imported: it reads the mode once
        self.ray = _require_ray()
        self.model_folder, self.predictor_options, self.opener = str(Path(model_folder).resolve()), predictor_options, opener
        self.address, self.requested_actors = address, actors
        self.folds: list[str] = []

    def _start(self) -> list:
        ray = self.ray
        plugins = {k: v for k, v in os.environ.items() if k in ("MEDSEG_PLUGINS", "MEDSEG_MAX_IMAGE_GB")}
        try:
            ray.init(
                address=self.address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                runtime_env={"env_vars": plugins} if plugins else None,
                **({} if self.address else {"num_cpus": os.cpu_count()}),
            )
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise MedsegError(f"cannot reach a Ray cluster at {self.address or 'a new local one'}: {error}") from None
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        actors = self.requested_actors or max(1, cpus // 2)  # two threads per actor: one case's forward saturates them
        threads = max(1, cpus // actors)
        wants_gpu = str(self.predictor_options.device or "").startswith("cuda")
        remote = ray.remote(num_cpus=threads, num_gpus=1 if wants_gpu else 0)(_CaseWorker)
        workers = [remote.remote(self.model_folder, self.predictor_options, threads, self.opener) for _ in range(actors)]
        try:  # the model loads in every actor; a model that cannot load fails here, once, clearly
            self.folds = ray.get([w.folds.remote() for w in workers])[0]
        except ray.exceptions.RayActorError as error:
            cause = getattr(error, "cause", None) or error
            raise MedsegError(f"the Ray workers could not load {self.model_folder}: {str(cause).strip().splitlines()[-1]}") from None
        return workers

    def __call__(self, cases, output: Path, formats, context, save_probabilities: bool, record) -> None:
        ray = self.ray
        idle = self._start()
        running: dict = {}  # object ref -> (case, actor)
        queue = list(cases)
        while queue or running:
            while queue and idle:
                case, actor = queue.pop(0), idle.pop()
                running[actor.run.remote(case, str(output), list(formats), context, save_probabilities)] = (case, actor)
            if not running:  # every actor died: the rest fail, each with the reason
                for case in queue:
                    record(self._lost(case, formats, context, "no Ray worker left alive"))
                return
            (ready,), _ = ray.wait(list(running), num_returns=1)
            case, actor = running.pop(ready)
            try:
                entry = ray.get(ready)
            except ray.exceptions.RayActorError as error:  # the actor (or its node) is gone: not reused
                record(self._lost(case, formats, context, f"the Ray worker running it died ({type(error).__name__})"))
                continue
            except ray.exceptions.RayTaskError as error:  # process_case records case errors itself: this is a bug
                record(self._lost(case, formats, context, f"unexpected error in the Ray worker: {str(error).strip().splitlines()[-1]}"))
            else:
                record(entry)
            idle.append(actor)

    def _lost(self, case, formats, context, why: str) -> dict:
        from medseg.inference.batch import complete_entry, new_entry

        entry = new_entry(case, None, context, formats)
        entry["folds"] = list(self.folds)
        return complete_entry(entry, None, f"{case.case_id}: {why}; run again with --resume to redo it")

    def shutdown(self) -> None:
        if self.ray.is_initialized():
            self.ray.shutdown()
