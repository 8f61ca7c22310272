"""`--runtime openvino`: the model's networks compiled by OpenVINO give PyTorch float32's labels,
are converted once per machine and weights (the cache), and go through the one front door."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.io import read_image
from medseg.tasks import PredictorOptions, open_predictor
from tests.conftest import BRIGHT_DATASET

openvino = pytest.importorskip("openvino", reason="the openvino extra is not installed (CI installs it)")


def _labels(predictor, images):
    return [predictor.predict_image(image, case_id=f"c{i}").segmentation.array for i, image in enumerate(images)]


def test_openvino_labels_equal_torch_float32_and_the_conversion_is_cached(bright_model, tmp_path, monkeypatch):
    root, model = bright_model
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    images = [read_image(root / "raw" / BRIGHT_DATASET / "imagesTr" / f"case_{i:03d}_0000.nii.gz") for i in range(3)]
    torch_labels = _labels(open_predictor(model, PredictorOptions(precision="float32", mirror=False)), images)

    conversions = []
    convert = openvino.convert_model
    monkeypatch.setattr(openvino, "convert_model", lambda *a, **k: conversions.append(1) or convert(*a, **k))
    options = PredictorOptions(runtime="openvino", precision="float32", mirror=False)
    predictor = open_predictor(model, options)
    assert len(conversions) == 1 and predictor.precision == "float32"
    for ours, theirs in zip(_labels(predictor, images), torch_labels):
        assert np.array_equal(ours, theirs)
    checks = list((tmp_path / "cache" / "medseg" / "openvino").glob("*/check.json"))
    assert len(checks) == 1 and not list((tmp_path / "cache" / "medseg" / "openvino").glob("*.partial"))
    open_predictor(model, options)
    assert len(conversions) == 1  # the second run reads the converted model from the cache

    bf16 = open_predictor(model, PredictorOptions(runtime="openvino", precision="bfloat16", mirror=False))
    assert len(conversions) == 2  # another precision hint is another cache entry
    for ours, theirs in zip(_labels(bf16, images), torch_labels):
        assert (ours == theirs).mean() > 0.99


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
    from medseg.tasks.capabilities import OPENVINO
    from medseg.tasks.prediction import implied_needs

    assert OPENVINO in implied_needs(PredictorOptions(runtime="openvino"))
    with pytest.raises(MedsegError, match="--runtime 'tensorrt': choose torch or onnx or openvino"):
        open_predictor(tmp_path, PredictorOptions(runtime="tensorrt"))
