"""window_attention's Triton kernels against the float64 reference (TRITON_INTERPRET=1 on CPUs, or CUDA)."""
import os

import pytest
import torch

from kernels import use_backend
from kernels.window import window_attention

pytestmark = pytest.mark.triton

_INTERPRETED = os.environ.get('TRITON_INTERPRET') == '1'
DEVICE = 'cpu' if _INTERPRETED else 'cuda'
# fp32 dots: IEEE under the interpreter, tf32 tensor cores on GPUs (10-bit mantissa: fp16's tolerance)
FP32_TOL = 2e-5 if _INTERPRETED else 4e-3


@pytest.fixture(autouse=True, scope='module')
def _interpreter_or_cuda():
    # a failure, not a skip; a fixture, not an import-time error: the "not triton" run of `make test` collects
    # this file (and deselects every test) without TRITON_INTERPRET
    if not _INTERPRETED and not torch.cuda.is_available():
        pytest.fail('tests/kernels/test_window_attention_triton.py runs Triton kernels: set TRITON_INTERPRET=1 '
                    '(before triton is imported, e.g. `TRITON_INTERPRET=1 pytest -m triton`) or run on a CUDA '
                    'device', pytrace=False)

# (B, heads, H, W, D, Dv, window, grid, bias, dtype): padding on both axes, rectangular windows, Dv != D,
# head dims 16/24/32/64, several key/query blocks per window (9x9 = 81 tokens), several windows per dS chunk
CASES = [
    (2, 2, 9, 7, 16, 16, 4, False, True, torch.float32),
    (1, 2, 9, 7, 16, 8, 4, True, True, torch.float32),
    (1, 1, 5, 11, 24, 24, (4, 3), False, False, torch.float32),
    (1, 2, 10, 9, 64, 64, 2, False, True, torch.float32),
    (1, 1, 10, 11, 16, 16, 9, True, True, torch.float32),
    (1, 2, 9, 9, 32, 32, 3, True, True, torch.float16),
    (1, 1, 8, 6, 32, 32, (4, 3), False, False, torch.float16),
    (1, 2, 7, 11, 16, 24, (6, 5), False, True, torch.float32),  # 30 tokens: the block-32 configs
    (1, 1, 7, 7, 64, 40, 7, False, True, torch.float32),  # 49 tokens at head dim 64: block-64 tiles
]


def _inputs(case, seed=0):
    B, heads, H, W, D, Dv, window, _grid, bias, _dtype = case
    wh, ww = (window, window) if isinstance(window, int) else window
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, heads, H, W, D, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, heads, H, W, Dv, generator=g, dtype=torch.float64)
    table = torch.randn(heads, 2 * wh - 1, 2 * ww - 1, generator=g, dtype=torch.float64) if bias else None
    cot = torch.randn(B, heads, H, W, Dv, generator=g, dtype=torch.float64)
    return q, k, v, table, cot


def _run(backend, q, k, v, table, cot, window, grid, dtype, table_dtype=None):
    leaves = [t.to(DEVICE, dtype).requires_grad_() for t in (q, k, v)]
    if table is not None:
        leaves.append(table.to(DEVICE, table_dtype or dtype).requires_grad_())
    with use_backend(backend):
        out = window_attention(*leaves[:3], window, grid=grid, rel_pos_bias=leaves[3] if table is not None else None)
    grads = torch.autograd.grad(out, leaves, cot.to(DEVICE, dtype))
    return out, grads


@pytest.mark.parametrize('case', CASES, ids=str)
def test_triton_matches_reference(case):
    window, grid, dtype = case[6], case[7], case[9]
    q, k, v, table, cot = _inputs(case)
    out, grads = _run('triton', q, k, v, table, cot, window, grid, dtype)
    ref_out, ref_grads = _run('reference', q, k, v, table, cot, window, grid, torch.float64)
    assert out.dtype == dtype and out.shape == ref_out.shape
    tol = FP32_TOL if dtype == torch.float32 else 4e-3
    torch.testing.assert_close(out.double().cpu(), ref_out, atol=tol, rtol=tol)
    for name, g, r in zip('q k v table'.split(), grads, ref_grads):
        # the table's gradient sums dS over every window and batch entry: allow for the longer sum
        scale = 10 if name == 'table' else 2
        torch.testing.assert_close(g.double().cpu(), r, atol=tol * scale, rtol=tol * scale, msg=f'd{name}')


def test_head_dim_limit_matches_the_kernels():
    from kernels.window import limits
    from kernels.window import triton as triton_impl
    assert limits.MAX_HEAD_DIM == max(triton_impl._HEAD_DIMS)  # the largest compiled config is the limit


def test_bias_gradient_is_deterministic_and_keeps_the_table_dtype():
    case = (1, 1, 10, 9, 16, 16, 2, True, True, torch.float16)  # 25 windows: 7 dS chunks of 4 windows
    q, k, v, table, cot = _inputs(case)
    first = _run('triton', q, k, v, table, cot, 2, True, torch.float16, table_dtype=torch.float32)[1]
    second = _run('triton', q, k, v, table, cot, 2, True, torch.float16, table_dtype=torch.float32)[1]
    assert first[3].dtype == torch.float32
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_strided_inputs_from_a_fused_qkv():
    B, H, W, heads, D = 1, 7, 9, 2, 16
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, H, W, 3, heads, D, generator=g).to(DEVICE)
    q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)  # (B, heads, H, W, D) views, last dim contiguous
    table = torch.randn(heads, 5, 5, generator=g).to(DEVICE)
    with use_backend('triton'):
        out = window_attention(q, k, v, 3, grid=True, rel_pos_bias=table)
    with use_backend('reference'):
        ref = window_attention(q.contiguous(), k.contiguous(), v.contiguous(), 3, grid=True, rel_pos_bias=table)
    torch.testing.assert_close(out, ref, atol=FP32_TOL, rtol=FP32_TOL)


def test_scale_and_no_grad_inference():
    q, k, v, _, _ = _inputs((1, 1, 6, 6, 16, 16, 3, False, False, torch.float32))
    q, k, v = (t.float().to(DEVICE) for t in (q, k, v))
    with torch.no_grad():
        with use_backend('triton'):
            out = window_attention(q, k, v, 3, scale=0.7)
        with use_backend('reference'):
            ref = window_attention(q, k, v, 3, scale=0.7)
    torch.testing.assert_close(out, ref, atol=FP32_TOL, rtol=FP32_TOL)
