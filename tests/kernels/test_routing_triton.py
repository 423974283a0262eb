"""kernels.routing on the triton backend against the gather reference (TRITON_INTERPRET=1 on the CPU, or CUDA)."""
import os

import pytest
import torch

import kernels.routing as routing
from kernels.backend import use_backend
from kernels.routing import reference
from kernels.routing import triton as routing_triton

pytestmark = pytest.mark.triton

_INTERPRETED = os.environ.get('TRITON_INTERPRET', '0') == '1'
DEVICE = 'cpu' if _INTERPRETED else 'cuda'
# float32: IEEE dots under the interpreter; tf32 tensor cores on GPUs (fp16-like error, see kernels.routing.triton)
FP32_TOL = 2e-5 if _INTERPRETED else 3e-3


@pytest.fixture(autouse=True)
def _needs_interpreter_or_cuda():
    # a selected test that cannot run is a failure, never a skip; deselected (-m "not triton") it costs nothing
    if not _INTERPRETED and not torch.cuda.is_available():
        pytest.fail('tests/kernels/test_routing_triton.py needs TRITON_INTERPRET=1 (set before triton is imported, '
                    'e.g. `TRITON_INTERPRET=1 pytest -m triton`) or a CUDA device')


def _rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=DEVICE)


def _grads(fn, inputs, grad):
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = fn(*inputs)
    return (out.detach(), *torch.autograd.grad(out, inputs, grad))


def _check(got, want, tol):
    for name, a, b in zip(('out', 'dq', 'dk', 'dv'), got, want):
        assert a.dtype == got[0].dtype
        torch.testing.assert_close(a.double(), b.double(), atol=tol, rtol=tol, msg=lambda m, n=name: f'{n}: {m}')


ROUTED_CASES = [
    # (B, heads, H, W, D, Dv, n_win, topk, per_head, repeats)
    (2, 2, 6, 10, 5, 7, 2, 3, False, False),   # odd head dims, rectangular regions, routes per image
    (1, 2, 8, 8, 16, 16, 2, 4, True, True),    # routes per head with repeated regions, topk = all
    (1, 1, 16, 16, 8, 12, 2, 2, False, False),  # 64-token regions: 64-row query blocks, 2 key blocks
    (2, 1, 9, 9, 4, 4, 3, 1, False, False),    # topk 1
    (1, 1, 16, 16, 40, 64, 2, 2, False, False),  # head dim 64 configs, 64-token regions (dq BLOCK_N 16, dkdv 32x32)
    (1, 2, 8, 8, 33, 20, 2, 3, True, False),    # head dim 64 configs, 16-token regions
]


@pytest.mark.parametrize('case', ROUTED_CASES)
def test_routed_attention_triton_matches_reference(case):
    b, h, hh, ww, d, dv, n_win, topk, per_head, repeats = case
    q, k, v = _rand(b, h, hh, ww, d, seed=1), _rand(b, h, hh, ww, d, seed=2), _rand(b, h, hh, ww, dv, seed=3)
    g = torch.Generator().manual_seed(topk)
    lead = (b, h, n_win ** 2) if per_head else (b, n_win ** 2)
    if repeats:
        idx = torch.randint(0, n_win ** 2, (*lead, topk), generator=g)
    else:
        idx = torch.rand(*lead, n_win ** 2, generator=g).argsort(-1)[..., :topk]
    idx = idx.to(DEVICE)
    grad = _rand(b, h, hh, ww, dv, seed=4)
    want = _grads(lambda q, k, v: reference.routed_attention(q, k, v, idx, n_win, 0.4),
                  [t.double() for t in (q, k, v)], grad.double())
    with use_backend('triton'):
        got = _grads(lambda q, k, v: routing.routed_attention(q, k, v, idx.int(), n_win, scale=0.4), (q, k, v), grad)
    _check(got, want, FP32_TOL)


def test_routed_attention_triton_float16_with_region_topk():
    b, h, hh, ww, d, n_win, topk = 2, 2, 8, 8, 16, 4, 3
    q, k, v = (_rand(b, h, hh, ww, d, dtype=torch.float16, seed=s) for s in (1, 2, 3))
    grad = _rand(b, h, hh, ww, d, dtype=torch.float16, seed=4)
    with use_backend('triton'):
        idx = routing.region_topk(q, k, n_win, topk)
        got = _grads(lambda q, k, v: routing.routed_attention(q, k, v, idx, n_win), (q, k, v), grad)
    assert torch.equal(idx, reference.region_topk(q.double(), k.double(), n_win, topk))
    want = _grads(lambda q, k, v: reference.routed_attention(q, k, v, idx, n_win), [t.double() for t in (q, k, v)],
                  grad.double())
    _check(got, want, 3e-3)


def test_routed_attention_triton_backward_is_deterministic():
    q, k, v = (_rand(1, 2, 8, 8, 16, seed=s) for s in (1, 2, 3))
    idx = torch.randint(0, 4, (1, 4, 4), generator=torch.Generator().manual_seed(0)).to(DEVICE)  # many repeats
    grad = _rand(1, 2, 8, 8, 16, seed=4)
    with use_backend('triton'):
        first = _grads(lambda q, k, v: routing.routed_attention(q, k, v, idx, 2), (q, k, v), grad)
        second = _grads(lambda q, k, v: routing.routed_attention(q, k, v, idx, 2), (q, k, v), grad)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


VALID_CASES = [
    # (B, heads, H, W, D, Dv, n_win, topk, per_head, valid_hw, dtype)
    (2, 2, 9, 12, 4, 5, 3, 3, False, (7, 10), torch.float32),
    (1, 2, 8, 8, 16, 16, 2, 2, True, (5, 3), torch.float32),    # per-head routes, 16-token regions
    (1, 1, 16, 16, 8, 8, 2, 2, False, (9, 13), torch.float32),  # 64-token regions: blocks of padding only
    (1, 2, 8, 12, 16, 16, 4, 3, False, (6, 9), torch.float16),
]


