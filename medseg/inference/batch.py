"""Batch prediction a hospital can leave running: every input case (medseg.inference.inputs) is
read, predicted and written in every requested format (medseg.inference.outputs), and recorded in
the manifest (medseg.inference.manifest) as it finishes.

- A failing case is recorded with its error and the batch goes on; the result lists it, and the CLI
  exits non-zero when any case failed.
- ``resume``: cases the manifest records as complete (files present) are not redone.
- ``workers``: cases are read ahead and written behind the network's forward by that many threads
  (reading and writing are I/O and decompression; the forward keeps the CPU cores). Each case's
  outputs and manifest line are still written exactly once, as the case finishes.
- Every file is written atomically: a run killed at any moment leaves finished files and hidden
  temporaries (removed by the next run), never a partial file under a final name."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable


import medseg
from medseg.atomic import prepare_output_folder, process_alive, remove_stale_temporaries
from medseg.data.cases import stack_channel_files
from medseg.errors import MedsegError
from medseg.inference.inputs import InputCase, discover
from medseg.inference.manifest import Manifest
from medseg.inference.probabilities import PROBABILITIES_SUFFIX, save_probabilities_npz
from medseg.inference.outputs import STAGING_PREFIX, CaseOutputs, OutputContext, OutputsFailed, write_outputs
from medseg.io import MedicalImage


UNPACK_PREFIX = ".medseg-unpack-"  # zip inputs are extracted to OUTPUT/.medseg-unpack-PID-XXXX, removed at the end


def _remove_stale_work_folders(output: Path) -> None:
    """Zip unpack and case staging folders that a killed run left (their process is gone)."""
    for prefix in (UNPACK_PREFIX, STAGING_PREFIX):
        for folder in output.glob(f"{prefix}*"):
            pid = folder.name[len(prefix):].split("-", 1)[0]
            if folder.is_dir() and pid.isdigit() and not process_alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)


@dataclass
class BatchResult:
    written: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    folds: list[str] = field(default_factory=list)  # the folds that made the outputs
    resumed: list[str] = field(default_factory=list)  # cases found complete and not redone
    skipped_outputs: dict[str, dict[str, str]] = field(default_factory=dict)  # case -> format -> why
    ignored: list[tuple[Path, str]] = field(default_factory=list)  # files under the input that are no case
    manifest: Path | None = None
    cases: int = 0
    entries: list[dict] = field(default_factory=list)  # this run's manifest lines, in the order recorded
    measurements_csv: Path | None = None  # OUTPUT/measurements.csv, when measurements were asked for
    unpack_folder: str = ""  # where zips were unpacked: shown as 'zip:' in messages (a hidden folder, gone after the run)


def read_case(case: InputCase) -> MedicalImage:
    if case.problem:
        raise MedsegError(case.problem)
    if case.series is not None:
        from medseg.io.dicom import series_to_image

        return series_to_image(case.series)
    return stack_channel_files(case.files)


DEBUG_VARIABLE = "MEDSEG_DEBUG"  # set by `medseg --debug`: per-case bugs print their traceback too


def unexpected(case: str, error: BaseException, doing: str = "") -> str:
    """A per-case error that is medseg's own bug: one line for the manifest; with --debug its
    traceback goes to stderr as well (call from the except block)."""
    if os.environ.get(DEBUG_VARIABLE):
        import sys
        import traceback

        print(f"traceback of case {case}:", file=sys.stderr)
        traceback.print_exception(error, file=sys.stderr)
    return f"{case}: unexpected {type(error).__name__}{doing}: {error} (a medseg bug: please report it)"


@dataclass
class _Read:
    image: MedicalImage | None
    error: str | None
    seconds: float


def _read(case: InputCase) -> _Read:
    start = time.perf_counter()
    try:
        return _Read(read_case(case), None, time.perf_counter() - start)
    except MedsegError as error:
        return _Read(None, str(error), time.perf_counter() - start)
    except Exception as error:  # one unreadable case must not end the batch
        return _Read(None, unexpected(case.inputs[0] if case.inputs else case.case_id, error), 0.0)


def predict_folder(
    predictor, source: Path, output: Path, formats: list[str], context: OutputContext, save_probabilities: bool = False,
    progress: Callable[[int, int], None] | None = None, series: str | None = None, resume: bool = False, workers: int = 0,
    runner: Callable | None = None, confine: list[Path] | None = None,
) -> BatchResult:
    """``series``: which DICOM series become cases (medseg.inference.inputs rules). ``runner``: runs
    the pending cases elsewhere (medseg.inference.ray_backend), called as
    ``runner(cases, output, formats, context, save_probabilities, record)`` where ``record(entry)``
    puts a finished case in the manifest (and the progress); None runs them here with ``predictor``.
    ``confine``: folders every input file must resolve into (medseg.inference.inputs.discover).
    Output paths in the manifest and the result are absolute: they stay true from any working folder."""
    output = Path(output).absolute()
    prepare_output_folder(output)
    remove_stale_temporaries(output)  # left by a run that was killed mid-write
    _remove_stale_work_folders(output)
    unpack = Path(tempfile.mkdtemp(prefix=f"{UNPACK_PREFIX}{os.getpid()}-", dir=output))
    try:
        discovery = discover(source, series, unpack_to=unpack, confine=confine)
        if not discovery.cases:
            raise MedsegError(f"{source}: no input images")
        manifest = Manifest(output, resume)
        result = BatchResult(ignored=discovery.ignored, manifest=manifest.path, cases=len(discovery.cases), unpack_folder=str(unpack) + os.sep)
        pending = []
        for case in discovery.cases:
            if resume and manifest.completed(case.case_id, formats):
                result.resumed.append(case.case_id)
            else:
                pending.append(case)
        already_done = len(discovery.cases) - len(pending)
        if resume:
            manifest.keep_only_except({case.case_id for case in pending})
        if runner is None:
            _run(predictor, pending, output, formats, context, save_probabilities, manifest, result, workers, progress, already_done)
        else:
            done = [already_done]

            def record(entry: dict) -> None:
                _record(entry, manifest, result)
                done[0] += 1
                if progress:
                    progress(done[0], len(discovery.cases))

            runner(pending, output, formats, context, save_probabilities, record)
        if "measurements" in formats:
            result.measurements_csv = write_measurements_csv(manifest.path, output)
        return result
    finally:
        shutil.rmtree(unpack, ignore_errors=True)


def write_measurements_csv(manifest_path: Path, output: Path) -> Path | None:
    """OUTPUT/measurements.csv: every finished case's measurements (resumed ones too), from the
    manifest's latest line per case, rewritten atomically at the end of each run."""
    from medseg.atomic import write_text_atomic
    from medseg.audit.measurements import BATCH_CSV, batch_csv
    from medseg.inference.manifest import read_manifest

    latest = {entry["case"]: entry for entry in read_manifest(manifest_path)}
    pairs = [(case, Path(entry["outputs"]["measurements"])) for case, entry in latest.items()
             if entry.get("status") == "done" and entry.get("outputs", {}).get("measurements")]
    pairs = [(case, path) for case, path in pairs if path.is_file()]
    if not pairs:
        return None
    target = output / BATCH_CSV
    try:
        write_text_atomic(target, batch_csv(pairs))
    except OSError as error:
        raise MedsegError(f"{target}: cannot be written ({error.strerror or error})") from None
    return target


