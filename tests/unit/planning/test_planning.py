"""Fingerprint, topology and planner; plan equality with nnunetv2's default ExperimentPlanner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medseg.data.builder import RawDatasetBuilder
from medseg.data.layout import load_dataset_description
from medseg.io import MedicalImage
from medseg.io.image import default_direction
from medseg.tasks.segmentation.planning.fingerprint import extract_fingerprint
from medseg.planning.budget import Budget
from medseg.tasks.segmentation.planning.planner import augmentation_plan, has_laterality, plan_experiment
from medseg.planning.plans import Plans
from medseg.models.topology import plan_topology
from tests.conftest import REPO, require_peer



def test_topology_of_anisotropic_patch():
    topology = plan_topology((6.0, 3.0, 3.0), (20, 64, 80))
    assert topology.strides == ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))
    assert topology.kernel_sizes == ((1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3))
    assert topology.patch_size == (20, 64, 80)
    assert plan_topology((1.0, 1.0), (100, 90)).patch_size == (112, 96)  # rounded up to 2**pools


def test_laterality_aware_augmentation():
    assert has_laterality({"background": 0, "right_kidney": 1}) and has_laterality({"Lung-Left": 1})
    assert not has_laterality({"background": 0, "liver": 1, "cleft": 2})
    plain = augmentation_plan([20, 64, 80], lateral=False, lr_axis=2)
    assert plain["mirror_axes"] == [0, 1, 2] and plain["rotation_degrees"] == 180.0 and plain["in_plane_only"]
    sided = augmentation_plan([20, 64, 80], lateral=True, lr_axis=2)
    assert sided["mirror_axes"] == [0, 1] and sided["rotation_degrees"] == 30.0
    assert augmentation_plan([64, 80], lateral=True, lr_axis=2)["mirror_axes"] == [0]  # 2D slices of 3D data
    assert augmentation_plan([64, 80], lateral=True, lr_axis=None)["mirror_axes"] == []


def _anisotropic_dataset(folder: Path, num_cases: int = 8) -> None:
    """Thick-slice volumes (5 mm x 0.8 mm) whose size makes nnU-Net plan a 3d_lowres stage too."""
    rng = np.random.default_rng(0)
    with RawDatasetBuilder(folder, ".nii.gz") as builder:
        for index in range(num_cases):
            shape = (int(rng.integers(26, 34)), int(rng.integers(230, 260)), int(rng.integers(220, 250)))
            spacing = (float(rng.choice([4.5, 5.0, 5.0, 6.0])), 0.78, 0.78)
            image = rng.normal(100, 20, shape).astype(np.float32)
            label = np.zeros(shape, np.uint8)
            z, y, x = [s // 2 for s in shape]
            label[z - 4 : z + 4, y - 30 : y + 30, x - 40 : x + 40] = 1
            label[z - 2 : z + 2, y - 60 : y - 35, x - 10 : x + 10] = 2
            image[label == 1] += 60
            image[label == 2] -= 50
            image[:, :10] = 0  # a zero border to crop
            geometry = dict(spacing=spacing, origin=(0.0, 0.0, 0.0), direction=default_direction(3))
            builder.add_image(f"case_{index:03d}", MedicalImage(image[None], **geometry))
            builder.add_label(f"case_{index:03d}", MedicalImage(label[None], **geometry))
        builder.finish(
            {
                "channel_names": {"0": "MRI"},
                "labels": {"background": 0, "lesion": 1, "vessel": 2},
                "numTraining": num_cases,
                "file_ending": ".nii.gz",
            }
        )


def _nnunet_plans(raw_root: Path, dataset_id: int, work: Path, memory_gb: float, planners: str = "ExperimentPlanner") -> list[dict]:
    """nnunetv2's plans of each planner class (comma-separated) after one fingerprint; memory 0:
    each planner's own GPU memory target."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-m", "tests.peers.nnunet_plan", str(raw_root), str(dataset_id), str(work), str(memory_gb), planners],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [l for l in result.stdout.splitlines() if l.startswith("PLANS=")]
    return [json.loads(Path(json.loads(line[len("PLANS="):])).read_text()) for line in lines]


