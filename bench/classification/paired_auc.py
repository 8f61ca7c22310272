"""Is one classifier's pooled out-of-fold AUC really above another's? Both model folders must have
cross-validated the same cases (e.g. two arms of kermany.py); the difference is bootstrapped over
patients (the labels table's group column), so a patient's images are drawn together.

    .venv/bin/python bench/classification/paired_auc.py --labels RAW/labelsTr.csv --class pneumonia \
        --baseline WORK/vit/results/DATASET/vit__medsegPlans_vit__2d \
        --other WORK/mae_vit/results/DATASET/vit__medsegPlans_vit__2d [--resamples 1000] [--out FILE.json]

Writes, for the test-time views' predictions and for the plain ones, both AUCs, the difference
(other - baseline), its 95 % interval and the share of resamples where the other does not win.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from medseg.evaluation.classification import roc_auc


def out_of_fold(folder: Path, file_name: str, positive: str) -> dict[str, tuple[float, int]]:
    """case -> (probability of ``positive``, 1 if the case is ``positive``) over every fold's validation."""
    found = {}
    for path in sorted(folder.glob(f"fold_*/validation/{file_name}")):
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                found[row["case"]] = (float(row[positive]), int(row[f"target:{positive}"]))
    if not found:
        raise SystemExit(f"{folder}: no fold_*/validation/{file_name}")
    return found


def paired(baseline: dict, other: dict, groups: dict[str, str], resamples: int, seed: int = 0) -> dict:
    cases = sorted(baseline)
    if set(cases) != set(other):
        raise SystemExit(f"the two folders validated different cases ({len(baseline)} vs {len(other)})")
    truth = np.array([baseline[c][1] for c in cases])
    first, second = (np.array([scores[c][0] for c in cases]) for scores in (baseline, other))
    _, patient = np.unique([groups[c] for c in cases], return_inverse=True)
    members = [np.flatnonzero(patient == k) for k in range(patient.max() + 1)]
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(resamples):
        drawn = np.concatenate([members[k] for k in rng.integers(len(members), size=len(members))])
        differences.append(roc_auc(second[drawn], truth[drawn]) - roc_auc(first[drawn], truth[drawn]))
    differences = np.array(differences)
    before, after = roc_auc(first, truth), roc_auc(second, truth)
    return {
        "cases": len(cases), "patients": len(members), "baseline_auc": before, "other_auc": after, "difference": after - before,
        "interval_95": [float(np.percentile(differences, 2.5)), float(np.percentile(differences, 97.5))],
        "share_other_not_above": float(np.mean(differences <= 0)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=Path, required=True, help="the dataset's labelsTr.csv (its group column names the patients)")
    parser.add_argument("--class", dest="positive", required=True, help="the class whose probability is scored")
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--other", type=Path, required=True)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with args.labels.open(newline="") as handle:
        groups = {row["case"]: row.get("group") or row["case"] for row in csv.DictReader(handle)}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True).stdout.strip()
    result = {"command": "python bench/classification/paired_auc.py " + " ".join(sys.argv[1:]), "commit": commit or None, "baseline": str(args.baseline), "other": str(args.other), "resamples": args.resamples}
    for views, file_name in (("with_views", "predictions_tta.csv"), ("plain", "predictions.csv")):
        result[views] = paired(out_of_fold(args.baseline, file_name, args.positive), out_of_fold(args.other, file_name, args.positive), groups, args.resamples)
        shown = result[views]
        print(f"{views}: {shown['baseline_auc']:.4f} -> {shown['other_auc']:.4f} ({shown['difference']:+.4f}, 95 % interval "
              f"{shown['interval_95'][0]:+.4f} to {shown['interval_95'][1]:+.4f}, other not above in {shown['share_other_not_above']:.1%} of resamples)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
