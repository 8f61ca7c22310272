"""`--runtime openvino`: the model's networks compiled by OpenVINO give PyTorch float32's labels and
are converted once per machine and weights (the cache). Run through the real CLI, each in its own
process, as users run it: OpenVINO's libraries loaded into the test process beside everything
else the suite loads (ONNX Runtime, Ray, ...) crashed it."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from medseg.io import read_image
from tests.conftest import copy_bright_images, run_cli

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="the openvino extra is not installed (CI installs it)")


def _predict(root, model, images, out, *options):
    run_cli("predict", "-i", images, "-o", out, "-m", model, "--no-tta", *options, root=root, check=True)
    return {path.name: read_image(path).array for path in sorted(out.glob("*.nii.gz"))}


def test_openvino_labels_equal_torch_float32_and_the_conversion_is_cached(bright_model, tmp_path, monkeypatch):
    root, model = bright_model
    cache = tmp_path / "cache" / "medseg" / "openvino"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    images = copy_bright_images(root, tmp_path / "in")
    torch_labels = _predict(root, model, images, tmp_path / "torch", "--precision", "float32")
    ours = _predict(root, model, images, tmp_path / "openvino", "--runtime", "openvino", "--precision", "float32")
    assert ours.keys() == torch_labels.keys() and len(ours) == 3
    for name in ours:
        assert np.array_equal(ours[name], torch_labels[name]), name
    (entry,) = [path for path in cache.iterdir()]  # one conversion, renamed into place complete
    assert (entry / "check.json").is_file() and (entry / "model.xml").is_file()
    converted = (entry / "model.xml").stat().st_mtime_ns
    _predict(root, model, images, tmp_path / "again", "--runtime", "openvino", "--precision", "float32")
    assert [path for path in cache.iterdir()] == [entry] and (entry / "model.xml").stat().st_mtime_ns == converted  # read from the cache
    bf16 = _predict(root, model, images, tmp_path / "bf16", "--runtime", "openvino", "--precision", "bfloat16")
    assert len(list(cache.iterdir())) == 2  # another precision hint is another entry
    for name in bf16:
        assert (bf16[name] == torch_labels[name]).mean() > 0.99


def test_changed_weights_or_precision_change_the_cache_key():
    from medseg.inference.openvino_runtime import cache_key

    network = torch.nn.Conv3d(1, 2, 3, padding=1)
    key = cache_key(network, (1, 1, 8, 8, 8), "float32")
    assert cache_key(network, (1, 1, 8, 8, 8), "bfloat16") != key and cache_key(network, (1, 1, 8, 8, 16), "float32") != key
    with torch.no_grad():
        network.bias += 1
    assert cache_key(network, (1, 1, 8, 8, 8), "float32") != key


def test_the_runtime_is_a_capability_and_an_unknown_runtime_is_named(tmp_path):
    from medseg.errors import MedsegError
    from medseg.tasks import PredictorOptions, open_predictor
    from medseg.tasks.capabilities import OPENVINO
    from medseg.tasks.prediction import implied_needs

    assert OPENVINO in implied_needs(PredictorOptions(runtime="openvino"))
    with pytest.raises(MedsegError, match="--runtime .tensorrt.: choose torch or onnx or openvino or auto"):
        open_predictor(tmp_path, PredictorOptions(runtime="tensorrt"))


def test_runtime_auto_measures_on_the_validation_case_then_remembers(bright_model, tmp_path, monkeypatch):
    import json
    import shutil

    from tests.conftest import BRIGHT_DATASET

    root = tmp_path / "root"
    shutil.copytree(bright_model[0], root)
    model = root / "results" / BRIGHT_DATASET / "unet__medsegPlans__3d_fullres"
    validation = model / "fold_0" / "validation"  # the fixture trained without it: the held-out case's prediction file names the case
    validation.mkdir(exist_ok=True)
    shutil.copy(root / "raw" / BRIGHT_DATASET / "labelsTr" / "case_001.nii.gz", validation / "case_001.nii.gz")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    images = copy_bright_images(root, tmp_path / "in")
    first = run_cli("predict", "-i", images, "-o", tmp_path / "auto", "-m", model, "--no-tta", "--runtime", "auto", "--precision", "float32", root=root, check=True)
    assert "runtime auto: " in first.stdout and "on case_001" in first.stdout and "measured" in first.stdout, first.stdout
    (record_file,) = (tmp_path / "cache" / "medseg" / "runtime_choice").glob("*.json")
    record = json.loads(record_file.read_text())
    assert set(record["tried"]) == {"torch", "openvino"} and record["case"] == "case_001"
    assert all(entry["passes"] and min(entry["dice"].values()) >= 0.999 for entry in record["tried"].values())
    assert record["runtime"] == min(record["tried"], key=lambda name: record["tried"][name]["seconds"])
    reference = _predict(root, model, images, tmp_path / "torch", "--precision", "float32")
    for name, labels in reference.items():
        assert np.array_equal(read_image(tmp_path / "auto" / name).array, labels), name
    second = run_cli("predict", "-i", images, "-o", tmp_path / "again", "-m", model, "--no-tta", "--runtime", "auto", "--precision", "float32", root=root, check=True)
    assert f"runtime auto: {record['runtime']}" in second.stdout and "remembered" in second.stdout
    assert list((tmp_path / "cache" / "medseg" / "runtime_choice").glob("*.json")) == [record_file]


def test_runtime_auto_without_a_validation_case_checks_a_synthetic_image(bright_model, tmp_path, monkeypatch):
    from medseg.inference.runtime_choice import validation_case
    from medseg.model_folders import open_model_folder

    root, model = bright_model
    monkeypatch.setenv("MEDSEG_ROOT", str(root))
    assert validation_case(open_model_folder(model)) is None  # trained with --no-validate
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = run_cli("predict", "-i", copy_bright_images(root, tmp_path / "in", 1), "-o", tmp_path / "out", "-m", model, "--no-tta", "--runtime", "auto", root=root, check=True)
    assert "runtime auto: " in result.stdout and "on synthetic" in result.stdout, result.stdout