@pytest.mark.parametrize('case', VALID_CASES)
def test_routed_attention_triton_valid_hw_matches_reference(case):
    b, h, hh, ww, d, dv, n_win, topk, per_head, valid_hw, dtype = case
    q, k, v = (_rand(b, h, hh, ww, c, dtype=dtype, seed=s) for s, c in ((1, d), (2, d), (3, dv)))
    g = torch.Generator().manual_seed(topk)
    if per_head:  # random routes: some queries may see no valid key at all (zeros)
        idx = torch.rand(b, h, n_win ** 2, n_win ** 2, generator=g).argsort(-1)[..., :topk].to(DEVICE)
    else:
        idx = reference.region_topk(q.double(), k.double(), n_win, topk, valid_hw)
    grad = _rand(b, h, hh, ww, dv, dtype=dtype, seed=4)
    want = _grads(lambda q, k, v: reference.routed_attention(q, k, v, idx, n_win, 0.4, valid_hw),
                  [t.double() for t in (q, k, v)], grad.double())
    with use_backend('triton'):
        got = _grads(lambda q, k, v: routing.routed_attention(q, k, v, idx, n_win, scale=0.4, valid_hw=valid_hw),
                     (q, k, v), grad)
    _check(got, want, FP32_TOL if dtype == torch.float32 else 3e-3)


def test_routed_attention_triton_valid_hw_query_without_valid_keys_gets_zeros():
    q, k, v = (_rand(1, 1, 8, 8, 16, seed=s) for s in (1, 2, 3))
    idx = torch.tensor([[[3], [0], [0], [0]]], device=DEVICE)  # region 0 sees only region 3: all padding
    grad = _rand(1, 1, 8, 8, 16, seed=4)
    with use_backend('triton'):
        got = _grads(lambda q, k, v: routing.routed_attention(q, k, v, idx, 2, valid_hw=(4, 4)), (q, k, v), grad)
    assert torch.equal(got[0][0, 0, :4, :4], torch.zeros(4, 4, 16, device=DEVICE))
    assert all(torch.isfinite(t).all() for t in got)
    want = _grads(lambda q, k, v: reference.routed_attention(q, k, v, idx, 2, None, (4, 4)),
                  [t.double() for t in (q, k, v)], grad.double())
    _check(got, want, FP32_TOL)


SPARSE_CASES = [
    # (B, heads, N, Nk, D, Dv, K, empty, repeats)
    (2, 2, 10, 12, 5, 7, 4, 0.3, False),   # odd dims, Nk != N, empty slots
    (1, 1, 20, 20, 16, 16, 70, 0.0, True),  # K > one key block, repeated keys
    (2, 1, 9, 9, 8, 8, 9, 0.0, False),     # K = Nk (dense)
    (1, 2, 12, 40, 48, 33, 40, 0.2, True),  # head dim 64 configs (dk/dv BLOCK_N 32)
]


@pytest.mark.parametrize('case', SPARSE_CASES)
def test_sparse_attention_triton_matches_reference(case):
    b, h, n, nk, d, dv, n_keys, empty, repeats = case
    q, k, v = _rand(b, h, n, d, seed=1), _rand(b, h, nk, d, seed=2), _rand(b, h, nk, dv, seed=3)
    g = torch.Generator().manual_seed(n)
    if repeats:
        idx = torch.randint(0, nk, (b, h, n, n_keys), generator=g)
    else:
        idx = torch.rand(b, h, n, nk, generator=g).argsort(-1)[..., :n_keys]
    idx = idx.masked_fill(torch.rand(idx.shape, generator=g) < empty, -1)
    idx[0, 0, 1] = -1  # one query without keys: zeros, no gradient
    idx = idx.to(DEVICE)
    grad = _rand(b, h, n, dv, seed=4)
    want = _grads(lambda q, k, v: reference.sparse_attention(q, k, v, idx, 0.6), [t.double() for t in (q, k, v)],
                  grad.double())
    with use_backend('triton'):
        got = _grads(lambda q, k, v: routing.sparse_attention(q, k, v, idx.int(), scale=0.6), (q, k, v), grad)
    _check(got, want, FP32_TOL)
    assert torch.equal(got[0][0, 0, 1], torch.zeros(dv, device=DEVICE))


def test_sparse_attention_triton_float16():
    q, k, v = (_rand(2, 2, 24, 16, dtype=torch.float16, seed=s) for s in (1, 2, 3))
    idx = torch.rand(2, 2, 24, 24, generator=torch.Generator().manual_seed(0)).argsort(-1)[..., :6].to(DEVICE)
    grad = _rand(2, 2, 24, 16, dtype=torch.float16, seed=4)
    want = _grads(lambda q, k, v: reference.sparse_attention(q, k, v, idx), [t.double() for t in (q, k, v)],
                  grad.double())
    with use_backend('triton'):
        got = _grads(lambda q, k, v: routing.sparse_attention(q, k, v, idx), (q, k, v), grad)
    _check(got, want, 3e-3)


def test_inverse_lists_group_positions_by_value():
    index = torch.tensor([[2, 0, 2, 1], [1, 1, 3, 0]], device=DEVICE)
    valid = torch.tensor([[True, True, True, True], [True, False, True, True]], device=DEVICE)
    positions, offsets = routing_triton._inverse_lists(index, 4, valid)
    groups = [positions[offsets[i]:offsets[i + 1]].tolist() for i in range(8)]
    assert groups == [[1], [3], [0, 2], [], [3], [0], [], [2]]
    assert positions.dtype == offsets.dtype == torch.int32
