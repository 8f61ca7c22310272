"""``medseg dicom-node``: a DICOM node a PACS sends series to, and that sends DICOM SEG / RTSTRUCT back.

    STORE/incoming/SERIES_UID/SOP_UID.dcm   received instances, written atomically before the C-STORE
                                            is answered with success
    STORE/processing/SERIES_UID/input/      a series being segmented (moved back to incoming/ at start,
                                            so a crash or kill never loses a received series)
    STORE/done/SERIES_UID[-N]/              input/ (the instances) and output/ (what ``medseg predict`` wrote)
    STORE/failed/SERIES_UID[-N]/            the same, with error.txt
    STORE/node.log                          one JSON line per event: received, rejected, processing,
                                            sent, failed

A series counts as complete once no instance of it arrived for ``quiet_seconds``. Then one worker
thread segments it through the batch predictor (every DICOM rule of ``medseg predict`` applies:
a series that is no image, tilted or irregular fails with its reason) and sends the DICOM outputs
by C-STORE to a configured AE and/or by STOW-RS to a DICOMweb URL. C-ECHO is answered. Only calling
AE titles on the allow-list may associate (none given: any)."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import MedsegError

DICOM_FORMATS = ("dicom-seg", "rtstruct")
_UID = re.compile(r"^[0-9.]{1,64}$")  # a UID is also a safe file name; anything else is refused


@dataclass(frozen=True)
class Destination:
    """Where outputs go by C-STORE: ``AET@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        match = re.fullmatch(r"([^@\s]{1,16})@([^:\s]+):(\d{1,5})", text.strip())
        if not match:
            raise MedsegError(f"--send-to {text!r}: expected AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242")
        return cls(match.group(1), match.group(2), int(match.group(3)))


@dataclass
class NodeConfig:
    model: Path
    store: Path
    ae_title: str = "MEDSEG"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed: list[str] = field(default_factory=list)  # calling AE titles; empty: any
    quiet_seconds: float = 10.0
    send_to: Destination | None = None
    stow_url: str | None = None
    formats: list[str] = field(default_factory=lambda: ["dicom-seg"])
    tta: bool = True


class EventLog:
    """node.log: one JSON object per line, appended under a lock (the server's threads share it)."""

    def __init__(self, path: Path, echo=None):
        self.path, self.echo, self.lock = path, echo, threading.Lock()

    def __call__(self, event: str, **details) -> None:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": event, **details}
        line = json.dumps(record, default=str)
        with self.lock, self.path.open("a") as log:
            log.write(line + "\n")
        if self.echo:
            self.echo(line)


