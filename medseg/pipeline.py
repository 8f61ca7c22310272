"""The self-configuring pipeline, stage by stage. Today: resolve or build the task's raw dataset."""

from __future__ import annotations

from pathlib import Path

from medseg.errors import DatasetError
from medseg.paths import find_raw_dataset, raw_root


def prepare_task(task: str, demo: bool = False, progress_console=None) -> Path:
    """Folder of the task's raw dataset. With ``demo``, the task's synthetic demo, built when missing."""
    from medseg_datasets import get_recipe, list_recipes

    if demo:
        try:
            recipe = get_recipe(task if task.endswith("-demo") else f"{task}-demo")
        except DatasetError:
            demos = ", ".join(r.name.removesuffix("-demo") for r in list_recipes() if r.synthetic)
            raise DatasetError(f"task '{task}' has no built-in demo (tasks with one: {demos})") from None
        folder = raw_root() / recipe.folder_name
        if not (folder / "dataset.json").is_file():
            if progress_console is not None:
                progress_console.print(f"building the {recipe.name} dataset in {folder}")
            recipe.synthesize(folder, overwrite=folder.exists())
        return folder
    try:
        return find_raw_dataset(task)
    except DatasetError as error:
        hint = ""
        try:
            recipe = get_recipe(task)
            hint = f"; build it with `medseg datasets convert {recipe.name} --src DIR`"
            if any(r.name == f"{recipe.name}-demo" for r in list_recipes()):
                hint += " or run the built-in demo with --demo"
        except DatasetError:
            pass
        raise DatasetError(f"{error}{hint}") from None
