"""What a plan is sized against: a GPU's memory (nnU-Net's rule) or a CPU's time per step
(medseg.planning.device decides which for this machine)."""

from __future__ import annotations

from dataclasses import dataclass

REFERENCE_GB = 8.0  # the GPU memory nnU-Net's reference activation counts were calibrated for


@dataclass(frozen=True)
class Budget:
    """What limits a training step: memory (GPU) or time (CPU)."""

    mode: str  # "memory" or "time"
    memory_gb: float = REFERENCE_GB
    step_seconds: float = 1.0
    flops_per_second: dict | None = None  # ndim -> measured network throughput, forward+backward (time mode)
    base_features: int = 32
    training_seconds: float | None = None  # time mode: the training budget of one run, when known
    precision: str = "float32"  # time mode: the training forward's precision the throughput was measured in
    # memory mode: activations per sample (ndim -> count) fitting reference_gb at the reference
    # batch; None: the model family's own (nnU-Net's values for its networks)
    reference_activations: dict[int, float] | None = None
    reference_gb: float = REFERENCE_GB
    max_dataset_fraction: float = 0.05  # a batch covers at most this share of the dataset's voxels

    def describe(self) -> dict:
        extra = {"max_dataset_fraction": self.max_dataset_fraction} if self.max_dataset_fraction != 0.05 else {}
        if self.mode == "memory":
            if self.reference_activations:
                extra["reference_activations"] = {str(k): v for k, v in self.reference_activations.items()}
                extra["reference_gb"] = self.reference_gb
            return {"mode": "memory", "memory_gb": self.memory_gb, "base_features": self.base_features, **extra}
        return {
            "mode": "time",
            "step_seconds": self.step_seconds,
            "measured_gflops": {str(k): round(v / 1e9, 2) for k, v in (self.flops_per_second or {}).items()},
            "base_features": self.base_features,
            "training_seconds": self.training_seconds,
            "precision": self.precision,
            **extra,
        }
