"""One front door for prediction: `medseg predict`, the REST server, the DICOM node and Ray's actors
all open a model's predictor through its task (medseg.tasks.open_predictor) and call it. A plug-in
task (tests/plugins/counting_segmentation.py: segmentation whose predictor records its calls) shows
which process opened a predictor and what it was asked; surfaces refuse a model whose task lacks
what they need, by capability, naming both."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medseg.errors import MedsegError
from tests.conftest import REPO, copy_bright_images, free_port, installed_plugin, require_peer, run_cli

PLUGIN_DIR = REPO / "tests" / "plugins"


@pytest.fixture(scope="module")
def counting_model(bright_model, tmp_path_factory):
    """(MEDSEG_ROOT, a copy of the bright model folder trained by the counting task, its call log),
    with the plug-in found by every child process, as a lab would install it."""
    root, model = bright_model
    folder = tmp_path_factory.mktemp("front-door")
    counting = folder / "model"
    shutil.copytree(model, counting)
    info = json.loads((counting / "model.json").read_text())
    (counting / "model.json").write_text(json.dumps({**info, "task": "counting_segmentation"}))
    log = folder / "calls.jsonl"
    with installed_plugin(PLUGIN_DIR, "counting_segmentation", MEDSEG_FRONT_DOOR_LOG=str(log)):
        yield root, counting, log


def calls(log: Path) -> list[dict]:
    entries = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    log.unlink(missing_ok=True)  # each test reads only its own surface's calls
    return entries


def events_of(entries: list[dict], command: str) -> list[str]:
    """The events recorded by processes started as `medseg COMMAND`."""
    return [e["event"] for e in entries if command in e["argv"][1:2]]


def test_cli_predict_calls_the_task_predictor(counting_model, tmp_path):
    root, model, log = counting_model
    calls(log)
    inputs = copy_bright_images(root, tmp_path / "in", count=2)
    run_cli("predict", "-i", inputs, "-o", tmp_path / "out", "-m", model, "--no-tta", check=True)
    assert events_of(calls(log), "predict") == ["opened", "batch", "image", "image"]
    assert len(list((tmp_path / "out").glob("*.nii.gz"))) == 2


def test_rest_jobs_call_the_task_predictor(counting_model, tmp_path):
    require_peer("fastapi")
    from tests.e2e.test_serve import TOKEN, Server, _client, _submit, _wait

    root, model, log = counting_model
    calls(log)
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "allowed").mkdir()
    server = Server(model, tmp_path / "data", tmp_path / "allowed", tmp_path / "token")
    url = server.start()
    try:
        image = copy_bright_images(root, tmp_path / "in", count=1) / "case_000_0000.nii.gz"
        with _client(url) as client:
            job = _submit(client, image.name, image.read_bytes(), tta="false").json()
            assert _wait(client, job["id"])["state"] == "done"
    finally:
        server.stop()
    assert events_of(calls(log), "serve") == ["opened", "batch", "image"]


def test_the_dicom_node_calls_the_task_predictor(counting_model, shared_data, tmp_path):
    require_peer("pynetdicom")
    from tests.e2e.test_dicom_node import Node, storescu, wait_for
    from tests.e2e.test_hospital_inference import series

    _, model, log = counting_model
    calls(log)
    port = free_port()
    node = Node(model, tmp_path / "store", port, "--quiet-seconds", "1", "--no-tta")
    try:
        assert storescu(sorted(series(shared_data, "siemens").iterdir()), port, "MODALITY", "MEDSEG").returncode == 0
        wait_for(lambda: node.events("done") or node.events("failed"), 180, "the node did not finish the series")
        assert node.events("done"), node.events("failed")
    finally:
        node.stop()
    assert events_of(calls(log), "dicom-node") == ["opened", "batch", "image"]


@pytest.mark.slow
def test_ray_actors_open_the_task_predictor(counting_model, tmp_path):
    require_peer("ray")
    root, model, log = counting_model
    calls(log)
    inputs = copy_bright_images(root, tmp_path / "in", count=2)
    run_cli("predict", "-i", inputs, "-o", tmp_path / "out", "-m", model, "--no-tta", "--backend", "ray", "--workers", "1", check=True)
    entries = calls(log)
    actors = {e["pid"] for e in entries if e["event"] == "opened"}
    assert len(actors) == 1 and not events_of(entries, "predict")  # the driver hands whole cases to the actor
    assert [e["event"] for e in entries if e["pid"] in actors] == ["opened", "image", "image"]


def test_surfaces_refuse_a_model_by_capability_naming_both(counting_model, tmp_path):
    """A task that cannot do what a surface needs is refused before anything runs; the message names
    the model's task and the missing capability, never a test of the task's name."""
    from medseg.model_folder import ModelFolder
    from medseg.tasks import PredictorOptions, get_task, open_predictor
    from medseg.tasks.capabilities import CLASS_SCORES
    from medseg.tasks.prediction import require_capabilities

    _, model, _ = counting_model
    folder = ModelFolder.open(model)
    with pytest.raises(MedsegError, match="a counting_segmentation model .*unet.* does not produce class probabilities .*, which a test surface needs"):
        require_capabilities(folder, get_task(folder.info.task), {CLASS_SCORES}, "a test surface")
    with pytest.raises(MedsegError, match="--runtime 'tensorrt': choose torch or onnx"):
        open_predictor(model, PredictorOptions(runtime="tensorrt"))
    with pytest.raises(MedsegError, match="--backend 'spark': choose local or ray"):
        open_predictor(model, PredictorOptions(backend="spark"))