def predict_cases(predictor, request, runner: Callable | None = None) -> BatchResult:
    """A per-case predictor's ``predict_batch``: every case read, predicted (``predictor.predict_image``)
    and written in the requested formats; ``runner``: as in ``predict_folder``.
    request: medseg.tasks.prediction.BatchRequest."""
    from medseg.audit.input_checks import parse_qc
    from medseg.inference.outputs import parse_formats

    if request.workers < 0:
        raise MedsegError(f"--workers must be 0 or more, got {request.workers}")
    formats = parse_formats(",".join(request.formats) if isinstance(request.formats, list) else request.formats)
    info = predictor.model_folder.info
    qc = parse_qc(request.qc)
    profile = predictor.model_folder.input_profile() if qc != "off" else None
    context = OutputContext(
        info.labels, info.file_ending, predictor.model_folder.path, info.algorithm_name, medseg.__version__, qc, profile,
        predictor.model_folder.calibration(),
    )
    result = predict_folder(
        predictor, request.source, request.output, formats, context, save_probabilities=request.save_probabilities, progress=request.progress,
        series=request.series, resume=request.resume, workers=request.workers, runner=runner, confine=request.confine,
    )
    result.folds = list(predictor.folds)
    return result


def process_case(predictor, case: InputCase, output: Path, formats, context: OutputContext, save_probabilities: bool) -> dict:
    """Read, predict and write one case here, start to finish; return its manifest entry (not yet
    recorded: the caller that owns the manifest records it, once)."""
    entry = new_entry(case, predictor, context, formats)
    loaded = _read(case)
    entry["timings"]["read_s"] = round(loaded.seconds, 3)
    if loaded.error:
        return complete_entry(entry, None, loaded.error)
    refused = check_case_input(loaded.image, case, context, entry)
    if refused:
        return complete_entry(entry, None, refused)
    start = time.perf_counter()
    try:
        prediction = predictor.predict_image(loaded.image, probabilities=save_probabilities or context.calibration is not None, case_id=case.inputs[0] if case.inputs else case.case_id)
        assess_prediction(predictor, prediction, context, entry)
    except MedsegError as error:
        return complete_entry(entry, None, str(error))
    except Exception as error:  # noqa: BLE001 - recorded, the batch goes on
        return complete_entry(entry, None, unexpected(case.case_id, error))
    entry["timings"]["predict_s"] = round(time.perf_counter() - start, 3)
    return _completed_write(case, _immediate(_write, prediction, loaded.image, case, output, formats, context, save_probabilities), entry)