def _assert_same_plans(ours: Plans, theirs: dict) -> None:
    if len(ours.transpose_forward) == 3:
        assert ours.transpose_forward == theirs["transpose_forward"]
    else:  # nnU-Net reads 2D images as 1 x H x W; medseg keeps them 2D
        assert theirs["transpose_forward"] == [0, 1, 2]
    their_configs = {k: v for k, v in theirs["configurations"].items() if "patch_size" in v}
    assert set(their_configs) <= set(ours.configurations)
    for name, config in their_configs.items():
        mine = ours.configurations[name]
        arch = config["architecture"]["arch_kwargs"]
        kwargs = mine.architecture["kwargs"]
        assert np.allclose(mine.spacing, config["spacing"], rtol=1e-6), name
        assert mine.patch_size == list(config["patch_size"]), name
        assert mine.batch_size == config["batch_size"], name
        assert kwargs["strides"] == [list(s) for s in arch["strides"]], name
        assert kwargs["kernel_sizes"] == [list(k) for k in arch["kernel_sizes"]], name
        assert kwargs["features_per_stage"] == list(arch["features_per_stage"]), name
        for depth in ("n_conv_per_stage", "n_blocks_per_stage", "n_conv_per_stage_decoder"):
            if depth in arch:
                assert kwargs[depth] == list(arch[depth]), (name, depth)
        assert mine.batch_dice == config["batch_dice"], name
        expected_norm = [s.replace("Normalization", "").lower() for s in config["normalization_schemes"]]
        assert [n["scheme"] for n in mine.normalization] == expected_norm, name
        assert [n["use_mask"] for n in mine.normalization] == config["use_mask_for_norm"], name


@pytest.mark.slow
def test_plan_equals_nnunet_on_anisotropic_3d(tmp_path):
    require_peer("nnunetv2")
    raw = tmp_path / "raw"
    folder = raw / "Dataset950_Aniso"
    _anisotropic_dataset(folder)
    description = load_dataset_description(folder)
    # a 1 GB target makes the full-resolution patch small enough that a 3d_lowres stage is planned
    ours = plan_experiment(extract_fingerprint(description, workers=2), description, Budget("memory", memory_gb=1))
    assert {"2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"} <= set(ours.configurations)
    assert ours.configurations["3d_fullres"].spacing[0] == 4.5  # the anisotropic axis takes its 10th percentile
    _assert_same_plans(ours, _nnunet_plans(raw, 950, tmp_path / "nnunet", 1)[0])


@pytest.mark.slow
def test_plan_equals_nnunet_on_real_2d(tmp_path, shared_data):
    require_peer("nnunetv2")
    from medseg_datasets import get_recipe

    raw = tmp_path / "raw"
    recipe = get_recipe("DSB2018")
    folder = raw / recipe.folder_name
    recipe.convert(shared_data / "microscopy-dsb2018", folder)
    description = load_dataset_description(folder)
    ours = plan_experiment(extract_fingerprint(description, workers=2), description, Budget("memory", memory_gb=8))
    assert list(ours.configurations) == ["2d"]
    _assert_same_plans(ours, _nnunet_plans(raw, recipe.dataset_id, tmp_path / "nnunet", 8)[0])


RESENC_PLANNERS = {"resenc_m": "nnUNetPlannerResEncM", "resenc_l": "nnUNetPlannerResEncL", "resenc_xl": "nnUNetPlannerResEncXL"}


def _resenc_plans(folder: Path) -> dict:
    """medseg's plans of each ResEnc preset, as `medseg plan --preset NAME` makes them."""
    from medseg.planning.device import default_budget
    from medseg_plans import get_preset

    description = load_dataset_description(folder)
    fingerprint = extract_fingerprint(description, workers=2)
    plans = {}
    for preset in RESENC_PLANNERS:
        settings = get_preset(preset).settings_for("segmentation", "resenc_unet")
        plans[preset] = plan_experiment(fingerprint, description, default_budget("resenc_unet", preset=settings), "resenc_unet", preset=settings)
    return plans


@pytest.mark.slow
def test_resenc_presets_plan_as_nnunet_on_anisotropic_3d(tmp_path):
    require_peer("nnunetv2")
    raw = tmp_path / "raw"
    _anisotropic_dataset(raw / "Dataset952_AnisoResEnc")
    ours = _resenc_plans(raw / "Dataset952_AnisoResEnc")
    theirs = _nnunet_plans(raw, 952, tmp_path / "nnunet", 0, ",".join(RESENC_PLANNERS.values()))
    for preset, their_plans in zip(RESENC_PLANNERS, theirs):
        assert "ResidualEncoderUNet" in their_plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"]
        _assert_same_plans(ours[preset], their_plans)
    assert ours["resenc_xl"].configurations["3d_fullres"].batch_size >= ours["resenc_m"].configurations["3d_fullres"].batch_size


