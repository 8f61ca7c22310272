"""What every 2D image task (classification, masked and autoencoder pretraining, GMS) fingerprints
and plans alike: image sizes and intensity samples; the family, input side and patch, and a batch
sized on a CPU until a measured training step fits the step time and the budget sees the data often
enough."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from medseg.errors import DatasetError, MedsegError
from medseg.tasks.registry import PlanRequest


MAX_SIDE = 224  # ViT's usual input; larger images are resized down


CNN_STRIDE = 32  # a ResNet's total downsampling: its input side is a multiple of it


MIN_PATCHES_PER_SIDE = 4


PREFERRED_BATCH, MIN_BATCH, GPU_BATCH = 32, 8, 64


MIN_PASSES = 30  # a run's budget should see the training images at least this often


SAMPLES_PER_CASE = 4096  # intensity sample per image for the fingerprint


def analyze_image(case) -> dict:
    """Shape, spacing and an intensity sample of one training image (runs in a worker)."""
    from medseg.audit.input_profile import image_intensity_statistics
    from medseg.data.cases import load_case_images

    try:
        image = load_case_images(case)
    except MedsegError as error:
        return {"case_id": case.case_id, "error": str(error)}
    except Exception as error:  # an unreadable file must not kill the whole fingerprint
        return {"case_id": case.case_id, "error": f"{case.images[0]}: unreadable ({type(error).__name__}: {error})"}
    array = image.array
    if not np.isfinite(array).all():
        return {"case_id": case.case_id, "error": f"{case.images[0]}: {int((~np.isfinite(array)).sum())} voxels are NaN or infinite"}
    rng = np.random.default_rng(1234)
    flat = array.reshape(array.shape[0], -1)
    chosen = rng.integers(flat.shape[1], size=min(SAMPLES_PER_CASE, flat.shape[1]))
    return {
        "case_id": case.case_id, "spacing": [float(s) for s in image.spacing], "shape": list(image.spatial_shape),
        "samples": [channel[chosen] for channel in flat], "image_intensities": image_intensity_statistics(array),
    }


def fingerprint(description, workers, progress, analyses=None):  # analyses: the check makes none for 2D image datasets
    from medseg.data.layout import list_cases
    from medseg.parallel import map_parallel
    from medseg.planning.fingerprint import Fingerprint, intensity_statistics

    cases, problems = list_cases(description, "Tr")
    if problems:
        raise DatasetError(f"{description.folder}: " + "; ".join(problems[:5]) + " (run `medseg datasets check`)")
    if not cases:
        raise DatasetError(f"{description.folder}: imagesTr holds no cases")
    results = map_parallel(analyze_image, cases, workers, progress)
    failures = [r["error"] for r in results if "error" in r]
    if failures:
        raise DatasetError(f"{len(failures)} image(s) could not be used: " + "; ".join(failures[:5]))
    ndims = {len(r["shape"]) for r in results}
    if ndims != {2}:
        raise DatasetError(f"{description.folder}: the classification task learns from 2D images; found {sorted(ndims)}D")
    properties = {
        str(c): intensity_statistics(np.concatenate([r["samples"][c] for r in results])) for c in range(description.num_channels)
    }
    return Fingerprint(
        dataset_name=description.folder.name, ndim=2,
        channel_names=[description.channel_names[k] for k in sorted(description.channel_names)],
        case_ids=[r["case_id"] for r in results], spacings=[r["spacing"] for r in results],
        shapes_before_crop=[r["shape"] for r in results], shapes_after_crop=[r["shape"] for r in results],
        left_right_axes=[None for _ in results], object_extents_mm=[[] for _ in results],
        median_relative_size_after_cropping=1.0, foreground_intensity_properties_per_channel=properties,
        image_intensities=[r["image_intensities"] for r in results],
    )


def _input_side(median_shape, patch: int) -> int:
    side = min(int(min(median_shape)), MAX_SIDE)
    return max(MIN_PATCHES_PER_SIDE * patch, side // patch * patch)


def _requested_side(wanted: int, patch: int, model: str) -> int:
    """--input-size for a family that splits its input into ``patch`` (a ViT's patch, a CNN's stride)."""
    if wanted < MIN_PATCHES_PER_SIDE * patch:
        raise MedsegError(f"--input-size {wanted}: {model} needs at least {MIN_PATCHES_PER_SIDE} x its patch/stride {patch} = {MIN_PATCHES_PER_SIDE * patch} pixels")
    return wanted // patch * patch


def _network_and_batch(architecture: dict, in_channels: int, num_classes: int, batch: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The planned network and a random batch (B, C, *input_size) to time it on."""
    from medseg.models.registry import build_model

    network = build_model(architecture, in_channels, num_classes)
    return network, torch.randn(batch, in_channels, *architecture["kwargs"]["input_size"])


