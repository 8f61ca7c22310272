"""Installable model packages: one archive per model (``medseg export --format package``),
installed into ``$MEDSEG_MODELS`` by ``medseg models install PATH|URL [--sha256 HEX]``, listed by
``medseg models installed``, and found by name wherever ``-m`` takes a model folder.

An archive (``NAME-VERSION.medseg.tar.gz``) holds one top folder: model.json, plans.json,
dataset.json, card.json (with the sha256 of each weight file), postprocessing.json,
crossval_summary.json and input_profile.json when present, and one checkpoint per fold. Installing refuses, naming the
archive and the entry: a checksum other than ``--sha256``, members outside the top folder
(absolute paths, ``..``), links and device files, and weights whose sha256 differs from the card
(a tampered archive). Nothing is left half-installed: the archive unpacks beside the target and
is renamed into place only once every check passed."""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath

from medseg.errors import MedsegError
from medseg.model_card import read_card, sha256_of, write_card

PACKAGE_SUFFIX = ".medseg.tar.gz"
PACKAGED_FILES = ("model.json", "plans.json", "dataset.json", "card.json", "postprocessing.json", "crossval_summary.json", "input_profile.json")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DOWNLOAD_TIMEOUT_S = 60


def models_root() -> Path:
    """Where installed models live: $MEDSEG_MODELS, else the user's data folder."""
    if os.environ.get("MEDSEG_MODELS"):
        return Path(os.environ["MEDSEG_MODELS"])
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "medseg" / "models"


def check_name(name: str, what: str) -> str:
    if not NAME_PATTERN.match(name) or name in (".", ".."):
        raise MedsegError(f"{what} {name!r}: expected letters, digits, '.', '_' or '-' (up to 128, starting with a letter or digit)")
    return name


def installed_model(name: str) -> Path | None:
    """The installed model called ``name`` (a plain name, not a path), None when there is none."""
    if not NAME_PATTERN.match(name):
        return None
    folder = models_root() / name
    return folder if (folder / "model.json").is_file() else None


def installed_models() -> list[tuple[str, Path, dict | None]]:
    root = models_root()
    if not root.is_dir():
        return []
    return [(p.name, p, read_card(p)) for p in sorted(root.iterdir()) if p.is_dir() and (p / "model.json").is_file()]


# ------------------------------------------------------------------------------------- export
def export_package(model_folder, output: Path | None = None, folds: list[str] | None = None, checkpoint: str = "auto") -> tuple[Path, str]:
    """Write ``model_folder`` as one archive (its card refreshed first); returns (archive, sha256),
    the checksum also written beside it as ``ARCHIVE.sha256``."""
    card = write_card(model_folder)
    name = check_name(str(card["name"]), "the card's name")
    version = check_name(str(card["version"]), "the card's version")
    folds = folds or model_folder.folds()
    if not folds:
        raise MedsegError(f"{model_folder.path}: no trained folds to package")
    checkpoints = [model_folder.checkpoint_path(fold, checkpoint) for fold in folds]
    for path in checkpoints:  # what the archive carries must be what the card vouches for
        relative = path.relative_to(model_folder.path).as_posix()
        if relative not in card["weights"]:
            raise MedsegError(f"{path}: not in {model_folder.path / 'card.json'}; package the final or best checkpoint")
    archive = Path(output) if output else model_folder.path.parent / f"{name}-{version}{PACKAGE_SUFFIX}"
    if archive.is_dir():
        archive = archive / f"{name}-{version}{PACKAGE_SUFFIX}"
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for file_name in PACKAGED_FILES:
            if (model_folder.path / file_name).is_file():
                tar.add(model_folder.path / file_name, arcname=f"{name}/{file_name}", recursive=False)
        for path in checkpoints:
            tar.add(path, arcname=f"{name}/{path.relative_to(model_folder.path).as_posix()}", recursive=False)
    os.replace(partial, archive)
    digest = sha256_of(archive)
    (archive.parent / f"{archive.name}.sha256").write_text(f"{digest}  {archive.name}\n")
    return archive, digest


