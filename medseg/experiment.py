"""Where an experiment's files live: the folder and naming rules every stage shares (plans names,
the preprocessed folder, the plans file, the model folder of a configuration). Kept apart from the
stages (medseg.pipeline) so that a task can find another model's folder without importing them."""

from __future__ import annotations

from pathlib import Path

from medseg.paths import model_folder, preprocessed_root


DEFAULT_PLANS_NAME = "medsegPlans"


def default_plans_name(model: str) -> str:
    """The plain U-Net plans as nnU-Net names them; every other family or model spec
    (``xlstm_unet_bot[vil_directions=forward]``) plans into its own file, so planning a second one
    never overwrites the first one's plans."""
    from medseg.models.spec import parse_model_spec

    spec = parse_model_spec(model)
    return DEFAULT_PLANS_NAME if str(spec) == "unet" else f"{DEFAULT_PLANS_NAME}_{spec.plans_suffix}"


def preprocessed_folder(raw_folder: Path) -> Path:
    return preprocessed_root() / raw_folder.name


def plans_path(raw_folder: Path, plans_name: str) -> Path:
    return preprocessed_folder(raw_folder) / f"{plans_name}.json"


def load_plans(raw_folder: Path, plans_name: str = DEFAULT_PLANS_NAME):
    from medseg.planning.plans import Plans

    return Plans.load(plans_path(raw_folder, plans_name))


def configuration_model_folder(raw_folder: Path, plans, configuration_name: str) -> Path:
    architecture = plans.configuration(configuration_name).architecture["name"]
    return model_folder(raw_folder.name, architecture, plans.plans_name, configuration_name)
