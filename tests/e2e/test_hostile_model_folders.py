"""Model folders are untrusted input: a folder a user was sent may hold any value in plans.json and
model.json. Each hostile value below is refused by `medseg predict` with one clear line naming the
file, the key and the value (exit 1), before any output is written or memory sized by it is
allocated; nothing is written outside the output folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import BRIGHT_DATASET, run_cli


def _edit_json(path: Path, edit) -> None:
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))


def _configuration(content: dict) -> dict:
    return content["configurations"]["3d_fullres"]


def _kwargs(content: dict) -> dict:
    return _configuration(content)["architecture"]["kwargs"]


# name -> (file edited, edit, words the error must hold)
HOSTILE = {
    "file_ending_escape": ("model.json", lambda c: c.update(file_ending=".slices/../../ESCAPED2.nii.gz"), ["model.json", "file_ending", "ESCAPED2"]),
    "file_ending_absolute": ("model.json", lambda c: c.update(file_ending="/tmp/x.nii.gz"), ["model.json", "file_ending"]),
    "features_100000": ("plans.json", lambda c: _kwargs(c).update(features_per_stage=[100000] * 4), ["plans.json", "features_per_stage", "100000"]),
    "features_wider_than_checkpoint": ("plans.json", lambda c: _kwargs(c).update(features_per_stage=[32, 64, 128, 256]), ["checkpoint_final.pt", "does not fit", "plans.json"]),
    "patch_100000": ("plans.json", lambda c: _configuration(c).update(patch_size=[100000] * 3), ["plans.json", "patch_size", "100000"]),
    "patch_2d_for_3d": ("plans.json", lambda c: _configuration(c).update(patch_size=[32, 32]), ["plans.json", "patch_size", "3D"]),
    "patch_negative": ("plans.json", lambda c: _configuration(c).update(patch_size=[-12, 32, 32]), ["plans.json", "patch_size", "-12"]),
    "patch_zero": ("plans.json", lambda c: _configuration(c).update(patch_size=[0, 32, 32]), ["plans.json", "patch_size"]),
    "patch_string": ("plans.json", lambda c: _configuration(c).update(patch_size="big"), ["plans.json", "patch_size", "big"]),
    "patch_not_divisible": ("plans.json", lambda c: _configuration(c).update(patch_size=[12, 30, 32]), ["plans.json", "patch_size", "divisible"]),
    "spacing_tiny": ("plans.json", lambda c: _configuration(c).update(spacing=[0.001, 4.0, 4.0]), ["plans.json", "spacing", "0.001"]),
    "spacing_zero": ("plans.json", lambda c: _configuration(c).update(spacing=[0, 4.0, 4.0]), ["plans.json", "spacing"]),
    "spacing_string": ("plans.json", lambda c: _configuration(c).update(spacing=["5", 4.0, 4.0]), ["plans.json", "spacing"]),
    "mirror_axes_string_model": ("model.json", lambda c: c.update(mirror_axes="xyz"), ["model.json", "mirror_axes", "xyz"]),
    "mirror_axes_string_plans": ("plans.json", lambda c: _configuration(c)["augmentation"].update(mirror_axes="xyz"), ["plans.json", "mirror_axes", "xyz"]),
    "labels_duplicate_value": ("model.json", lambda c: c.update(labels={"background": 0, "liver": 1, "spleen": 1}), ["model.json", "labels", "value 1"]),
    "labels_negative": ("model.json", lambda c: c.update(labels={"background": 0, "liver": -1}), ["model.json", "labels.liver", "-1"]),
    "labels_fewer_than_classes": ("model.json", lambda c: c.update(labels={"background": 0}), ["model.json", "labels", "plans.json"]),
    "labels_string_value": ("model.json", lambda c: c.update(labels={"background": 0, "liver": "1"}), ["model.json", "labels.liver"]),
    "transpose_bad": ("plans.json", lambda c: c.update(transpose_forward=[0, 0, 1]), ["plans.json", "transpose_forward"]),
    "batch_huge": ("plans.json", lambda c: _configuration(c).update(batch_size=10**9), ["plans.json", "batch_size"]),
}


def _hostile_copy(model: Path, folder: Path, defect: str) -> list[str]:
    shutil.copytree(model, folder)
    file_name, edit, words = HOSTILE[defect]
    _edit_json(folder / file_name, edit)
    return words


@pytest.mark.parametrize("defect", sorted(HOSTILE))
def test_hostile_model_folder_values_are_refused_by_name(bright_model, tmp_path, defect):
    """Opening the folder for prediction (what every surface does) refuses the value by name."""
    from medseg.errors import MedsegError
    from medseg.tasks import PredictorOptions, open_predictor

    _, model = bright_model
    words = _hostile_copy(model, tmp_path / "model", defect)
    with pytest.raises(MedsegError) as refused:
        open_predictor(tmp_path / "model", PredictorOptions(device="cpu"))
    for word in words:
        assert word in str(refused.value), f"{word!r} not in: {refused.value}"


@pytest.mark.parametrize("defect", ["file_ending_escape", "features_100000", "spacing_tiny"])
def test_predict_refuses_hostile_folders_in_one_line_and_writes_nothing(bright_model, tmp_path, defect):
    """Through the CLI: exit 1, one line, nothing written, nothing outside the output folder."""
    root, model = bright_model
    folder = tmp_path / "work" / "model"
    words = _hostile_copy(model, folder, defect)
    out = tmp_path / "work" / "out"
    image = root / "raw" / BRIGHT_DATASET / "imagesTr" / "case_000_0000.nii.gz"
    result = run_cli("predict", "-i", image, "-o", out, "-m", folder, "--format", "slices,label", "--no-tta", root=root)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.returncode == 1, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error:") and "unexpected" not in lines[0], result.stderr
    for word in words:
        assert word in lines[0], f"{word!r} not in: {lines[0]}"
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["model"] + (["out"] if out.exists() else [])
    assert not out.exists() or not [p for p in out.rglob("*") if p.name != "manifest.jsonl"]
    assert not list(tmp_path.rglob("ESCAPED2*"))
