"""Checks of a plans file's values before anything acts on them.

Plans arrive from model folders a user was given, so every value that sizes memory, indexes an axis
or reaches a path is checked here, once, on loading: a bad value is refused naming the file, the key
and the value, never an "unexpected" crash (or a 100000³ allocation) later."""

from __future__ import annotations

import math

from medseg.errors import MedsegError

MAX_PATCH_VOXELS = 2**27  # 512³: nnU-Net's largest plans are ~128³ (3D) or 2048² (2D)
MAX_AXIS = 8192
MIN_SPACING = 1e-6  # mm; anything finer is not a spacing (microscopy reaches 1e-4)
MAX_BATCH = 4096
RESAMPLING_ORDERS = range(0, 6)
MAX_UPSAMPLING = 8  # target spacing at most this many times finer than the data's median spacing


class PlansValueError(MedsegError):
    pass


def _where(source: str, key: str, value) -> str:
    return f"{source}: {key} = {value!r}"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _permutation(values, length: int) -> bool:
    return isinstance(values, list) and all(_is_int(v) for v in values) and sorted(values) == list(range(length))


def check_plans_values(content: dict, source: str) -> None:
    """``content``: the plans JSON; raises PlansValueError naming ``source``, the key and the value."""
    spatial = len(content.get("transpose_forward") or [])
    for key in ("transpose_forward", "transpose_backward"):
        if spatial not in (2, 3) or not _permutation(content.get(key), spatial):
            raise PlansValueError(f"{_where(source, key, content.get(key))}: expected a permutation of 0..{max(spatial, 2) - 1}")
    channels = content.get("channel_names")
    if not isinstance(channels, list) or not channels or len(channels) > 64:
        raise PlansValueError(f"{_where(source, 'channel_names', channels)}: expected a list of 1 to 64 channel names")
    labels = content.get("labels")
    if not isinstance(labels, dict) or not all(_is_int(v) and 0 <= v < 65536 for v in labels.values()):
        raise PlansValueError(f"{_where(source, 'labels', labels)}: expected names mapped to label values 0..65535")
    configurations = content.get("configurations")
    if not isinstance(configurations, dict) or not configurations:
        raise PlansValueError(f"{_where(source, 'configurations', configurations)}: expected at least one configuration")
    for name, configuration in configurations.items():
        if not isinstance(configuration, dict):
            raise PlansValueError(f"{_where(source, f'configurations.{name}', configuration)}: expected an object")
        check_configuration_values(configuration, f"configurations.{name}", source, len(channels))
        _check_spacing_against_data(configuration, content.get("original_median_spacing"), f"configurations.{name}", source)


def _check_spacing_against_data(configuration: dict, median, prefix: str, source: str) -> None:
    """A target spacing many times finer than the training images' median spacing is not a plan
    (nnU-Net's targets are the median or coarser); it would resample every case to a huge grid."""
    if not isinstance(median, list) or not all(_is_number(m) and m > 0 for m in median) or len(median) < configuration["ndim"]:
        return
    spacing = configuration["spacing"]
    for target, typical in zip(spacing, median[-len(spacing):]):
        if target * MAX_UPSAMPLING < typical:
            raise PlansValueError(
                f"{_where(source, f'{prefix}.spacing', spacing)}: more than {MAX_UPSAMPLING}x finer than the training images' median spacing {median}"
            )


