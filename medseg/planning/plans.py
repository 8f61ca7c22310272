"""Plans: the versioned, self-describing JSON that every later stage reads.

A configuration holds everything needed to preprocess, build the network (architecture as data:
a registered model name + kwargs), train and invert preprocessing at inference."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medseg.atomic import write_text_atomic
from medseg.errors import MedsegError
from medseg.planning.plans_checks import check_plans_values

PLANS_VERSION = 1


@dataclass
class ConfigurationPlan:
    name: str
    ndim: int
    spacing: list[float]  # target spacing, transposed axis order
    median_shape: list[int]  # median image size after resampling, transposed axis order
    patch_size: list[int]
    batch_size: int
    batch_dice: bool
    normalization: list[dict]  # per channel: {"scheme", "use_mask", "properties"}
    architecture: dict  # {"name": registered model, "kwargs": {...}}
    resampling: dict  # {"image_order", "label_order", "out_of_plane_order", "anisotropy_threshold"}
    data_identifier: str
    augmentation: dict = field(default_factory=dict)  # {"mirror_axes", "rotation_degrees", "in_plane_only"}
    training: dict = field(default_factory=dict)  # defaults the CLI can override: {"optimizer", "learning_rate"}
    previous_stage: str | None = None  # cascade: the low-resolution stage feeding this one
    next_stage: str | None = None

    @property
    def num_pooling_stages(self) -> int:
        return len(self.architecture["kwargs"].get("strides", [])) - 1


@dataclass
class Plans:
    dataset_name: str
    plans_name: str
    planner: dict  # how the plan was sized: {"mode": "memory"|"time", ...}
    transpose_forward: list[int]
    transpose_backward: list[int]
    original_median_spacing: list[float]
    original_median_shape: list[int]
    labels: dict[str, int]
    channel_names: list[str]
    foreground_intensity_properties_per_channel: dict[str, dict[str, float]]
    configurations: dict[str, ConfigurationPlan] = field(default_factory=dict)
    version: int = PLANS_VERSION
    # region-based training (nnU-Net's): region name -> the reference values it covers, in
    # regions_class_order; ``labels`` then maps each region to the value it writes in a label map
    regions: dict[str, list[int]] | None = None
    ignore_label: int | None = None  # reference value of unannotated voxels: no loss, no score there

    @property
    def num_classes(self) -> int:
        """Network outputs: background plus every declared label value; one per region (sigmoid) for
        a region-based model."""
        if self.regions:
            return len(self.regions)
        return max(self.labels.values()) + 1

    def input_channels(self, configuration: ConfigurationPlan) -> int:
        """The network's input channels: the image's, plus for a cascade stage one per foreground
        class of the previous stage's segmentation (medseg.tasks.segmentation.cascade)."""
        return len(self.channel_names) + (self.label_map_size - 1 if configuration.previous_stage else 0)

    @property
    def label_map_size(self) -> int:
        """1 + the highest value of a predicted label map (a cascade's one-hot channels count these)."""
        return max(self.labels.values()) + 1

    def configuration(self, name: str) -> ConfigurationPlan:
        try:
            return self.configurations[name]
        except KeyError:
            known = ", ".join(self.configurations) or "none"
            raise MedsegError(f"plans {self.plans_name} of {self.dataset_name} have no configuration '{name}' (planned: {known})") from None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, self.to_json())

    @classmethod
    def from_dict(cls, content: dict, source: str = "plans") -> "Plans":
        version = content.get("version")
        if version != PLANS_VERSION:
            raise MedsegError(f"{source}: plans version {version!r} is not supported (expected {PLANS_VERSION}); re-plan with `medseg plan`")
        check_plans_values(content, source)
        try:
            configurations = {name: ConfigurationPlan(**value) for name, value in content["configurations"].items()}
            return cls(**{**content, "configurations": configurations})
        except (KeyError, TypeError) as error:
            raise MedsegError(f"{source}: malformed plans ({error})") from None

    @classmethod
    def load(cls, path: Path) -> "Plans":
        try:
            content = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise MedsegError(f"{path}: no plans file; run `medseg plan` first") from None
        except (OSError, json.JSONDecodeError) as error:
            raise MedsegError(f"{path}: cannot read plans ({error})") from None
        return cls.from_dict(content, str(path))
