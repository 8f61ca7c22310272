"""`medseg datasets check --fix-duplicates`: exact duplicate cases are set aside (files and table
rows moved, never deleted), numTraining follows, and the dataset then passes its check."""

from __future__ import annotations

import csv
import json
import shutil

from tests.conftest import run_cli
from tests.e2e.test_gms import DATASET, disks_dataset


def test_segmentation_duplicates_move_aside_with_their_labels(tmp_path):
    raw = tmp_path / "root" / "raw" / DATASET
    disks_dataset(raw, cases=4, side=32)
    shutil.copy(raw / "imagesTr" / "case_001_0000.png", raw / "imagesTr" / "case_101_0000.png")
    shutil.copy(raw / "labelsTr" / "case_001.png", raw / "labelsTr" / "case_101.png")
    description = json.loads((raw / "dataset.json").read_text())
    (raw / "dataset.json").write_text(json.dumps({**description, "numTraining": 5}))
    refused = run_cli("datasets", "check", raw)
    assert refused.returncode == 1 and "same image content as case 'case_001'" in refused.stdout and "--fix-duplicates" in refused.stdout
    fixed = run_cli("datasets", "check", raw, "--fix-duplicates")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "set aside case_101 (Tr): the same image as case_001" in fixed.stdout
    aside = raw / "duplicates_removed"
    assert (aside / "imagesTr" / "case_101_0000.png").is_file() and (aside / "labelsTr" / "case_101.png").is_file()
    assert not (raw / "imagesTr" / "case_101_0000.png").exists() and json.loads((raw / "dataset.json").read_text())["numTraining"] == 4
    with (aside / "removed.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["case"] == "case_101" and row["kept_case"] == "case_001" and row["files"] == "imagesTr/case_101_0000.png;labelsTr/case_101.png"


def test_classification_duplicates_move_their_table_rows(shared_data, tmp_path):
    source = shared_data / "xray-pneumonia-kermany-train" / "train"
    src = tmp_path / "src" / "train"
    for folder, count in (("NORMAL", 3), ("PNEUMONIA", 3)):
        (src / folder).mkdir(parents=True)
        for path in sorted((source / folder).iterdir())[:count]:
            shutil.copy(path, src / folder / path.name)
    raw = tmp_path / "Dataset007_KermanyPneumonia"
    run_cli("datasets", "convert", "KermanyPneumonia", "--src", tmp_path / "src", "--out", raw, check=True)
    first = sorted((raw / "imagesTr").iterdir())[0]
    shutil.copy(first, raw / "imagesTr" / "zz_copy_of_first_0000.png")  # a user's own dataset with a duplicate (sorted last: the first stays)
    with (raw / "labelsTr.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    case = first.name.removesuffix("_0000.png")
    twin = next(row for row in rows if row[0] == case)
    with (raw / "labelsTr.csv").open("a", newline="") as handle:
        csv.writer(handle).writerow(["zz_copy_of_first", *twin[1:]])
    (raw / "dataset.json").write_text(json.dumps({**json.loads((raw / "dataset.json").read_text()), "numTraining": 7}))
    assert run_cli("datasets", "check", raw).returncode == 1
    fixed = run_cli("datasets", "check", raw, "--fix-duplicates")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    with (raw / "labelsTr.csv").open() as handle:
        assert [row["case"] for row in csv.DictReader(handle)] == [row[0] for row in rows[1:]]
    with (raw / "duplicates_removed" / "labelsTr.csv").open() as handle:
        assert [row["case"] for row in csv.DictReader(handle)] == ["zz_copy_of_first"]
