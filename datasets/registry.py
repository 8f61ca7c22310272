"""Dataset recipes: converters from public releases to medseg's raw layout, and synthetic demos."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medseg.data.builder import ConversionSummary
from medseg.errors import DatasetError
from medseg.paths import dataset_folder_name
from medseg.registry import Registry


@dataclass(frozen=True)
class Recipe:
    name: str
    dataset_id: int
    task_type: str  # segmentation / classification
    summary: str
    source: str  # what --src must point at
    convert: Callable[..., ConversionSummary] | None = None  # convert(src, out, overwrite=False)
    synthesize: Callable[..., ConversionSummary] | None = None  # synthesize(out, overwrite=False, num_cases, seed)
    # Recipes converting any of several releases (MSD's tasks) name the dataset after the source:
    # name_for_source(src, requested id or None) -> (dataset id, dataset name).
    name_for_source: Callable[[Path, int | None], tuple[int, str]] | None = None

    @property
    def synthetic(self) -> bool:
        return self.synthesize is not None

    @property
    def folder_name(self) -> str:
        return dataset_folder_name(self.dataset_id, self.name)

    def folder_name_for(self, src: Path, dataset_id: int | None = None) -> str:
        """The raw dataset folder converting ``src`` creates; ``dataset_id`` overrides the recipe's id."""
        if self.name_for_source is not None:
            return dataset_folder_name(*self.name_for_source(src, dataset_id))
        return dataset_folder_name(self.dataset_id if dataset_id is None else dataset_id, self.name)


RECIPES: Registry[Recipe] = Registry("dataset recipe", error=DatasetError, casefold=True)


def register_recipe(recipe: Recipe) -> Recipe:
    return RECIPES.register(recipe.name, recipe)


def get_recipe(name: str) -> Recipe:
    return RECIPES.get(name)


def list_recipes() -> list[Recipe]:
    return sorted(RECIPES.values(), key=lambda r: r.dataset_id)


def require_folder(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: expected {what}")
    return path