NO_PROFILE_NOTE = ("inputs not checked: the model folder keeps no input profile (trained before input checks, "
                   "an nnU-Net folder without dataset_fingerprint.json, or a MONAI bundle)")


def check_case_input(image: MedicalImage, case: InputCase, context: OutputContext, entry: dict) -> str | None:
    """Compare the input with the model's training inputs (medseg.audit.input_checks) and record
    the findings and the review flag in ``entry``; the case's error when ``--qc refuse`` and one fired."""
    from medseg.audit.input_checks import check_input, findings_text

    image.metadata["audit"] = entry  # what the report writers (DICOM SR) state about the case: review flag, findings, expected Dice
    if context.qc == "off":
        return None
    if context.input_profile is None:
        if NO_PROFILE_NOTE not in entry["notes"]:
            entry["notes"].append(NO_PROFILE_NOTE)
        return None
    findings = check_input(context.input_profile, image)
    entry["input_checks"] = [finding.to_dict() for finding in findings]
    if not findings:
        return None
    if context.qc == "refuse":
        return f"{case.case_id}: refused by the input checks (--qc refuse): {findings_text(findings)}"
    entry["review"] = {"flag": True, "reasons": [f"input {finding.check}: {finding.message}" for finding in findings]}
    return None


def assess_prediction(predictor, prediction, context: OutputContext, entry: dict) -> None:
    """The expected Dice of each structure (medseg.audit.calibration), when the model has a
    calibration; a structure under its review threshold sets the review flag, naming both."""
    from medseg.audit.calibration import expected_dice

    if context.calibration is None or prediction.probabilities is None or not hasattr(predictor, "confidence"):
        return
    confidence = predictor.confidence(prediction)
    entry["expected_dice"] = expected_dice(context.calibration, confidence)
    low = [(name, value) for name, value in entry["expected_dice"].items() if value["review"] and confidence[name]["voxels"]]
    if low:
        entry["review"] = {"flag": True, "reasons": entry["review"]["reasons"] + [
            f"{name}: expected Dice {value['expected_dice']:.2f}, at or below its review threshold {value['threshold']:.2f}" for name, value in low
        ]}


def _run(predictor, cases, output, formats, context, save_probabilities, manifest, result, workers, progress, already_done) -> None:
    total = already_done + len(cases)
    lookahead = workers  # cases read ahead of the forward (none without workers: memory stays one case)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="medseg-io") as pool:
        reads: dict[int, Future] = {}
        writes: list[tuple[InputCase, Future, dict]] = []

        def schedule(index: int) -> None:
            if index < len(cases) and index not in reads:
                reads[index] = pool.submit(_read, cases[index]) if workers else _immediate(_read, cases[index])

        for index, case in enumerate(cases):
            for ahead in range(index, index + lookahead + 1):
                schedule(ahead)
            loaded: _Read = reads.pop(index).result()
            entry = new_entry(case, predictor, context, formats)
            entry["timings"]["read_s"] = round(loaded.seconds, 3)
            refused = None if loaded.error else check_case_input(loaded.image, case, context, entry)
            if loaded.error or refused:
                _finish(entry, None, loaded.error or refused, manifest, result)
            else:
                start = time.perf_counter()
                try:
                    prediction = predictor.predict_image(
                        loaded.image, probabilities=save_probabilities or context.calibration is not None, case_id=case.inputs[0] if case.inputs else case.case_id,
                    )
                    assess_prediction(predictor, prediction, context, entry)
                except MedsegError as error:
                    _finish(entry, None, str(error), manifest, result)
                except Exception as error:  # noqa: BLE001 - recorded, the batch goes on
                    _finish(entry, None, unexpected(case.case_id, error), manifest, result)
                else:
                    entry["timings"]["predict_s"] = round(time.perf_counter() - start, 3)
                    job = (pool.submit if workers else _immediate)(_write, prediction, loaded.image, case, output, formats, context, save_probabilities)
                    writes.append((case, job, entry))
            del loaded
            # finish writes in case order as they complete, so the manifest follows the input order
            while writes and (writes[0][1].done() or not workers):
                _finish_write(*writes.pop(0), manifest, result)
            if progress:
                progress(already_done + index + 1, total)
        for case, job, entry in writes:
            _finish_write(case, job, entry, manifest, result)


