"""Tiny autoencoders of the TAESD family (TAESD, TAESDXL, TAESD3, TAEF1, TAEF2): small convolutional
distillations of latent-diffusion VAEs, pretrained on natural images, deterministic, downsampling 8.

A folder holds two state dicts of ``nn.Sequential`` modules, ``NAME_encoder.pth`` and
``NAME_decoder.pth`` (loaded with ``weights_only=True``); the layout is the one documented beside the
shared TAEF2 weights, the latent channels are read from the files (4 for TAESD, 16 for TAEF1, 32
for TAEF2). GMS segments in this latent space frozen, as its paper intends (medseg.tasks.
latent_segmentation); ``TinyAutoencoder`` therefore speaks the KL autoencoder's convention: images
and masks enter in [-1, 1], ``encode`` returns (mean, log-variance) with a log-variance so low that
sampling changes nothing, and the latents are shifted and scaled per channel (fitted on the training
images, ``fit_latent_scaling``) so the mapper sees unit-variance channels."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import MedsegError
from medseg.torch_files import load_plain

ENCODER_SUFFIX, DECODER_SUFFIX = "_encoder.pth", "_decoder.pth"
SCALING_FILE = "latent_scaling.json"
WIDTH = 64
DETERMINISTIC_LOGVAR = -60.0  # exp(-30) ~ 1e-13: a "sample" of this latent is its mean


def is_taesd_folder(folder: Path) -> bool:
    return Path(folder).is_dir() and any(Path(folder).glob(f"*{ENCODER_SUFFIX}"))


def _conv(channels_in: int, channels_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, 3, padding=1, **kwargs)


class _Block(nn.Module):
    """(B, C_in, H, W) -> (B, C_out, H, W): relu(three 3x3 convs + skip); a mid block first adds a
    pooled-channel term x + pool(x)."""

    def __init__(self, channels_in: int, channels_out: int, mid: bool = False):
        super().__init__()
        self.conv = nn.Sequential(_conv(channels_in, channels_out), nn.ReLU(), _conv(channels_out, channels_out), nn.ReLU(), _conv(channels_out, channels_out))
        self.skip = nn.Conv2d(channels_in, channels_out, 1, bias=False) if channels_in != channels_out else nn.Identity()
        wide = 4 * channels_in
        self.pool = (
            nn.Sequential(nn.Conv2d(channels_in, wide, 1, bias=False), nn.GroupNorm(4, wide), nn.ReLU(), nn.Conv2d(wide, channels_in, 1, bias=False))
            if mid else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return F.relu(self.conv(x) + self.skip(x))


class _Clamp(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z / 3) * 3


def tiny_encoder(latent_channels: int) -> nn.Sequential:
    """(B, 3, H, W) in [0, 1] -> (B, latent, H/8, W/8)."""
    down = lambda: _conv(WIDTH, WIDTH, stride=2, bias=False)  # noqa: E731
    block = lambda: _Block(WIDTH, WIDTH)  # noqa: E731
    return nn.Sequential(
        _conv(3, WIDTH), block(),
        down(), block(), block(), block(),
        down(), block(), block(), block(),
        down(), _Block(WIDTH, WIDTH, mid=True), _Block(WIDTH, WIDTH, mid=True), _Block(WIDTH, WIDTH, mid=True),
        _conv(WIDTH, latent_channels),
    )


def tiny_decoder(latent_channels: int) -> nn.Sequential:
    """(B, latent, h, w) -> (B, 3, 8h, 8w), roughly in [0, 1]."""
    up = lambda: nn.Upsample(scale_factor=2)  # noqa: E731  nearest
    conv = lambda: _conv(WIDTH, WIDTH, bias=False)  # noqa: E731
    block = lambda: _Block(WIDTH, WIDTH)  # noqa: E731
    return nn.Sequential(
        _Clamp(), _conv(latent_channels, WIDTH), nn.ReLU(),
        _Block(WIDTH, WIDTH, mid=True), _Block(WIDTH, WIDTH, mid=True), _Block(WIDTH, WIDTH, mid=True),
        up(), conv(), block(), block(), block(),
        up(), conv(), block(), block(), block(),
        up(), conv(), block(),
        _conv(WIDTH, 3),
    )


class TinyAutoencoder(nn.Module):
    """Frozen TAESD-family autoencoder in the KL autoencoder's convention (images in [-1, 1])."""

    deterministic = True
    downsampling = 8

    def __init__(self, latent_channels: int):
        super().__init__()
        self.encoder, self.decoder = tiny_encoder(latent_channels), tiny_decoder(latent_channels)
        self.register_buffer("latent_shift", torch.zeros(latent_channels))
        self.register_buffer("latent_scale", torch.ones(latent_channels))
        self.folder: Path | None = None
        self.scaling_fitted = False

    @property
    def latent_channels(self) -> int:
        return int(self.latent_shift.numel())

    def encode_unscaled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, latent, H/8, W/8) as the encoder gives it."""
        return self.encoder((x + 1.0) / 2.0)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] -> (mean, log-variance), each (B, latent, H/8, W/8), scaled."""
        mean = (self.encode_unscaled(x) - self.latent_shift[:, None, None]) / self.latent_scale[:, None, None]
        return mean, torch.full_like(mean, DETERMINISTIC_LOGVAR)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent, h, w) scaled -> (B, 3, 8h, 8w) in about [-1, 1]."""
        return self.decoder(z * self.latent_scale[:, None, None] + self.latent_shift[:, None, None]) * 2.0 - 1.0


def _weights_file(folder: Path, suffix: str) -> Path:
    found = sorted(folder.glob(f"*{suffix}"))
    if len(found) != 1:
        raise MedsegError(f"{folder}: expected one *{suffix} file (a TAESD-family autoencoder), found {len(found)}" + (f": {', '.join(p.name for p in found)}" if found else ""))
    return found[0]


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    state = load_plain(path, "state dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MedsegError(f"{path}: not a state dict of tensors")
    return state


def _fit_layout(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``state`` into ``module``, or name the first key whose presence or shape differs."""
    expected = module.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise MedsegError(f"{path}: tensor {key} is missing; the TAESD layout has {key} of shape {list(tensor.shape)}")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise MedsegError(f"{path}: tensor {key} has shape {list(state[key].shape)}; the TAESD layout expects {list(tensor.shape)}")
    extra = [key for key in state if key not in expected]
    if extra:
        raise MedsegError(f"{path}: tensor {extra[0]} (shape {list(state[extra[0]].shape)}) is not in the TAESD layout")
    module.load_state_dict({key: value.float() for key, value in state.items()})


