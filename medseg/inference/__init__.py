"""Batch inference for every surface: inputs (folders, DICOM series), per-case outputs (label maps,
DICOM SEG/RTSTRUCT, probabilities, overlays), the manifest, ONNX export and the Ray backend. What
a model predicts comes from its task's predictor (medseg.tasks.prediction)."""
