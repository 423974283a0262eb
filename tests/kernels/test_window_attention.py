"""window_attention: reference against timm's MaxViT formulation and a brute-force definition; cpu == reference."""
import math

import pytest
import torch
import torch.nn.functional as F
from timm.layers.pos_embed_rel import RelPosBiasTf
from timm.models.maxxvit import grid_partition, grid_reverse, window_partition, window_reverse

from kernels import use_backend
from kernels.window import window_attention

# (B, heads, H, W, D, Dv, window, grid): multiples, odd sizes, rectangular windows, windows larger than the map
CASES = [
    (2, 2, 8, 12, 8, 8, 4, False),
    (2, 2, 8, 12, 8, 8, 4, True),
    (1, 3, 9, 13, 8, 8, 4, False),
    (1, 3, 9, 13, 8, 8, 4, True),
    (2, 1, 5, 7, 16, 8, (4, 3), True),
    (1, 2, 11, 6, 8, 16, (2, 5), False),
    (1, 2, 3, 5, 4, 4, 7, False),
    (1, 2, 3, 5, 4, 4, 7, True),
    (1, 1, 14, 14, 8, 8, 2, False),
]


def _inputs(B, heads, H, W, D, Dv, window, dtype=torch.float64, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    wh, ww = (window, window) if isinstance(window, int) else window
    q, k = (torch.randn(B, heads, H, W, D, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, heads, H, W, Dv, generator=g, dtype=dtype)
    table = torch.randn(heads, 2 * wh - 1, 2 * ww - 1, generator=g, dtype=dtype) if bias else None
    return q, k, v, table


def _run(backend, q, k, v, window, grid, table, scale=None):
    """Output and gradients of (q, k, v, table) for a fixed random cotangent."""
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (q, k, v, table)]
    with use_backend(backend):
        out = window_attention(*leaves[:3], window, grid=grid, rel_pos_bias=leaves[3], scale=scale)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(out.dtype)
    grads = torch.autograd.grad(out, [t for t in leaves if t is not None], cot)
    return out, grads


def _brute_force(q, k, v, window, grid, table, scale):
    """Per query: softmax over the real keys of its window, from the definition (no padding, no partition)."""
    B, heads, H, W, D = q.shape
    wh, ww = (window, window) if isinstance(window, int) else window
    sh, sw = math.ceil(H / wh), math.ceil(W / ww)  # grid strides = number of grid windows per axis
    out = torch.zeros(*q.shape[:4], v.shape[-1], dtype=q.dtype)

    def where(r, c):  # (window id, in-window coordinates)
        if grid:
            return (r % sh, c % sw), (r // sh, c // sw)
        return (r // wh, c // ww), (r % wh, c % ww)

    for r in range(H):
        for c in range(W):
            win, (qa, qb) = where(r, c)
            keys = [(y, x) for y in range(H) for x in range(W) if where(y, x)[0] == win]
            ky = torch.tensor([y for y, _ in keys])
            kx = torch.tensor([x for _, x in keys])
            logits = torch.einsum('bhd,bhnd->bhn', q[:, :, r, c], k[:, :, ky, kx]) * scale
            if table is not None:
                ka = torch.tensor([where(y, x)[1][0] for y, x in keys])
                kb = torch.tensor([where(y, x)[1][1] for y, x in keys])
                logits = logits + table[:, ka - qa + wh - 1, kb - qb + ww - 1]
            out[:, :, r, c] = torch.einsum('bhn,bhnd->bhd', logits.softmax(-1), v[:, :, ky, kx])
    return out


def _timm(q, k, v, window, grid, bias_module):
    """timm's MaxViT: partition (B, H, W, C) maps, SDPA with RelPosBiasTf.get_bias(), reverse."""
    B, heads, H, W, D = q.shape

    def part(x):
        x = x.permute(0, 2, 3, 1, 4).reshape(B, H, W, heads * D)
        windows = (grid_partition if grid else window_partition)(x, window)
        return windows.reshape(windows.shape[0], -1, heads, D).transpose(1, 2)

    bias = bias_module.get_bias() if bias_module is not None else None
    out = F.scaled_dot_product_attention(part(q), part(k), part(v), attn_mask=bias)
    out = out.transpose(1, 2).reshape(-1, window[0], window[1], heads * D)
    out = (grid_reverse if grid else window_reverse)(out, window, (H, W))
    return out.reshape(B, H, W, heads, D).permute(0, 3, 1, 2, 4)


@pytest.mark.parametrize('backend', ['reference', 'cpu'])
@pytest.mark.parametrize('grid', [False, True])
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('with_bias', [False, True])
def test_matches_timm_maxxvit_partition_attention(backend, grid, dtype, with_bias):
    torch.manual_seed(0)
    window = [4, 4]
    q, k, v, _ = _inputs(2, 3, 8, 12, 16, 16, 4, dtype=dtype, bias=False)
    bias_module = RelPosBiasTf(tuple(window), num_heads=3, dtype=dtype) if with_bias else None
    if bias_module is not None:
        torch.nn.init.normal_(bias_module.relative_position_bias_table, std=1.0)
    with use_backend(backend):
        out = window_attention(q, k, v, 4, grid=grid,
                               rel_pos_bias=bias_module.relative_position_bias_table if with_bias else None)
    expected = _timm(q, k, v, window, grid, bias_module)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out, expected, atol=tol, rtol=tol)
    if with_bias:  # the table's gradient equals timm's (einsum one-hot lookup) gradient
        cot = torch.randn_like(out)
        table = bias_module.relative_position_bias_table
        (got,) = torch.autograd.grad(out, table, cot)
        (want,) = torch.autograd.grad(_timm(q, k, v, window, grid, bias_module), table, cot)
        torch.testing.assert_close(got, want, atol=tol * 10, rtol=tol * 10)


@pytest.mark.parametrize('backend', ['reference', 'cpu'])
@pytest.mark.parametrize('case', CASES[2:], ids=str)
def test_padding_matches_brute_force_definition(backend, case):
    B, heads, H, W, D, Dv, window, grid = case
    q, k, v, table = _inputs(B, heads, H, W, D, Dv, window)
    with use_backend(backend):
        out = window_attention(q, k, v, window, grid=grid, rel_pos_bias=table, scale=0.3)
    torch.testing.assert_close(out, _brute_force(q, k, v, window, grid, table, 0.3), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize('case', CASES, ids=str)
@pytest.mark.parametrize('with_bias', [False, True])
def test_cpu_matches_reference_forward_and_gradients(case, with_bias):
    B, heads, H, W, D, Dv, window, grid = case
    q, k, v, table = _inputs(B, heads, H, W, D, Dv, window, bias=with_bias)
    out, grads = _run('cpu', q, k, v, window, grid, table)
    ref_out, ref_grads = _run('reference', q, k, v, window, grid, table)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-11, rtol=1e-11)


@pytest.mark.parametrize('dtype,tol', [(torch.float32, 2e-5), (torch.bfloat16, 3e-2), (torch.float16, 4e-3)])
@pytest.mark.parametrize('grid', [False, True])
def test_cpu_low_precision_close_to_float64_reference(dtype, tol, grid):
    q, k, v, table = _inputs(2, 2, 9, 10, 16, 16, 4)
    lq, lk, lv, lt = (t.to(dtype) for t in (q, k, v, table))
    out, grads = _run('cpu', lq, lk, lv, 4, grid, lt)
    ref_out, ref_grads = _run('reference', q, k, v, 4, grid, table)
    assert out.dtype == dtype and grads[3].dtype == dtype
    torch.testing.assert_close(out.double(), ref_out, atol=tol, rtol=tol)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, atol=tol * 4, rtol=tol * 4)


def test_float32_table_with_low_precision_inputs():
    """Mixed precision: an fp32 master table with bf16 activations; its gradient comes back in fp32."""
    q, k, v, table = _inputs(1, 2, 7, 7, 8, 8, 7)
    for backend in ('reference', 'cpu'):
        out, grads = _run(backend, q.bfloat16(), k.bfloat16(), v.bfloat16(), 7, False, table.float())
        assert out.dtype == torch.bfloat16 and grads[3].dtype == torch.float32


@pytest.mark.parametrize('grid', [False, True])
@pytest.mark.parametrize('hw,window', [((5, 3), (4, 2)), ((4, 4), 2)])
def test_cpu_gradcheck(grid, hw, window):
    wh, ww = (window, window) if isinstance(window, int) else window
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 2, *hw, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    v = torch.randn(1, 2, *hw, 3, generator=g, dtype=torch.float64, requires_grad=True)
    table = torch.randn(2, 2 * wh - 1, 2 * ww - 1, generator=g, dtype=torch.float64, requires_grad=True)

    def fn(q, k, v, table):
        with use_backend('cpu'):
            return window_attention(q, k, v, window, grid=grid, rel_pos_bias=table)

    assert torch.autograd.gradcheck(fn, (q, k, v, table), fast_mode=True)


def test_non_contiguous_inputs_from_a_fused_qkv():
    B, H, W, heads, D = 2, 9, 7, 2, 8
    qkv = torch.randn(B, H, W, 3, heads, D, dtype=torch.float64)
    q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)  # (B, heads, H, W, D) views with odd strides
    table = torch.randn(heads, 5, 5, dtype=torch.float64)
    for grid in (False, True):
        with use_backend('cpu'):
            out = window_attention(q, k, v, 3, grid=grid, rel_pos_bias=table)
        with use_backend('reference'):
            ref = window_attention(q.contiguous(), k.contiguous(), v.contiguous(), 3, grid=grid, rel_pos_bias=table)
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)


