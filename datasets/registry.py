"""Dataset recipes: converters from public releases to medseg's raw layout, and synthetic demos."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medseg.data.builder import ConversionSummary
from medseg.errors import DatasetError
from medseg.paths import dataset_folder_name


@dataclass(frozen=True)
class Recipe:
    name: str
    dataset_id: int
    task_type: str  # segmentation / classification
    summary: str
    source: str  # what --src must point at
    convert: Callable[..., ConversionSummary] | None = None  # convert(src, out, overwrite=False)
    synthesize: Callable[..., ConversionSummary] | None = None  # synthesize(out, overwrite=False, num_cases, seed)

    @property
    def synthetic(self) -> bool:
        return self.synthesize is not None

    @property
    def folder_name(self) -> str:
        return dataset_folder_name(self.dataset_id, self.name)


RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    if recipe.name in RECIPES:
        raise ValueError(f"recipe {recipe.name} registered twice")
    RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    _load_all()
    for recipe in RECIPES.values():
        if recipe.name.lower() == name.lower():
            return recipe
    raise DatasetError(f"unknown dataset recipe '{name}' (known: {', '.join(sorted(RECIPES))})")


def list_recipes() -> list[Recipe]:
    _load_all()
    return sorted(RECIPES.values(), key=lambda r: r.dataset_id)


def _load_all() -> None:
    # importing each module registers its recipe
    from medseg_datasets import abdomen_mri_demo, amos_mri, chestxray14, dsb2018, kvasir_seg, polyp_size  # noqa: F401


def require_folder(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: expected {what}")
    return path
