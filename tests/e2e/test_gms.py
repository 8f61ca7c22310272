"""GMS: the KL autoencoder (diffusers' layout, both ways), the gms mapper's contract, `medseg pretrain-ae`,
GMS trained through the CLI on a tiny AutoencoderKL folder, predict, compare, and bad autoencoder folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.errors import MedsegError
from medseg.io import MedicalImage, read_image, write_image
from medseg.models import build_model
from medseg.models.kl_autoencoder import AutoencoderKL, load_autoencoder, save_autoencoder
from tests.conftest import require_peer, run_cli

DATASET = "Dataset993_Disks"
TINY = {"block_out_channels": [8, 16, 32, 32], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 4, "scaling_factor": 0.5}


def disks_dataset(raw: Path, cases: int = 8, side: int = 32) -> None:
    """RGB images with one bright disk each (the label)."""
    from medseg.data.builder import RawDatasetBuilder

    rng = np.random.default_rng(0)
    geometry = ((1.0, 1.0), (0.0, 0.0), np.eye(2))
    yy, xx = np.mgrid[:side, :side]
    with RawDatasetBuilder(raw, ".png") as builder:
        for index in range(cases):
            cy, cx = rng.integers(side // 4, 3 * side // 4, 2)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < (side // 5) ** 2
            image = rng.integers(20, 90, (3, side, side)).astype(np.uint8)
            image[:, mask] = np.array([210, 130, 90], np.uint8)[:, None]
            builder.add_image(f"case_{index:03d}", MedicalImage(image, *geometry))
            builder.add_label(f"case_{index:03d}", MedicalImage(mask.astype(np.uint8)[None], *geometry))
        builder.finish({"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "disk": 1}, "numTraining": cases, "file_ending": ".png"})


def tiny_autoencoder_folder(folder: Path) -> Path:
    """A random AutoencoderKL folder, written by diffusers itself where it is installed."""
    torch.manual_seed(0)
    try:
        from diffusers import AutoencoderKL as DiffusersAutoencoderKL
    except ImportError:
        return save_autoencoder(AutoencoderKL(TINY), folder)
    levels = len(TINY["block_out_channels"])
    model = DiffusersAutoencoderKL(
        block_out_channels=tuple(TINY["block_out_channels"]), down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels, layers_per_block=1, latent_channels=4, norm_num_groups=4, scaling_factor=0.5,
    )
    model.save_pretrained(folder)
    return folder


def test_autoencoder_equals_diffusers_both_ways(tmp_path):
    require_peer("diffusers")
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL

    theirs = DiffusersAutoencoderKL.from_pretrained(tiny_autoencoder_folder(tmp_path / "theirs")).eval()
    ours = load_autoencoder(tmp_path / "theirs")
    x = torch.rand(2, 3, 32, 40) * 2 - 1
    z = torch.randn(2, 4, 4, 5)
    with torch.no_grad():
        posterior = theirs.encode(x).latent_dist
        mean, logvar = ours.encode(x)
        assert torch.allclose(mean, posterior.mean * 0.5, atol=1e-5)
        assert torch.allclose(logvar, posterior.logvar + 2 * np.log(0.5), atol=1e-4)
        assert torch.allclose(ours.decode(z), theirs.decode(z / 0.5).sample, atol=1e-4)
        save_autoencoder(ours, tmp_path / "ours")
        back = DiffusersAutoencoderKL.from_pretrained(tmp_path / "ours").eval()
        assert torch.allclose(back.decode(z / 0.5).sample, ours.decode(z), atol=1e-4)
    assert ours.downsampling == 8 and not any(p.requires_grad for p in ours.parameters())


def test_bad_autoencoder_folders_are_named(tmp_path):
    with pytest.raises(MedsegError, match="no autoencoder folder"):
        load_autoencoder(tmp_path / "missing")
    good = save_autoencoder(AutoencoderKL(TINY), tmp_path / "good")
    cases = {"config.json is missing": lambda f: (f / "config.json").unlink(), "not valid JSON": lambda f: (f / "config.json").write_text("{"),
             "not an AutoencoderKL": lambda f: (f / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"})),
             "safetensors is missing": lambda f: (f / "diffusion_pytorch_model.safetensors").unlink(),
             "unreadable safetensors": lambda f: (f / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage"),
             "does not fit": lambda f: (f / "config.json").write_text(json.dumps({**TINY, "latent_channels": 8}))}
    for message, damage in cases.items():
        broken = tmp_path / message.replace(" ", "_")
        broken.mkdir()
        for item in good.iterdir():
            (broken / item.name).write_bytes(item.read_bytes())
        damage(broken)
        with pytest.raises(MedsegError, match=message) as caught:
            load_autoencoder(broken)
        assert str(broken) in str(caught.value)


def test_gms_mapper_contract():
    torch.manual_seed(0)
    network = build_model({"name": "gms", "kwargs": {}}, 3, 2, deep_supervision=True)
    assert 1.4e6 < sum(p.numel() for p in network.parameters()) < 1.7e6  # GMS's ~1.5 M
    z = torch.randn(2, 4, 8, 8)
    outputs = network(z)
    assert len(outputs) == 4 and all(o.shape == z.shape for o in outputs)
    sum(o.pow(2).mean() for o in outputs).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in network.parameters())
    torch.manual_seed(0)
    single = build_model({"name": "gms", "kwargs": {}}, 3, 2).eval()
    network.eval()
    with torch.no_grad():
        assert torch.allclose(single(z), network(z)[0], atol=1e-6)


def test_pretrain_ae_then_gms_plan_and_train_predict_and_compare(tmp_path):
    root = tmp_path / "root"
    disks_dataset(root / "raw" / DATASET)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "broken.png").write_bytes(b"not a png")
    refused = run_cli("pretrain-ae", "--dataset", DATASET, "--images", extra, "--epochs", "1", "--iterations-per-epoch", "2", root=root)
    assert refused.returncode != 0 and "broken.png" in refused.stderr
    (extra / "broken.png").unlink()
    write_image(MedicalImage(np.full((3, 40, 40), 120, np.uint8), (1.0, 1.0), (0.0, 0.0), np.eye(2)), extra / "more.png")
    run_cli("pretrain-ae", "--dataset", DATASET, "--images", extra, "--epochs", "1", "--iterations-per-epoch", "2", "--replan", root=root, check=True)
    pretrained = root / "results" / DATASET / "kl_autoencoder__medsegPlans_kl_autoencoder__2d" / "fold_all"
    assert load_autoencoder(pretrained / "autoencoder").latent_channels == 4
    assert (pretrained / "reconstructions" / "epoch_0001.png").is_file()
    assert len(list((root / "preprocessed" / DATASET / "medsegPlans_kl_autoencoder_2d").glob("extra__*.npz"))) == 1

    # GMS with the dataset's own autoencoder (no --pretrained), trained and validated through the CLI
    trained = run_cli("plan-and-train", "--dataset", DATASET, "--model", "gms", "--folds", "0", "--epochs", "1", "--iterations-per-epoch", "2", root=root)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    folder = root / "results" / DATASET / "gms__medsegPlans_gms__2d"
    assert (folder / "autoencoder" / "config.json").is_file() and (folder / "fold_0" / "validation" / "summary.json").is_file()
    image = root / "raw" / DATASET / "imagesTr" / "case_000_0000.png"
    run_cli("predict", "-i", image, "-o", tmp_path / "out", "-m", folder, "--format", "label,overlay", root=root, check=True)
    predicted = read_image(tmp_path / "out" / "case_000.png")
    assert predicted.spatial_shape == read_image(image).spatial_shape and set(np.unique(predicted.array)) <= {0, 1}

    # another autoencoder for the same model folder is refused, naming both
    other = save_autoencoder(AutoencoderKL(TINY), tmp_path / "other_ae")
    mixed = run_cli("plan-and-train", "--dataset", DATASET, "--model", "gms", "--folds", "1", "--epochs", "1", "--iterations-per-epoch", "2", "--pretrained", other, root=root)
    assert mixed.returncode != 0 and "another one" in mixed.stderr

    compared = run_cli("compare", "--dataset", DATASET, "--models", "unet,gms", "--folds", "0", "--epochs", "1", "--iterations-per-epoch", "2", root=root)
    assert compared.returncode == 0, compared.stdout[-2000:] + compared.stderr[-2000:]
    table = json.loads((root / "results" / DATASET / "compare__2d" / "compare.json").read_text())
    assert set(table["families"]) == {"unet", "gms"}


def test_gms_trains_on_a_tiny_autoencoder_kl_folder(tmp_path):
    """The loading path: a random AutoencoderKL folder (diffusers' own when installed) given with --pretrained."""
    root = tmp_path / "root"
    disks_dataset(root / "raw" / DATASET, cases=6)
    tiny_autoencoder_folder(tmp_path / "sd_like" / "vae")
    missing = run_cli("plan-and-train", "--dataset", DATASET, "--model", "gms", "--folds", "0", "--epochs", "1", root=root)
    assert missing.returncode != 0 and "pretrain-ae" in missing.stderr  # no autoencoder anywhere: says how to get one
    trained = run_cli(
        "plan-and-train", "--dataset", DATASET, "--model", "gms", "--folds", "0", "--epochs", "1", "--iterations-per-epoch", "2",
        "--pretrained", tmp_path / "sd_like", root=root,  # a Stable Diffusion folder: its vae/ is found
    )
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    copied = load_autoencoder(root / "results" / DATASET / "gms__medsegPlans_gms__2d" / "autoencoder")
    assert copied.config["block_out_channels"] == TINY["block_out_channels"] and copied.config["scaling_factor"] == 0.5
    assert list((root / "preprocessed" / DATASET / "medsegPlans_gms_2d").glob("latents_*.pt"))  # latents computed once, cached


def test_gms_refuses_3d_datasets(tmp_path):
    root = tmp_path / "root"
    run_cli("datasets", "synth", "AbdomenMRI-demo", "--num-cases", "2", root=root, check=True)
    result = run_cli("plan-and-train", "--dataset", "AbdomenMRI-demo", "--model", "gms", "--folds", "0", "--epochs", "1", root=root)
    assert result.returncode != 0 and "gms is 2D; the dataset holds 3D images" in result.stderr
