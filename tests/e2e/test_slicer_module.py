"""The 3D Slicer module (slicer/MedSeg). Slicer itself cannot be installed here, so:
- MedSegLib (its Qt-free logic) runs against a real `medseg serve` and a real `medseg predict` subprocess;
- the result is loaded into a real MRML segmentation node with PyPI's slicer-core (Slicer's MRML
  libraries), in a subprocess;
- MedSeg.py is imported with stand-in `slicer`/`qt` modules; the .ui is checked as XML against the
  widgets MedSeg.py uses, and CMakeLists.txt against the files on disk."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

from medseg.io import read_image
from tests.conftest import BRIGHT_DATASET, REPO, require_peer, run_cli
from tests.e2e.test_serve import TOKEN, server  # noqa: F401 - the running server fixture

MODULE = REPO / "slicer" / "MedSeg"


@pytest.fixture
def medseglib(monkeypatch):
    monkeypatch.syspath_prepend(str(MODULE))
    import MedSegLib

    yield MedSegLib
    for name in [n for n in sys.modules if n == "MedSeg" or n.startswith("MedSegLib")]:
        del sys.modules[name]


def _image(root: Path) -> Path:
    return root / "raw" / BRIGHT_DATASET / "imagesTr" / "case_001_0000.nii.gz"


def _predicted_by_cli(root: Path, model: Path, image: Path, output: Path) -> np.ndarray:
    run_cli("predict", "-i", image, "-o", output, "-m", model, "--format", "nifti", root=root, check=True)
    return read_image(next(output.glob("*.nii.gz"))).array


def _check_audit(result, labels: np.ndarray) -> None:
    """What the module's panel shows: the review flag (a training image: none) and the measurements."""
    assert result.review == {"flag": False, "reasons": []}
    [liver] = result.measurements
    assert liver["label"] == "liver" and liver["voxels"] == int((labels == 1).sum()) and liver["volume_ml"] > 0
    assert result.summary().splitlines() == ["No review flag.", f"liver: {liver['volume_ml']:.2f} mL, {liver['components']} component(s), mean {liver['mean_intensity']:.1f} image units"]


def test_medseglib_against_a_real_server(server, medseglib, tmp_path):  # noqa: F811
    client = medseglib.MedSegServer(server.url, TOKEN)
    [model] = client.models()
    assert model["name"] == "bright" and model["colours"] == {"liver": "#e6194b"}
    assert medseglib.segment_specs(model) == [{"value": 1, "name": "liver", "colour": (230 / 255, 25 / 255, 75 / 255)}]
    messages = []
    result = client.segment(model, _image(server.root), tmp_path, progress=lambda f, m: messages.append((f, m)))
    assert messages[-1] == (1.0, "done")
    expected = _predicted_by_cli(server.root, server.model, _image(server.root), tmp_path / "cli")
    assert np.array_equal(read_image(result.label).array, expected)
    _check_audit(result, expected)
    with pytest.raises(medseglib.MedSegError, match="401"):
        medseglib.MedSegServer(server.url, "wrong").models()


def test_medseglib_runs_local_medseg_with_progress_and_cancel(bright_model, medseglib, tmp_path):
    root, model_folder = bright_model
    executable = Path(sys.executable).parent / "medseg"
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "bright").symlink_to(model_folder, target_is_directory=True)
    local = medseglib.LocalMedSeg(str(executable))
    [model] = local.models(tmp_path / "models")
    assert model["labels"] == {"background": 0, "liver": 1} and model["path"].endswith("bright")

    output = tmp_path / "out"
    output.mkdir()
    messages = []
    result = local.segment(model, _image(root), output, progress=lambda f, m: messages.append((f, m)))
    assert (1.0, "predict: 1/1") in messages and messages[-1] == (1.0, "done")
    expected = _predicted_by_cli(root, model_folder, _image(root), tmp_path / "cli")
    assert np.array_equal(read_image(result.label).array, expected)
    _check_audit(result, expected)

    cancelled = tmp_path / "cancelled"
    cancelled.mkdir()
    with pytest.raises(medseglib.Cancelled):
        local.segment(model, _image(root), cancelled, cancelled=lambda: True)
    assert list(cancelled.iterdir()) == []  # nothing half-written is left
    with pytest.raises(medseglib.MedSegError, match="not found"):
        medseglib.LocalMedSeg(str(tmp_path / "no-medseg"))