@pytest.mark.slow
def test_resenc_presets_plan_as_nnunet_on_real_hippocampus(tmp_path, shared_data):
    """The real MSD Hippocampus (208 small MR volumes): ResEnc L and XL have memory to spare, so
    their batch is capped by the dataset itself, the rule nnU-Net's ResEnc planners change."""
    require_peer("nnunetv2")
    from medseg_datasets import get_recipe

    raw = tmp_path / "raw"
    get_recipe("MSD").convert(shared_data / "mr3d-hippocampus-msd-train", raw / "Dataset004_Hippocampus")
    ours = _resenc_plans(raw / "Dataset004_Hippocampus")
    theirs = _nnunet_plans(raw, 4, tmp_path / "nnunet", 0, ",".join(RESENC_PLANNERS.values()))
    for preset, their_plans in zip(RESENC_PLANNERS, theirs):
        _assert_same_plans(ours[preset], their_plans)
    assert ours["resenc_xl"].configurations["3d_fullres"].batch_size > 2


def test_cpu_time_plan_fits_step_budget(tmp_path):
    """Time mode: the planned batch's estimated step time stays within the target."""
    from medseg.models.registry import get_model_family

    folder = tmp_path / "Dataset951_Aniso"
    _anisotropic_dataset(folder, num_cases=3)
    description = load_dataset_description(folder)
    budget = Budget("time", step_seconds=0.5, flops_per_second={2: 50e9, 3: 50e9}, base_features=16)
    plans = plan_experiment(extract_fingerprint(description, workers=1), description, budget)
    family = get_model_family("unet")
    for config in plans.configurations.values():
        seconds = 3 * family.flops_per_sample(config.patch_size, 1, 3, config.architecture["kwargs"]) / 50e9
        assert config.batch_size >= 2
        assert seconds * 2 <= 0.5 or config.batch_size == 2
        assert config.architecture["kwargs"]["features_per_stage"][0] == 16
        assert config.training["optimizer"] == "adamw"
    roundtrip = Plans.from_dict(json.loads(plans.to_json()))
    assert roundtrip == plans


