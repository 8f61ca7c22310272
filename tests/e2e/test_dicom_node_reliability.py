"""The DICOM node as a PACS leans on it: UIDs validated, a series never split by a pause, a series
that grows reprocessed whole, failed deliveries retried from a persistent outbox, DICOM TLS both
ways, and a model that makes no label maps refused at start. Real associations (pynetdicom as the
peer, over real sockets and real TLS), a real model, real series from ../shared/data."""

from __future__ import annotations

import datetime
import json
import shutil
import ssl
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.conftest import free_port, require_peer
from tests.e2e.test_hospital_inference import series

pytestmark = pytest.mark.usefixtures("pynetdicom_installed")


@pytest.fixture
def pynetdicom_installed():
    require_peer("pynetdicom")


def _node(model: Path, store: Path, **settings):
    from medseg.serve.dicom_node import DicomNode, NodeConfig

    config = NodeConfig(model=model, store=store, port=free_port(), quiet_seconds=settings.pop("quiet_seconds", 1.0), **settings)
    node = DicomNode(config, echo=None)
    node.start()
    return node


def _events(store: Path, kind: str | None = None) -> list[dict]:
    log = store / "node.log"
    entries = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    return [e for e in entries if kind is None or e["event"] == kind]


def _wait(condition, seconds: float, message) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(message() if callable(message) else message)


def _store(datasets: list, port: int, ssl_context: ssl.SSLContext | None = None) -> list[int]:
    """C-STORE ``datasets`` to the node; the statuses (an association that fails: [])."""
    from pynetdicom import AE

    ae = AE(ae_title="MODALITY")
    for dataset in datasets:
        ae.add_requested_context(dataset.SOPClassUID, str(dataset.file_meta.TransferSyntaxUID))
    association = ae.associate("127.0.0.1", port, ae_title="MEDSEG", tls_args=(ssl_context, "127.0.0.1") if ssl_context else None)
    if not association.is_established:
        return []
    try:
        return [int(association.send_c_store(dataset).Status) for dataset in datasets]
    finally:
        association.release()


def _siemens(shared_data: Path) -> list:
    return [dcmread(path) for path in sorted(series(shared_data, "siemens").iterdir())]


