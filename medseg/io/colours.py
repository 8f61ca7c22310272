"""One colour per label, the same in DICOM SEG, RTSTRUCT and overlay PNGs: a viewer shows the
model's liver in the same colour whichever output it opens."""

from __future__ import annotations

# Distinct, saturated RGB colours (label 1 first); labels beyond the list cycle through it.
PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200),
    (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
]


def label_colour(value: int) -> tuple[int, int, int]:
    """RGB of a foreground label value (1, 2, ...)."""
    if value < 1:
        raise ValueError(f"label {value} is background and has no colour")
    return PALETTE[(value - 1) % len(PALETTE)]
