"""Every mLSTM backend against the parallel reference (outputs and gradients), the recurrence, and
the xlstm package's parallel form where installed."""

import pytest
import torch

from medseg_kernels.mlstm import TRITON_AUTO_MAX_LENGTH, choose_backend, mlstm, mlstm_chunkwise, mlstm_parallel_ref, mlstm_recurrent_ref
from medseg_kernels.mlstm.triton_mlstm import triton_unavailable_reason
from medseg_kernels.registry import backends, resolve
from tests.conftest import require_backend, require_peer

TOLERANCE = {torch.float64: 1e-9, torch.float32: 2e-4, torch.bfloat16: 3e-2}
FAST_BACKENDS = [b.name for b in backends("mlstm") if b.name != "ref"]
NAMES = ["h", "dq", "dk", "dv", "di", "df"]


def make_inputs(length, dtype=torch.float32, batch=2, heads=3, dim=16, seed=0, gate_dims=3):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, length, dim, generator=generator).to(dtype) for _ in range(3))
    i = torch.randn(batch, heads, length, generator=generator).to(dtype)
    f = (torch.randn(batch, heads, length, generator=generator) + 3).to(dtype)  # forget gates near 1, as trained
    if gate_dims == 4:
        i, f = i[..., None], f[..., None]
    return [t.requires_grad_() for t in (q, k, v, i, f)]


def run(function, tensors):
    for t in tensors:
        t.grad = None
    h = function(*tensors)
    h.float().sin().sum().backward()
    return [h.detach().float()] + [t.grad.float().clone() for t in tensors]


def assert_close(got, want, tolerance, what):
    scale = want.abs().max().clamp_min(1.0)
    error = ((got - want).abs().max() / scale).item()
    assert error < tolerance, f"{what}: relative error {error:.2e}"


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("length", [1, 2, 37, 64, 65, 300])
def test_backend_matches_parallel_reference_fp32(backend, length):
    require_backend("mlstm", backend)
    tensors = make_inputs(length)
    want = run(mlstm_parallel_ref, tensors)
    got = run(lambda *t: mlstm(*t, backend=backend), tensors)
    for name, g, w in zip(NAMES, got, want):
        assert_close(g, w, TOLERANCE[torch.float32], f"{backend}/S={length}/{name}")


@pytest.mark.parametrize("chunk", [1, 5, 16, 128])
def test_chunkwise_is_exact_in_float64_for_any_chunk(chunk):
    tensors = make_inputs(70, dtype=torch.float64)
    want = run(mlstm_parallel_ref, tensors)
    got = run(lambda *t: mlstm_chunkwise(*t, chunk=chunk), tensors)
    for name, g, w in zip(NAMES, got, want):
        assert_close(g, w, TOLERANCE[torch.float64], f"chunk={chunk}/{name}")


