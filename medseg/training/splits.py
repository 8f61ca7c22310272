"""Cross-validation splits: 5 folds, shuffled with a fixed seed, saved beside the preprocessed data
(a splits_final.json in the raw dataset folder takes precedence, as in nnU-Net).

A task may name a group per case (a patient: no patient's images in two folds, or the model would
be validated on the patient it trained on) and a stratum per case (its class: every fold gets its
share of each class, rare ones included)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medseg.errors import MedsegError

NUM_FOLDS = 5


def make_splits(
    case_ids: list[str], num_folds: int = NUM_FOLDS, seed: int = 12345, groups: dict[str, str] | None = None, strata: dict[str, str] | None = None,
) -> list[dict[str, list[str]]]:
    ids = sorted(case_ids)
    if len(ids) < 2:
        raise MedsegError(f"cross-validation needs at least 2 training cases, found {len(ids)}")
    if groups or strata:
        return _grouped_splits(ids, num_folds, seed, groups or {}, strata or {})
    folds = min(num_folds, len(ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    splits = []
    for fold in range(folds):
        val = sorted(ids[i] for i in order[fold::folds])
        splits.append({"train": [c for c in ids if c not in set(val)], "val": val})
    return splits


def _grouped_splits(ids: list[str], num_folds: int, seed: int, groups: dict[str, str], strata: dict[str, str]) -> list[dict[str, list[str]]]:
    """Whole groups go to folds; within each stratum (rarest first), larger groups first, each to
    the fold holding the fewest cases of that stratum (then the fewest cases)."""
    members: dict[str, list[str]] = {}
    for case in ids:
        members.setdefault(groups.get(case) or f"case:{case}", []).append(case)
    folds = min(num_folds, len(members))
    if folds < 2:
        raise MedsegError(f"cross-validation needs at least 2 groups (patients), found {len(members)}")
    stratum_of = {}  # a group's stratum: the rarest stratum among its cases
    counts = {}
    for case in ids:
        counts[strata.get(case, "")] = counts.get(strata.get(case, ""), 0) + 1
    for group, cases in members.items():
        stratum_of[group] = min((strata.get(c, "") for c in cases), key=lambda s: (counts[s], s))
    rng = np.random.default_rng(seed)
    per_fold = [[] for _ in range(folds)]
    fold_size = np.zeros(folds, dtype=int)
    for stratum in sorted(set(stratum_of.values()), key=lambda s: (counts[s], s)):
        in_stratum = [g for g in sorted(members) if stratum_of[g] == stratum]
        in_stratum = [in_stratum[i] for i in rng.permutation(len(in_stratum))]
        in_stratum.sort(key=lambda g: -len(members[g]))  # stable: shuffled order among equal sizes
        stratum_count = np.zeros(folds, dtype=int)
        for group in in_stratum:
            fold = min(range(folds), key=lambda f: (stratum_count[f], fold_size[f], f))
            per_fold[fold] += members[group]
            stratum_count[fold] += len(members[group])
            fold_size[fold] += len(members[group])
    return [{"train": [c for c in ids if c not in set(val)], "val": sorted(val)} for val in per_fold]


def check_groups(splits: list[dict[str, list[str]]], groups: dict[str, str], source: Path) -> None:
    """A group (patient) on both sides of a fold makes its validation score optimistic: refuse it."""
    for fold, split in enumerate(splits):
        train_groups = {groups[c] for c in split["train"] if groups.get(c)}
        shared = sorted({groups[c] for c in split["val"] if groups.get(c)} & train_groups)
        if shared:
            raise MedsegError(
                f"{source}: fold {fold} has group(s) {', '.join(shared[:5])} in both train and val (one patient's images in two folds); "
                "remove the file to let medseg make grouped splits"
            )


def load_or_create_splits(
    preprocessed_folder: Path, raw_folder: Path, case_ids: list[str], groups: dict[str, str] | None = None, strata: dict[str, str] | None = None,
) -> list[dict[str, list[str]]]:
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
            if groups:
                check_groups(splits, groups, candidate)
            return splits
    splits = make_splits(case_ids, groups=groups, strata=strata)
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
