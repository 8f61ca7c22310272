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

    @property
    def synthetic(self) -> bool:
        return self.synthesize is not None

    @property
    def folder_name(self) -> str:
        return dataset_folder_name(self.dataset_id, self.name)


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
