"""``medseg dicom-node``: a DICOM node a PACS sends series to, and that sends DICOM SEG / RTSTRUCT back.

The store on disk (medseg.serve.node_store) keeps received instances, series being processed, their
results and a state file per series; the outbox (medseg.serve.node_send) keeps deliveries until
every destination took them. ``STORE/node.log`` has one JSON line per event: received, refused,
rejected, waiting, processing, done, superseded, failed, sent, send-failed, pending.

A series is processed once nothing of it arrived for ``quiet_seconds`` (counted from the node's
start too) and its headers do not say it is incomplete, or once it waited ``incomplete_wait``
seconds. One worker thread segments it through the batch predictor (every DICOM rule of ``medseg
predict`` applies: a series that is no image, tilted or irregular fails with its reason) and queues
the DICOM outputs for C-STORE to a configured AE (optionally over TLS) and/or STOW-RS to a
DICOMweb URL. A series that grows after it was processed is processed again whole and the earlier
result superseded (its unsent deliveries dropped). C-ECHO is answered. Only calling AE titles on
the allow-list may associate (none given: any)."""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import MedsegError
from medseg.serve.node_send import Destination, Outbox, TlsSettings, send_by_c_store, send_by_stow
from medseg.serve.node_store import SeriesStore, incomplete_reason

__all__ = ["Destination", "DicomNode", "NodeConfig", "TlsSettings"]

NODE = "medseg dicom-node"
DICOM_FORMATS = ("dicom-seg", "rtstruct", "dicom-sr")  # dicom-sr: the measurement report, sent with its SEG
# A UID as PS3.5 9.1 defines it: numeric components separated by single dots, at most 64 characters
# (leading zeros tolerated: real devices write them). It is also a safe file name; '.', '..', '1..2'
# and anything else are refused, so no instance can land outside its series folder.
_UID = re.compile(r"^(?=.{1,64}$)[0-9]+(\.[0-9]+)*$")


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
    incomplete_wait: float = 600.0  # how long a series whose headers say it is incomplete waits for the rest
    tls: TlsSettings | None = None  # DICOM TLS for the SCP (and for C-STORE when send_tls)
    send_tls: bool = False
    retry_base_seconds: float = 30.0  # a failed delivery is retried after this, doubled per attempt (at most an hour)
    retry_failed: bool = False  # at start: every pending delivery is due at once


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