def _blobs_2d(folder: Path, radius: int, num_cases: int = 12, size: int = 192) -> None:
    """2D PNG cases with one disc per image: large (polyp-like) or small (nucleus-like) objects."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:size, :size]
    with RawDatasetBuilder(folder, ".png") as builder:
        for index in range(num_cases):
            cy, cx = rng.integers(radius + 2, size - radius - 2, 2)
            label = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2).astype(np.uint8)
            image = (rng.normal(80, 10, (size, size)) + 90 * label).clip(0, 255).astype(np.uint8)
            geometry = dict(spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=default_direction(2))
            builder.add_image(f"case_{index:03d}", MedicalImage(image[None], **geometry))
            builder.add_label(f"case_{index:03d}", MedicalImage(label[None], **geometry))
        builder.finish({"channel_names": {"0": "rescale_to_0_1"}, "labels": {"background": 0, "object": 1}, "numTraining": num_cases, "file_ending": ".png"})


@pytest.mark.parametrize(("radius", "coarsened"), [(60, True), (6, False)])
def test_cpu_time_plan_trades_resolution_for_passes_while_objects_stay_large(tmp_path, radius, coarsened):
    """A short CPU budget at full resolution sees the data too few times: large objects are planned
    at a coarser spacing (more, cheaper samples), small ones keep the full resolution."""
    from medseg.tasks.segmentation.planning.planner import MIN_OBJECT_VOXELS, MIN_PASSES, MIN_STEPS, ConfigurationSizer, object_size_voxels
    from medseg.models.registry import get_model_family

    folder = tmp_path / "Dataset952_Blobs"
    _blobs_2d(folder, radius)
    description = load_dataset_description(folder)
    fingerprint = extract_fingerprint(description, workers=1)
    extents = np.array([e for case in fingerprint.object_extents_mm for e in case])
    assert extents.shape == (12, 2) and abs(np.median(extents) - (2 * radius + 1)) <= 1
    rates = {2: 20e9, 3: 20e9}
    # the same step time as the 30-second budget (it buys MIN_STEPS steps): only the spacing may differ
    unlimited = plan_experiment(fingerprint, description, Budget("time", flops_per_second=rates, base_features=16, step_seconds=30 / MIN_STEPS))
    short = plan_experiment(fingerprint, description, Budget("time", flops_per_second=rates, base_features=16, training_seconds=30))
    full, fitted = unlimited.configurations["2d"], short.configurations["2d"]
    assert full.spacing == [1.0, 1.0]
    if not coarsened:
        assert fitted.spacing == [1.0, 1.0] and fitted.patch_size == full.patch_size
        return
    assert fitted.spacing[0] > 1.2 and fitted.spacing[0] == fitted.spacing[1]
    coverage = [np.prod(c.patch_size) / np.prod(c.median_shape) for c in (full, fitted)]
    assert coverage[1] > coverage[0]  # each cheaper sample sees more of the image
    assert object_size_voxels(extents, np.array(fitted.spacing), np.arange(2)) >= MIN_OBJECT_VOXELS
    sizer = ConfigurationSizer(get_model_family("unet"), Budget("time", flops_per_second=rates, base_features=16, training_seconds=30), 1, 2)
    voxels = np.prod(fitted.median_shape) * 12
    assert sizer.passes(fitted.patch_size, fitted.architecture["kwargs"], voxels) >= MIN_PASSES * 0.9


def test_plan_with_model_options_sets_them_in_every_configuration(tmp_path):
    """A model spec's options are priced by the sizer, stored in the plans and checked at planning."""
    import torch

    from medseg.errors import MedsegError
    from medseg.models.registry import build_model

    folder = tmp_path / "Dataset951_Aniso"
    _anisotropic_dataset(folder, num_cases=3)
    description = load_dataset_description(folder)
    fingerprint = extract_fingerprint(description, workers=1)
    budget = Budget("time", step_seconds=0.5, flops_per_second={2: 50e9, 3: 50e9}, base_features=8)
    options = {"vil_blocks": 4, "vil_directions": "forward"}
    default = plan_experiment(fingerprint, description, budget, model="xlstm_unet_bot")
    plans = plan_experiment(fingerprint, description, budget, model="xlstm_unet_bot", model_options=options)
    assert plans.planner["model_options"] == options and "model_options" not in default.planner
    for name, config in plans.configurations.items():
        assert {k: config.architecture["kwargs"][k] for k in options} == options
        with torch.device("meta"):
            network = build_model(config.architecture, 1, 3)
        layers = [m for m in network.modules() if type(m).__name__ == "ViLLayer"]
        assert len(layers) == 4 and {layer.direction for layer in layers} == {"forward"}
        # four ViL layers cost more than the default two: never a larger patch x batch for the same step time
        planned = default.configurations[name]
        assert np.prod(config.patch_size) * config.batch_size <= np.prod(planned.patch_size) * planned.batch_size
    with pytest.raises(MedsegError, match="vil_directions=zigzag.*does not build"):
        plan_experiment(fingerprint, description, budget, model="xlstm_unet_bot", model_options={"vil_directions": "zigzag"})


def test_cpu_throughput_is_measured_once_per_machine(tmp_path, monkeypatch):
    """Planning again (or a variant of the family) reuses the measured rate: sizes don't move with timing noise."""
    from medseg.planning import device

    cache = tmp_path / "cpu_throughput.json"
    first = device.cached_throughput("unet", 8, cache)
    assert set(first) == {2, 3} and all(rate > 0 for rate in first.values())
    measured = []
    monkeypatch.setattr(device, "measure_throughput", lambda model, ndim, features, **precision: measured.append(ndim) or 1e9)
    assert device.cached_throughput("unet", 8, cache) == first and measured == []
    assert device.cached_throughput("unet", 16, cache) == {2: 1e9, 3: 1e9} and measured == [2, 3]  # another width
    assert device.cached_throughput("unet", 8, cache) == first  # both kept
    assert device.cached_throughput("unet", 8, cache, "bfloat16") == {2: 1e9, 3: 1e9} and measured == [2, 3, 2, 3]  # bf16 steps: their own rate
    assert device.cached_throughput("unet", 8, cache) == first
    stored = json.loads(cache.read_text())
    stored["machine"] = "another machine"
    cache.write_text(json.dumps(stored))
    assert device.cached_throughput("unet", 8, cache) == {2: 1e9, 3: 1e9}  # measured again on this one
    cache.write_text("{not json")
    assert device.cached_throughput("unet", 8, cache) == {2: 1e9, 3: 1e9}
