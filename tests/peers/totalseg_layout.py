"""Small random-weight nnU-Net v2 models placed where TotalSegmentator keeps its weights
(``WEIGHTS/DatasetNNN_<its folder name>/TRAINER__nnUNetPlans__3d_fullres/fold_0``), with the
labels, spacing and trainer names TotalSegmentator's own tables give each of a task's parts; and
TotalSegmentator's Python API run on them, the reference medseg's labels are compared with.

usage (a subprocess: TotalSegmentator and nnunetv2 read their folders from the environment, and
nnunetv2's predictor starts worker processes):
  python -m tests.peers.totalseg_layout HOME JOBS_JSON
JOBS_JSON: a list of {"image", "output", "task", "mode" (default, fast or fastest), "roi_subset" (a list, optional)}."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _task_models(task: str, fast: bool) -> tuple[list[int], str, float]:
    """(dataset ids, trainer, spacing in mm) of a task's mode, from TotalSegmentator's own table."""
    from totalsegmentator.python_api import get_task_config

    config = get_task_config(task, fast=fast, quiet=True)
    ids = config["task_id"] if isinstance(config["task_id"], list) else [config["task_id"]]
    return ids, config["trainer"], config["resample"]


def _part_labels(task: str, dataset_id: int) -> dict[str, int]:
    """A part's labels as its dataset.json holds them (the whole task's for a one-model mode)."""
    from totalsegmentator import map_to_binary as maps

    parts = {"total": (maps.class_map_5_parts, maps.map_taskid_to_partname_ct), "total_mr": (maps.class_map_parts_mr, maps.map_taskid_to_partname_mr)}
    if task in parts and dataset_id in parts[task][1]:
        classes = parts[task][0][parts[task][1][dataset_id]]
    else:
        classes = maps.class_map[task]
    return {"background": 0, **{name: value for value, name in sorted(classes.items())}}


def _network(num_classes: int, seed: int):
    """nnU-Net's PlainConvUNet, tiny, random weights made decisive (a strong, spread last layer)."""
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from torch import nn

    kwargs = {
        "n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }
    torch.manual_seed(seed)
    network = PlainConvUNet(
        input_channels=1, num_classes=num_classes, deep_supervision=True,
        **{**kwargs, "conv_op": nn.Conv3d, "norm_op": nn.InstanceNorm3d, "nonlin": nn.LeakyReLU},
    )
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if "seg_layers" in name:
                parameter.mul_(8.0)
    architecture = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet", "arch_kwargs": kwargs, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    return network, architecture


def write_part(weights: Path, dataset_id: int, trainer: str, spacing: float, labels: dict[str, int]) -> Path:
    """One random-weight model at ``weights/<TotalSegmentator's folder name>/TRAINER__nnUNetPlans__3d_fullres``."""
    import torch
    from totalsegmentator.libs import TASK_ID_WEIGHTS_CONFIGS

    dataset = TASK_ID_WEIGHTS_CONFIGS[dataset_id]["foldername"]
    folder = weights / dataset / f"{trainer}__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    network, architecture = _network(len(labels), seed=dataset_id)
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2, "patch_size": [32, 32, 32],
        "median_image_size_in_voxels": [100, 100, 100], "spacing": [spacing] * 3, "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": architecture, "batch_dice": False,
    }
    plans = {
        "dataset_name": dataset, "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [spacing] * 3,
        "original_median_shape_after_transp": [100, 100, 100], "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2], "configurations": {"3d_fullres": configuration}, "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {"max": 3000.0, "mean": 100.0, "median": 80.0, "min": -1024.0, "percentile_00_5": -1000.0, "percentile_99_5": 1500.0, "std": 300.0}},
    }
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 10, "file_ending": ".nii.gz"}, indent=1))
    checkpoint = {
        "network_weights": network.state_dict(), "trainer_name": trainer, "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0},
        "inference_allowed_mirroring_axes": None, "current_epoch": 1,
    }
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def write_task(weights: Path, task: str, fast: bool = False) -> list[Path]:
    """Every part of a TotalSegmentator task's mode, as random-weight models."""
    ids, trainer, spacing = _task_models(task, fast)
    return [write_part(weights, dataset_id, trainer, float(spacing), _part_labels(task, dataset_id)) for dataset_id in ids]


def _sum_windows_in_float32() -> None:
    """nnU-Net sums the windows' logits in float16, which flips the label of near-tied voxels
    (random-weight networks have many) against any float32 sum; its sums are made float32 here, so
    the comparison is of TotalSegmentator's steps, not of float16 rounding."""
    import torch
    from nnunetv2.inference import predict_from_raw_data

    class Float32Sums:
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def zeros(*args, **kwargs):
            if kwargs.get("dtype") is torch.half:
                kwargs["dtype"] = torch.float32
            return torch.zeros(*args, **kwargs)

    predict_from_raw_data.torch = Float32Sums()


def run(home: Path, jobs: list[dict]) -> None:
    """TotalSegmentator's Python API on the CPU, offline: its home folder holds the weights and a
    configuration that sends no usage statistics."""
    os.environ["TOTALSEG_HOME_DIR"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.json").write_text(json.dumps({"totalseg_id": "totalseg_TEST", "send_usage_stats": False, "prediction_counter": 0, "statistics_disclaimer_shown": True}))
    from totalsegmentator import nnunet
    from totalsegmentator.python_api import totalsegmentator

    # nnunetv2 finds a trainer class by importing every trainer module, some of which import timm,
    # broken on this CPU build (ENVIRONMENT.md); inference only builds the network from the plans,
    # the same for every trainer, so the names these tests use resolve to the base trainer directly
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    for name in ("nnUNetTrainerNoMirroring", "nnUNetTrainer_4000epochs_NoMirroring", "nnUNetTrainer_2000epochs_NoMirroring"):
        nnunet.custom_trainers.setdefault(name, nnUNetTrainer)
    _sum_windows_in_float32()
    for job in jobs:
        totalsegmentator(
            Path(job["image"]), Path(job["output"]), ml=True, task=job["task"], fast=job.get("mode") == "fast", fastest=job.get("mode") == "fastest",
            roi_subset=job.get("roi_subset"), device="cpu", quiet=True, nr_thr_saving=1,
        )


if __name__ == "__main__":
    run(Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text()))
