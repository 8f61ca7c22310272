"""An nnU-Net v2 trained model folder (``TRAINER__PLANS__CONFIGURATION/`` with plans.json,
dataset.json and ``fold_K/checkpoint_final.pth``) read as a medseg ``ModelFolder``.

nnU-Net's plans are translated into medseg plans (normalisation schemes, resampling orders, the
network topology) and its checkpoints' state dicts are renamed onto medseg's ``unet`` or
``resenc_unet``; the predictor then runs unchanged, so nnU-Net models get every medseg input and
output format. Neither nnunetv2 nor dynamic_network_architectures is imported: the folder is data.

Supported: PlainConvUNet and ResidualEncoderUNet (the ResEnc presets) configurations (2d,
3d_fullres, 3d_lowres, and 3d_cascade_fullres with its 3d_lowres folder beside it) read by
SimpleITKIO, NaturalImage2DIO or NibabelIO, region-based models (sigmoid outputs written in
regions_class_order) and the ignore label included. Refused, naming what is unsupported: other
networks, other readers, custom normalisation or resampling. Like ``nnUNetv2_predict``,
no postprocessing is applied (nnU-Net keeps it in a pickle that ``nnUNetv2_apply_postprocessing``
applies separately)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

from medseg.errors import MedsegError
from medseg.model_folder import ModelFolder, ModelInfo, check_info_values, read_json_object
from medseg.planning.plans import ConfigurationPlan, Plans
from medseg.planning.plans_checks import check_plans_values
from medseg.torch_files import load_plain

NORMALIZATION_SCHEMES = {
    "ZScoreNormalization": "zscore",
    "CTNormalization": "ct",
    "NoNormalization": "none",
    "RescaleTo01Normalization": "rescale_to_0_1",
    "RGBTo01Normalization": "rgb_to_0_1",
}
SAME_AXIS_ORDER_READERS = ("SimpleITKIO", "NaturalImage2DIO", "SimpleITKIOWithReorient")
REVERSED_AXIS_ORDER_READERS = ("NibabelIO",)  # nibabel arrays run x, y, z: medseg's order reversed
ANISOTROPY_THRESHOLD = 3.0  # nnunetv2.configuration.ANISO_THRESHOLD
CHECKPOINT_FILES = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth", "latest": "checkpoint_latest.pth"}
PLAIN_UNET, RESIDUAL_UNET = "PlainConvUNet", "ResidualEncoderUNet"
NETWORKS = {PLAIN_UNET: "unet", RESIDUAL_UNET: "resenc_unet"}  # nnU-Net's class -> medseg's family


def is_nnunet_model_folder(path: Path) -> bool:
    """plans.json and dataset.json written by nnU-Net v2 (its plans name the network class), no model.json."""
    path = Path(path)
    if (path / "model.json").is_file() or not (path / "plans.json").is_file() or not (path / "dataset.json").is_file():
        return False
    try:
        plans = json.loads((path / "plans.json").read_text())
    except (OSError, ValueError):
        return False
    configurations = plans.get("configurations") if isinstance(plans, dict) else None
    if not isinstance(configurations, dict):
        return False
    return any(isinstance(c, dict) and "network_class_name" in c.get("architecture", {}) for c in configurations.values())


def _configuration_name(path: Path, plans: dict) -> str:
    """nnU-Net names its model folders TRAINER__PLANS__CONFIGURATION."""
    parts = path.resolve().name.split("__")
    if len(parts) == 3 and parts[2] in plans.get("configurations", {}):
        return parts[2]
    raise MedsegError(
        f"{path}: an nnU-Net model folder is named TRAINER__PLANS__CONFIGURATION with a configuration from its "
        f"plans.json ({', '.join(plans.get('configurations', {}))}); cannot tell which configuration this folder holds"
    )


def resolved_configuration(plans: dict, name: str, source: Path) -> dict:
    """A configuration with its ``inherits_from`` chain merged in (3d_lowres inherits from 3d_fullres)."""
    configurations = plans["configurations"]
    chain, current = [], name
    while current is not None:
        if current in chain or current not in configurations:
            raise MedsegError(f"{source}: configuration '{name}' inherits from missing or circular '{current}'")
        chain.append(current)
        current = configurations[current].get("inherits_from")
    merged: dict = {}
    for link in reversed(chain):
        merged.update({k: v for k, v in configurations[link].items() if k != "inherits_from"})
    return merged


def network_from_nnunet(architecture: dict, source: Path) -> tuple[str, dict]:
    """nnU-Net arch_kwargs -> (medseg family, its kwargs): PlainConvUNet runs as ``unet``,
    ResidualEncoderUNet (basic blocks) as ``resenc_unet``; anything medseg does not compute the
    same way is refused."""
    class_name = str(architecture.get("network_class_name", "")).rsplit(".", 1)[-1]
    if class_name not in NETWORKS:
        raise MedsegError(
            f"{source}: network {architecture.get('network_class_name')!r} is not supported (medseg runs nnU-Net's {', '.join(NETWORKS)})"
        )
    kwargs = architecture.get("arch_kwargs", {})
    problems = []
    if not kwargs.get("conv_bias", False):
        problems.append("conv_bias false")
    if "InstanceNorm" not in str(kwargs.get("norm_op")) or not (kwargs.get("norm_op_kwargs") or {}).get("affine", False):
        problems.append(f"norm_op {kwargs.get('norm_op')} {kwargs.get('norm_op_kwargs')}")
    elif abs(float((kwargs.get("norm_op_kwargs") or {}).get("eps", 1e-5)) - 1e-5) > 1e-12:
        problems.append(f"norm eps {kwargs['norm_op_kwargs']['eps']}")
    if kwargs.get("dropout_op") not in (None, "None"):
        problems.append(f"dropout_op {kwargs.get('dropout_op')}")
    slope = (kwargs.get("nonlin_kwargs") or {}).get("negative_slope", 0.01)
    if "LeakyReLU" not in str(kwargs.get("nonlin")) or abs(float(slope) - 0.01) > 1e-12:
        problems.append(f"nonlin {kwargs.get('nonlin')} {kwargs.get('nonlin_kwargs')}")
    if class_name == RESIDUAL_UNET:
        if "BasicBlockD" not in str(kwargs.get("block", "BasicBlockD")):
            problems.append(f"block {kwargs.get('block')}")
        for unsupported in ("bottleneck_channels", "stem_channels"):
            if kwargs.get(unsupported) not in (None, "None"):
                problems.append(f"{unsupported} {kwargs[unsupported]}")
    if problems:
        raise MedsegError(f"{source}: {class_name} settings medseg's network does not reproduce: {'; '.join(problems)}")
    depth = "n_conv_per_stage" if class_name == PLAIN_UNET else "n_blocks_per_stage"
    try:
        stages = int(kwargs["n_stages"])
        converted = {
            "features_per_stage": [int(f) for f in kwargs["features_per_stage"]],
            "kernel_sizes": [[int(k) for k in kernel] for kernel in kwargs["kernel_sizes"]],
            "strides": [[int(s) for s in stride] for stride in kwargs["strides"]],
            depth: [int(n) for n in kwargs[depth]],
            # nnU-Net counts decoder stages from the bottleneck up, medseg by the encoder level they rejoin
            "n_conv_per_stage_decoder": [int(n) for n in kwargs["n_conv_per_stage_decoder"]][::-1],
        }
    except (KeyError, TypeError, ValueError) as error:
        raise MedsegError(f"{source}: malformed {class_name} arch_kwargs ({error!r})") from None
    if len(converted["features_per_stage"]) != stages or len(converted[depth]) != stages or len(converted["n_conv_per_stage_decoder"]) != stages - 1:
        raise MedsegError(f"{source}: {class_name} arch_kwargs disagree with n_stages {stages}")
    return NETWORKS[class_name], converted


def _resampling(configuration: dict, source: Path) -> dict:
    for key in ("resampling_fn_data", "resampling_fn_seg", "resampling_fn_probabilities"):
        if configuration.get(key, "resample_data_or_seg_to_shape") != "resample_data_or_seg_to_shape":
            raise MedsegError(f"{source}: resampling function {configuration[key]!r} ({key}) is not supported")
    data = configuration.get("resampling_fn_data_kwargs", {})
    seg = configuration.get("resampling_fn_seg_kwargs", {})
    probabilities = configuration.get("resampling_fn_probabilities_kwargs", {})
    for name, options in (("data", data), ("probabilities", probabilities)):
        if options.get("force_separate_z") is not None:
            raise MedsegError(f"{source}: force_separate_z in resampling_fn_{name}_kwargs is not supported")
    if int(probabilities.get("order", 1)) != 1 or int(probabilities.get("order_z", 0)) != int(data.get("order_z", 0)):
        raise MedsegError(f"{source}: probability resampling {probabilities} differs from what medseg applies (order 1, the data's order_z)")
    return {
        "image_order": int(data.get("order", 3)),
        "label_order": int(seg.get("order", 1)),
        "out_of_plane_order": int(data.get("order_z", 0)),
        "anisotropy_threshold": ANISOTROPY_THRESHOLD,
    }


def _labels(dataset: dict, source: Path) -> tuple[dict[str, int], dict[str, list[int]] | None, int | None]:
    """(label map, regions, ignore label), read as medseg reads a raw dataset.json (medseg.data.layout):
    a region-based model's sigmoid outputs write their regions_class_order values; the ignore
    label is trained around, never predicted."""
    from medseg.data.layout import parse_labels
    from medseg.errors import DatasetError

    if not isinstance(dataset.get("labels"), dict) or not dataset["labels"]:
        raise MedsegError(f"{source}: dataset.json has no labels")
    try:
        return parse_labels(dataset, source)
    except DatasetError as error:
        raise MedsegError(str(error)) from None


def translate_plans(plans: dict, dataset: dict, configuration_name: str, source: Path) -> Plans:
    """nnU-Net plans.json (+ dataset.json) -> medseg Plans holding the one configuration."""
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    labels, regions, ignore_label = _labels(dataset, source)
    configuration = resolved_configuration(plans, configuration_name, source)
    forward = [int(a) for a in plans.get("transpose_forward", [0, 1, 2])]
    if reader in REVERSED_AXIS_ORDER_READERS:
        forward = [len(forward) - 1 - a for a in forward]
    elif reader not in SAME_AXIS_ORDER_READERS:
        raise MedsegError(f"{source}: image reader {reader!r} is not supported ({', '.join(SAME_AXIS_ORDER_READERS + REVERSED_AXIS_ORDER_READERS)})")
    if reader == "NaturalImage2DIO":  # 2D images: nnU-Net adds a dummy axis medseg does not
        forward = [0, 1]
    backward = [forward.index(a) for a in range(len(forward))]
    channels = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise MedsegError(f"{source}: dataset.json has no channel_names")
    channel_names = [str(channels[k]) for k in sorted(channels, key=int)]
    schemes = configuration.get("normalization_schemes", [])
    use_mask = configuration.get("use_mask_for_norm", [False] * len(schemes))
    if len(schemes) != len(channel_names) or len(use_mask) != len(channel_names):
        raise MedsegError(f"{source}: {len(schemes)} normalisation scheme(s) for {len(channel_names)} channel(s)")
    intensities = plans.get("foreground_intensity_properties_per_channel", {})
    normalization = []
    for channel, (scheme, masked) in enumerate(zip(schemes, use_mask)):
        if scheme not in NORMALIZATION_SCHEMES:
            raise MedsegError(f"{source}: normalisation {scheme!r} is not supported ({', '.join(NORMALIZATION_SCHEMES)})")
        properties = intensities.get(str(channel), {})
        if scheme == "CTNormalization" and not {"mean", "std", "percentile_00_5", "percentile_99_5"} <= set(properties):
            raise MedsegError(f"{source}: CTNormalization of channel {channel} lacks foreground intensity properties")
        normalization.append({"scheme": NORMALIZATION_SCHEMES[scheme], "use_mask": bool(masked), "properties": properties})
    patch = [int(p) for p in configuration["patch_size"]]
    translated = ConfigurationPlan(
        name=configuration_name,
        ndim=len(patch),
        spacing=[float(s) for s in configuration["spacing"]],
        median_shape=[int(n) for n in configuration.get("median_image_size_in_voxels", patch)],
        patch_size=patch,
        batch_size=int(configuration.get("batch_size", 2)),
        batch_dice=bool(configuration.get("batch_dice", False)),
        normalization=normalization,
        architecture=dict(zip(("name", "kwargs"), network_from_nnunet(configuration.get("architecture", {}), source))),
        resampling=_resampling(configuration, source),
        data_identifier=str(configuration.get("data_identifier", configuration_name)),
        # a cascade stage: medseg's predictor runs the previous stage's folder beside this one first
        previous_stage=str(configuration["previous_stage"]) if configuration.get("previous_stage") else None,
    )
    return Plans(
        dataset_name=str(plans.get("dataset_name", "")),
        plans_name=str(plans.get("plans_name", "nnUNetPlans")),
        planner={"mode": "nnunetv2", "experiment_planner": plans.get("experiment_planner_used"), "image_reader_writer": reader},
        transpose_forward=forward,
        transpose_backward=backward,
        original_median_spacing=[float(s) for s in plans.get("original_median_spacing_after_transp", [])],
        original_median_shape=[int(s) for s in plans.get("original_median_shape_after_transp", [])],
        labels=labels,
        regions=regions,
        ignore_label=ignore_label,
        channel_names=channel_names,
        foreground_intensity_properties_per_channel=intensities,
        configurations={configuration_name: translated},
    )


# ------------------------------------------------------------------------------------ weights
_ENCODER = re.compile(r"^encoder\.stages\.(\d+)\.0\.convs\.(\d+)\.(conv|norm)\.(weight|bias)$")
_STEM = re.compile(r"^encoder\.stem\.convs\.0\.(conv|norm)\.(weight|bias)$")
_BLOCK = re.compile(r"^encoder\.stages\.(\d+)\.blocks\.(\d+)\.(conv1|conv2|skip\.\d+)\.(conv|norm)\.(weight|bias)$")
_DECODER = re.compile(r"^decoder\.stages\.(\d+)\.convs\.(\d+)\.(conv|norm)\.(weight|bias)$")
_UPSAMPLE = re.compile(r"^decoder\.transpconvs\.(\d+)\.(weight|bias)$")
_HEAD = re.compile(r"^decoder\.seg_layers\.(\d+)\.(weight|bias)$")
_ALIASES = re.compile(r"(\.all_modules\.|^decoder\.encoder\.)")  # the same tensors registered twice by nnU-Net's networks
_LAYER = {"conv": 0, "norm": 1}


def rename_nnunet_weights(state: dict, source: Path, network: str = "unet") -> dict:
    """A PlainConvUNet or ResidualEncoderUNet state dict -> medseg's ``unet`` / ``resenc_unet``
    state dict (same tensors, medseg's names; the residual encoder's stem is stage 0's first layer)."""
    renamed = {}
    for key, tensor in state.items():
        if _ALIASES.search(key):
            continue
        if network == "unet" and (match := _ENCODER.match(key)):
            stage, conv, layer, kind = match.groups()
            renamed[f"encoder.{stage}.{conv}.{_LAYER[layer]}.{kind}"] = tensor
        elif network == "resenc_unet" and (match := _STEM.match(key)):
            renamed[f"encoder.0.0.{_LAYER[match[1]]}.{match[2]}"] = tensor
        elif network == "resenc_unet" and (match := _BLOCK.match(key)):
            stage, block, part, layer, kind = match.groups()
            index = int(block) + (1 if stage == "0" else 0)  # after the stem
            renamed[f"encoder.{stage}.{index}.{part}.{_LAYER[layer]}.{kind}"] = tensor
        elif match := _DECODER.match(key):
            stage, conv, layer, kind = match.groups()
            renamed[f"decoder.{stage}.{conv}.{_LAYER[layer]}.{kind}"] = tensor
        elif match := _UPSAMPLE.match(key):
            renamed[f"upsample.{match[1]}.{match[2]}"] = tensor
        elif match := _HEAD.match(key):
            renamed[f"heads.{match[1]}.{match[2]}"] = tensor
        else:
            raise MedsegError(f"{source}: weight {key!r} does not belong to a {next(k for k, v in NETWORKS.items() if v == network)}")
    return renamed


def load_nnunet_checkpoint(path: Path) -> dict:
    """An nnU-Net .pth checkpoint, unpickled with torch's weights-only loader (tensors and plain
    values; nnU-Net's training log adds numpy scalars, which are allowed and nothing else)."""
    import numpy as np

    allowed = [np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32)), type(np.dtype(np.int64))]
    try:
        from numpy.core.multiarray import scalar  # numpy < 2 and numpy 2 (deprecated alias) both pickle scalars here
        allowed.append(scalar)
    except ImportError:  # pragma: no cover
        pass
    try:
        from numpy._core.multiarray import scalar as scalar2

        allowed.append(scalar2)
    except ImportError:  # pragma: no cover
        pass
    checkpoint = load_plain(path, "nnU-Net checkpoint", allowed)
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise MedsegError(f"{path}: not an nnU-Net checkpoint (no network_weights)")
    return checkpoint


