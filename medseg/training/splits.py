"""Cross-validation splits: 5 folds, shuffled with a fixed seed, saved beside the preprocessed data
(a splits_final.json in the raw dataset folder takes precedence, as in nnU-Net)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medseg.errors import MedsegError

NUM_FOLDS = 5


def make_splits(case_ids: list[str], num_folds: int = NUM_FOLDS, seed: int = 12345) -> list[dict[str, list[str]]]:
    ids = sorted(case_ids)
    if len(ids) < 2:
        raise MedsegError(f"cross-validation needs at least 2 training cases, found {len(ids)}")
    folds = min(num_folds, len(ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    splits = []
    for fold in range(folds):
        val = sorted(ids[i] for i in order[fold::folds])
        splits.append({"train": [c for c in ids if c not in set(val)], "val": val})
    return splits


def load_or_create_splits(preprocessed_folder: Path, raw_folder: Path, case_ids: list[str]) -> list[dict[str, list[str]]]:
    path = preprocessed_folder / "splits_final.json"
    for candidate in (raw_folder / "splits_final.json", path):
        if candidate.is_file():
            try:
                splits = json.loads(candidate.read_text())
                assert isinstance(splits, list) and all({"train", "val"} <= set(s) for s in splits)
            except (json.JSONDecodeError, AssertionError):
                raise MedsegError(f"{candidate}: must be a list of {{'train': [...], 'val': [...]}}") from None
            unknown = {c for s in splits for c in s["train"] + s["val"]} - set(case_ids)
            if unknown:
                raise MedsegError(f"{candidate}: names cases that are not in the dataset: {', '.join(sorted(unknown)[:5])}")
            return splits
    splits = make_splits(case_ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(splits, indent=1))
    return splits


def fold_cases(splits: list[dict[str, list[str]]], fold: int | str, case_ids: list[str]) -> tuple[list[str], list[str]]:
    """(train, val) of a fold; fold 'all' trains on everything and validates on nothing held out."""
    if fold == "all":
        return sorted(case_ids), []
    fold = int(fold)
    if not 0 <= fold < len(splits):
        raise MedsegError(f"fold {fold} does not exist (the splits have {len(splits)} folds; or use 'all')")
    return list(splits[fold]["train"]), list(splits[fold]["val"])
