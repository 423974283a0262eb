"""Every op's Triton kernels in bfloat16 on a CUDA device, forward and backward, against the float64 reference.

CUDA only (marker ``cuda``): Triton's interpreter gets bfloat16 dots wrong, so `make test` (interpreter and CPU)
deselects this file and `make gpu-check` runs it. Float32 and float16 are covered per op in tests/kernels/*_triton.py.
"""
import pytest
import torch

from kernels import (
    neighborhood_attention,
    region_topk,
    routed_attention,
    selective_scan,
    sparse_attention,
    use_backend,
    window_attention,
)

pytestmark = [pytest.mark.triton, pytest.mark.cuda]

DEVICE, DTYPE = 'cuda', torch.bfloat16
# bfloat16 keeps 8 mantissa bits (relative step 2**-8 = 3.9e-3); sums of a few dozen terms in fp32 statistics
TOL = 2e-2


@pytest.fixture(autouse=True, scope='module')
def _cuda():
    if not torch.cuda.is_available():
        pytest.fail('tests/kernels/test_triton_bfloat16.py runs the Triton kernels in bfloat16 on a CUDA device '
                    '(`make gpu-check`); the interpreter gets bfloat16 dots wrong', pytrace=False)


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _run(backend, fn, tensors, float_mask, dtype, device, cotangent):
    leaves = [t.to(device, dtype if is_float else t.dtype).requires_grad_(is_float and t.is_floating_point())
              for t, is_float in zip(tensors, float_mask)]
    with use_backend(backend):
        out = fn(*leaves)
    grad_leaves = [t for t in leaves if t.requires_grad]
    grads = torch.autograd.grad(out, grad_leaves, cotangent.to(device, out.dtype))
    return out, grads


def _assert_matches_reference(fn, tensors, cotangent, float_mask=None):
    float_mask = float_mask or [True] * len(tensors)
    got, got_grads = _run('triton', fn, tensors, float_mask, DTYPE, DEVICE, cotangent)
    want, want_grads = _run('reference', fn, tensors, float_mask, torch.float64, 'cpu', cotangent)
    assert got.dtype == DTYPE
    for name, a, b in [('out', got, want)] + [(f'grad {i}', g, r) for i, (g, r) in enumerate(zip(got_grads,
                                                                                               want_grads))]:
        err = (a.double().cpu() - b).abs().max() / b.abs().max().clamp_min(1e-12)
        assert err <= TOL, f'{name}: max error {err:.2e} of the largest magnitude (tolerance {TOL})'


def test_window_attention_block_and_grid():
    q, k, v, cot = (_rand(2, 2, 9, 10, 32, seed=s) for s in range(4))
    table = _rand(2, 7, 7, seed=5)
    for grid in (False, True):
        _assert_matches_reference(
            lambda q, k, v, t, grid=grid: window_attention(q, k, v, 4, grid=grid, rel_pos_bias=t),
            [q, k, v, table], cot)


def test_neighborhood_attention_with_bias():
    q, k, v, cot = (_rand(2, 2, 9, 11, 32, seed=s) for s in range(4))
    bias = _rand(2, 3, 3, seed=5)
    _assert_matches_reference(
        lambda q, k, v, b: neighborhood_attention(q, k, v, 3, rel_pos_bias=b), [q, k, v, bias], cot)


def test_routed_attention_on_region_topk_routes():
    q, k, v, cot = (_rand(2, 2, 8, 8, 32, seed=s) for s in range(4))
    with use_backend('reference'):
        index = region_topk(q, k, 2, 2)
    with use_backend('triton'):
        routes = region_topk(q.to(DEVICE, DTYPE), k.to(DEVICE, DTYPE), 2, 2).cpu()
    # bfloat16 may swap near-tied regions: the routes' float64 affinities must be the top ones, in order
    means = [t.unflatten(2, (2, -1)).unflatten(4, (2, -1)).mean((3, 5)).permute(0, 2, 3, 1, 4).flatten(1, 2).flatten(2)
             for t in (q, k)]
    affinity = means[0] @ means[1].transpose(1, 2)
    top = affinity.topk(2, dim=-1).values
    torch.testing.assert_close(affinity.gather(-1, routes), top, atol=TOL * affinity.abs().max(), rtol=0)
    _assert_matches_reference(
        lambda q, k, v, i: routed_attention(q, k, v, i, 2), [q, k, v, index], cot, [True, True, True, False])


def test_sparse_attention():
    q, k, v, cot = (_rand(2, 2, 24, 16, seed=s) for s in range(4))
    index = torch.randint(-1, 24, (2, 2, 24, 8), generator=torch.Generator().manual_seed(5))
    _assert_matches_reference(sparse_attention, [q, k, v, index], cot, [True, True, True, False])


def test_selective_scan_gated():
    b, d, L, n = 2, 8, 33, 4
    u, delta, z, cot = (_rand(b, d, L, seed=s) for s in range(4))
    B, C = (_rand(b, n, L, seed=s) for s in (4, 5))
    A = -torch.rand(d, n, generator=torch.Generator().manual_seed(6), dtype=torch.float64) - 0.5
    D, delta_bias = _rand(d, seed=7), _rand(d, seed=8)

    def scan(u, delta, B, C, z, A, D, delta_bias):
        return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)

    # the state parameters stay float32 as in Mamba's bf16 training; the sequences are bfloat16
    tensors = [u, delta, B, C, z, A, D, delta_bias]
    got, got_grads = _run('triton', scan, tensors[:5] + [t.float() for t in tensors[5:]], [True] * 5 + [False] * 3,
                          DTYPE, DEVICE, cot)
    want, want_grads = _run('reference', scan, tensors, [True] * 8, torch.float64, 'cpu', cot)
    for name, a, r in [('out', got, want)] + list(zip(['u', 'delta', 'B', 'C', 'z'], got_grads, want_grads)):
        err = (a.double().cpu() - r).abs().max() / r.abs().max().clamp_min(1e-12)
        assert err <= TOL, f'{name}: max error {err:.2e} of the largest magnitude (tolerance {TOL})'
