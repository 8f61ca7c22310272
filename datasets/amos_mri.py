"""AbdomenMRI: the MRI part of the AMOS 2022 release -> a 3D segmentation dataset of 15 organs.

AMOS numbers cases amos_0001..0500 for CT and amos_0501.. for MRI; its imagesTr/labelsTr and
imagesVa/labelsVa (validation, also labelled) become our training cases, its imagesTs our test
images. Files are copied byte for byte after checking that image and label read and share geometry."""

from __future__ import annotations

import json
import re
from pathlib import Path

from medseg.data.builder import ConversionSummary, RawDatasetBuilder
from medseg.errors import DatasetError, MedsegError
from medseg.io import read_image
from medseg_datasets.registry import Recipe, register_recipe

FIRST_MRI_ID = 501
AMOS_LABELS = {
    "background": 0, "spleen": 1, "right_kidney": 2, "left_kidney": 3, "gallbladder": 4, "esophagus": 5,
    "liver": 6, "stomach": 7, "aorta": 8, "inferior_vena_cava": 9, "pancreas": 10, "right_adrenal_gland": 11,
    "left_adrenal_gland": 12, "duodenum": 13, "bladder": 14, "prostate_uterus": 15,
}
_CASE = re.compile(r"^amos_(\d{4})\.nii\.gz$")


def _labels_from_release(src: Path) -> dict[str, int]:
    """Label names as the release's dataset.json gives them ({"1": "spleen"}), else AMOS's published list."""
    path = src / "dataset.json"
    if not path.is_file():
        return dict(AMOS_LABELS)
    try:
        declared = json.loads(path.read_text()).get("labels", {})
        labels = {str(name).strip().replace(" ", "_").replace("/", "_"): int(value) for value, name in declared.items()}
    except (ValueError, AttributeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: cannot read AMOS labels ({error})") from error
    return labels or dict(AMOS_LABELS)


def _mri_cases(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if (m := _CASE.match(p.name)) and int(m.group(1)) >= FIRST_MRI_ID)


def convert(src: Path, out: Path, overwrite: bool = False, progress=None) -> ConversionSummary:
    src = Path(src)
    if not (src / "imagesTr").is_dir():
        raise DatasetError(f"{src}: expected the AMOS 2022 release (imagesTr/, labelsTr/, imagesVa/, labelsVa/, imagesTs/)")
    labels = _labels_from_release(src)
    with RawDatasetBuilder(out, ".nii.gz", overwrite, progress) as builder:
        for images, label_folder in (("imagesTr", "labelsTr"), ("imagesVa", "labelsVa")):
            for image_path in _mri_cases(src / images):
                case_id = image_path.name[: -len(".nii.gz")]
                label_path = src / label_folder / image_path.name
                try:
                    if not label_path.is_file():
                        raise MedsegError(f"{label_path}: missing label")
                    differences = read_image(image_path).geometry_differences(read_image(label_path), names=("image", "label"))
                    if differences:
                        raise MedsegError(f"{label_path}: geometry differs from image: {'; '.join(differences)}")
                except MedsegError as error:
                    builder.skip(str(image_path), str(error))
                    continue
                builder.add_image(case_id, image_path)
                builder.add_label(case_id, label_path)
                builder.summary.num_training += 1
        for image_path in _mri_cases(src / "imagesTs"):
            case_id = image_path.name[: -len(".nii.gz")]
            builder.add_image(case_id, image_path, split="Ts")
            builder.summary.num_test += 1
        return builder.finish(
            {
                "name": "AbdomenMRI",
                "description": "AMOS 2022 abdominal MRI, 15 organs",
                "channel_names": {"0": "MRI"},
                "labels": labels,
                "numTraining": builder.summary.num_training,
                "file_ending": ".nii.gz",
                "licence": "AMOS 2022: CC BY 4.0",
            }
        )


RECIPE = register_recipe(
    Recipe(
        name="AbdomenMRI",
        dataset_id=1,
        task_type="segmentation",
        summary="AMOS 2022 abdominal MRI, 15 organs (3D); the synthetic AbdomenMRI-demo stands in for it offline",
        source="the AMOS 2022 release folder (amos22/ with imagesTr, labelsTr, imagesVa, labelsVa, imagesTs)",
        convert=convert,
    )
)
