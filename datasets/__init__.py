"""medseg_datasets: recipes that build medseg raw datasets from public releases, plus the synthetic
demo. Installed as ``medseg_datasets`` so it never collides with the PyPI package ``datasets``."""

from medseg_datasets.registry import Recipe, get_recipe, list_recipes

__all__ = ["Recipe", "get_recipe", "list_recipes"]
