"""The catalogue of public pretrained models (models.json), read by medseg.model_packages."""