def load_taesd(folder: Path) -> TinyAutoencoder:
    """A TAESD-family folder (``*_encoder.pth`` + ``*_decoder.pth``, optionally ``latent_scaling.json``),
    frozen in eval mode; a file that does not fit the layout is named with its first differing tensor."""
    folder = Path(folder)
    encoder_file, decoder_file = _weights_file(folder, ENCODER_SUFFIX), _weights_file(folder, DECODER_SUFFIX)
    encoder_state, decoder_state = _read_state(encoder_file), _read_state(decoder_file)
    last = max((key for key in encoder_state if key.endswith(".weight")), key=lambda key: int(key.split(".")[0]), default=None)
    if last is None or encoder_state[last].ndim != 4:
        raise MedsegError(f"{encoder_file}: no final convolution to read the latent channels from")
    model = TinyAutoencoder(int(encoder_state[last].shape[0]))
    _fit_layout(model.encoder, encoder_state, encoder_file)
    _fit_layout(model.decoder, decoder_state, decoder_file)
    scaling = folder / SCALING_FILE
    if scaling.is_file():
        shift, scale = read_latent_scaling(scaling, model.latent_channels)
        model.latent_shift.copy_(shift)
        model.latent_scale.copy_(scale)
        model.scaling_fitted = True
    model.eval().requires_grad_(False)
    model.folder = folder
    return model


def weights_files(folder: Path) -> list[Path]:
    """The files that make the autoencoder (what a model folder copies and digests)."""
    folder = Path(folder)
    files = [_weights_file(folder, ENCODER_SUFFIX), _weights_file(folder, DECODER_SUFFIX)]
    return files + ([folder / SCALING_FILE] if (folder / SCALING_FILE).is_file() else [])


def read_latent_scaling(path: Path, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        content = json.loads(path.read_text())
        shift, scale = torch.tensor(content["shift"], dtype=torch.float32), torch.tensor(content["scale"], dtype=torch.float32)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MedsegError(f"{path}: unreadable latent scaling ({type(error).__name__}: {error})") from None
    if shift.shape != (channels,) or scale.shape != (channels,) or not bool((scale > 0).all()):
        raise MedsegError(f"{path}: needs {channels} shifts and {channels} positive scales")
    return shift, scale


@torch.no_grad()
def fit_latent_scaling(model: TinyAutoencoder, images: torch.Tensor, target: Path) -> None:
    """Per-channel mean and standard deviation of the unscaled latents of ``images`` (N, 3, H, W) in
    [-1, 1]; set on ``model`` and written to ``target`` (the model folder's copy)."""
    from medseg.atomic import write_json_atomic

    latents = model.encode_unscaled(images.to(model.latent_shift.device)).transpose(0, 1).flatten(1)  # (latent, N*h*w)
    shift, scale = latents.mean(dim=1), latents.std(dim=1).clamp_min(1e-3)
    model.latent_shift.copy_(shift)
    model.latent_scale.copy_(scale)
    model.scaling_fitted = True
    write_json_atomic(target / SCALING_FILE, {"shift": shift.cpu().tolist(), "scale": scale.cpu().tolist(), "images": int(images.shape[0])})