def test_padded_keys_do_not_leak():
    """Values at real positions only: changing what a padded map would hold cannot change anything, and each
    5th-row query of a 4-row window sees exactly one key row (its own)."""
    q, k, v, _ = _inputs(1, 1, 5, 4, 4, 4, 4, bias=False)
    with use_backend('cpu'):
        out = window_attention(q, k, v, 4)
    last = F.scaled_dot_product_attention(q[:, :, 4:5].flatten(2, 3), k[:, :, 4:5].flatten(2, 3),
                                          v[:, :, 4:5].flatten(2, 3))
    torch.testing.assert_close(out[:, :, 4].flatten(2, 2), last, atol=1e-12, rtol=1e-12)


def test_default_backend_on_cpu_tensors_is_cpu_path(monkeypatch):
    from kernels.library import OPERATORS
    backends = OPERATORS['window_attention'].backends
    calls = []

    class Spy:
        def forward(self, **kw):
            calls.append(kw)
            return backends['reference'].forward(**kw)

    monkeypatch.setitem(backends, 'cpu', Spy())
    q = torch.randn(1, 1, 4, 4, 8)
    window_attention(q, q, q, 2)
    assert len(calls) == 1
    assert {k: calls[0][k] for k in ('window_h', 'window_w', 'grid', 'rel_pos_bias', 'scale')} == dict(
        window_h=2, window_w=2, grid=False, rel_pos_bias=None, scale=8 ** -0.5)


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(q=torch.zeros(1, 1, 4, 8)), ValueError, r'q must be 5-D \(B, heads, H, W, D\), got shape \(1, 1, 4, 8\)'),
    (dict(k=torch.zeros(1, 2, 4, 4, 8)), ValueError,
     r'k must be the shape of q .* = \(1, 1, 4, 4, 8\), got shape \(1, 2, 4, 4, 8\)'),
    (dict(v=torch.zeros(1, 1, 4, 3, 8)), ValueError, r'v must be \(B, heads, H, W, Dv\).*got shape \(1, 1, 4, 3, 8\)'),
    (dict(q=torch.zeros(1, 1, 4, 4, 8, dtype=torch.int64)), TypeError, r'q must be float16.*got torch.int64'),
    (dict(k=torch.zeros(1, 1, 4, 4, 8, dtype=torch.float64)), TypeError,
     r'k must have the dtype of q \(torch.float32\), got torch.float64'),
    (dict(q=[1.0]), TypeError, r'q must be a torch.Tensor \(B, heads, H, W, D\), got list'),
    (dict(window_size=0), ValueError, r'window_size must be positive, got \(0, 0\)'),
    (dict(window_size=(2, 2, 2)), TypeError, r'window_size must be an int or a pair of ints'),
    (dict(window_size=2.0), TypeError, r'window_size must be an int or a pair of ints'),
    (dict(grid=1), TypeError, 'grid must be a bool, got int'),
    (dict(rel_pos_bias=torch.zeros(1, 3, 4)), ValueError,
     r'rel_pos_bias must be \(heads, 2\*wh-1, 2\*ww-1\) = \(1, 3, 3\), got shape \(1, 3, 4\)'),
    (dict(rel_pos_bias=torch.zeros(1, 3, 3, dtype=torch.float16)), TypeError,
     r'rel_pos_bias must have the dtype of q \(torch.float32\) or float32, got torch.float16'),
    (dict(scale=float('nan')), ValueError, 'scale must be a finite non-zero number'),
    (dict(q=torch.zeros(1, 1, 0, 4, 8), k=torch.zeros(1, 1, 0, 4, 8), v=torch.zeros(1, 1, 0, 4, 8)), ValueError,
     'must be non-empty'),
])
def test_errors_name_the_argument(kwargs, error, match):
    args = dict(q=torch.zeros(1, 1, 4, 4, 8), k=torch.zeros(1, 1, 4, 4, 8), v=torch.zeros(1, 1, 4, 4, 8),
                window_size=2, grid=False, rel_pos_bias=None, scale=None)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        window_attention(args.pop('q'), args.pop('k'), args.pop('v'), args.pop('window_size'), **args)


