"""Multi-direction scans over 2D/3D feature maps: every backend follows a scan order by indexing,
and equals the reference run on an explicitly permuted copy (outputs and gradients)."""

import pytest
import torch

from medseg_kernels.mlstm import mlstm, mlstm_parallel_ref
from medseg_kernels.registry import backends
from medseg_kernels.scan_orders import named_order, traversal
from medseg_kernels.selective_scan import selective_scan, selective_scan_ref
from tests.conftest import require_backend

SCAN_BACKENDS = [b.name for b in backends("selective_scan")]
MLSTM_BACKENDS = [b.name for b in backends("mlstm")]


def test_named_orders_on_a_2d_and_3d_map():
    assert traversal((2, 3)).tolist() == [0, 1, 2, 3, 4, 5]
    assert named_order("backward", (2, 3)).tolist() == [5, 4, 3, 2, 1, 0]
    assert named_order("axis0", (2, 3)).tolist() == [0, 3, 1, 4, 2, 5]  # column-wise
    assert named_order("axis0_backward", (2, 3)).tolist() == [5, 2, 4, 1, 3, 0]
    across_slices = named_order("axis0", (2, 2, 2)).tolist()
    assert across_slices == [0, 4, 1, 5, 2, 6, 3, 7]  # both slices at each in-plane position
    for name in ("forward", "backward", "axis0", "axis1", "axis2_backward"):
        assert sorted(named_order(name, (3, 4, 5)).tolist()) == list(range(60))
    with pytest.raises(ValueError, match="unknown scan order"):
        named_order("diagonal", (2, 3))
    with pytest.raises(ValueError, match="not an axis"):
        named_order("axis3", (2, 3))


def _scan_inputs(length, layout, seed=0):
    generator = torch.Generator().manual_seed(seed)
    batch, channels, state = 2, 4, 4

    def randn(*shape):
        return torch.randn(*shape, generator=generator).requires_grad_()

    u, z = randn(batch, channels, length), randn(batch, channels, length)
    delta = (torch.rand(batch, channels, length, generator=generator) * 0.5).requires_grad_()
    A = (-torch.rand(channels, state, generator=generator) * 2).requires_grad_()
    B = randn(batch, 2, state, length) if layout == "grouped" else randn(batch, state, length)
    C = randn(batch, 2, state, length) if layout == "grouped" else randn(channels, state)
    return [u, delta, A, B, C], {"D": randn(channels), "z": z}


@pytest.mark.parametrize("backend", SCAN_BACKENDS)
@pytest.mark.parametrize(("shape", "name"), [((5, 7), "axis0"), ((5, 7), "backward"), ((3, 4, 6), "axis0_backward")])
@pytest.mark.parametrize("layout", ["varying", "grouped"])
def test_selective_scan_follows_a_scan_order(backend, shape, name, layout):
    require_backend("selective_scan", backend)
    length = int(torch.tensor(shape).prod())
    order = named_order(name, shape)
    tensors, extras = _scan_inputs(length, layout)

    def permuted_reference():  # the spec: scan an explicitly permuted copy, then put y back
        def take(x):
            return x[..., order]

        u, delta, A, B, C = tensors
        B_o, C_o = (take(m) if m.dim() > 2 else m for m in (B, C))
        y, last = selective_scan_ref(take(u), take(delta), A, B_o, C_o, extras["D"], take(extras["z"]), None, True, True)
        out = torch.empty_like(y)
        out[..., order] = y
        return out, last

    def run(function):
        for t in tensors + list(extras.values()):
            t.grad = None
        y, last = function()
        (y.sin().sum() + last.cos().sum()).backward()
        return [y.detach(), last.detach()] + [t.grad.clone() for t in tensors + list(extras.values())]

    want = run(permuted_reference)
    got = run(lambda: selective_scan(*tensors, **extras, delta_softplus=True, return_last_state=True, backend=backend, order=order))
    for index, (g, w) in enumerate(zip(got, want)):
        error = ((g - w).abs().max() / w.abs().max().clamp_min(1)).item()
        assert error < 1e-4, f"{backend}/{name}/{layout}: output {index} relative error {error:.2e}"


@pytest.mark.parametrize("backend", MLSTM_BACKENDS)
def test_mlstm_follows_a_scan_order(backend):
    require_backend("mlstm", backend)
    generator = torch.Generator().manual_seed(3)
    shape = (6, 5)
    order = named_order("axis0_backward", shape)
    q, k, v = (torch.randn(1, 2, 30, 8, generator=generator, requires_grad=True) for _ in range(3))
    i = torch.randn(1, 2, 30, generator=generator, requires_grad=True)
    f = (torch.randn(1, 2, 30, generator=generator) + 3).requires_grad_()
    h = mlstm(q, k, v, i, f, backend=backend, order=order)
    want = torch.empty_like(h)
    want[:, :, order] = mlstm_parallel_ref(q[:, :, order], k[:, :, order], v[:, :, order], i[..., order], f[..., order])
    assert ((h - want).abs().max() / want.abs().max()).item() < 1e-4
    grads = torch.autograd.grad(h.sin().sum(), (q, i))
    wants = torch.autograd.grad(want.sin().sum(), (q, i))
    for g, w in zip(grads, wants):
        assert ((g - w).abs().max() / w.abs().max().clamp_min(1)).item() < 1e-4


def test_bad_order_is_refused():
    tensors, _ = _scan_inputs(6, "varying")
    with pytest.raises(ValueError, match="scan order must be"):
        selective_scan(*tensors, order=torch.arange(5))
