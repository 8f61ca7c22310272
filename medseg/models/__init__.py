"""Model families behind one registry (see registry.py)."""

from medseg.models.registry import ModelFamily, build_model, get_model_family, list_models, register_model

__all__ = ["ModelFamily", "build_model", "get_model_family", "list_models", "register_model"]
