"""Images and masks as a KL autoencoder takes them: 3 channels in [-1, 1] at a square side.

Shared by autoencoder pretraining and GMS (medseg.tasks.autoencoder_pretraining,
medseg.tasks.latent_segmentation): both must present images the same way, or the latent space the
mapper learns in is not the one the autoencoder learned. Masks go through the same encoder as
3-channel images (foreground +1, background -1), as in GMS. Several foreground labels (multi-class
GMS) are painted in distinct corners of the RGB cube (label 1 white as in the binary case, then red,
green, blue, yellow, magenta, cyan; background black) and read back per pixel by the nearest colour
(a softmax over negative squared distances, so the loss has gradients)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medseg.errors import MedsegError


def autoencoder_image(array: np.ndarray, size: int, source: str = "the image") -> np.ndarray:
    """(C, H, W) -> (3, size, size) float32 in [-1, 1]. 8-bit images (whole values in 0..255) are
    scaled by 255, as the autoencoders were trained; others by their 0.5-99.5 percentile range.
    One channel is repeated."""
    if array.ndim != 3:
        raise MedsegError(f"{source}: a 2D image was expected, got an array of shape {list(array.shape[1:])}")
    if array.shape[0] not in (1, 3, 4):
        raise MedsegError(f"{source}: {array.shape[0]} channels; the autoencoder takes grey (1) or RGB (3) images")
    values = np.asarray(array[:3], dtype=np.float32)
    if not np.isfinite(values).all():
        raise MedsegError(f"{source}: {int((~np.isfinite(values)).sum())} pixels are NaN or infinite")
    if _eight_bit(values):  # 8-bit pictures (also after a reader made them float): as the autoencoders saw them
        unit = values / np.float32(255.0)
    else:
        low, high = np.percentile(values, [0.5, 99.5])
        unit = np.clip((values - np.float32(low)) / np.float32(max(float(high - low), 1e-6)), 0.0, 1.0)
    tensor = torch.from_numpy(np.ascontiguousarray(unit * 2.0 - 1.0, dtype=np.float32))[None]
    if tensor.shape[1] == 1:
        tensor = tensor.expand(-1, 3, -1, -1)
    if list(tensor.shape[2:]) != [size, size]:
        tensor = F.interpolate(tensor, size=[size, size], mode="bilinear", align_corners=False, antialias=True)
    return tensor[0].clamp(-1.0, 1.0).numpy()


def _eight_bit(values: np.ndarray) -> bool:
    return bool(values.min() >= 0 and values.max() <= 255 and np.array_equal(values, np.round(values)))


def mask_at(mask: np.ndarray, size: int) -> np.ndarray:
    """(H, W) binary -> (size, size) uint8 (nearest neighbour)."""
    tensor = torch.from_numpy(np.ascontiguousarray(mask > 0, dtype=np.float32))[None, None]
    return (F.interpolate(tensor, size=[size, size], mode="nearest")[0, 0] > 0.5).numpy().astype(np.uint8)


def labels_at(labels: np.ndarray, size: int) -> np.ndarray:
    """(H, W) integer labels -> (size, size) uint8 (nearest neighbour)."""
    tensor = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=[size, size], mode="nearest")[0, 0].round().numpy().astype(np.uint8)


# label k's colour is row k: background black, label 1 white (as a binary mask), then the other corners
LABEL_COLOURS = torch.tensor([
    [-1, -1, -1], [1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1],
], dtype=torch.float32)
MAX_LABELS = len(LABEL_COLOURS) - 1
COLOUR_TEMPERATURE = 0.5  # squared distance between neighbouring corners is 4: exp(-8) for a clean colour's rivals


def labels_as_image(labels: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) integer labels 0..7 -> (B, 3, H, W) colours in {-1, 1}: what the encoder takes."""
    return LABEL_COLOURS.to(labels.device)[labels[:, 0].long()].permute(0, 3, 1, 2)


def decoded_probabilities(decoded: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, 3, H, W) decoder output -> (B, num_classes, H, W) class probabilities (background first).
    Two classes read the binary way (GMS's: the channel mean as foreground probability)."""
    if num_classes == 2:
        foreground = decoded_mask(decoded)
        return torch.cat([1 - foreground, foreground], dim=1)
    colours = LABEL_COLOURS[:num_classes].to(decoded)  # (K, 3)
    distances = ((decoded[:, None] - colours[None, :, :, None, None]) ** 2).sum(dim=2)  # (B, K, H, W)
    return torch.softmax(-distances / COLOUR_TEMPERATURE, dim=1)


def mask_as_image(mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) in {0, 1} -> (B, 3, H, W) in {-1, 1}: what the encoder takes for a mask."""
    return (mask.float() * 2.0 - 1.0).expand(-1, 3, -1, -1)


def decoded_mask(decoded: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) decoder output -> (B, 1, H, W) foreground probability in [0, 1] (GMS's reading)."""
    return ((decoded.mean(dim=1, keepdim=True) + 1.0) / 2.0).clamp(0.0, 1.0)


def random_blob_masks(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 1, size, size) binary masks of smooth random blobs: shapes for the autoencoder to learn
    to reconstruct, without using any dataset's labels."""
    coarse = torch.randn(count, 1, max(2, size // 16), max(2, size // 16), generator=generator)
    smooth = F.interpolate(coarse, size=[size, size], mode="bicubic", align_corners=False)
    thresholds = torch.rand(count, 1, 1, 1, generator=generator) * 1.2 + 0.2  # from large regions to small islands
    return (smooth > thresholds).float()