def measure_step_seconds(architecture: dict, in_channels: int, num_classes: int, batch: int, repeats: int = 2) -> float:
    """Seconds of one AdamW training step of the planned network on this CPU."""
    network, images = _network_and_batch(architecture, in_channels, num_classes, batch)
    optimizer = torch.optim.AdamW(network.parameters(), 1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        network(images).sum().backward()
        optimizer.step()

    step()  # warm-up: allocator and kernel selection
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def measure_forward_seconds(architecture: dict, in_channels: int, num_classes: int, batch: int, repeats: int = 2) -> float:
    """Seconds of one inference forward pass of ``batch`` images through the planned network on this CPU."""
    network, images = _network_and_batch(architecture, in_channels, num_classes, batch)
    network.eval()
    with torch.inference_mode():
        network(images)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            network(images)
    return (time.perf_counter() - start) / repeats


def _size_for_time(
    architecture: dict, channels: int, classes: int, num_cases: int, step_seconds: float, training_seconds: float | None, patch: int,
    may_shrink: bool = True, widths: tuple[int, ...] = (),
):
    """Halve the batch (to 16), then shrink the input side (unless the user chose it), then narrow
    the network through ``widths`` (the family's CPU widths, unless the user chose one), until a
    measured step fits ``step_seconds`` and the run's budget passes over the training images at
    least MIN_PASSES times."""
    kwargs = architecture["kwargs"]
    batch, measured = PREFERRED_BATCH, []
    while True:
        seconds = measure_step_seconds(architecture, channels, classes, batch)
        width = {"width": kwargs["width"]} if "width" in kwargs else {}
        measured.append({"input_size": list(kwargs["input_size"]), **width, "batch": batch, "step_seconds": round(seconds, 4)})
        passes = training_seconds / (seconds / batch) / max(num_cases, 1) if training_seconds else math.inf
        side = kwargs["input_size"][0]
        can_shrink = may_shrink and side > MIN_PATCHES_PER_SIDE * patch
        if seconds > step_seconds and batch > 2 * MIN_BATCH and passes >= MIN_PASSES:
            batch //= 2
            continue
        if not can_shrink or (passes >= MIN_PASSES and seconds <= step_seconds):
            narrower = [w for w in widths if w < kwargs.get("width", 0)]  # the caller set the widest
            if passes >= MIN_PASSES or not narrower:
                return batch, measured
            kwargs["width"] = narrower[0]  # a narrower network takes more steps in the same budget
            continue
        smaller = max(MIN_PATCHES_PER_SIDE * patch, int(side * 0.8) // patch * patch)
        kwargs["input_size"] = [smaller, smaller]


def size_image_plan(fingerprint_file, description, request: PlanRequest) -> dict:
    """What every 2D image task plans alike: the family, input side and patch, batch (measured on a
    CPU), spacing and median shape. Used by classification and masked pretraining."""
    from medseg.models.registry import get_model_family
    from medseg.planning.device import CPU_STEP_SECONDS
    from medseg.planning.fingerprint import Fingerprint

    fingerprint = Fingerprint.load(fingerprint_file)
    family = get_model_family(request.model)
    if fingerprint.ndim not in family.dims:
        raise MedsegError(f"{request.model} is {'/'.join(f'{d}D' for d in family.dims)}; {description.folder.name} holds {fingerprint.ndim}D images")
    channels = description.num_channels
    median_shape = [int(s) for s in np.median(np.array(fingerprint.shapes_before_crop), axis=0)]
    options = dict(request.model_options or {})
    uses_patches = "patch" in family.options  # a ViT: the side is a multiple of its patch; a CNN: of its total stride
    patch = int(options.get("patch", 8 if min(median_shape) <= 96 else 16)) if uses_patches else CNN_STRIDE
    wanted = {**(request.preset or {}), **(request.settings or {})}.get("input_size")  # --input-size: the side is the user's
    side = _input_side(median_shape, patch) if wanted is None else _requested_side(int(wanted), patch, request.model)
    architecture = {"name": family.name, "kwargs": {"input_size": [side, side], **({"patch": patch} if uses_patches else {}), **options}}
    outputs = max(len(description.classes), 1)
    preset = request.preset or {}
    if request.memory_gb is not None or preset.get("mode") == "memory" or torch.cuda.is_available():
        batch, planner = GPU_BATCH, {"mode": "memory"}
    else:
        step_seconds = request.step_seconds or preset.get("step_seconds") or CPU_STEP_SECONDS
        widths = () if "width" in options else family.cpu_widths  # a width in the model spec is the user's
        if widths:
            architecture["kwargs"]["width"] = widths[0]
        batch, measured = _size_for_time(
            architecture, channels, outputs, len(fingerprint.case_ids), step_seconds, request.training_seconds, patch, wanted is None, widths
        )
        planner = {"mode": "time", "step_seconds": step_seconds, "training_seconds": request.training_seconds, "measured": measured}
    planner.update(model=family.name, **({"model_options": options} if options else {}))
    return {
        "fingerprint": fingerprint, "family": family, "architecture": architecture, "batch": batch, "planner": planner,
        "median_shape": median_shape, "spacing": [float(s) for s in np.median(np.array(fingerprint.spacings), axis=0)],
    }


def image_plans(sized: dict, description, request: PlanRequest, labels: dict[str, int], augmentation: dict, training: dict):
    """Plans with one "2d" configuration from ``size_image_plan``'s sizing."""
    from medseg.planning.plans import ConfigurationPlan, Plans

    fingerprint, channels = sized["fingerprint"], description.num_channels
    configuration = ConfigurationPlan(
        name="2d", ndim=2, spacing=sized["spacing"], median_shape=sized["median_shape"],
        patch_size=list(sized["architecture"]["kwargs"]["input_size"]), batch_size=sized["batch"], batch_dice=False,
        normalization=[{"scheme": "zscore_per_image", "use_mask": False, "properties": {}} for _ in range(channels)],
        architecture=sized["architecture"], resampling={"image": "bilinear, antialiased"}, data_identifier=f"{request.plans_name}_2d",
        augmentation=augmentation, training=training,
    )
    return Plans(
        dataset_name=fingerprint.dataset_name, plans_name=request.plans_name, planner=sized["planner"],
        transpose_forward=[0, 1], transpose_backward=[0, 1], original_median_spacing=configuration.spacing,
        original_median_shape=sized["median_shape"], labels=labels, channel_names=list(fingerprint.channel_names),
        foreground_intensity_properties_per_channel=fingerprint.foreground_intensity_properties_per_channel,
        configurations={"2d": configuration},
    )
