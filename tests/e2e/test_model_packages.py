"""Model packages: `medseg export --format package` writes one archive, `medseg models install`
takes it from a real HTTP server on the loopback address with its sha256, `models installed` lists
it with its card, `-m NAME` predicts with it; a wrong checksum, a tampered archive, `../` paths and
links are refused with nothing installed."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import shutil
import tarfile
import threading

import pytest

from tests.conftest import copy_bright_images, run_cli


@pytest.fixture
def file_server(tmp_path):
    """(folder, base URL): a real HTTP server on 127.0.0.1 serving ``folder``."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _rewrite(archive, target, change):
    """A copy of ``archive`` whose members pass through ``change(info, data) -> [(info, data)]``."""
    with tarfile.open(archive, "r:gz") as source, tarfile.open(target, "w:gz") as out:
        for member in source.getmembers():
            data = source.extractfile(member).read() if member.isfile() else None
            for info, payload in change(member, data):
                out.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return target


def test_export_install_list_predict_and_refusals(bright_model, tmp_path, monkeypatch, file_server):
    root, trained = bright_model
    models = tmp_path / "installed"
    monkeypatch.setenv("MEDSEG_MODELS", str(models))
    folder = tmp_path / "bright_model"
    shutil.copytree(trained, folder)  # the shared fixture's folder stays as it is
    run_cli("card", folder, "--set", "name=bright-blobs", "--set", "licence=CC0-1.0", root=root, check=True)
    served, url = file_server
    exported = run_cli("export", folder, "--format", "package", "-o", served, root=root, check=True)
    archive = served / "bright-blobs-1.medseg.tar.gz"
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert digest in exported.stdout and (served / f"{archive.name}.sha256").read_text().split()[0] == digest

    wrong = run_cli("models", "install", f"{url}/{archive.name}", "--sha256", "0" * 64, root=root)
    assert wrong.returncode != 0 and "differs from the expected" in wrong.stderr and not (models / "bright-blobs").exists()

    run_cli("models", "install", f"{url}/{archive.name}", "--sha256", digest, root=root, check=True)
    listed = run_cli("models", "installed", root=root, check=True).stdout
    assert "bright-blobs" in listed and "licence: CC0-1.0" in listed
    again = run_cli("models", "install", str(archive), root=root)
    assert again.returncode != 0 and "is installed" in again.stderr
    images = copy_bright_images(root, tmp_path / "images", count=1)
    predicted = run_cli("predict", "-i", images, "-o", tmp_path / "out", "-m", "bright-blobs", root=root, check=True)
    assert "1 case(s) done" in predicted.stdout
    described = json.loads(run_cli("describe", "bright-blobs", "--json", root=root, check=True).stdout)
    assert described["card"]["licence"] == "CC0-1.0"

    def tamper(member, data):
        if member.name.endswith(".pt"):
            data = data + b"\0"
            member.size = len(data)
        return [(member, data)]

    tampered = _rewrite(archive, tmp_path / "tampered.medseg.tar.gz", tamper)
    refused = run_cli("models", "install", str(tampered), "--name", "tampered", root=root)
    assert refused.returncode != 0 and "checkpoint_final.pt differs from the sha256" in refused.stderr and not (models / "tampered").exists()

    def escape(member, data):
        evil = tarfile.TarInfo("../escaped.txt")
        evil.size = 4
        return [(member, data), (evil, b"evil")] if member.name.endswith("model.json") else [(member, data)]

    escaping = _rewrite(archive, tmp_path / "escaping.medseg.tar.gz", escape)
    refused = run_cli("models", "install", str(escaping), "--name", "escaping", root=root)
    assert refused.returncode != 0 and "'../escaped.txt' points outside the package" in refused.stderr
    assert not (models.parent / "escaped.txt").exists() and not (models / "escaping").exists()

    def link(member, data):
        if not member.name.endswith("dataset.json"):
            return [(member, data)]
        linked = tarfile.TarInfo(member.name)
        linked.type, linked.linkname = tarfile.SYMTYPE, "/etc/passwd"
        return [(linked, None)]

    linking = _rewrite(archive, tmp_path / "linking.medseg.tar.gz", link)
    refused = run_cli("models", "install", str(linking), "--name", "linking", root=root)
    assert refused.returncode != 0 and "is a link or a device file" in refused.stderr
    assert [p.name for p in models.iterdir()] == ["bright-blobs"]  # no staging folder left behind

    missing = run_cli("predict", "-i", images, "-o", tmp_path / "none", "-m", "no-such-model", root=root)
    assert missing.returncode != 0 and "nor a model installed in" in missing.stderr


def test_the_catalogue_names_sources_and_licences(tmp_path):
    listing = run_cli("models", "catalogue", root=tmp_path, check=True).stdout
    assert "totalsegmentator-total" in listing and "Apache-2.0" in listing and "monai-spleen_ct_segmentation" in listing
    content = json.loads(run_cli("models", "catalogue", "--json", root=tmp_path, check=True).stdout)
    assert all({"name", "source", "licence", "medseg_runs"} <= set(entry) for entry in content["models"])
    families = run_cli("models", root=tmp_path, check=True).stdout
    assert "resenc_unet" in families
