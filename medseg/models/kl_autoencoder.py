"""A KL autoencoder (Stable Diffusion's VAE) with the parameter names and folder layout of diffusers'
``AutoencoderKL``, so a folder written by ``AutoencoderKL.save_pretrained`` (config.json +
diffusion_pytorch_model.safetensors) loads here without diffusers, and ours load in diffusers.

GMS (medseg.tasks.latent_segmentation) segments in the latent space of such an autoencoder, frozen.
``medseg pretrain-ae`` trains a small one (downsampling 8, 4 latent channels) where no pretrained
weights are at hand (nothing can be downloaded here). Images enter in [-1, 1], 3 channels."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import MedsegError
from medseg.models.registry import ModelFamily, register_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"

# ``medseg pretrain-ae``'s autoencoder: downsampling 8 (three halvings), 4 latent channels, 3.9 M parameters
SMALL = {
    "in_channels": 3, "out_channels": 3, "block_out_channels": [32, 64, 128, 128], "layers_per_block": 1,
    "latent_channels": 4, "norm_num_groups": 16, "scaling_factor": 1.0, "sample_size": 128,
}
DEFAULTS = {
    "in_channels": 3, "out_channels": 3, "block_out_channels": [64], "layers_per_block": 1, "act_fn": "silu", "latent_channels": 4,
    "norm_num_groups": 32, "sample_size": 32, "scaling_factor": 0.18215, "shift_factor": None, "use_quant_conv": True,
    "use_post_quant_conv": True, "mid_block_add_attention": True,
}


class ResnetBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels_in, eps=1e-6)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels_out, eps=1e-6)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Attention(nn.Module):
    """Single-head self-attention over the H x W positions, with a residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.to_q, self.to_k, self.to_v = nn.Linear(channels, channels), nn.Linear(channels, channels), nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        h = F.scaled_dot_product_attention(self.to_q(h)[:, None], self.to_k(h)[:, None], self.to_v(h)[:, None])[:, 0]
        h = self.to_out[0](h).transpose(1, 2).reshape(batch, channels, height, width)
        return x + h


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups), ResnetBlock(channels, channels, groups)])
        self.attentions = nn.ModuleList([Attention(channels, groups)]) if attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # diffusers' asymmetric padding


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Stage(nn.Module):
    """One encoder (down) or decoder (up) block: resnets, then the resampler (none at the last)."""

    def __init__(self, resnets: list[nn.Module], resampler: nn.Module | None, name: str):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        if resampler is not None:
            setattr(self, name, nn.ModuleList([resampler]))
        self.resampler_name = name if resampler is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return getattr(self, self.resampler_name)[0](x) if self.resampler_name else x


