"""`medseg serve` for real: uvicorn on a loopback port, a trained tiny model, jobs over HTTP, bad
requests answered with the right 4xx while the server keeps serving, concurrent clients, and a
restart that keeps finished jobs."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from medseg.io import read_image
from tests.conftest import REPO, free_port, require_peer, run_cli
from tests.conftest import BRIGHT_DATASET as DATASET

TOKEN = "s3cret-token"


class Server:
    def __init__(self, model: Path, data: Path, allowed: Path, token_file: Path):
        self.args = [
            sys.executable, "-m", "medseg.cli", "serve", "--model", f"bright={model}", "--data", str(data), "--token-file", str(token_file),
            "--max-upload-mb", "1", "--allow-root", str(allowed),
        ]
        self.process = None

    def start(self) -> str:
        import httpx

        port = free_port()
        self.process = subprocess.Popen([*self.args, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.process.stderr.read()}")
            try:
                if httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError("server did not come up")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture
def server(bright_model, tmp_path):
    require_peer("fastapi")
    root, model = bright_model
    (tmp_path / "token").write_text(TOKEN + "\n")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    instance = Server(model, tmp_path / "data", allowed, tmp_path / "token")
    instance.url = instance.start()
    instance.root, instance.model, instance.allowed = root, model, allowed
    yield instance
    instance.stop()


def _client(url: str, token: str | None = TOKEN):
    import httpx

    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=60)


def _submit(client, name: str, content: bytes, **fields):
    return client.post("/jobs", data={"model": "bright", **fields}, files={"file": (name, io.BytesIO(content), "application/octet-stream")})


def _wait(client, job_id: str) -> dict:
    deadline = time.time() + 120
    while time.time() < deadline:
        status = client.get(f"/jobs/{job_id}").json()
        if status["state"] in ("done", "failed"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def test_jobs_over_http_bad_requests_load_and_restart(server, tmp_path):
    image = server.root / "raw" / DATASET / "imagesTr" / "case_000_0000.nii.gz"
    content = image.read_bytes()
    with _client(server.url, None) as anonymous, _client(server.url, "wrong") as wrong, _client(server.url) as client:
        assert anonymous.get("/models").status_code == 401
        assert wrong.get("/models").status_code == 401
        models = client.get("/models").json()
        assert models[0]["name"] == "bright" and models[0]["labels"] == {"background": 0, "liver": 1} and models[0]["input_channels"] == ["MR"]

        created = _submit(client, "case_000_0000.nii.gz", content)
        assert created.status_code == 202, created.text
        job = _wait(client, created.json()["id"])
        assert job["state"] == "done" and job["progress"] == 1.0 and job["outputs"] == ["nifti"], job
        result = client.get(f"/jobs/{job['id']}/result", params={"format": "nifti"})
        assert result.status_code == 200
        (tmp_path / "served.nii.gz").write_bytes(result.content)
        run_cli("predict", "-m", server.model, "-i", image, "-o", tmp_path / "local", "--format", "nifti", check=True)
        served, local = read_image(tmp_path / "served.nii.gz"), read_image(tmp_path / "local" / "case_000.nii.gz")
        assert np.array_equal(served.array, local.array) and served.array.any()
        assert client.get(f"/jobs/{job['id']}/result").headers["content-type"] == "application/zip"

        # bad requests: the right 4xx each, and the server keeps serving
        bad = {
            "oversized": (_submit(client, "big.nii.gz", os.urandom(2 * 2**20)), 413, "exceeds the limit"),
            "traversal": (_submit(client, "../case.nii.gz", content), 400, "not a plain file name"),
            "unknown model": (client.post("/jobs", data={"model": "nope"}, files={"file": ("a.nii.gz", io.BytesIO(content))}), 404, "unknown model"),
            "corrupt": (_submit(client, "corrupt.nii.gz", b"\x1f\x8b\x08\x00 not gzip"), 422, "corrupt.nii.gz"),
            "unknown type": (_submit(client, "notes.txt", b"hello"), 415, "unknown file type"),
            "outside roots": (client.post("/jobs", data={"model": "bright", "path": str(server.allowed / ".." / "token")}), 403, "not under an allowed root"),
            "unknown job": (client.get("/jobs/0123"), 404, "no job"),
        }
        for what, (response, code, message) in bad.items():
            assert response.status_code == code and message in response.json()["detail"], (what, response.status_code, response.text)
        assert "/tmp" not in bad["corrupt"][0].json()["detail"]  # server paths stay on the server

        # a server-side path under an allowed root
        (server.allowed / "case_001_0000.nii.gz").write_bytes((server.root / "raw" / DATASET / "imagesTr" / "case_001_0000.nii.gz").read_bytes())
        by_path = client.post("/jobs", data={"model": "bright", "path": str(server.allowed / "case_001_0000.nii.gz")})
        assert by_path.status_code == 202 and _wait(client, by_path.json()["id"])["state"] == "done"

        # bounded load: 12 jobs from 4 clients, none lost, none failed
        def one(index: int) -> str:
            with _client(server.url) as own:
                response = _submit(own, f"case_{index:03d}_0000.nii.gz", content)
                assert response.status_code == 202, response.text
                return _wait(own, response.json()["id"])["state"]

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(one, range(12))) == ["done"] * 12
        deleted = client.delete(f"/jobs/{by_path.json()['id']}")
        assert deleted.status_code == 200 and client.get(f"/jobs/{by_path.json()['id']}").status_code == 404

    # a restart keeps the finished jobs and their results
    server.stop()
    url = server.start()
    with _client(url) as client:
        again = client.get(f"/jobs/{job['id']}").json()
        assert again["state"] == "done"
        assert client.get(f"/jobs/{job['id']}/result", params={"format": "nifti"}).content == result.content


def test_links_under_an_allowed_root_that_lead_outside_are_not_read(server, shared_data, tmp_path):
    """--allow-root confines every file a job reads, not only the submitted path: a file link and a
    folder link inside the allowed folder that point outside fail as cases of their own (named as
    they appear under the root), are never segmented, and the outside path is never shown."""
    outside = tmp_path / "outside"
    (outside / "series").mkdir(parents=True)
    image = server.root / "raw" / DATASET / "imagesTr" / "case_002_0000.nii.gz"
    (outside / "secret_0000.nii.gz").write_bytes(image.read_bytes())
    for source in sorted((shared_data / "dicom-monai" / "CT_DICOM").iterdir()):  # a 4-slice CT series
        (outside / "series" / source.name).write_bytes(source.read_bytes())
    submitted = server.allowed / "study"
    submitted.mkdir()
    (submitted / "good_0000.nii.gz").write_bytes(image.read_bytes())
    (submitted / "linked_0000.nii.gz").symlink_to(outside / "secret_0000.nii.gz")
    (submitted / "linked_folder").symlink_to(outside / "series", target_is_directory=True)
    with _client(server.url) as client:
        for direct in ("linked_0000.nii.gz", "linked_folder"):  # the links themselves, submitted
            response = client.post("/jobs", data={"model": "bright", "path": str(submitted / direct)})
            assert response.status_code == 403, response.text
        created = client.post("/jobs", data={"model": "bright", "path": str(submitted)})
        assert created.status_code == 202, created.text
        job = _wait(client, created.json()["id"])
    assert job["state"] == "failed" and "leading outside" in job["error"], job
    assert "linked_0000" in job["error"] and "linked_folder" in job["error"], job
    assert str(outside) not in job["error"] and "secret" not in job["error"]
    assert job["outputs"] == ["good/nifti"], job
    written = sorted(p.name for p in (tmp_path / "data" / "jobs" / job["id"] / "output").iterdir())
    assert written == ["good.nii.gz", "manifest.jsonl"], written


def test_the_container_default_command_serves_the_models_dir(bright_model, tmp_path):
    """The Dockerfile's ENTRYPOINT + CMD, run outside a container (no engine here) with its paths
    mapped to temporary folders: every model folder in the models dir is served, and the page too."""
    import json
    import re

    import httpx

    require_peer("fastapi")
    _, model = bright_model
    dockerfile = (REPO / "Dockerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M).group(1))
    command = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    assert entrypoint == ["medseg"] and command[0] == "serve"
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "bright").symlink_to(model, target_is_directory=True)
    (tmp_path / "models" / "notes").mkdir()  # not a model folder: left alone
    port = free_port()
    mapped = {"/models": str(tmp_path / "models"), "/data/serve": str(tmp_path / "data"), "8000": str(port), "0.0.0.0": "127.0.0.1"}
    args = [mapped.get(a, a) for a in command]
    process = subprocess.Popen([sys.executable, "-m", "medseg.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                models = httpx.get(f"{url}/models", timeout=2)
                break
            except httpx.HTTPError:
                assert time.time() < deadline, "the default command did not come up"
                time.sleep(0.3)
        assert [m["name"] for m in models.json()] == ["bright"]
        assert "<title>medseg</title>" in httpx.get(url + "/", timeout=5).text
    finally:
        process.terminate()
        process.wait(timeout=30)
    empty = run_cli("serve", "--models-dir", tmp_path / "models" / "notes")
    assert empty.returncode != 0 and "no model folders" in empty.stderr + empty.stdout
