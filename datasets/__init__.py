"""medseg_datasets: recipes that build medseg raw datasets from public releases, plus the synthetic
demo. Installed as ``medseg_datasets`` so it never collides with the PyPI package ``datasets``.
Each recipe module registers itself when imported below: a new recipe is one module plus its import."""

if __name__ != "medseg_datasets":  # imported as the repository folder `datasets`
    raise ImportError(f"medseg's dataset recipes are imported as `medseg_datasets`, not `{__name__}`: use `import medseg_datasets`")

from medseg_datasets.registry import Recipe, get_recipe, list_recipes

from medseg_datasets import abdomen_mri_demo, amos_mri, chestxray14, dsb2018, kermany_pneumonia, kvasir_polyp_size, kvasir_seg, msd, polyp_size  # noqa: E402,F401

__all__ = ["Recipe", "get_recipe", "list_recipes"]