class Encoder(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        widths, groups, layers = config["block_out_channels"], config["norm_num_groups"], config["layers_per_block"]
        self.conv_in = nn.Conv2d(config["in_channels"], widths[0], 3, padding=1)
        stages, previous = [], widths[0]
        for index, width in enumerate(widths):
            last = index == len(widths) - 1
            resnets = [ResnetBlock(previous if i == 0 else width, width, groups) for i in range(layers)]
            stages.append(_Stage(resnets, None if last else Downsample(width), "downsamplers"))
            previous = width
        self.down_blocks = nn.ModuleList(stages)
        self.mid_block = MidBlock(widths[-1], groups, config["mid_block_add_attention"])
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(widths[-1], 2 * config["latent_channels"], 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for stage in self.down_blocks:
            x = stage(x)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        widths, groups, layers = list(reversed(config["block_out_channels"])), config["norm_num_groups"], config["layers_per_block"]
        self.conv_in = nn.Conv2d(config["latent_channels"], widths[0], 3, padding=1)
        self.mid_block = MidBlock(widths[0], groups, config["mid_block_add_attention"])
        stages, previous = [], widths[0]
        for index, width in enumerate(widths):
            last = index == len(widths) - 1
            resnets = [ResnetBlock(previous if i == 0 else width, width, groups) for i in range(layers + 1)]
            stages.append(_Stage(resnets, None if last else Upsample(width), "upsamplers"))
            previous = width
        self.up_blocks = nn.ModuleList(stages)
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(widths[-1], config["out_channels"], 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for stage in self.up_blocks:
            x = stage(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    """(B, 3, H, W) in [-1, 1] <-> (B, latent_channels, H / f, W / f) latents, f = 2^(levels - 1).
    ``encode`` gives the scaled latent distribution's mean and log-variance, ``decode`` takes scaled latents."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        self.config = _complete(config or SMALL)
        self.encoder, self.decoder = Encoder(self.config), Decoder(self.config)
        latent = self.config["latent_channels"]
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1) if self.config["use_quant_conv"] else None
        self.post_quant_conv = nn.Conv2d(latent, latent, 1) if self.config["use_post_quant_conv"] else None

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.config["block_out_channels"]) - 1)

    @property
    def latent_channels(self) -> int:
        return self.config["latent_channels"]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = moments.chunk(2, dim=1)
        scale, shift = self.config["scaling_factor"], self.config["shift_factor"] or 0.0
        # scaled latents z' = (z - shift) * scale: the mean moves, the log-variance gains 2 log(scale)
        return (mean - shift) * scale, logvar.clamp(-30.0, 20.0) + 2 * torch.log(torch.tensor(scale))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = z / self.config["scaling_factor"] + (self.config["shift_factor"] or 0.0)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(self, x: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (reconstruction, mean, logvar): what training needs for the reconstruction and KL terms."""
        mean, logvar = self.encode(x)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar) if sample else mean
        return self.decode(z), mean, logvar


def _complete(config: dict) -> dict:
    full = {**DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    for key in ("down_block_types", "up_block_types"):
        kinds = config.get(key)
        expected = "DownEncoderBlock2D" if key.startswith("down") else "UpDecoderBlock2D"
        if kinds is not None and any(kind != expected for kind in kinds):
            raise MedsegError(f"autoencoder {key} {list(kinds)}: only {expected} blocks are supported")
    if full["act_fn"] != "silu":
        raise MedsegError(f"autoencoder act_fn {full['act_fn']!r}: only silu is supported")
    full["block_out_channels"] = [int(c) for c in full["block_out_channels"]]
    full.pop("down_block_types", None)
    full.pop("up_block_types", None)
    return full


def save_autoencoder(model: AutoencoderKL, folder: Path) -> Path:
    """diffusers' layout: config.json and diffusion_pytorch_model.safetensors, written atomically."""
    from safetensors.torch import save_file

    from medseg.atomic import atomic_path, write_json_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    levels = len(model.config["block_out_channels"])
    config = {"_class_name": "AutoencoderKL", **model.config, "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels}
    with atomic_path(folder / WEIGHTS_FILE) as temporary:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(temporary))
    write_json_atomic(folder / CONFIG_FILE, config)
    return folder


def autoencoder_folder(folder: Path) -> Path:
    """The folder itself, or the ``vae/`` of a Stable Diffusion folder."""
    folder = Path(folder)
    return folder / "vae" if not (folder / CONFIG_FILE).is_file() and (folder / "vae" / CONFIG_FILE).is_file() else folder


def load_autoencoder(folder: Path) -> AutoencoderKL:
    """An ``AutoencoderKL`` folder (diffusers' layout, or a ``vae/`` subfolder of a Stable Diffusion
    folder), frozen in eval mode. A missing or damaged folder is named with the problem."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = autoencoder_folder(folder)
    if not folder.is_dir():
        raise MedsegError(f"{folder}: no autoencoder folder there (expected config.json and {WEIGHTS_FILE})")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise MedsegError(f"{folder}: not an AutoencoderKL folder: {CONFIG_FILE} is missing") from None
    except ValueError as error:
        raise MedsegError(f"{folder / CONFIG_FILE}: not valid JSON ({error})") from None
    if not isinstance(config, dict) or config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise MedsegError(f"{folder / CONFIG_FILE}: describes a {config.get('_class_name') if isinstance(config, dict) else 'non-object'}, not an AutoencoderKL")
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise MedsegError(f"{folder}: {WEIGHTS_FILE} is missing")
    try:
        model = AutoencoderKL(config)
    except (KeyError, TypeError, ValueError) as error:
        raise MedsegError(f"{folder / CONFIG_FILE}: cannot build the autoencoder it describes ({error})") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as error:
        raise MedsegError(f"{weights}: unreadable safetensors file ({error})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise MedsegError(f"{weights}: does not fit {folder / CONFIG_FILE} ({str(error).splitlines()[0]})") from None
    model.eval().requires_grad_(False)
    model.folder = folder
    return model


def _build(in_channels: int, num_classes: int, deep_supervision: bool = False, **kwargs) -> AutoencoderKL:
    """The family's builder: ``SMALL`` with the plan's overrides (image channels are always 3)."""
    return AutoencoderKL({**SMALL, **kwargs})


register_model(
    ModelFamily(
        name="kl_autoencoder",
        build=_build,
        task_type="autoencoder_pretraining",
        dims=(2,),
        summary="KL autoencoder (Stable Diffusion's VAE, diffusers' layout): f=8, 4 latent channels; the frozen space GMS segments in",
        options=("block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups"),
    )
)
