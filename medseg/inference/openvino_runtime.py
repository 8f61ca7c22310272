"""OpenVINO as a compiled runtime for a model's networks (``medseg predict --runtime openvino``).

Each fold's network is converted in memory from the loaded PyTorch module (batch axis dynamic,
spatial axes the plan's patch: the sliding window always feeds whole patches), checked against
PyTorch float32 on a random window, and kept in the user's cache
(``$XDG_CACHE_HOME/medseg/openvino/<key>/``: the converted model, OpenVINO's compiled blobs and
``check.json``). The key is a hash of the weights, the patch, the precision hint and the torch,
OpenVINO and medseg versions, so changed weights or versions convert again; the model folder itself
is never written (it may be read-only). Precision: ``float32`` is OpenVINO's f32 hint,
``bfloat16`` its bf16 hint (as torch's bf16 autocast, for CPUs with native bf16)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medseg.atomic import write_json_atomic
from medseg.errors import MedsegError

HINTS = {"float32": "f32", "bfloat16": "bf16"}
# largest |logit difference| to PyTorch float32 accepted when converting, relative to the logits'
# range: f32 differs by float rounding (~1e-6 relative); bf16 by its 8-bit mantissa (~1e-2)
TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2}


def require_openvino():
    try:
        import openvino
    except ImportError as error:
        raise MedsegError(f"--runtime openvino needs the openvino package ({error}); install the extra: pip install 'medseg[openvino]'") from None
    return openvino


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medseg" / "openvino"


def weights_digest(network: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_key(network: torch.nn.Module, input_shape: Sequence[int], precision: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    import medseg

    try:
        openvino_version = version("openvino")  # the installed version, without loading its libraries
    except PackageNotFoundError:
        require_openvino()  # names the missing extra
        raise
    parts = [weights_digest(network), list(input_shape), precision, torch.__version__, openvino_version, medseg.__version__]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


class OpenVinoNetwork:
    """A compiled OpenVINO model called like the PyTorch network: (B, C, *patch) -> (B, K, *patch) float32."""

    def __init__(self, compiled, folder: Path):
        self.compiled, self.folder = compiled, folder
        self.request = compiled.create_infer_request()

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        result = self.request.infer({0: image.detach().to("cpu", torch.float32).contiguous().numpy()})
        return torch.from_numpy(np.array(result[self.compiled.output(0)], dtype=np.float32, copy=True))

    def eval(self) -> "OpenVinoNetwork":
        return self

    def to(self, *args, **kwargs) -> "OpenVinoNetwork":
        return self


def _convert(openvino, network: torch.nn.Module, input_shape: Sequence[int], target: Path, label: str):
    example = torch.zeros(1, *input_shape[1:])
    try:
        with torch.no_grad():  # not inference_mode: parameters touched there cannot be traced
            model = openvino.convert_model(network.eval(), example_input=example, input=[openvino.PartialShape([-1, *input_shape[1:]])])
    except Exception as error:  # noqa: BLE001 - the converter raises its own types for unsupported operations
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MedsegError(f"{label}: OpenVINO cannot convert this network ({first}); use --runtime torch") from None
    target.mkdir(parents=True, exist_ok=True)
    openvino.save_model(model, str(target / "model.xml"), compress_to_fp16=False)
    return model


def _check(network: torch.nn.Module, compiled_network: OpenVinoNetwork, input_shape: Sequence[int], precision: str, label: str) -> dict:
    example = torch.randn(1, *input_shape[1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = network(example).float()
    theirs = compiled_network(example)
    scale = float(ours.abs().max()) or 1.0
    difference = float((theirs - ours).abs().max())
    agreement = float((theirs.argmax(1) == ours.argmax(1)).float().mean())
    if not difference <= TOLERANCE[precision] * scale:
        raise MedsegError(
            f"{label}: OpenVINO ({precision}) differs from PyTorch float32 by {difference:.3g} (logit range {scale:.3g}); use --runtime torch"
        )
    return {"max_logit_difference": difference, "logit_range": scale, "label_agreement": agreement}


def openvino_network(network: torch.nn.Module, input_shape: Sequence[int], precision: str, label: str, threads: int | None = None) -> OpenVinoNetwork:
    """``network`` (float32, on the CPU) compiled by OpenVINO for windows of ``input_shape``
    (B, C, *patch), from the cache when this machine converted the same weights before."""
    import shutil

    openvino = require_openvino()
    if precision not in HINTS:
        raise MedsegError(f"--runtime openvino runs float32 or bfloat16, not {precision}")
    folder = cache_root() / cache_key(network, input_shape, precision)
    core = openvino.Core()
    config = {"INFERENCE_PRECISION_HINT": HINTS[precision], "INFERENCE_NUM_THREADS": str(threads or torch.get_num_threads())}
    if (folder / "check.json").is_file():
        model = core.read_model(str(folder / "model.xml"))
        return OpenVinoNetwork(core.compile_model(model, "CPU", {**config, "CACHE_DIR": str(folder / "compiled")}), folder)
    # converted and checked in a folder of this process's own, renamed into place when complete:
    # Ray actors on one machine may convert the same network at once
    staging = folder.with_name(f"{folder.name}.{os.getpid()}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model = _convert(openvino, network, input_shape, staging, label)
        compiled = OpenVinoNetwork(core.compile_model(model, "CPU", config), folder)
        write_json_atomic(staging / "check.json", {"precision": precision, "input_shape": list(input_shape), **_check(network, compiled, input_shape, precision, label)})
        try:
            staging.rename(folder)
        except OSError:  # another process finished first: its copy is the same
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return compiled


def openvino_networks(networks: Sequence[torch.nn.Module], folds: Sequence[str], input_shape: Sequence[int], precision: str, folder: Path) -> list[OpenVinoNetwork]:
    return [openvino_network(network, input_shape, precision, f"{folder} fold {fold}") for network, fold in zip(networks, folds)]
