"""Is this input like what the model was trained on? Each case is compared with the model folder's
input profile (medseg.audit.input_profile) before it is predicted; every finding names the check
and its numbers, so a reader can judge it without opening the code.

Checks (each with a margin beyond the training range, so ordinary variation passes):
- spacing per axis outside [training min / 2, training max * 2] (resampling copes with less);
- field of view per axis outside [min / 1.5, max * 1.5]; for a 3D image's slice axis, the number of
  slices below the training minimum / 1.5 (a series missing half its slices);
- the right-left array axis differs from every training image's (stored in another orientation);
- the DICOM Modality differs from the one the channel's name implies (an MR series to a CT model);
- intensities: a CT-normalised channel is in Hounsfield units, so its darkest voxels (0.5th
  percentile) may not be brighter than in training by a tenth of the training images' intensity
  span, nor its brightest (99.5th) outside the training range by a quarter of it (catches an MR, or
  a CT without its rescale applied; a field of view with more air, or the scanner's padding, only
  darkens the low end and passes); other channels have
  arbitrary units, so only their shape is checked: negative values where training had none, a
  span ten times off, the median's place in the span (an inverted image), voxels at the maximum
  (saturation).

``qc`` modes: ``warn`` records the findings and sets the case's review flag; ``refuse`` fails the
case naming them; ``off`` skips the checks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from medseg.audit.input_profile import image_intensity_statistics
from medseg.io import MedicalImage
from medseg.io.image import left_right_axis

QC_MODES = ("warn", "refuse", "off")
SPACING_FACTOR = 2.0
EXTENT_FACTOR = 1.5
INTENSITY_MARGIN = 0.1  # of the training images' median 0.5-99.5 percentile span
CT_BRIGHT_MARGIN = 0.25  # the same, for a CT's brightest voxels (bone and contrast vary more than air)
SPAN_FACTOR = 10.0
POSITION_MARGIN = 0.25  # of the span, for where the median sits in it
SATURATION_MARGIN = 0.05  # more of the image at its maximum than any training image, by this fraction


@dataclass
class Finding:
    check: str  # spacing, field_of_view, slices, orientation, modality, intensity
    message: str
    values: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _axis_name(axis: int, ndim: int) -> str:
    return ("slice axis 0" if axis == 0 else f"axis {axis}") if ndim == 3 else f"axis {axis}"


def check_geometry(profile: dict, image: MedicalImage) -> list[Finding]:
    findings = []
    if image.ndim != profile["ndim"]:
        return [Finding("dimensions", f"a {image.ndim}D image; the model was trained on {profile['ndim']}D images", {"ndim": image.ndim})]
    spacing, shape = profile["spacing_mm"], profile["shape"]
    extent = profile["extent_mm"]
    for axis in range(image.ndim):
        name = _axis_name(axis, image.ndim)
        low, high = spacing["min"][axis], spacing["max"][axis]
        value = image.spacing[axis]
        if value < low / SPACING_FACTOR or value > high * SPACING_FACTOR:
            findings.append(Finding("spacing", f"spacing {_fmt(value)} mm along {name} is far outside the training range {_fmt(low)}-{_fmt(high)} mm",
                                    {"axis": axis, "value": value, "training_min": low, "training_max": high}))
        count = image.spatial_shape[axis]
        if image.ndim == 3 and axis == 0 and count < shape["min"][0] / EXTENT_FACTOR:
            findings.append(Finding("slices", f"{count} slices; the training images had {int(shape['min'][0])} to {int(shape['max'][0])}",
                                    {"value": count, "training_min": shape["min"][0], "training_max": shape["max"][0]}))
            continue
        size = count * value
        low, high = extent["min"][axis], extent["max"][axis]
        too_large = not profile.get("shape_is_cropped") and size > high * EXTENT_FACTOR  # a cropped profile only bounds from below
        if size < low / EXTENT_FACTOR or too_large:
            findings.append(Finding("field_of_view", f"field of view {_fmt(size)} mm along {name} ({count} voxels) is far outside the training range {_fmt(low)}-{_fmt(high)} mm",
                                    {"axis": axis, "value": size, "voxels": count, "training_min": low, "training_max": high}))
    if image.ndim == 3 and profile.get("left_right_axes"):
        axis = left_right_axis(image.direction)
        if axis is not None and axis not in profile["left_right_axes"]:
            findings.append(Finding("orientation", f"the image's right-left direction runs along array axis {axis}; in the training images along axis "
                                    f"{' or '.join(str(a) for a in profile['left_right_axes'])} (stored in another orientation?)",
                                    {"value": axis, "training": profile["left_right_axes"]}))
    return findings


def check_modality(profile: dict, image: MedicalImage) -> list[Finding]:
    modality = str(image.metadata.get("modality", "") or "").upper()
    if not modality:
        return []
    expected = {channel["modality"] for channel in profile["channels"] if channel.get("modality")}
    if expected and modality not in expected:
        names = ", ".join(channel["name"] for channel in profile["channels"])
        return [Finding("modality", f"the DICOM series is {modality}; the model's input ({names}) is {' or '.join(sorted(expected))}",
                        {"value": modality, "expected": sorted(expected)})]
    return []


def _span(intensity: dict) -> float:
    return max(intensity["p99_5"]["median"] - intensity["p00_5"]["median"], 1e-6)


def _check_ct(trained: dict, stats: dict, index: int, label: str, span: float) -> list[Finding]:
    """Hounsfield units are absolute, but the median and the darkest values depend on the field of
    view and the scanner's padding (-1024 to -3024 outside the reconstruction circle): the darkest
    voxels may be darker than in training, not brighter (air is near -1000 HU in every CT); the
    brightest may not leave the training range by more than a quarter of its span."""
    findings = []
    low, high, value = trained["p00_5"]["min"], trained["p00_5"]["max"], stats["p00_5"]
    if value > high + INTENSITY_MARGIN * span:
        findings.append(Finding("intensity", f"{label}: the darkest voxels (0.5th percentile {_fmt(value)}) are brighter than in any training image "
                                f"({_fmt(low)} to {_fmt(high)} HU): air is near -1000 HU in a CT; an image of another modality, or a CT without its rescale applied?",
                                {"channel": index, "statistic": "p00_5", "value": value, "training_min": low, "training_max": high}))
    low, high, value = trained["p99_5"]["min"], trained["p99_5"]["max"], stats["p99_5"]
    margin = CT_BRIGHT_MARGIN * span
    if value > high + margin or value < low - margin:
        findings.append(Finding("intensity", f"{label}: the brightest voxels (99.5th percentile {_fmt(value)}) are far outside the training range "
                                f"{_fmt(low)} to {_fmt(high)} HU (an image of another modality, or one without its rescale applied?)",
                                {"channel": index, "statistic": "p99_5", "value": value, "training_min": low, "training_max": high}))
    return findings


def check_intensities(profile: dict, image: MedicalImage) -> list[Finding]:
    channels = profile["channels"]
    if not channels or "intensity" not in channels[0] or image.num_channels != len(channels):
        return []
    findings = []
    for index, (channel, stats) in enumerate(zip(channels, image_intensity_statistics(image.array))):
        trained = channel["intensity"]
        label = f"channel {index} ({channel['name']})"
        span = _span(trained)
        if channel.get("normalization") == "ct":  # medseg.planning normalisation scheme names
            findings += _check_ct(trained, stats, index, label, span)
        else:
            if trained["p00_5"]["min"] >= 0 and stats["p00_5"] < -INTENSITY_MARGIN * span:
                findings.append(Finding("intensity", f"{label}: negative intensities (0.5th percentile {_fmt(stats['p00_5'])}) where the training images had none "
                                        "(a CT or a differently scaled image?)", {"channel": index, "statistic": "p00_5", "value": stats["p00_5"]}))
            low, high = trained["span"]["min"], trained["span"]["max"]
            if stats["span"] < low / SPAN_FACTOR or stats["span"] > high * SPAN_FACTOR:
                findings.append(Finding("intensity", f"{label}: intensity span {_fmt(stats['span'])} (0.5th to 99.5th percentile) is more than "
                                        f"{SPAN_FACTOR:g} times off the training images' ({_fmt(low)} to {_fmt(high)})",
                                        {"channel": index, "statistic": "span", "value": stats["span"], "training_min": low, "training_max": high}))
            low, high = trained["median_position"]["min"], trained["median_position"]["max"]
            position = stats["median_position"]
            if position < low - POSITION_MARGIN or position > high + POSITION_MARGIN:
                findings.append(Finding("intensity", f"{label}: the median sits at {position:.0%} of the intensity span; in the training images at "
                                        f"{low:.0%} to {high:.0%} (an inverted or differently windowed image?)",
                                        {"channel": index, "statistic": "median_position", "value": position, "training_min": low, "training_max": high}))
        saturated = trained["fraction_at_max"]["max"] + SATURATION_MARGIN
        if stats["fraction_at_max"] > saturated:
            findings.append(Finding("intensity", f"{label}: {stats['fraction_at_max']:.0%} of the voxels are at the image's maximum; at most "
                                    f"{trained['fraction_at_max']['max']:.0%} in the training images (saturated?)",
                                    {"channel": index, "statistic": "fraction_at_max", "value": stats["fraction_at_max"]}))
    return findings


def check_input(profile: dict | None, image: MedicalImage) -> list[Finding]:
    """Every finding for ``image`` (C, *spatial) against ``profile``; none without a profile."""
    if not profile:
        return []
    findings = check_geometry(profile, image)
    if findings and findings[0].check == "dimensions":
        return findings
    return findings + check_modality(profile, image) + check_intensities(profile, image)


def parse_qc(mode: str) -> str:
    from medseg.errors import MedsegError

    if mode not in QC_MODES:
        raise MedsegError(f"--qc {mode!r}: choose {', '.join(QC_MODES)}")
    return mode


def findings_text(findings: list[Finding]) -> str:
    return "; ".join(finding.message for finding in findings)

