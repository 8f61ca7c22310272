"""The frozen autoencoders GMS segments in, whatever their source: a KL autoencoder folder
(diffusers' layout: medseg.models.kl_autoencoder, what ``medseg pretrain-ae`` writes) or a TAESD-family
folder (``*_encoder.pth`` / ``*_decoder.pth``: medseg.models.taesd, e.g. the shared TAEF2).

A model folder keeps its own copy (``copy_autoencoder``) with ``source.json``: the kind, where it
came from and the sha256 of each weights file, checked again whenever the copy is loaded, so
weights changed outside medseg are refused by name."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from medseg.errors import MedsegError
from medseg.model_card import sha256_of

SOURCE_FILE = "source.json"


def kind_of(folder: Path) -> str:
    from medseg.models import kl_autoencoder, taesd

    folder = Path(folder)
    if taesd.is_taesd_folder(folder):
        return "taesd"
    if (kl_autoencoder.autoencoder_folder(folder) / kl_autoencoder.CONFIG_FILE).is_file() or not folder.is_dir():
        return "kl"  # or nothing there: the KL loader names what is missing
    raise MedsegError(
        f"{folder}: not an autoencoder folder (expected config.json + {kl_autoencoder.WEIGHTS_FILE} of a KL autoencoder, "
        f"or NAME{taesd.ENCODER_SUFFIX} + NAME{taesd.DECODER_SUFFIX} of a TAESD-family one)"
    )


def weights_files(folder: Path) -> list[Path]:
    """The files that hold the weights (what is compared by content and recorded by sha256)."""
    from medseg.models import kl_autoencoder, taesd

    if kind_of(folder) == "taesd":
        return [p for p in taesd.weights_files(folder) if p.name != taesd.SCALING_FILE]
    inner = kl_autoencoder.autoencoder_folder(folder)
    return [inner / kl_autoencoder.CONFIG_FILE, inner / kl_autoencoder.WEIGHTS_FILE]


def weights_digest(folder: Path) -> str:
    """One sha256 over the weights files' digests (the name of this autoencoder's content)."""
    import hashlib

    return hashlib.sha256("|".join(sha256_of(p) for p in weights_files(folder)).encode()).hexdigest()


def load_frozen_autoencoder(folder: Path):
    """A KL or TAESD-family autoencoder, frozen; a model folder's copy is checked against its
    ``source.json`` first."""
    from medseg.models import kl_autoencoder, taesd

    folder = Path(folder)
    record = folder / SOURCE_FILE
    if record.is_file():
        _check_record(folder, record)
    model = taesd.load_taesd(folder) if kind_of(folder) == "taesd" else kl_autoencoder.load_autoencoder(folder)
    model.kind = kind_of(folder)
    return model


def _check_record(folder: Path, record: Path) -> None:
    try:
        expected = json.loads(record.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MedsegError(f"{record}: unreadable ({type(error).__name__}: {error})") from None
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            raise MedsegError(f"{path}: missing (listed in {record})")
        if sha256_of(path) != digest:
            raise MedsegError(f"{path}: changed since the model was trained (sha256 differs from {record}); restore it or retrain")


def copy_autoencoder(source: Path, target: Path):
    """Copy the autoencoder at ``source`` into ``target`` (which must not exist yet), with its
    ``source.json``; the folder is checked by loading it before anything is copied, and the copy
    appears whole or not at all. Returns the copy, loaded."""
    from medseg.atomic import write_json_atomic

    source = Path(source)
    load_frozen_autoencoder(source)  # a broken folder is named before anything is copied
    kind, files = kind_of(source), weights_files(source)
    staging = Path(tempfile.mkdtemp(prefix=".autoencoder-", dir=target.parent))
    try:
        for path in files:
            shutil.copy2(path, staging / path.name)
        write_json_atomic(staging / SOURCE_FILE, {"kind": kind, "source": str(source.resolve()), "sha256": {p.name: sha256_of(p) for p in files}})
        staging.replace(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_frozen_autoencoder(target)


def folder_digest(model) -> str:
    """What the latent cache of a dataset is keyed on: the weights and, for TAESD, the latent scaling."""
    import hashlib

    from medseg.models.taesd import SCALING_FILE

    parts = [weights_digest(model.folder)]
    scaling = Path(model.folder) / SCALING_FILE
    if scaling.is_file():
        parts.append(sha256_of(scaling))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()