def check_configuration_values(configuration: dict, prefix: str, source: str, channels: int) -> None:
    ndim = configuration.get("ndim")
    if ndim not in (2, 3) or not _is_int(ndim):
        raise PlansValueError(f"{_where(source, f'{prefix}.ndim', ndim)}: expected 2 or 3")
    patch = configuration.get("patch_size")
    if not isinstance(patch, list) or len(patch) != ndim or not all(_is_int(p) and 1 <= p <= MAX_AXIS for p in patch):
        raise PlansValueError(f"{_where(source, f'{prefix}.patch_size', patch)}: expected {ndim} whole numbers from 1 to {MAX_AXIS} (a {ndim}D configuration)")
    if math.prod(patch) > MAX_PATCH_VOXELS:
        raise PlansValueError(f"{_where(source, f'{prefix}.patch_size', patch)}: {math.prod(patch):,} voxels per window, above the limit of {MAX_PATCH_VOXELS:,}")
    spacing = configuration.get("spacing")
    if not isinstance(spacing, list) or len(spacing) != ndim or not all(_is_number(s) and s >= MIN_SPACING for s in spacing):
        raise PlansValueError(f"{_where(source, f'{prefix}.spacing', spacing)}: expected {ndim} finite spacings of at least {MIN_SPACING} mm")
    batch = configuration.get("batch_size")
    if not _is_int(batch) or not 1 <= batch <= MAX_BATCH:
        raise PlansValueError(f"{_where(source, f'{prefix}.batch_size', batch)}: expected a whole number from 1 to {MAX_BATCH}")
    normalization = configuration.get("normalization")
    if not isinstance(normalization, list) or len(normalization) != channels or not all(isinstance(n, dict) for n in normalization):
        raise PlansValueError(f"{_where(source, f'{prefix}.normalization', normalization)}: expected one entry per input channel ({channels})")
    architecture = configuration.get("architecture")
    if not isinstance(architecture, dict) or not isinstance(architecture.get("name"), str) or not isinstance(architecture.get("kwargs"), dict):
        raise PlansValueError(f"{_where(source, f'{prefix}.architecture', architecture)}: expected {{\"name\": family, \"kwargs\": {{...}}}}")
    _check_architecture_kwargs(architecture["kwargs"], ndim, patch, prefix, source)
    mirror = (configuration.get("augmentation") or {}).get("mirror_axes", [])
    if not isinstance(mirror, list) or not all(_is_int(a) and 0 <= a < ndim for a in mirror):
        raise PlansValueError(f"{_where(source, f'{prefix}.augmentation.mirror_axes', mirror)}: expected axes among 0..{ndim - 1}")
    resampling = configuration.get("resampling") or {}
    for key in ("image_order", "label_order", "out_of_plane_order"):
        if key in resampling and resampling[key] not in RESAMPLING_ORDERS:
            raise PlansValueError(f"{_where(source, f'{prefix}.resampling.{key}', resampling[key])}: expected a spline order from 0 to 5")
    if "anisotropy_threshold" in resampling and not (_is_number(resampling["anisotropy_threshold"]) and resampling["anisotropy_threshold"] > 0):
        raise PlansValueError(f"{_where(source, f'{prefix}.resampling.anisotropy_threshold', resampling['anisotropy_threshold'])}: expected a positive number")


def _check_architecture_kwargs(kwargs: dict, ndim: int, patch: list[int], configuration: str, source: str) -> None:
    """The convolutional families' topology: per-stage lists whose lengths and dimensions agree,
    and a patch the strides divide (a window the network cannot take crashes deep in a forward)."""
    prefix = f"{configuration}.architecture.kwargs"
    features = kwargs.get("features_per_stage")
    if features is not None and (not isinstance(features, list) or not all(_is_int(f) and 1 <= f <= 4096 for f in features)):
        raise PlansValueError(f"{_where(source, f'{prefix}.features_per_stage', features)}: expected whole numbers from 1 to 4096")
    for key in ("strides", "kernel_sizes"):
        value = kwargs.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(s, list) and len(s) == ndim and all(_is_int(v) and 1 <= v <= 64 for v in s) for s in value):
            raise PlansValueError(f"{_where(source, f'{prefix}.{key}', value)}: expected one list of {ndim} whole numbers (1 to 64) per stage")
        if features is not None and len(value) != len(features):
            raise PlansValueError(f"{_where(source, f'{prefix}.{key}', value)}: {len(value)} stages, but features_per_stage has {len(features)}")
    strides = kwargs.get("strides")
    if strides:
        total = [math.prod(s[axis] for s in strides) for axis in range(ndim)]
        if any(p % t for p, t in zip(patch, total)):
            raise PlansValueError(f"{source}: {configuration}.patch_size {patch} is not divisible by the network's total stride {total}")
    for key in ("n_conv_per_stage", "n_conv_per_stage_decoder"):
        value = kwargs.get(key)
        if value is not None and (not isinstance(value, list) or not all(_is_int(v) and 1 <= v <= 64 for v in value)):
            raise PlansValueError(f"{_where(source, f'{prefix}.{key}', value)}: expected whole numbers from 1 to 64")
