"""Sending the DICOM node's outputs: C-STORE to an AE (optionally over TLS), STOW-RS to a DICOMweb
root, and a persistent outbox that retries failed sends with backoff.

    STORE/outbox/ITEM.json   one pending delivery: the series, its files, the destinations still
                             to reach, attempts so far, the next attempt's time and the last error

An item leaves the outbox when every destination took it. Items survive restarts; ``medseg
dicom-node --retry-failed`` makes every pending item due at once."""

from __future__ import annotations

import json
import re
import ssl
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from medseg.atomic import write_json_atomic
from medseg.errors import MedsegError


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

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class TlsSettings:
    """DICOM TLS (PS3.15 B.1): this node's certificate and key, and the CA its peers' certificates
    must chain to (for the SCP: then clients must present one; for sending: the destination's)."""

    certificate: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    def server_context(self) -> ssl.SSLContext:
        if not (self.certificate and self.key):
            raise MedsegError("DICOM TLS for the node needs --tls-cert and --tls-key")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load(context.load_cert_chain, self.certificate, self.key)
        if self.ca:
            context.verify_mode = ssl.CERT_REQUIRED
            self._load(context.load_verify_locations, self.ca)
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ca:
            self._load(context.load_verify_locations, self.ca)
        if self.certificate and self.key:
            self._load(context.load_cert_chain, self.certificate, self.key)
        return context

    @staticmethod
    def _load(loader, *paths) -> None:
        try:
            loader(*map(str, paths))
        except (OSError, ssl.SSLError) as error:
            raise MedsegError(f"{', '.join(map(str, paths))}: cannot be used for TLS ({error})") from None


def send_by_c_store(files: list[Path], calling_ae: str, destination: Destination, tls: TlsSettings | None = None) -> None:
    """C-STORE every file in one association (over TLS when ``tls``); any status but success raises, naming the file."""
    from pydicom import dcmread
    from pynetdicom import AE

    datasets = [dcmread(path) for path in files]
    ae = AE(ae_title=calling_ae)
    for dataset in datasets:
        syntax = str(dataset.file_meta.TransferSyntaxUID)
        if all(c.abstract_syntax != dataset.SOPClassUID or syntax not in c.transfer_syntax for c in ae.requested_contexts):
            ae.add_requested_context(dataset.SOPClassUID, syntax)
    tls_args = (tls.client_context(), destination.host) if tls else None
    association = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args)
    if not association.is_established:
        raise MedsegError(f"C-STORE to {destination}{' (TLS)' if tls else ''}: association not established (rejected, aborted or unreachable)")
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


class Outbox:
    """Deliveries not yet taken by every destination, one JSON file each, retried with backoff
    (``base_seconds`` doubled per failed attempt, at most ``max_seconds``)."""

    def __init__(self, folder: Path, base_seconds: float = 30.0, max_seconds: float = 3600.0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.base_seconds, self.max_seconds = base_seconds, max_seconds

    def add(self, series: str, files: list[Path], destinations: list[str]) -> Path:
        path = self.folder / f"{time.time_ns()}-{series}.json"
        write_json_atomic(path, {
            "series": series, "files": [str(f) for f in files], "destinations": destinations,
            "attempts": 0, "next_attempt": 0.0, "last_error": None, "created": time.time(),
        })
        return path

    def items(self) -> list[tuple[Path, dict]]:
        found = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                found.append((path, json.loads(path.read_text())))
            except (OSError, ValueError):
                continue  # a damaged item is left for a person to look at
        return found

    def due(self, now: float | None = None) -> list[tuple[Path, dict]]:
        now = time.time() if now is None else now
        return [(path, item) for path, item in self.items() if item["next_attempt"] <= now]

    def failed_attempt(self, path: Path, item: dict, remaining: list[str], error: str) -> float:
        """Record a failed attempt; returns when the next one is due."""
        item["attempts"] += 1
        item["destinations"] = remaining
        item["last_error"] = error
        item["next_attempt"] = time.time() + min(self.base_seconds * 2 ** (item["attempts"] - 1), self.max_seconds)
        write_json_atomic(path, item)
        return item["next_attempt"]

    def make_all_due(self) -> int:
        pending = self.items()
        for path, item in pending:
            item["next_attempt"] = 0.0
            write_json_atomic(path, item)
        return len(pending)

    def drop_series(self, series: str) -> list[Path]:
        """Remove the pending deliveries of a series (its result was superseded by a whole one)."""
        dropped = [path for path, item in self.items() if item["series"] == series]
        for path in dropped:
            path.unlink(missing_ok=True)
        return dropped