MRML_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import slicer
from MedSegLib.mrml import import_label_image
scene = slicer.vtkMRMLScene()
model = json.loads(sys.argv[3])
node = import_label_image(slicer, scene, sys.argv[2], model, "prediction")
segmentation = node.GetSegmentation()
segments = []
for index in range(segmentation.GetNumberOfSegments()):
    segment = segmentation.GetNthSegment(index)
    segments.append({"name": segment.GetName(), "colour": list(segment.GetColor()), "value": segment.GetLabelValue()})
print(json.dumps({"class": node.GetClassName(), "nodes": scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode"), "segments": segments}))
"""


def test_the_result_loads_into_a_real_mrml_segmentation_node(bright_model, tmp_path):
    require_peer("slicer_core")
    root, model_folder = bright_model
    label = tmp_path / "label"
    _predicted_by_cli(root, model_folder, _image(root), label)
    model = json.loads(run_cli("describe", model_folder, "--json", check=True).stdout)
    model["labels"]["spleen"] = 2  # a label the prediction does not contain: an empty segment
    model["colours"]["spleen"] = "#3cb44b"
    result = subprocess.run(
        [sys.executable, "-c", MRML_SCRIPT, str(MODULE), str(next(label.glob("*.nii.gz"))), json.dumps(model)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["class"] == "vtkMRMLSegmentationNode" and loaded["nodes"] == 0  # the temporary label node is gone
    assert [s["name"] for s in loaded["segments"]] == ["liver", "spleen"]
    assert loaded["segments"][0]["value"] == 1
    assert np.allclose(loaded["segments"][0]["colour"], [230 / 255, 25 / 255, 75 / 255])
    assert np.allclose(loaded["segments"][1]["colour"], [60 / 255, 180 / 255, 75 / 255])


def _stub_slicer(monkeypatch) -> None:
    """Just enough of Slicer's Python modules for MedSeg.py to import and its classes to be built."""

    class Base:
        def __init__(self, parent=None):
            self.parent = parent

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest"):
        setattr(scripted, name, type(name, (Base,), {}))
    slicer = types.ModuleType("slicer")
    slicer.ScriptedLoadableModule = scripted
    slicer.util = types.ModuleType("slicer.util")
    for name, module in (("slicer", slicer), ("slicer.ScriptedLoadableModule", scripted), ("slicer.util", slicer.util), ("qt", types.ModuleType("qt"))):
        monkeypatch.setitem(sys.modules, name, module)


def test_module_file_imports_with_stand_in_slicer(medseglib, monkeypatch):
    _stub_slicer(monkeypatch)
    import MedSeg

    module = MedSeg.MedSeg(types.SimpleNamespace())
    assert module.parent.title == "MedSeg" and module.parent.categories == ["Segmentation"]
    logic = MedSeg.MedSegLogic()
    assert isinstance(logic.backend("medseg server", "http://127.0.0.1:8000", token="t"), medseglib.MedSegServer)
    assert isinstance(logic.backend("Local medseg", "", executable=str(Path(sys.executable).parent / "medseg")), medseglib.LocalMedSeg)
    with pytest.raises(medseglib.MedSegError, match="no server URL"):
        logic.backend("medseg server", "ftp://pacs")


def test_ui_has_every_widget_the_module_uses_and_cmake_lists_every_file():
    tree = ElementTree.parse(MODULE / "Resources" / "UI" / "MedSeg.ui")
    assert tree.getroot().tag == "ui"
    declared = {w.get("name") for w in tree.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE / "MedSeg.py").read_text()))
    assert used and used <= declared, f"widgets used but not in the .ui: {sorted(used - declared)}"
    cmake = (MODULE / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "MedSeg")
    listed = set(re.findall(r"^\s+([\w/]+\.(?:py|png|ui))\s*$", cmake, re.M))
    on_disk = {str(p.relative_to(MODULE)) for p in MODULE.rglob("*") if p.suffix in (".py", ".png", ".ui") and "__pycache__" not in p.parts}
    assert listed == on_disk