def test_recurrence_and_parallel_form_agree():
    tensors = make_inputs(41, dtype=torch.float64, gate_dims=4)
    for name, g, w in zip(NAMES, run(mlstm_recurrent_ref, tensors), run(mlstm_parallel_ref, tensors)):
        assert_close(g, w, TOLERANCE[torch.float64], f"recurrent/{name}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_backend_bf16(backend):
    require_backend("mlstm", backend)
    tensors = make_inputs(97, dtype=torch.bfloat16)
    want = run(mlstm_parallel_ref, tensors)
    got = run(lambda *t: mlstm(*t, backend=backend), tensors)
    assert mlstm(*tensors, backend=backend).dtype == torch.bfloat16
    for name, g, w in zip(NAMES, got, want):
        assert_close(g, w, TOLERANCE[torch.bfloat16], f"{backend}/bf16/{name}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_long_sequence_with_strong_forgetting(backend):
    require_backend("mlstm", backend)
    # 3000 steps of forget gates ~0.05: the cumulative log-forget reaches -18000, where the float32
    # parallel form already loses digits (its cumsum); the backend must stay at float32 accuracy
    q, k, v, i, f = (t.detach() for t in make_inputs(3000, batch=1, heads=2, dim=8))
    f = f - 6
    exact = mlstm_parallel_ref(*(t.double() for t in (q, k, v, i, f)))
    got = mlstm(q, k, v, i, f, backend=backend)
    assert torch.isfinite(got).all()
    assert_close(got.double(), exact, 2e-5, f"{backend}/S=3000")


def test_parallel_reference_equals_xlstm_package():
    require_peer("xlstm")
    from xlstm.blocks.mlstm.backends import parallel_stabilized_simple

    q, k, v, i, f = make_inputs(50, dtype=torch.float64, gate_dims=4)
    assert_close(mlstm_parallel_ref(q, k, v, i, f).detach(), parallel_stabilized_simple(q, k, v, i, f).detach(), 1e-12, "xlstm parallel")


def test_dispatcher_choices_and_errors():
    assert resolve("mlstm", "auto", torch.device("cpu"), torch.float32).name == "cpu"
    # on CUDA, auto leaves Triton's quadratic form for the chunkwise one on long sequences; a named backend is kept
    cuda = torch.device("cuda")
    if triton_unavailable_reason(cuda, torch.float32) is None:
        assert choose_backend("auto", cuda, torch.float32, TRITON_AUTO_MAX_LENGTH).name == "triton"
        assert choose_backend("auto", cuda, torch.float32, TRITON_AUTO_MAX_LENGTH + 1).name == "chunkwise"
        assert choose_backend("triton", cuda, torch.float32, 10**6).name == "triton"
    q, k, v, i, f = make_inputs(8)
    with pytest.raises(ValueError, match="unknown backend"):
        mlstm(q, k, v, i, f, backend="nonsense")
    with pytest.raises(ValueError, match="must agree"):
        mlstm(q, k[:, :, :4], v, i, f)
    with pytest.raises(ValueError, match="gate pre-activations i must be"):
        mlstm(q, k, v, i[..., :4], f)
    with pytest.raises(ValueError, match="gate pre-activations f must be"):
        mlstm(q, k, v, i, f[:1])
    with pytest.raises(ValueError, match="must agree"):
        mlstm(q[0], k[0], v[0], i[0], f[0])


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_gradients_where_the_normaliser_floor_wins(backend):
    # very negative input gates: |sum C| < exp(-m) on every row, so h and its gradients go through
    # the floor branch of the normaliser and through the stabiliser itself
    require_backend("mlstm", backend)
    q, k, v, i, f = (t.detach() for t in make_inputs(45, dtype=torch.float64))
    tensors = [t.requires_grad_() for t in (q, k, v, i - 8, f)]
    want = run(mlstm_parallel_ref, tensors)
    got = run(lambda *t: mlstm(*t, backend=backend), tensors)
    for name, g, w in zip(NAMES, got, want):
        assert_close(g, w, TOLERANCE[torch.float32], f"{backend}/floor/{name}")


@pytest.mark.parametrize("backend", ["ref", *FAST_BACKENDS])
@pytest.mark.parametrize("gate_scale", [80.0, 1e4])
def test_finite_for_any_finite_gates(backend, gate_scale):
    # gate pre-activations of order 80 and beyond (an untrained or diverging layer): stabilisers far
    # below -88 once made exp(-m) overflow and the backward NaN; outputs and gradients must stay
    # finite and, in float32, agree with the float64 reference
    require_backend("mlstm", backend)
    q, k, v, i, f = (t.detach() for t in make_inputs(150, batch=1, heads=2, dim=8))
    generator = torch.Generator().manual_seed(1)
    i, f = (torch.randn(i.shape, generator=generator) * gate_scale for _ in range(2))
    want = run(mlstm_parallel_ref, [t.double().requires_grad_() for t in (q, k, v, i, f)])
    got = run(lambda *t: mlstm(*t, backend=backend), [t.requires_grad_() for t in (q, k, v, i, f)])
    for name, g, w in zip(NAMES, got, want):
        assert torch.isfinite(g).all(), f"{backend}/gates x{gate_scale}/{name} is not finite"
        assert_close(g, w.float(), 1e-3, f"{backend}/gates x{gate_scale}/{name}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dim", [1, 24, 80, 160])
def test_head_dims_that_are_not_tile_sized(backend, dim):
    # the Triton tiles pad the head dim to a power of two >= 16 and mask the rest; from d = 160 (xLSTM-UNet's
    # bottleneck) they take fewer rows, to fit a GPU's shared memory
    require_backend("mlstm", backend)
    tensors = make_inputs(70, batch=1, heads=2, dim=dim)
    want = run(mlstm_parallel_ref, tensors)
    got = run(lambda *t: mlstm(*t, backend=backend), tensors)
    for name, g, w in zip(NAMES, got, want):
        assert_close(g, w, TOLERANCE[torch.float32], f"{backend}/d={dim}/{name}")


def test_triton_refuses_head_dims_beyond_its_tiles():
    require_backend("mlstm", "triton")
    with pytest.raises(ValueError, match="head dimensions up to 512"):
        mlstm(*make_inputs(4, batch=1, heads=1, dim=513), backend="triton")