class SeriesStore:
    """The folders of received series and the moves between them (each one a rename: atomic)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        for name in ("incoming", "processing", "done", "failed"):
            (self.root / name).mkdir(parents=True, exist_ok=True)

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

    def quiet_series(self, quiet_seconds: float) -> list[str]:
        """Series in incoming/ whose newest instance is older than ``quiet_seconds``."""
        ready, now = [], time.time()
        for folder in sorted((self.root / "incoming").iterdir()):
            times = [p.stat().st_mtime for p in folder.glob("*.dcm")]
            if times and now - max(times) >= quiet_seconds:
                ready.append(folder.name)
        return ready

    def claim(self, series: str) -> Path:
        """incoming/SERIES -> processing/SERIES/input; returns processing/SERIES."""
        target = self.root / "processing" / series
        target.mkdir()
        os.replace(self.root / "incoming" / series, target / "input")
        return target

    def finish(self, folder: Path, outcome: str) -> Path:
        """processing/SERIES -> done/ or failed/, with a suffix when the series came before."""
        base = self.root / outcome / folder.name
        target, count = base, 1
        while target.exists():
            count += 1
            target = base.with_name(f"{folder.name}-{count}")
        os.replace(folder, target)
        return target


class DicomNode:
    def __init__(self, config: NodeConfig, echo=print):
        self.config = config
        self.store = SeriesStore(config.store)
        self.log = EventLog(self.store.root / "node.log", echo)
        self.stopping = threading.Event()
        self.server = None
        self._predictor = None
        unknown = [f for f in config.formats if f not in DICOM_FORMATS]
        if unknown or not config.formats:
            raise MedsegError(f"--format: the node sends DICOM objects only: choose from {', '.join(DICOM_FORMATS)} (not {', '.join(unknown) or 'nothing'})")

    # ------------------------------------------------------------ receiving

    def _on_store(self, event) -> int:
        calling = event.assoc.requestor.ae_title
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            series, sop = str(dataset.SeriesInstanceUID), str(dataset.SOPInstanceUID)
        except Exception as error:  # noqa: BLE001 - a malformed instance is refused, the node goes on
            self.log("refused", calling_ae=calling, reason=f"unreadable dataset: {error}")
            return 0xC210  # cannot understand
        if not (_UID.match(series) and _UID.match(sop)):
            self.log("refused", calling_ae=calling, series=series, sop=sop, reason="SeriesInstanceUID or SOPInstanceUID is not a valid UID")
            return 0xC210
        try:
            self.store.save_instance(series, sop, lambda path: dataset.save_as(path, enforce_file_format=True))
        except Exception as error:  # noqa: BLE001 - disk full, permissions: the sender is told to retry
            self.log("refused", calling_ae=calling, series=series, sop=sop, reason=f"could not store: {error}")
            return 0xA700  # out of resources
        self.log("received", calling_ae=calling, series=series, sop=sop, modality=str(dataset.get("Modality", "")))
        return 0x0000

    def _on_rejected(self, event) -> None:
        self.log("rejected", calling_ae=event.assoc.requestor.ae_title, address=event.assoc.requestor.address, reason="calling AE title not allowed")

    def _on_echo(self, event) -> int:
        self.log("echo", calling_ae=event.assoc.requestor.ae_title)
        return 0x0000

    def start(self) -> None:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        for series in self.store.recover():
            self.log("recovered", series=series, reason="was being processed when the node stopped: processed again")
        ae = AE(ae_title=self.config.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        if self.config.allowed:
            ae.require_calling_aet = list(self.config.allowed)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo), (evt.EVT_REJECTED, self._on_rejected)]
        try:
            self.server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)
        except OSError as error:
            raise MedsegError(f"cannot listen on {self.config.host}:{self.config.port}: {error}") from None
        self.log("listening", ae_title=self.config.ae_title, host=self.config.host, port=self.config.port, allowed=self.config.allowed or "any")
        self.worker = threading.Thread(target=self._loop, name="medseg-dicom-node", daemon=True)
        self.worker.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.server is not None:
            self.server.shutdown()

    # ------------------------------------------------------------ processing

    def _loop(self) -> None:
        while not self.stopping.is_set():
            for series in self.store.quiet_series(self.config.quiet_seconds):
                if self.stopping.is_set():
                    break
                self.process(series)
            self.stopping.wait(0.5)

    def predictor(self):
        if self._predictor is None:
            from medseg.inference.predictor import Predictor

            self._predictor = Predictor(self.config.model, mirror=self.config.tta)
        return self._predictor

    def process(self, series: str) -> None:
        import medseg
        from medseg.inference.batch import predict_folder
        from medseg.inference.outputs import OutputContext

        folder = self.store.claim(series)
        self.log("processing", series=series, instances=len(list((folder / "input").glob("*.dcm"))))
        try:
            predictor = self.predictor()
            info = predictor.model_folder.info
            context = OutputContext(info.labels, info.file_ending, predictor.folder, info.algorithm_name, medseg.__version__)
            output = folder / "output"
            result = predict_folder(predictor, folder / "input", output, self.config.formats, context)
            if result.failed:
                raise MedsegError("; ".join(f"{case}: {error}" for case, error in result.failed.items()))
            sent = self._send(sorted(result.written), series)
        except Exception as error:  # noqa: BLE001 - one series never stops the node
            message = str(error) if isinstance(error, MedsegError) else f"unexpected {type(error).__name__}: {error}"
            (folder / "error.txt").write_text(message + "\n")
            kept = self.store.finish(folder, "failed")
            self.log("failed", series=series, error=message, kept=str(kept))
            return
        kept = self.store.finish(folder, "done")
        self.log("done", series=series, sent=sent, kept=str(kept))

    def _send(self, files: list[Path], series: str) -> int:
        if not files:
            raise MedsegError(f"series {series}: the prediction wrote no DICOM output to send")
        if self.config.send_to:
            send_by_c_store(files, self.config.ae_title, self.config.send_to)
            for path in files:
                self.log("sent", series=series, file=path.name, to=f"{self.config.send_to.ae_title}@{self.config.send_to.host}:{self.config.send_to.port}", via="C-STORE")
        if self.config.stow_url:
            send_by_stow(files, self.config.stow_url)
            for path in files:
                self.log("sent", series=series, file=path.name, to=self.config.stow_url, via="STOW-RS")
        return len(files)


def send_by_c_store(files: list[Path], calling_ae: str, destination: Destination) -> None:
    """C-STORE every file in one association; any status but success raises, naming the file."""
    from pydicom import dcmread
    from pynetdicom import AE

    datasets = [dcmread(path) for path in files]
    ae = AE(ae_title=calling_ae)
    for dataset in datasets:
        syntax = str(dataset.file_meta.TransferSyntaxUID)
        if all(c.abstract_syntax != dataset.SOPClassUID or syntax not in c.transfer_syntax for c in ae.requested_contexts):
            ae.add_requested_context(dataset.SOPClassUID, syntax)
    association = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not association.is_established:
        raise MedsegError(f"C-STORE to {destination.ae_title}@{destination.host}:{destination.port}: association not established (rejected, aborted or unreachable)")
    try:
        for path, dataset in zip(files, datasets):
            status = association.send_c_store(dataset)
            code = getattr(status, "Status", None)
            if code != 0x0000:
                raise MedsegError(f"C-STORE of {path.name} to {destination.ae_title}: status {'none (no answer)' if code is None else hex(code)}")
    finally:
        association.release()


def send_by_stow(files: list[Path], url: str, timeout: float = 120.0) -> None:
    """STOW-RS: one multipart/related POST of every file to URL/studies."""
    boundary = f"medseg-{uuid.uuid4().hex}"
    parts = []
    for path in files:
        parts += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), path.read_bytes(), b"\r\n"]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url.rstrip("/") + "/studies", data=body, method="POST",
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}', "Accept": "application/dicom+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if response.status not in (200, 202):
                raise MedsegError(f"STOW-RS to {url}: HTTP {response.status}")
    except urllib.error.HTTPError as error:
        raise MedsegError(f"STOW-RS to {url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        raise MedsegError(f"STOW-RS to {url}: {error}") from None
