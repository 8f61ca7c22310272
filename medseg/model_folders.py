"""Every kind of model folder medseg runs, behind one registry of readers: medseg's own
(model.json beside plans.json), nnU-Net v2's trained folders and MONAI bundles; and TotalSegmentator
tasks, named rather than found in a folder (`-m total`, `-m WEIGHTS_DIR/total`). A reader says how to recognise
its folders and opens them as a ``ModelFolder``; a new format (a plug-in's, or another tool's
weights) is one more registered reader, and every surface that takes ``-m`` reads it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medseg.ensemble_folder import EnsembleModelFolder, is_ensemble_folder
from medseg.errors import MedsegError
from medseg.model_folder import ModelFolder
from medseg.monai_bundle_folder import MonaiBundleFolder, is_monai_bundle
from medseg.nnunet_model_folder import NnunetModelFolder, is_nnunet_model_folder
from medseg.registry import Registry
from medseg.totalsegmentator_folder import TotalSegmentatorFolder, totalseg_spec


@dataclass(frozen=True)
class ModelFolderReader:
    name: str
    shape: str  # what its folders hold, for the error that names every known kind
    recognises: Callable[[Path], bool]
    open: Callable[[Path], ModelFolder]


READERS: Registry[ModelFolderReader] = Registry("model folder format")


def register_reader(reader: ModelFolderReader) -> ModelFolderReader:
    return READERS.register(reader.name, reader)


def open_model_folder(path: Path) -> ModelFolder:
    """The model folder at ``path`` (or the installed model of that name, medseg.model_packages),
    read by the first reader that recognises it."""
    from medseg.model_packages import installed_model, models_root

    path = Path(path)
    if not path.is_dir():
        installed = installed_model(str(path)) if len(path.parts) == 1 else None
        totalseg = totalseg_spec(path) if installed is None else None
        if totalseg is not None:
            return TotalSegmentatorFolder.open(*totalseg)
        if installed is None:
            hint = f" nor a model installed in {models_root()} (medseg models installed)" if len(path.parts) == 1 else ""
            raise MedsegError(f"{path}: no such model folder{hint}")
        path = installed
    for reader in READERS.values():
        if reader.recognises(path):
            return reader.open(path)
    kinds = " nor ".join(f"{reader.shape}" for reader in READERS.values())
    raise MedsegError(f"{path}: neither {kinds}")


register_reader(ModelFolderReader("medseg", "a medseg model folder (no model.json)", lambda path: (path / "model.json").is_file(), ModelFolder.open))
register_reader(ModelFolderReader("nnunet_v2", "an nnU-Net v2 one (plans.json + dataset.json)", is_nnunet_model_folder, NnunetModelFolder.open))
register_reader(ModelFolderReader(
    "ensemble", "an ensemble of model folders (ensemble.json)", is_ensemble_folder, lambda path: EnsembleModelFolder.open(path, open_model_folder),
))
register_reader(ModelFolderReader(
    "monai_bundle", "a MONAI bundle (configs/inference.json + configs/metadata.json)", is_monai_bundle, MonaiBundleFolder.open,
))