class DicomNode:
    def __init__(self, config: NodeConfig, echo=print):
        self.config = config
        unknown = [f for f in config.formats if f not in DICOM_FORMATS]
        if unknown or not config.formats:
            raise MedsegError(f"--format: the node sends DICOM objects only: choose from {', '.join(DICOM_FORMATS)} (not {', '.join(unknown) or 'nothing'})")
        check_label_map_model(config.model)
        self.store = SeriesStore(config.store)
        self.outbox = Outbox(self.store.root / "outbox", config.retry_base_seconds)
        self.log = EventLog(self.store.root / "node.log", echo)
        self.stopping = threading.Event()
        self.server = None
        self.started = time.time()
        self._predictor = None
        self._waiting: dict[str, tuple[list[Path], str]] = {}  # series -> (its instances, why it looks incomplete)

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
            self.log("refused", calling_ae=calling, series=series[:80], sop=sop[:80], reason="SeriesInstanceUID or SOPInstanceUID is not a valid DICOM UID")
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

        ssl_context = self.config.tls.server_context() if self.config.tls and self.config.tls.certificate else None
        for series in self.store.recover():
            self.log("recovered", series=series, reason="was being processed when the node stopped: processed again")
        if self.config.retry_failed:
            self.log("retry", deliveries=self.outbox.make_all_due(), reason="--retry-failed: every pending delivery is due now")
        for path, item in self.outbox.items():
            self.log("pending", series=item["series"], destinations=item["destinations"], attempts=item["attempts"], last_error=item["last_error"], item=path.name)
        ae = AE(ae_title=self.config.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        if self.config.allowed:
            ae.require_calling_aet = list(self.config.allowed)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo), (evt.EVT_REJECTED, self._on_rejected)]
        try:
            self.server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers, ssl_context=ssl_context)
        except OSError as error:
            raise MedsegError(f"cannot listen on {self.config.host}:{self.config.port}: {error}") from None
        self.log("listening", ae_title=self.config.ae_title, host=self.config.host, port=self.config.port, allowed=self.config.allowed or "any", tls=ssl_context is not None)
        self.worker = threading.Thread(target=self._loop, name="medseg-dicom-node", daemon=True)
        self.worker.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.server is not None:
            self.server.shutdown()

    # ------------------------------------------------------------ processing

    def _loop(self) -> None:
        while not self.stopping.is_set():
            for series, age in self.store.quiet_series(self.config.quiet_seconds, since=self.started):
                if self.stopping.is_set():
                    break
                if self._ready(series, age):
                    self.process(series)
            self._deliver_due()
            self.stopping.wait(0.5)

    def _ready(self, series: str, age: float) -> bool:
        """Quiet, and either whole by its headers or waited for long enough. The headers of a waiting
        series are read again only when its instances changed (the loop asks twice a second)."""
        instances = self.store.all_instances(series)
        seen = self._waiting.get(series)
        reason = seen[1] if seen and seen[0] == instances else incomplete_reason(instances)
        if reason is None:
            self._waiting.pop(series, None)
            return True
        if age >= self.config.incomplete_wait:
            self.log("incomplete", series=series, reason=reason, waited_s=round(age), action="processed as it is")
            self._waiting.pop(series, None)
            return True
        if seen is None or seen[1] != reason:
            self.log("waiting", series=series, reason=reason, until_s=self.config.incomplete_wait)
        self._waiting[series] = (instances, reason)
        return False

    def predictor(self):
        if self._predictor is None:
            from medseg.tasks import PredictorOptions, open_predictor
            from medseg.tasks.capabilities import LABEL_MAPS

            self._predictor = open_predictor(self.config.model, PredictorOptions(mirror=self.config.tta), needs={LABEL_MAPS}, surface=NODE)
        return self._predictor

    def process(self, series: str) -> None:
        from medseg.tasks import BatchRequest

        folder, joined = self.store.claim(series)
        instances = len(list((folder / "input").glob("*.dcm")))
        self.log("processing", series=series, instances=instances, **({"joined_earlier": joined} if joined else {}))
        try:
            result = self.predictor().predict_batch(BatchRequest(folder / "input", folder / "output", formats=list(self.config.formats)))
            if result.failed:
                raise MedsegError("; ".join(f"{case}: {error}" for case, error in result.failed.items()))
            if not result.written:
                raise MedsegError(f"series {series}: the prediction wrote no DICOM output to send")
        except Exception as error:  # noqa: BLE001 - one series never stops the node
            message = str(error) if isinstance(error, MedsegError) else f"unexpected {type(error).__name__}: {error}"
            (folder / "error.txt").write_text(message + "\n")
            kept = self.store.finish(folder, "failed")
            self.store.record(series, "failed", kept, instances)
            self.log("failed", series=series, error=message, kept=str(kept))
            return
        kept = self.store.finish(folder, "done")
        superseded = self.store.record(series, "done", kept, instances)
        if superseded:
            dropped = self.outbox.drop_series(series)
            self.log("superseded", series=series, earlier=superseded["kept"], earlier_instances=superseded["instances"], instances=instances, unsent_dropped=len(dropped))
        files = sorted(kept / "output" / path.name for path in result.written)
        self.log("done", series=series, outputs=len(files), kept=str(kept))
        destinations = (["c-store"] if self.config.send_to else []) + (["stow-rs"] if self.config.stow_url else [])
        if destinations:
            self.outbox.add(series, files, destinations)
            self._deliver_due()

    # ------------------------------------------------------------ delivering

    def _deliver_due(self) -> None:
        for path, item in self.outbox.due():
            if self.stopping.is_set():
                return
            files = [Path(f) for f in item["files"]]
            remaining, errors = [], []
            for destination in item["destinations"]:
                try:
                    self._send(destination, files)
                except MedsegError as error:
                    remaining.append(destination)
                    errors.append(str(error))
                    continue
                for file in files:
                    self.log("sent", series=item["series"], file=file.name, to=self._describe(destination), via=destination.upper())
            if remaining:
                due = self.outbox.failed_attempt(path, item, remaining, "; ".join(errors))
                self.log("send-failed", series=item["series"], error="; ".join(errors), attempts=item["attempts"], next_attempt=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(due)), item=path.name)
            else:
                path.unlink(missing_ok=True)

    def _describe(self, destination: str) -> str:
        return str(self.config.send_to) if destination == "c-store" else str(self.config.stow_url)

    def _send(self, destination: str, files: list[Path]) -> None:
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise MedsegError(f"output file(s) {', '.join(missing)} no longer in the store")
        if destination == "c-store":
            if self.config.send_to is None:
                raise MedsegError("no --send-to is configured now")
            send_by_c_store(files, self.config.ae_title, self.config.send_to, self.config.tls if self.config.send_tls else None)
        elif self.config.stow_url:
            send_by_stow(files, self.config.stow_url)
        else:
            raise MedsegError("no --stow-url is configured now")


def check_label_map_model(model: Path) -> None:
    """The node writes DICOM SEG / RTSTRUCT from label maps: a model whose task makes none is refused
    at start, naming both."""
    from medseg.model_folders import open_model_folder
    from medseg.tasks import get_task
    from medseg.tasks.capabilities import LABEL_MAPS
    from medseg.tasks.prediction import require_capabilities

    folder = open_model_folder(model)
    require_capabilities(folder, get_task(folder.info.task), {LABEL_MAPS}, f"{NODE} (it sends DICOM SEG / RTSTRUCT)")
