"""Training-curve PNG drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from medseg.atomic import atomic_path

WIDTH, HEIGHT, MARGIN = 900, 420, 50
LOSS_COLOURS = {"train_loss": (31, 119, 180), "val_loss": (255, 127, 14)}
SCORE_COLOUR = (44, 160, 44)


def draw_curves(path: Path, epochs: Sequence[dict], score_key: str = "pseudo_dice_ema") -> None:
    """Both losses (scaled to their range) and the validation score (0-1 scale) per epoch."""
    colours = {**LOSS_COLOURS, score_key: SCORE_COLOUR}
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([MARGIN, MARGIN // 2, WIDTH - MARGIN, HEIGHT - MARGIN], outline=(0, 0, 0))
    if epochs:
        losses = [e[k] for e in epochs for k in ("train_loss", "val_loss") if e.get(k) is not None]
        low, high = min(losses + [0.0]), max(losses + [1.0])
        for key, colour in colours.items():
            values = [e.get(key) for e in epochs]
            points = []
            for index, value in enumerate(values):
                if value is None:
                    continue
                x = MARGIN + (WIDTH - 2 * MARGIN) * (index / max(1, len(values) - 1))
                span = (1.0, 0.0) if key == score_key else (high, low)
                y = MARGIN // 2 + (HEIGHT - 1.5 * MARGIN) * (span[0] - value) / max(1e-9, span[0] - span[1])
                points.append((x, y))
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            elif points:
                draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=colour)
        for row, (key, colour) in enumerate(colours.items()):
            draw.text((MARGIN + 10, MARGIN // 2 + 8 + 14 * row), key + (" (0-1 scale)" if key == score_key else ""), fill=colour)
        draw.text((MARGIN, HEIGHT - MARGIN + 10), f"epoch 0 .. {len(epochs) - 1}   loss range {low:.3f} .. {high:.3f}", fill=(0, 0, 0))
    with atomic_path(path) as temporary:
        image.save(temporary)
