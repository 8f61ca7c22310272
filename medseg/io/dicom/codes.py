"""Coded segment descriptions for DICOM SEG and RTSTRUCT: label name -> SNOMED-CT category and type.

A model folder may hold ``segment_codes.json`` mapping label names to codes, each a
[scheme, value, meaning] triple:

    {"liver": {"category": ["SCT", "91723000", "Anatomical Structure"], "type": ["SCT", "10200004", "Liver"]}}

Labels it does not list get defaults: the label name looked up in pydicom's SNOMED-CT dictionary
(``left_kidney`` -> Kidney, ``inferior_vena_cava`` -> Inferior vena cava), under the category
"Anatomical Structure", or "Morphologically Abnormal Structure" for names such as tumour, lesion,
polyp, cyst or nodule; a name found nowhere is coded as Tissue and keeps its own name as the
segment label, so a viewer still shows what the model called it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from medseg.errors import MedsegError

CODES_FILE = "segment_codes.json"
Code = tuple[str, str, str]  # (scheme designator, value, meaning)

ANATOMICAL_STRUCTURE: Code = ("SCT", "91723000", "Anatomical Structure")
ABNORMAL_STRUCTURE: Code = ("SCT", "49755003", "Morphologically Abnormal Structure")
TISSUE: Code = ("SCT", "85756007", "Tissue")
ABNORMAL_WORDS = {"tumor", "tumour", "lesion", "neoplasm", "mass", "polyp", "cyst", "nodule", "metastasis", "cancer", "carcinoma"}
# Names whose SNOMED-CT concept pydicom files under another word.
SYNONYMS = {
    "tumour": "Tumor", "nuclei": "Nucleus", "urinary_bladder": "Bladder", "vessel": "BloodVessel", "polyp": "PolypOfColon",
}
SIDE_WORDS = {"left", "right", "l", "r"}


@dataclass(frozen=True)
class SegmentCode:
    label: str  # the label name as the model knows it (the segment label in the DICOM object)
    category: Code
    type: Code


def _sct(name: str) -> Code | None:
    from pydicom.sr.codedict import codes

    try:
        code = getattr(codes.SCT, name)
    except AttributeError:
        return None
    return ("SCT", str(code.value), str(code.meaning))


def default_code(label: str) -> SegmentCode:
    words = [w for w in re.split(r"[^a-z0-9]+", label.lower()) if w]
    abnormal = bool(ABNORMAL_WORDS & set(words))
    category = ABNORMAL_STRUCTURE if abnormal else ANATOMICAL_STRUCTURE
    candidates = [words, [w for w in words if w not in SIDE_WORDS]]
    for candidate in candidates:
        if not candidate:
            continue
        joined = "_".join(candidate)
        names = [SYNONYMS[joined]] if joined in SYNONYMS else []
        names.append("".join(w.capitalize() for w in candidate))
        for name in names:
            found = _sct(name)
            if found:
                return SegmentCode(label, category, found)
    unknown = ABNORMAL_STRUCTURE if abnormal else TISSUE  # category and type both: what we can honestly say
    return SegmentCode(label, unknown, unknown)


def _triple(value, source: Path, label: str, key: str) -> Code:
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) and v for v in value)):
        raise MedsegError(f"{source}: {label}.{key} must be [scheme, value, meaning] (three non-empty strings), got {value!r}")
    return (value[0], value[1], value[2])


def segment_codes(labels: dict[str, int], model_folder: Path | None = None) -> dict[str, SegmentCode]:
    """Foreground label name -> its code, from the model folder's table where it has one."""
    table = {}
    path = Path(model_folder) / CODES_FILE if model_folder else None
    if path is not None and path.is_file():
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise MedsegError(f"{path}: not readable JSON ({error})") from None
        if not isinstance(table, dict):
            raise MedsegError(f"{path}: expected an object mapping label names to codes")
        unknown = sorted(set(table) - set(labels))
        if unknown:
            raise MedsegError(f"{path}: codes for labels the model does not have: {', '.join(unknown)} (labels: {', '.join(labels)})")
    result = {}
    for name, value in labels.items():
        if value == 0:
            continue
        entry = table.get(name)
        if entry is None:
            result[name] = default_code(name)
        elif not isinstance(entry, dict):
            raise MedsegError(f"{path}: {name} must be an object with 'category' and 'type'")
        else:
            result[name] = SegmentCode(name, _triple(entry.get("category"), path, name, "category"), _triple(entry.get("type"), path, name, "type"))
    return result
