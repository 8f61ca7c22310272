"""Every selective-scan backend against the sequential reference: outputs and gradients."""

import importlib.util

import pytest
import torch

from medseg_kernels.registry import backends
from medseg_kernels.selective_scan import selective_scan, selective_scan_ref
from tests.conftest import require_backend

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
FAST_BACKENDS = [b.name for b in backends("selective_scan") if b.name != "ref"]


def make_inputs(layout: str, length: int, dtype=torch.float32, batch=2, channels=8, state=4, groups=2, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    u = randn(batch, channels, length)
    delta = torch.rand(batch, channels, length, generator=generator) * 0.5
    A = -torch.rand(channels, state, generator=generator) * 2
    if layout == "varying":
        B, C = randn(batch, state, length), randn(batch, state, length)
    elif layout == "grouped":
        B, C = randn(batch, groups, state, length), randn(batch, groups, state, length)
    elif layout == "mixed":  # grouped B beside a time-invariant C
        B, C = randn(batch, groups, state, length), randn(channels, state)
    else:
        B, C = randn(channels, state), randn(channels, state)
    extras = dict(D=randn(channels), z=randn(batch, channels, length), delta_bias=randn(channels) * 0.1)
    tensors = [u.to(dtype), delta.to(dtype), A, B.to(dtype), C.to(dtype)]
    return [t.requires_grad_() for t in tensors], {k: v.requires_grad_() for k, v in extras.items()}


def run(backend, tensors, extras, softplus=True):
    for t in tensors + list(extras.values()):
        t.grad = None
    y, last = selective_scan(*tensors, **extras, delta_softplus=softplus, return_last_state=True, backend=backend)
    (y.float().sin().sum() + last.cos().sum()).backward()
    return [y.detach().float(), last.detach()] + [t.grad.float().clone() for t in tensors + list(extras.values())]


def assert_close(got, want, tolerance, what):
    scale = want.abs().max().clamp_min(1.0)
    error = (got - want).abs().max() / scale
    assert error < tolerance, f"{what}: relative error {error:.2e}"


NAMES = ["y", "last_state", "du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias"]


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("layout", ["varying", "grouped", "invariant", "mixed"])
@pytest.mark.parametrize("length", [1, 37, 300])
def test_backend_matches_reference_fp32(backend, layout, length):
    require_backend("selective_scan", backend)
    tensors, extras = make_inputs(layout, length)
    want = run("ref", tensors, extras)
    got = run(backend, tensors, extras)
    for name, g, w in zip(NAMES, got, want):
        assert_close(g, w, TOLERANCE[torch.float32], f"{backend}/{layout}/L={length}/{name}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_backend_matches_reference_bf16(backend):
    require_backend("selective_scan", backend)
    tensors, extras = make_inputs("varying", 65, dtype=torch.bfloat16)
    want = run("ref", tensors, extras)
    got = run(backend, tensors, extras)
    assert got[0].dtype == torch.float32  # compared in float32; the op returns bf16
    for name, g, w in zip(NAMES, got, want):
        assert_close(g, w, TOLERANCE[torch.bfloat16], f"{backend}/bf16/{name}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_long_sequence_without_optional_inputs(backend):
    require_backend("selective_scan", backend)
    tensors, _ = make_inputs("varying", 2500, channels=4, state=8)
    want = selective_scan_ref(*tensors)
    got = selective_scan(*tensors, backend=backend)
    assert_close(got.detach(), want.detach(), 1e-4, f"{backend}/L=2500")


def test_auto_picks_numba_for_cpu_tensors_and_rejects_unknown():
    from medseg_kernels.registry import resolve

    assert resolve("selective_scan", "auto", torch.device("cpu"), torch.float32).name == "numba"  # numba is a dependency
    with pytest.raises(ValueError, match="unknown backend"):
        resolve("selective_scan", "nonsense", torch.device("cpu"), torch.float32)


BAD_SHAPES = {
    "delta": ({"delta": (2, 8, 9)}, "delta must have u's shape"),
    "A": ({"A": (7, 4)}, "A must be"),
    "B state": ({"B": (2, 5, 10)}, "B must be"),
    "C length": ({"C": (2, 4, 9)}, "C must be"),
    "groups": ({"B": (2, 3, 4, 10), "C": (2, 3, 4, 10)}, "with G dividing 8"),
    "u": ({"u": (8, 10)}, "u must be"),
    "D": ({"D": (7,)}, "D must be"),
}


@pytest.mark.parametrize("case", BAD_SHAPES)
def test_bad_shapes_name_the_argument(case):
    shapes, message = BAD_SHAPES[case]
    arguments = {"u": (2, 8, 10), "delta": (2, 8, 10), "A": (8, 4), "B": (2, 4, 10), "C": (2, 4, 10), "D": None, **shapes}
    tensors = {name: None if shape is None else torch.rand(shape) for name, shape in arguments.items()}
    for backend in ("auto", "ref"):
        with pytest.raises(ValueError, match=message):
            selective_scan(**tensors, backend=backend)


@pytest.mark.parametrize("layout", ["varying", "grouped", "invariant"])
def test_reference_equals_mamba_ssm_reference(layout):
    """Our spec against mamba_ssm's own selective_scan_ref (a heavy peer, used only where installed)."""
    import sys
    import types

    if importlib.util.find_spec("mamba_ssm") is None:
        pytest.skip("mamba_ssm not installed (bench peer: see bench/kernels/selective_scan_cpu.py)")
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    from mamba_ssm.ops.selective_scan_interface import selective_scan_ref as theirs

    tensors, extras = make_inputs(layout, 45)
    ours_y, ours_last = selective_scan_ref(*tensors, **extras, delta_softplus=True, return_last_state=True)
    their_y, their_last = theirs(*tensors, **extras, delta_softplus=True, return_last_state=True)
    assert_close(ours_y.detach(), their_y.detach(), 1e-5, f"{layout}/y")
    assert_close(ours_last.detach(), their_last.detach().float(), 1e-5, f"{layout}/last_state")


CONCURRENT_CALLERS = """
import torch
from concurrent.futures import ThreadPoolExecutor
from medseg_kernels.selective_scan import selective_scan
g = torch.Generator().manual_seed(0)
u, delta = torch.randn(2, 64, 2000, generator=g), torch.rand(2, 64, 2000, generator=g)
A, B, C = -torch.rand(64, 16, generator=g), torch.randn(2, 16, 2000, generator=g), torch.randn(2, 16, 2000, generator=g)
want = selective_scan(u, delta, A, B, C, backend="numba")
with ThreadPoolExecutor(4) as pool:
    results = list(pool.map(lambda _: selective_scan(u, delta, A, B, C, backend="numba"), range(16)))
print("equal", all(torch.equal(r, want) for r in results))
"""


def test_numba_backend_survives_concurrent_callers():
    # a threaded server calls the kernel from several threads at once; numba's "workqueue" threading
    # layer (the default where no OpenMP/TBB is found) aborts the process on concurrent launches
    # unless the calls take turns. A child process, so that an abort fails the test, not the run.
    require_backend("selective_scan", "numba")
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue"}
    result = subprocess.run([sys.executable, "-c", CONCURRENT_CALLERS], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "equal True" in result.stdout


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_decays_below_the_exp_floor_keep_the_reference_results(backend):
    # delta * A down to -160: the CPU kernels floor exp's argument at -87 (the slow denormal path);
    # outputs and gradients must still match the reference, which does not
    require_backend("selective_scan", backend)
    tensors, extras = make_inputs("varying", 70)
    with torch.no_grad():
        tensors[1].mul_(0).add_(torch.linspace(0.1, 10, 70))
        tensors[2].mul_(8)  # A in [-16, 0]
    want = run("ref", tensors, extras, softplus=False)
    got = run(backend, tensors, extras, softplus=False)
    for name, g, w in zip(NAMES, got, want):
        assert_close(g, w, TOLERANCE[torch.float32], f"{backend}/{name}")