class NnunetModelFolder(ModelFolder):
    """The folder is read, never written: medseg's cross-validation files do not apply."""

    @classmethod
    def open(cls, path: Path) -> "NnunetModelFolder":
        path = Path(path)
        plans = read_json_object(path / "plans.json")
        dataset = read_json_object(path / "dataset.json")
        name = _configuration_name(path, plans)
        translated = translate_plans(plans, dataset, name, path / "plans.json")
        info = ModelInfo(
            configuration=name,
            model=translated.configuration(name).architecture["name"],
            dataset_name=translated.dataset_name,
            raw_folder="",
            preprocessed_folder="",
            file_ending=str(dataset.get("file_ending", ".nii.gz")),
            labels=translated.labels,
            extra={"source": "nnunetv2", "trainer": path.resolve().name.split("__")[0], "plans_name": translated.plans_name},
        )
        check_info_values(info, path / "dataset.json")
        check_plans_values(asdict(translated), str(path / "plans.json"))
        folder = cls(path, info)
        folder.__dict__["plans"] = translated  # fills ModelFolder.plans' cache: there is no medseg plans.json to read
        folder.info.mirror_axes = folder._mirror_axes()
        return folder

    def _mirror_axes(self) -> list[int]:
        """The trainer's inference_allowed_mirroring_axes, read from the first fold's checkpoint."""
        for fold in self.folds():
            try:
                checkpoint = load_nnunet_checkpoint(self.checkpoint_path(fold))
            except MedsegError:
                continue
            # kept for the predictor's first load_module_states, so that checkpoint is read once
            self._read_weights = (self.checkpoint_path(fold), checkpoint["network_weights"])
            axes = checkpoint.get("inference_allowed_mirroring_axes")
            return [int(a) for a in axes] if axes else []
        return []

    def fold_finished(self, fold: str) -> bool:
        return (self.fold_folder(fold) / CHECKPOINT_FILES["final"]).is_file()

    def checkpoint_path(self, fold: str, checkpoint: str = "auto") -> Path:
        """``auto``: checkpoint_final.pth, as nnUNetv2_predict uses."""
        if checkpoint != "auto" and checkpoint not in CHECKPOINT_FILES:
            raise MedsegError(f"unknown checkpoint '{checkpoint}' (choose auto, {', '.join(CHECKPOINT_FILES)})")
        folder = self.fold_folder(fold)
        name = CHECKPOINT_FILES["final" if checkpoint == "auto" else checkpoint]
        if not (folder / name).is_file():
            raise MedsegError(f"{folder}: no {name} (has this nnU-Net fold finished training?)")
        return folder / name

    def load_module_states(self, fold: str, checkpoint: str = "auto") -> dict[str, dict]:
        path = self.checkpoint_path(fold, checkpoint)
        kept = self.__dict__.pop("_read_weights", None)
        weights = kept[1] if kept and kept[0] == path else load_nnunet_checkpoint(path)["network_weights"]
        return {"network": rename_nnunet_weights(weights, path, self.info.model)}

    def postprocessing(self) -> dict:
        return {}

    def write_postprocessing(self, decision: dict) -> None:
        raise MedsegError(f"{self.path}: nnU-Net model folders are read-only to medseg")

    def input_profile(self) -> dict | None:
        """From the dataset_fingerprint.json nnU-Net copies into the folder (spacings, cropped sizes)."""
        from medseg.audit.input_profile import profile_from_nnunet_fingerprint

        normalization = [channel.get("scheme") for channel in self.configuration.normalization]
        return profile_from_nnunet_fingerprint(self.path / "dataset_fingerprint.json", self.plans.channel_names, normalization)
