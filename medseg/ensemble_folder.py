"""An ensemble of segmentation model folders as a model folder of its own:
``results/DATASET/ensembles/ensemble__A__B/ensemble.json`` names its members (paths relative to it,
so the results tree can move) and its postprocessing; `medseg predict -m` and every other surface
open it like any model folder, and its predictor averages the members' probabilities."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from medseg.atomic import write_json_atomic
from medseg.errors import MedsegError
from medseg.model_folder import ModelFolder, ModelInfo

ENSEMBLE_FILE = "ensemble.json"
ENSEMBLES_FOLDER = "ensembles"


def write_ensemble_folder(folder: Path, members: list[ModelFolder], postprocessing: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / ENSEMBLE_FILE, {
        "members": [os.path.relpath(member.path.resolve(), folder.resolve()) for member in members],
        "postprocessing": postprocessing,
    })


def is_ensemble_folder(path: Path) -> bool:
    return (Path(path) / ENSEMBLE_FILE).is_file()


class EnsembleModelFolder(ModelFolder):
    """Read-only; ``members`` are the opened member folders, the first one gives the inputs' plans."""

    def __init__(self, path: Path, info: ModelInfo, members: list[ModelFolder], decision: dict):
        super().__init__(path, info)
        self.members, self._decision = members, decision

    @classmethod
    def open(cls, path: Path, open_member: Callable[[Path], ModelFolder]) -> "EnsembleModelFolder":
        """``open_member``: medseg.model_folders.open_model_folder (members may be any kind but an ensemble)."""
        path = Path(path)
        source = path / ENSEMBLE_FILE
        try:
            content = json.loads(source.read_text())
            member_paths = [path / str(relative) for relative in content["members"]]
            decision = dict(content.get("postprocessing") or {})
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise MedsegError(f"{source}: unreadable ensemble ({type(error).__name__}: {error})") from None
        if len(member_paths) < 2:
            raise MedsegError(f"{source}: an ensemble needs two members or more, got {len(member_paths)}")
        members = []
        for member_path in member_paths:
            if is_ensemble_folder(member_path):
                raise MedsegError(f"{source}: member {member_path} is itself an ensemble")
            members.append(open_member(member_path))
        first = members[0]
        for member in members[1:]:
            if member.info.labels != first.info.labels or member.plans.channel_names != first.plans.channel_names or member.scoring() != first.scoring():
                raise MedsegError(f"{source}: members {first.path.name} and {member.path.name} differ in labels, regions or input channels")
            if member.info.task != first.info.task:
                raise MedsegError(f"{source}: members {first.path.name} and {member.path.name} are of different tasks ({first.info.task}, {member.info.task})")
        classes = decision.get("largest_component_classes", [])
        if not isinstance(classes, list) or not all(isinstance(v, int) and v in first.info.labels.values() for v in classes):
            raise MedsegError(f"{source}: postprocessing.largest_component_classes = {classes!r}: expected label values of the members")
        info = ModelInfo(
            configuration="+".join(m.info.configuration for m in members), model="ensemble(" + "+".join(m.info.model for m in members) + ")",
            dataset_name=first.info.dataset_name, raw_folder=first.info.raw_folder, preprocessed_folder=first.info.preprocessed_folder,
            file_ending=first.info.file_ending, labels=dict(first.info.labels), task=first.info.task,
            extra={"members": [m.path.name for m in members]},
        )
        folder = cls(path, info, members, decision)
        folder.__dict__["plans"] = first.plans  # the inputs every member reads (channels, dimensionality)
        return folder

    def folds(self) -> list[str]:
        return self.members[0].folds()

    def postprocessing(self) -> dict:
        return self._decision

    def input_profile(self) -> dict | None:
        return self.members[0].input_profile()  # members read the same inputs

    def write_postprocessing(self, decision: dict) -> None:
        raise MedsegError(f"{self.path}: an ensemble's postprocessing is chosen by `medseg find-best-configuration`")

    def load_module_states(self, fold: str, checkpoint: str = "auto") -> dict[str, dict]:
        raise MedsegError(f"{self.path}: an ensemble has no weights of its own; its members {', '.join(self.info.extra['members'])} do")
