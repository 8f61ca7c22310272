"""Model specs: a registered family plus options that override what the planner picks.

``xlstm_unet_bot[vil_directions=forward,vil_blocks=4]`` plans xLSTM-UNet Bot with those two
architecture settings; ``medseg compare`` takes several specs of one family to measure a design
choice under the same budget. Each spec plans into its own plans file (``plans_suffix``) so
variants never overwrite each other's plans or model folders. Values are read as JSON where they
parse (numbers, lists, true/false) and as text otherwise."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from medseg.errors import MedsegError

_SPEC = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\[(.*)\])?\s*$", re.S)


@dataclass(frozen=True)
class ModelSpec:
    family: str
    options: dict = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.options:
            return self.family
        return f"{self.family}[{','.join(f'{k}={_text(v)}' for k, v in sorted(self.options.items()))}]"

    @property
    def plans_suffix(self) -> str:
        """File-name-safe name: ``xlstm_unet_bot-vil_directions-forward``."""
        parts = [self.family] + [re.sub(r"[^A-Za-z0-9_.]+", "-", f"{k}={_text(v)}").strip("-") for k, v in sorted(self.options.items())]
        return "-".join(parts)


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _split_top_level(text: str, separator: str = ",") -> list[str]:
    """Split on separators outside brackets: ``a,b[x=1,y=2]`` -> ``a``, ``b[x=1,y=2]``."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == separator and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def parse_model_spec(text: str) -> ModelSpec:
    """``family`` or ``family[key=value,...]``, checked against the family's declared options."""
    from medseg.models.registry import get_model_family

    match = _SPEC.match(text)
    if match is None:
        raise MedsegError(f"model {text!r}: expected FAMILY or FAMILY[option=value,...]")
    family = get_model_family(match.group(1))
    options = {}
    for item in _split_top_level(match.group(2) or ""):
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals or not key or not value.strip():
            raise MedsegError(f"model {text!r}: option {item!r} is not key=value")
        if key not in family.options:
            allowed = ", ".join(family.options) or "none"
            raise MedsegError(f"model {text!r}: {family.name} has no option {key!r} (its options: {allowed})")
        if key in options:
            raise MedsegError(f"model {text!r}: option {key!r} given twice")
        options[key] = _value(value.strip())
    return ModelSpec(family.name, options)


def parse_model_specs(text: str) -> list[ModelSpec]:
    """A comma-separated list of specs (commas inside brackets belong to the spec)."""
    specs = [parse_model_spec(part) for part in _split_top_level(text)]
    names = [str(spec) for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise MedsegError(f"models listed twice: {', '.join(duplicates)}")
    return specs
