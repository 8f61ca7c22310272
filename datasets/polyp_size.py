"""Polyp size classification from colonoscopy frames (REAL-Colon or SUN layouts) -> a multi-class
classification dataset: diminutive (<= 5 mm), small (6-9 mm), large (>= 10 mm).

REAL-Colon: ``lesion_info.csv`` (unique_object_id, unique_video_name, 'size [mm]', histology_class),
``{SSS}-{VVV}_annotation/*.xml`` (VOC boxes, ``unique_id`` per object) and ``{SSS}-{VVV}_frames/*.jpg``.
SUN / SUN-SEG: ``.../Frame/{case}_{clip}/*.jpg`` (optional ``GT/`` masks give the box) and a table
``polyp_sizes.csv`` (case,size_mm) transcribed from the SUN database's per-case clinical information.

Every ``FRAME_STEP``-th annotated frame showing exactly one lesion is kept, scaled so its longer side
is at most ``MAX_SIDE`` pixels; ``group`` (the video / SUN case) must be used to split without leakage.
"""

from __future__ import annotations

import csv
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from medseg.data.builder import ConversionSummary, RawDatasetBuilder
from medseg.errors import DatasetError, MedsegError
from medseg.io import MedicalImage, read_image
from medseg_datasets.registry import Recipe, register_recipe

SIZE_CLASSES = ["diminutive", "small", "large"]
FRAME_STEP = 10
MAX_SIDE = 512


def size_class(size_mm: float) -> str:
    if size_mm <= 5:
        return "diminutive"
    return "small" if size_mm < 10 else "large"


def _downscale(image: MedicalImage, box: tuple[int, int, int, int]) -> tuple[MedicalImage, tuple[int, ...]]:
    from PIL import Image

    height, width = image.spatial_shape
    scale = min(1.0, MAX_SIDE / max(height, width))
    if scale == 1.0:
        return image, box
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    pil = Image.fromarray(np.moveaxis(image.array, 0, -1).squeeze()).resize(size, Image.BILINEAR)
    data = np.asarray(pil)
    array = data[None] if data.ndim == 2 else np.moveaxis(data, -1, 0)
    return MedicalImage(np.ascontiguousarray(array), (1.0, 1.0), (0.0, 0.0), image.direction), tuple(round(v * scale) for v in box)