# ------------------------------------------------------------------------------------ install
def _fetch(source: str, staging: Path) -> Path:
    """A local archive as it is; an http(s) URL downloaded into ``staging``."""
    if re.match(r"^https?://", source):
        target = staging / "download.tar.gz"
        try:
            with urllib.request.urlopen(source, timeout=DOWNLOAD_TIMEOUT_S) as response, open(target, "wb") as stream:
                shutil.copyfileobj(response, stream)
        except OSError as error:
            raise MedsegError(f"{source}: download failed ({error})") from None
        return target
    if "://" in source:
        raise MedsegError(f"{source}: only local files and http(s) URLs can be installed")
    path = Path(source)
    if not path.is_file():
        raise MedsegError(f"{path}: no such model package")
    return path


def _safe_members(tar: tarfile.TarFile, label: str) -> tuple[str, list[tarfile.TarInfo]]:
    """The archive's one top folder and its members, every one a regular file or folder inside it."""
    members = tar.getmembers()
    tops = set()
    for member in members:
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise MedsegError(f"{label}: entry {member.name!r} points outside the package; refused")
        if not (member.isfile() or member.isdir()):
            raise MedsegError(f"{label}: entry {member.name!r} is a link or a device file; refused")
        tops.add(path.parts[0])
    if len(tops) != 1:
        raise MedsegError(f"{label}: expected one top folder, found {', '.join(sorted(tops)) or 'none'}")
    return tops.pop(), members


def install_package(source: str, sha256: str | None = None, name: str | None = None, force: bool = False) -> Path:
    """Install a package (file or URL) into models_root(); returns the installed folder."""
    from medseg.model_folder import ModelFolder

    root = models_root()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".installing-") as staging_name:
        staging = Path(staging_name)
        archive = _fetch(source, staging)
        if sha256 is not None:
            expected = sha256.strip().lower()
            actual = sha256_of(archive)
            if actual != expected:
                raise MedsegError(f"{source}: sha256 {actual} differs from the expected {expected}; not installed")
        try:
            with tarfile.open(archive, "r:gz") as tar:
                top, members = _safe_members(tar, source)
                check_name(top, f"{source}: top folder")
                tar.extractall(staging / "unpacked", members=members, filter="data")
        except (tarfile.TarError, OSError, EOFError) as error:
            raise MedsegError(f"{source}: not a readable model package ({error})") from None
        unpacked = staging / "unpacked" / top
        for required in ("model.json", "card.json"):
            if not (unpacked / required).is_file():
                raise MedsegError(f"{source}: the package lacks {top}/{required}")
        ModelFolder.open(unpacked)  # model.json checked as every load checks it
        card = read_card(unpacked)
        weights = sorted(p.relative_to(unpacked).as_posix() for p in unpacked.glob("fold_*/checkpoint_*.pt"))
        if not weights:
            raise MedsegError(f"{source}: the package holds no weights (fold_K/checkpoint_*.pt)")
        for relative in weights:
            expected = card["weights"].get(relative)
            if expected is None:
                raise MedsegError(f"{source}: {top}/{relative} is not listed in the package's card.json; refused")
            if sha256_of(unpacked / relative) != expected:
                raise MedsegError(f"{source}: {top}/{relative} differs from the sha256 in the package's card.json (tampered or damaged); not installed")
        target = root / check_name(name or top, "model name")
        if target.exists():
            if not force:
                raise MedsegError(f"{target}: a model of that name is installed (--force replaces it, --name installs beside it)")
            shutil.rmtree(target)
        os.replace(unpacked, target)
    return target


def catalogue() -> dict:
    """The catalogue of public models shipped with medseg (medseg/catalogue/models.json)."""
    import json
    from importlib.resources import files

    return json.loads(files("medseg.catalogue").joinpath("models.json").read_text())
