"""Model families behind one registry (see registry.py). Each family module registers itself when
imported here; adding a family is one new module plus its import line below."""

from medseg.models.registry import ModelFamily, build_model, get_model_family, list_models, register_model

from medseg.models import gms, kl_autoencoder, mae, resenc_unet, resnet, umamba, unet, vit, xlstm_unet  # noqa: E402,F401  (registers the built-in families)

__all__ = ["ModelFamily", "build_model", "get_model_family", "list_models", "register_model"]