def _real_colon_frames(src: Path):
    """Yield (frame path, lesion id, box, group) for REAL-Colon frames with exactly one lesion."""
    for annotation_folder in sorted(src.glob("*_annotation*")):
        if not annotation_folder.is_dir():
            continue
        video = annotation_folder.name.split("_annotation")[0]
        frames_folder = next((p for p in src.glob(f"{video}_frames*") if p.is_dir()), None)
        annotated = []
        for xml_path in sorted(annotation_folder.rglob("*.xml")):
            try:
                root = ElementTree.parse(xml_path).getroot()
            except ElementTree.ParseError as error:
                yield xml_path, None, f"unreadable annotation ({error})", video
                continue
            objects = root.findall("object")
            if len(objects) == 1:
                annotated.append((xml_path, root, objects[0]))
        for xml_path, root, lesion in annotated[::FRAME_STEP]:
            box = lesion.find("bndbox")
            coordinates = tuple(int(float(box.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax"))
            filename = root.findtext("filename") or f"{xml_path.stem}.jpg"
            frame = (frames_folder / filename) if frames_folder else xml_path.with_suffix(".jpg")
            yield frame, lesion.findtext("unique_id"), coordinates, video


def _read_real_colon_sizes(path: Path) -> dict[str, tuple[float, str]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        size_column = next((c for c in reader.fieldnames or [] if c.lower().startswith("size")), None)
        if size_column is None or "unique_object_id" not in (reader.fieldnames or []):
            raise DatasetError(f"{path}: expected columns unique_object_id and 'size [mm]'")
        return {row["unique_object_id"]: (float(row[size_column]), row.get("histology_class", "")) for row in reader if row[size_column]}


def _sun_frames(src: Path):
    sizes_path = src / "polyp_sizes.csv"
    with sizes_path.open(newline="") as handle:
        sizes = {row["case"].strip(): float(row["size_mm"]) for row in csv.DictReader(handle)}
    for frame_root in sorted(p for p in src.rglob("Frame") if p.is_dir()):
        for clip in sorted(p for p in frame_root.iterdir() if p.is_dir()):
            case = re.split(r"_\d+$", clip.name)[0]
            for frame in sorted(clip.glob("*.jpg"))[::FRAME_STEP]:
                mask_path = frame_root.parent / "GT" / clip.name / f"{frame.stem}.png"
                yield frame, case, sizes.get(case), mask_path, case


def _box_from_mask(mask_path: Path) -> tuple[int, int, int, int]:
    if not mask_path.is_file():
        return (0, 0, 0, 0)
    rows, cols = np.nonzero(read_image(mask_path).array[0] > 127)
    return (int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())) if rows.size else (0, 0, 0, 0)


def convert(src: Path, out: Path, overwrite: bool = False, progress=None) -> ConversionSummary:
    src = Path(src)
    rows = []
    with RawDatasetBuilder(out, ".png", overwrite, progress) as builder:

        def add(frame: Path, size_mm: float, box, group: str, histology: str = "") -> None:
            image = read_image(frame)
            image, box = _downscale(image, box)
            case_id = frame.stem if frame.stem.startswith(group) else f"{group}_{frame.stem}"
            builder.add_image(case_id, image)
            rows.append([case_id, size_class(size_mm), size_mm, group, " ".join(map(str, box)), histology])

        if (src / "lesion_info.csv").is_file():
            source = "REAL-Colon"
            sizes = _read_real_colon_sizes(src / "lesion_info.csv")
            for frame, lesion, box, video in _real_colon_frames(src):
                try:
                    if lesion is None:
                        raise MedsegError(f"{frame}: {box}")
                    if lesion not in sizes:
                        raise MedsegError(f"{frame}: lesion {lesion!r} has no size in lesion_info.csv")
                    add(frame, sizes[lesion][0], box, video, sizes[lesion][1])
                except MedsegError as error:
                    builder.skip(str(frame), str(error))
        elif (src / "polyp_sizes.csv").is_file():
            source = "SUN"
            for frame, case, size_mm, mask_path, group in _sun_frames(src):
                try:
                    if size_mm is None:
                        raise MedsegError(f"{frame}: case {case!r} has no size in polyp_sizes.csv")
                    add(frame, size_mm, _box_from_mask(mask_path), group)
                except MedsegError as error:
                    builder.skip(str(frame), str(error))
        else:
            raise DatasetError(f"{src}: expected REAL-Colon (lesion_info.csv) or SUN (polyp_sizes.csv + Frame/) layout")
        builder.summary.num_training = len(rows)
        with builder.path("labelsTr.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["case", "label", "size_mm", "group", "box_xyxy", "histology"])
            writer.writerows(rows)
        return builder.finish(
            {
                "name": "PolypSize",
                "task": "classification",
                "description": f"Polyp size from {source} colonoscopy frames (diminutive <=5 mm, small 6-9 mm, large >=10 mm)",
                "channel_names": {"0": "R", "1": "G", "2": "B"},
                "classes": SIZE_CLASSES,
                "multi_label": False,
                "numTraining": len(rows),
                "file_ending": ".png",
                "split_group_column": "group",
            }
        )


RECIPE = register_recipe(
    Recipe(
        name="PolypSize",
        dataset_id=5,
        task_type="classification",
        summary="Polyp size classes from REAL-Colon or SUN colonoscopy frames (2D, RGB, 3 classes)",
        source="REAL-Colon release (lesion_info.csv, *_annotation/, *_frames/) or SUN-SEG frames + polyp_sizes.csv",
        convert=convert,
    )
)