class Receiver:
    """A storage SCP standing in for the PACS the node sends to (optionally TLS-only)."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, port: int | None = None):
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.received: list = []
        self.port = port or free_port()
        ae = AE(ae_title="PACS")
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, ssl_context=ssl_context,
                                      evt_handlers=[(evt.EVT_C_STORE, self._stored)])

    def _stored(self, event) -> int:
        self.received.append(event.dataset)
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def test_uids_that_are_not_dicom_uids_are_refused(bright_model, shared_data, tmp_path):
    _, model = bright_model
    store = tmp_path / "node"
    node = _node(model, store, quiet_seconds=600)
    try:
        datasets = _siemens(shared_data)[:3]
        for dataset, uid in zip(datasets, (".", "..", "1..2")):
            dataset.SeriesInstanceUID = uid
        assert _store(datasets, node.config.port) == [0xC210] * 3
        assert not any((store / "incoming").iterdir()) and not list(store.glob("*.dcm"))
        assert [e["series"] for e in _events(store, "refused")] == [".", "..", "1..2"]
    finally:
        node.stop()


def test_a_series_with_a_gap_waits_and_is_processed_once_whole(bright_model, shared_data, tmp_path):
    """Instances 112, 113 and 115 arrive, then a pause longer than the quiet period: the instance
    numbers say 114 is missing, so the node waits instead of segmenting three slices."""
    _, model = bright_model
    store = tmp_path / "node"
    node = _node(model, store)
    try:
        datasets = _siemens(shared_data)
        assert _store([datasets[0], datasets[1], datasets[3]], node.config.port) == [0] * 3
        _wait(lambda: _events(store, "waiting"), 30, lambda: _events(store))
        time.sleep(2.5)  # well past the quiet period
        assert not _events(store, "processing")
        assert "114" in _events(store, "waiting")[0]["reason"]
        assert _store([datasets[2]], node.config.port) == [0]
        _wait(lambda: _events(store, "done") or _events(store, "failed"), 180, lambda: _events(store))
        assert [e["instances"] for e in _events(store, "processing")] == [4]
        assert _events(store, "done")
    finally:
        node.stop()


def test_a_series_that_grows_after_processing_is_processed_again_whole(bright_model, shared_data, tmp_path):
    """Two instances, processed; later the other two arrive (a pause or a restart): the series is
    processed again with all four, and the first result is superseded, never left as a second
    partial answer."""
    _, model = bright_model
    store = tmp_path / "node"
    datasets = _siemens(shared_data)
    node = _node(model, store)
    try:
        assert _store(datasets[:2], node.config.port) == [0, 0]
        _wait(lambda: _events(store, "done"), 180, lambda: _events(store))
    finally:
        node.stop()
    node = _node(model, store)  # restarted
    try:
        assert _store(datasets[2:], node.config.port) == [0, 0]
        _wait(lambda: _events(store, "superseded"), 180, lambda: _events(store))
        assert [e["instances"] for e in _events(store, "processing")] == [2, 4]
        [superseded] = _events(store, "superseded")
        assert superseded["earlier_instances"] == 2 and superseded["instances"] == 4
        uid = str(datasets[0].SeriesInstanceUID)
        state = json.loads((store / "series" / f"{uid}.json").read_text())
        assert [(r["instances"], bool(r.get("superseded"))) for r in state["results"]] == [(2, True), (4, False)]
        latest = store / state["results"][-1]["kept"]
        seg = dcmread(next((latest / "output").glob("*.seg.dcm")))
        referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
        assert referenced == {str(d.SOPInstanceUID) for d in datasets}
    finally:
        node.stop()


def test_failed_deliveries_wait_in_the_outbox_and_are_retried(bright_model, shared_data, tmp_path):
    from medseg.serve.dicom_node import Destination

    _, model = bright_model
    store = tmp_path / "node"
    pacs_port = free_port()  # nothing listens there yet
    destination = Destination("PACS", "127.0.0.1", pacs_port)
    node = _node(model, store, send_to=destination, retry_base_seconds=3600)
    try:
        assert _store(_siemens(shared_data), node.config.port) == [0] * 4
        _wait(lambda: _events(store, "send-failed"), 180, lambda: _events(store))
        assert _events(store, "done") and not _events(store, "failed")  # segmented; only the delivery waits
        assert len(list((store / "outbox").glob("*.json"))) == 1
    finally:
        node.stop()
    receiver = Receiver(port=pacs_port)
    node = _node(model, store, send_to=destination, retry_base_seconds=3600, retry_failed=True)
    try:
        assert _events(store, "pending") and _events(store, "retry")
        _wait(lambda: receiver.received, 60, lambda: _events(store))
        _wait(lambda: not list((store / "outbox").glob("*.json")), 30, "the delivered item stayed in the outbox")
        assert receiver.received[0].Modality == "SEG"
    finally:
        node.stop()
        receiver.stop()


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (PEM) and its key, made here."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medseg test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "node.pem", folder / "node.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def test_dicom_tls_in_and_out(bright_model, shared_data, tmp_path):
    """The SCP speaks TLS only (a plain association fails; a TLS one that trusts the node's
    certificate stores), and the outputs go out by C-STORE over TLS to a TLS-only receiver."""
    require_peer("cryptography")
    from medseg.serve.dicom_node import Destination, TlsSettings

    _, model = bright_model
    cert, key = _certificate(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    receiver = Receiver(ssl_context=server_context)
    store = tmp_path / "node"
    node = _node(model, store, tls=TlsSettings(cert, key, cert), send_tls=True, send_to=Destination("PACS", "127.0.0.1", receiver.port))
    try:
        datasets = _siemens(shared_data)
        assert _store(datasets, node.config.port) == []  # plain DICOM: no association
        client = ssl.create_default_context(cafile=str(cert))
        client.load_cert_chain(cert, key)  # the node asks clients for a certificate chaining to --tls-ca
        assert _store(datasets, node.config.port, client) == [0] * 4
        _wait(lambda: receiver.received and _events(store, "sent"), 180, lambda: _events(store))  # "sent" is logged once the C-STORE returns
        assert receiver.received[0].Modality == "SEG" and [e["via"] for e in _events(store, "sent")] == ["C-STORE"]
    finally:
        node.stop()
        receiver.stop()


def test_a_model_that_makes_no_label_maps_is_refused_at_start(bright_model, tmp_path):
    from medseg.errors import MedsegError

    _, model = bright_model
    folder = tmp_path / "classifier"
    shutil.copytree(model, folder)
    info = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**info, "task": "classification", "model": "resnet18"}))
    with pytest.raises(MedsegError, match="classification model .*resnet18.* does not produce label maps"):
        _node(folder, tmp_path / "node")