class _Done:
    """A Future-like result computed at once (workers=0: everything in the calling thread)."""

    def __init__(self, function, *args):
        self._result, self._error = None, None
        try:
            self._result = function(*args)
        except BaseException as error:  # re-raised by result(), like a Future
            self._error = error

    def done(self) -> bool:
        return True

    def result(self):
        if self._error is not None:
            raise self._error
        return self._result


def _immediate(function, *args) -> _Done:
    return _Done(function, *args)


def _write(prediction, image, case: InputCase, output: Path, formats, context, save_probabilities) -> tuple[CaseOutputs, float]:
    start = time.perf_counter()
    outputs = write_outputs(prediction.segmentation, image, case.case_id, output, formats, context)
    if save_probabilities:
        target = output / f"{case.case_id}{PROBABILITIES_SUFFIX}"
        save_probabilities_npz(prediction.probabilities, target)
        outputs.written["probabilities"] = str(target)
    return outputs, time.perf_counter() - start


def _finish_write(case, job, entry, manifest, result) -> None:
    _record(_completed_write(case, job, entry), manifest, result)


def _completed_write(case, job, entry) -> dict:
    try:
        outputs, seconds = job.result()
        entry["timings"]["write_s"] = round(seconds, 3)
        return complete_entry(entry, outputs, None)
    except OutputsFailed as failure:
        return complete_entry(entry, failure.partial, str(failure))
    except MedsegError as error:
        return complete_entry(entry, None, str(error))
    except OSError as error:  # a full disk, a folder made read-only meanwhile
        return complete_entry(entry, None, f"{case.case_id}: {error.filename or 'an output'}: cannot be written ({error.strerror or error})")
    except Exception as error:  # noqa: BLE001
        return complete_entry(entry, None, unexpected(case.case_id, error, " while writing"))


def new_entry(case: InputCase, predictor, context: OutputContext, formats) -> dict:
    return {
        "case": case.case_id, "status": None, "inputs": case.inputs, "formats": list(formats), "outputs": {}, "skipped": {}, "error": None,
        "notes": list(case.notes), "timings": {}, "model": str(context.model_folder), "model_name": context.algorithm_name,
        "folds": list(getattr(predictor, "folds", [])), "precision": getattr(predictor, "precision", None), "medseg_version": medseg.__version__,
        "input_checks": None, "review": {"flag": False, "reasons": []}, "expected_dice": None,
    }


def _finish(entry: dict, outputs: CaseOutputs | None, error: str | None, manifest: Manifest, result: BatchResult) -> None:
    _record(complete_entry(entry, outputs, error), manifest, result)


def complete_entry(entry: dict, outputs: CaseOutputs | None, error: str | None) -> dict:
    """The entry of a finished case: its outputs (also those written before a failure), status, error."""
    if outputs is not None:
        entry["outputs"], entry["skipped"] = outputs.written, outputs.skipped
        entry["notes"] += [n for n in outputs.notes if n not in entry["notes"]]
    entry["status"] = "failed" if error else "done"
    entry["error"] = error
    entry["timings"]["total_s"] = round(sum(v for k, v in entry["timings"].items() if k.endswith("_s")), 3)
    entry["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return entry


def _record(entry: dict, manifest: Manifest, result: BatchResult) -> None:
    """The one place a case enters the manifest and the result."""
    entry["attempt"] = manifest.attempt(entry["case"])
    if result.unpack_folder:
        def shown(text):
            return text.replace(result.unpack_folder, "zip:") if isinstance(text, str) else text

        entry["error"] = shown(entry["error"])
        entry["notes"] = [shown(note) for note in entry["notes"]]
        entry["inputs"] = [shown(path) for path in entry["inputs"]]
    result.written += [Path(p) for p in entry["outputs"].values()]
    if entry["skipped"]:
        result.skipped_outputs[entry["case"]] = entry["skipped"]
    if entry["error"]:
        result.failed[entry["case"]] = entry["error"]
    result.entries.append(entry)
    manifest.append(entry)