def test_triton_backend_rejects_float64_before_importing_triton(monkeypatch):
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    q = torch.zeros(1, 1, 4, 4, 8, dtype=torch.float64)
    with use_backend('triton'), pytest.raises(ValueError, match='triton backend of window_attention runs float16'):
        window_attention(q, q, q, 2)


def test_triton_backend_rejects_head_dims_over_64_before_importing_triton(monkeypatch):
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    q = torch.zeros(1, 1, 4, 4, 80)
    with use_backend('triton'), pytest.raises(ValueError, match='head dims .D and Dv. up to 64'):
        window_attention(q, q, q, 2)


def test_package_imports_without_triton():
    """kernels.window must import where triton does not: its triton module loads only when that backend runs."""
    import subprocess
    import sys
    code = ('import sys; sys.modules["triton"] = None; import kernels.window, torch; '
            'q = torch.randn(1, 1, 4, 4, 8); kernels.window.window_attention(q, q, q, 2); '
            'assert "kernels.window.triton" not in sys.modules')
    subprocess.run([sys.executable, '-c', code], check=True)


@pytest.mark.parametrize('grid', [False, True])
def test_cpu_chunks_of_single_window_rows(monkeypatch, grid):
    """Tiny chunks: every window row is its own chunk; the gradient of out.sum() is a broadcast tensor."""
    from kernels.window import cpu
    monkeypatch.setattr(cpu, '_CHUNK', 1)
    q, k, v, table = _inputs(2, 2, 11, 9, 8, 8, (3, 4))
    results = []
    for backend in ('cpu', 'reference'):
        leaves = [t.detach().requires_grad_() for t in (q, k, v, table)]
        with use_backend(backend):
            out = window_attention(*leaves[:3], (3, 4), grid=grid, rel_pos_bias=leaves[3])
        out.sum().backward()
        results.append([out] + [t.grad for t in leaves])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
