"""`medseg dicom-node` against a real PACS: Orthanc (Debian's orthanc + orthanc-dicomweb) on loopback
ports, real series from ../shared/data sent with dcmtk's storescu, SEGs checked through Orthanc's REST API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from tests.conftest import free_port, require_peer
from tests.e2e.test_hospital_inference import series

ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")


def require_program(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} (Debian package {package}) must be installed in CI by .ci/run")
        pytest.skip(f"{name} not installed (apt-get install {package})")
    return path


class Orthanc:
    """A real Orthanc on loopback ports that knows medseg's node as the modality 'medseg'."""

    def __init__(self, folder: Path, node_port: int):
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        config = {
            "Name": "medseg-test", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomModalities": {"medseg": ["MEDSEG", "127.0.0.1", node_port]},
            "Plugins": [str(ORTHANC_PLUGINS / "libOrthancDicomWeb.so")], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomAssociationCloseDelay": 0,  # no association kept open to a node the tests kill and restart
        }
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = (folder / "orthanc.log").open("w")
        self.process = subprocess.Popen([require_program("Orthanc", "orthanc"), str(folder / "orthanc.json")], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: self._up(), 60, "Orthanc did not start")

    def _up(self) -> bool:
        assert self.process.poll() is None, "Orthanc exited at start"
        try:
            return httpx.get(f"{self.url}/system", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def get(self, path: str):
        response = httpx.get(self.url + path, timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body) -> httpx.Response:
        return httpx.post(self.url + path, content=body if isinstance(body, (str, bytes)) else json.dumps(body), timeout=120)

    def series_of_modality(self, modality: str) -> list[dict]:
        return [s for s in self.get("/series?expand") if s["MainDicomTags"].get("Modality") == modality]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


DEFAULT_STORE = "medseg_dicom_node"  # the node's --store default, relative to its working folder


class Node:
    """`medseg dicom-node` in its own process. ``store``: a --store path, or None for the default
    store, with the node running in ``cwd`` (as a user who types the default command)."""

    def __init__(self, model: Path, store: Path | None, port: int, *options: str, cwd: Path | None = None):
        self.port = port
        args = [sys.executable, "-m", "medseg.cli", "dicom-node", "-m", str(model), "--port", str(port), *options]
        if store is None:
            store = Path(cwd) / DEFAULT_STORE
        else:
            args += ["--store", str(store)]
        self.store = store
        self.earlier_starts = len([e for e in self.events("listening") if e["port"] == port])  # a restarted node's log holds its earlier starts
        self.output = (store.parent / f"{store.name}-{time.time_ns()}.out").open("w")
        self.process = subprocess.Popen(args, stdout=self.output, stderr=subprocess.STDOUT, cwd=cwd)
        wait_for(lambda: self._listening(), 60, "the node did not start listening")

    def _listening(self) -> bool:
        assert self.process.poll() is None, f"the node exited: {Path(self.output.name).read_text()[-3000:]}"
        return len([e for e in self.events("listening") if e["port"] == self.port]) > self.earlier_starts

    def events(self, kind: str | None = None) -> list[dict]:
        log = self.store / "node.log"
        entries = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
        return [e for e in entries if kind is None or e["event"] == kind]

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)
        self.output.close()


def wait_for(condition, seconds: float, message: str):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(message)


def storescu(files: list[Path], port: int, calling: str, called: str, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_program("storescu", "dcmtk"), *options, "-aet", calling, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )


def assert_seg_references(orthanc: Orthanc, source: Path) -> None:
    """The SEG in Orthanc references the source series, in its study."""
    reference = dcmread(sorted(source.iterdir())[0], stop_before_pixels=True)
    segs = orthanc.series_of_modality("SEG")
    assert len(segs) == 1, segs
    instance = orthanc.get(f"/instances/{segs[0]['Instances'][0]}/tags?simplify")
    assert instance["StudyInstanceUID"] == reference.StudyInstanceUID
    assert instance["ReferencedSeriesSequence"][0]["SeriesInstanceUID"] == reference.SeriesInstanceUID


@pytest.fixture
def pacs(tmp_path):
    require_peer("pynetdicom")
    node_port = free_port()
    (tmp_path / "orthanc").mkdir()
    orthanc = Orthanc(tmp_path / "orthanc", node_port)
    yield orthanc, node_port
    orthanc.stop()


def test_orthanc_round_trip_survives_a_killed_node(bright_model, shared_data, pacs, tmp_path):
    """Orthanc forwards a real series to the node, the node is killed before it processes it, and
    after a restart the SEG appears in Orthanc referencing the series. Only allowed AEs associate."""
    _, model = bright_model
    orthanc, node_port = pacs
    source = series(shared_data, "siemens")
    files = sorted(source.iterdir())
    sent = storescu(files, orthanc.dicom_port, "STORESCU", "ORTHANC")
    assert sent.returncode == 0, sent.stderr
    [source_series] = orthanc.get("/series")

    store = tmp_path / "node"
    options = ["--allow", "ORTHANC", "--send-to", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"]
    node = Node(model, store, node_port, "--quiet-seconds", "600", *options)  # holds the series: nothing processed yet
    assert orthanc.post("/modalities/medseg/echo", "{}").status_code == 200  # C-ECHO from the PACS
    forwarded = orthanc.post("/modalities/medseg/store", source_series)
    assert forwarded.status_code == 200, forwarded.text
    received = node.events("received")
    assert len(received) == len(files) and {e["calling_ae"] for e in received} == {"ORTHANC"}
    uid = received[0]["series"]
    assert len(list((store / "incoming" / uid).glob("*.dcm"))) == len(files)  # on disk before success was answered

    rejected = storescu(files[:1], node_port, "INTRUDER", "MEDSEG")  # not on the allow-list
    assert rejected.returncode != 0
    node.stop(signal.SIGKILL)  # a crash: the received series must not be lost
    assert node.process.returncode == -signal.SIGKILL

    node = Node(model, store, node_port, "--quiet-seconds", "1", *options)
    try:
        wait_for(lambda: orthanc.series_of_modality("SEG"), 240, f"no SEG reached Orthanc; node log: {node.events()}")
        assert_seg_references(orthanc, source)
        wait_for(lambda: node.events("done"), 30, "the node did not record the series as done")
        assert [e["series"] for e in node.events("sent")] == [uid]
        assert any(e["event"] == "rejected" and e["calling_ae"] == "INTRUDER" for e in node.events())
        assert sorted(p.name for p in (store / "done" / uid / "input").iterdir()) == sorted(f"{e['sop']}.dcm" for e in received)
        assert not any((store / "incoming").iterdir()) and not any((store / "processing").iterdir())
    finally:
        node.stop()


def test_stow_rs_delivery_and_a_bad_series_failed_with_its_reason(bright_model, shared_data, pacs, tmp_path):
    """Outputs (the SEG and its measurement report, a DICOM SR) go back by STOW-RS to Orthanc's
    DICOMweb; a tilted series fails alone, named, and the node goes on. The node runs with its
    default (relative) store from a working folder, as a user starts it."""
    _, model = bright_model
    orthanc, node_port = pacs
    node = Node(model, None, node_port, "--quiet-seconds", "1", "--stow-url", f"{orthanc.url}/dicom-web", "--format", "dicom-sr", cwd=tmp_path)
    try:
        tilted = storescu(sorted(series(shared_data, "gantry_tilt").iterdir()), node_port, "MODALITY", "MEDSEG")
        assert tilted.returncode == 0, tilted.stderr
        wait_for(lambda: node.events("failed"), 120, f"the tilted series was not failed; node log: {node.events()}")
        [failure] = node.events("failed")
        assert "tilt" in failure["error"].lower()
        assert (tmp_path / Path(failure["kept"]) / "error.txt").is_file()

        source = series(shared_data, "ge")
        good = storescu(sorted(source.iterdir()), node_port, "MODALITY", "MEDSEG")
        assert good.returncode == 0, good.stderr
        wait_for(lambda: orthanc.series_of_modality("SEG") and orthanc.series_of_modality("SR"), 180, f"no SEG and SR reached Orthanc by STOW-RS; node log: {node.events()}")
        assert_seg_references(orthanc, source)
        sent = sorted((e["file"].removesuffix(".dcm").rsplit(".", 1)[-1], e["via"]) for e in node.events("sent"))
        assert sent == [("seg", "STOW-RS"), ("sr", "STOW-RS")], sent
    finally:
        node.stop()


def test_a_series_sent_in_two_parts_across_a_node_restart_gives_one_whole_seg(bright_model, shared_data, pacs, tmp_path):
    """Orthanc forwards half a series, the node is killed, restarted, and Orthanc forwards the rest:
    the node segments the series once, whole (its quiet period counts from its start, so the part
    received before the restart does not look finished), and Orthanc receives one SEG referencing
    every instance, not a partial one."""
    _, model = bright_model
    orthanc, node_port = pacs
    source = series(shared_data, "ge")
    assert storescu(sorted(source.iterdir()), orthanc.dicom_port, "STORESCU", "ORTHANC").returncode == 0
    instances = sorted(orthanc.get("/instances?expand"), key=lambda i: int(i["MainDicomTags"]["InstanceNumber"]))
    ids = [instance["ID"] for instance in instances]
    store = tmp_path / "node"
    options = ["--allow", "ORTHANC", "--send-to", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"]
    node = Node(model, store, node_port, "--quiet-seconds", "600", *options)
    assert orthanc.post("/modalities/medseg/store", ids[:2]).status_code == 200
    node.stop(signal.SIGKILL)
    node = Node(model, store, node_port, "--quiet-seconds", "8", *options)
    try:
        assert orthanc.post("/modalities/medseg/store", ids[2:]).status_code == 200
        wait_for(lambda: node.events("done") or node.events("failed"), 240, f"the series was not processed; node log: {node.events()}")
        wait_for(lambda: orthanc.series_of_modality("SEG"), 60, f"no SEG reached Orthanc; node log: {node.events()}")
        assert [e["instances"] for e in node.events("processing")] == [4]
        [seg_series] = orthanc.series_of_modality("SEG")
        [seg] = seg_series["Instances"]
        tags = orthanc.get(f"/instances/{seg}/tags?simplify")
        referenced = {item["ReferencedSOPInstanceUID"] for item in tags["ReferencedSeriesSequence"][0]["ReferencedInstanceSequence"]}
        assert referenced == {dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in source.iterdir()}
    finally:
        node.stop()
