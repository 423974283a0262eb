"""kernels.routing: the cpu backend against the gather reference, BiFormer's layout, gradcheck, errors."""
import pytest
import torch

import kernels.routing as routing
from kernels.backend import ENV_VAR, use_backend
from kernels.library import OPERATORS
from kernels.routing import cpu, reference
from kernels.routing import native as routing_native

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def _qkv(shape, dv, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(*shape[:-1], dv, generator=g, dtype=torch.float64).to(dtype)
    return q, k, v


def _random_routes(b, heads, n_reg, topk, seed=0, per_head=False, repeats=False):
    g = torch.Generator().manual_seed(seed)
    lead = (b, heads, n_reg) if per_head else (b, n_reg)
    if repeats:
        return torch.randint(0, n_reg, (*lead, topk), generator=g)
    return torch.rand(*lead, n_reg, generator=g).argsort(-1)[..., :topk]


def _grads(fn, inputs, grad):
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = fn(*inputs)
    return (out.detach(), *torch.autograd.grad(out, inputs, grad))


def _assert_close_all(got, want, atol, rtol):
    for name, a, b in zip(('out', 'dq', 'dk', 'dv'), got, want):
        torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol, msg=lambda m, n=name: f'{n}: {m}')


# --- region_topk -------------------------------------------------------------------------------------------------

def _legacy_routing(q_cl: torch.Tensor, k_cl: torch.Tensor, n_win: int, topk: int, scale: float) -> torch.Tensor:
    """BiFormer's TopkRouting on channels-last (N, H, W, C) maps: window means, scaled affinity, topk."""
    n, hh, ww, c = q_cl.shape
    win = lambda x: x.view(n, n_win, hh // n_win, n_win, ww // n_win, c).permute(0, 1, 3, 2, 4, 5)  # noqa: E731
    q_win = win(q_cl).mean([3, 4]).reshape(n, n_win * n_win, c)
    k_win = win(k_cl).mean([3, 4]).reshape(n, n_win * n_win, c)
    return torch.topk((q_win * scale) @ k_win.transpose(-2, -1), k=topk, dim=-1).indices


@pytest.mark.parametrize('shape,n_win,topk', [((2, 3, 12, 8, 4), 4, 5), ((1, 2, 6, 9, 3), 3, 9),
                                              ((3, 1, 7, 7, 5), 7, 1)])
def test_region_topk_matches_biformer_routing(shape, n_win, topk):
    q, k, _ = _qkv(shape, 1, torch.float64)
    b, h, hh, ww, d = shape
    to_cl = lambda x: x.permute(0, 2, 3, 1, 4).reshape(b, hh, ww, h * d)  # noqa: E731 (heads-major channels)
    want = _legacy_routing(to_cl(q), to_cl(k), n_win, topk, (h * d) ** -0.5)
    for backend in ('reference', 'cpu'):
        with use_backend(backend):
            got = routing.region_topk(q, k, n_win, topk)
        assert got.dtype == torch.int64 and got.shape == (b, n_win * n_win, topk)
        assert torch.equal(got, want), backend


def test_region_topk_has_no_gradient_and_differs_per_image():
    q, k, _ = _qkv((2, 2, 8, 8, 4), 1)
    q.requires_grad_()
    idx = routing.region_topk(q, k, 4, 3)
    assert not idx.requires_grad
    assert not torch.equal(idx[0], idx[1])


# --- routed_attention: BiFormer's layout ---------------------------------------------------------------------------

def _legacy_attention(q_cl, k_cl, v_cl, r_idx, n_win, heads, scale):
    """BiFormer's bra_legacy token attention on channels-last maps (its gather of a full kv copy per region)."""
    n, hh, ww, c_qk = q_cl.shape
    c_v = v_cl.shape[-1]
    rh, rw = hh // n_win, ww // n_win

    def win(x):  # n (j h) (i w) c -> n (j i) (h w) c
        return x.view(n, n_win, rh, n_win, rw, -1).permute(0, 1, 3, 2, 4, 5).reshape(n, n_win * n_win, rh * rw, -1)

    q_pix, kv_pix = win(q_cl), win(torch.cat([k_cl, v_cl], -1))
    p2, w2, topk = n_win * n_win, rh * rw, r_idx.shape[-1]
    kv_sel = torch.gather(kv_pix.view(n, 1, p2, w2, -1).expand(-1, p2, -1, -1, -1), 2,
                          r_idx.view(n, p2, topk, 1, 1).expand(-1, -1, -1, w2, c_qk + c_v))
    k_sel, v_sel = kv_sel.split([c_qk, c_v], -1)
    k_sel = k_sel.reshape(n, p2, topk, w2, heads, -1).permute(0, 1, 4, 5, 2, 3).reshape(n * p2, heads, -1, topk * w2)
    v_sel = v_sel.reshape(n, p2, topk, w2, heads, -1).permute(0, 1, 4, 2, 3, 5).reshape(n * p2, heads, topk * w2, -1)
    q_pix = q_pix.reshape(n * p2, w2, heads, -1).transpose(1, 2)
    out = torch.softmax((q_pix * scale) @ k_sel, -1) @ v_sel  # (n p2, m, w2, c)
    out = out.transpose(1, 2).reshape(n, n_win, n_win, rh, rw, c_v).permute(0, 1, 3, 2, 4, 5)
    return out.reshape(n, hh, ww, c_v)


@pytest.mark.parametrize('backend', ['reference', 'cpu'])
def test_routed_attention_reproduces_bra_legacy(backend):
    b, heads, hh, ww, d, dv, n_win, topk = 2, 4, 8, 12, 8, 6, 4, 5
    q, k, v = _qkv((b, heads, hh, ww, d), dv, torch.float64)
    to_cl = lambda x: x.permute(0, 2, 3, 1, 4).reshape(b, hh, ww, -1)  # noqa: E731
    scale = (heads * d) ** -0.5  # BiFormer: qk_dim ** -0.5 over all heads
    r_idx = _legacy_routing(to_cl(q), to_cl(k), n_win, topk, scale)
    want = _legacy_attention(to_cl(q), to_cl(k), to_cl(v), r_idx, n_win, heads, scale)
    with use_backend(backend):
        idx = routing.region_topk(q, k, n_win, topk)
        got = routing.routed_attention(q, k, v, idx, n_win, scale=scale)
    torch.testing.assert_close(to_cl(got), want, atol=1e-12, rtol=1e-12)


# --- routed_attention: cpu vs reference ---------------------------------------------------------------------------

ROUTED_CASES = [
    # (B, heads, H, W, D, Dv, n_win, topk, per_head, repeats)
    (2, 2, 8, 8, 16, 16, 2, 1, False, False),
    (2, 3, 6, 10, 5, 7, 2, 4, False, False),      # odd head dims, rectangular regions, topk = all
    (1, 2, 9, 6, 8, 3, 3, 4, True, False),        # routes per head
    (2, 2, 12, 12, 4, 4, 4, 6, False, True),      # repeated regions
    (1, 1, 7, 14, 3, 3, 7, 49, False, False),     # one-token-high regions, every region routed
]


@pytest.mark.parametrize('route', ['bmm', 'flash'])  # flash: PyTorch's fused CPU kernels (where D == Dv)
@pytest.mark.parametrize('case', ROUTED_CASES)
def test_routed_attention_cpu_matches_reference(case, route, monkeypatch):
    b, h, hh, ww, d, dv, n_win, topk, per_head, repeats = case
    monkeypatch.setattr(cpu, '_CHUNK_ELEMENTS', 300)  # several chunks even on tiny maps
    monkeypatch.setattr(cpu, '_FLASH_MIN_TOKENS', 1 if route == 'flash' else 10 ** 9)
    q, k, v = _qkv((b, h, hh, ww, d), dv, torch.float64, seed=topk)
    idx = _random_routes(b, h, n_win * n_win, topk, seed=hh, per_head=per_head, repeats=repeats)
    grad = torch.randn(b, h, hh, ww, dv, dtype=torch.float64)
    want = _grads(lambda q, k, v: reference.routed_attention(q, k, v, idx, n_win, 0.7), (q, k, v), grad)
    with use_backend('cpu'):
        got = _grads(lambda q, k, v: routing.routed_attention(q, k, v, idx.int(), n_win, scale=0.7), (q, k, v), grad)
    _assert_close_all(got, want, 1e-12, 1e-12)


@pytest.mark.parametrize('flash', [False, True])
@pytest.mark.parametrize('dtype,tol', [(torch.float32, 2e-5), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_routed_attention_cpu_low_precision(dtype, tol, flash, monkeypatch):
    monkeypatch.setattr(cpu, '_FLASH_MIN_TOKENS', 1 if flash else 10 ** 9)
    b, h, hh, ww, d, n_win, topk = 2, 2, 8, 8, 8, 4, 3
    q, k, v = _qkv((b, h, hh, ww, d), d, dtype)
    idx = routing.region_topk(q, k, n_win, topk)
    grad = torch.randn(b, h, hh, ww, d).to(dtype)
    want = _grads(lambda q, k, v: reference.routed_attention(q, k, v, idx, n_win), [t.double() for t in (q, k, v)],
                  grad.double())
    got = _grads(lambda q, k, v: routing.routed_attention(q, k, v, idx, n_win), (q, k, v), grad)
    assert all(t.dtype == dtype for t in got)
    _assert_close_all(got, want, tol, tol)


def test_routed_attention_routes_differ_per_image():
    q, k, v = _qkv((2, 1, 4, 4, 4), 4, torch.float64)
    idx = torch.tensor([[[0], [0], [0], [0]], [[3], [3], [3], [3]]])
    out = routing.routed_attention(q, k, v, idx, 2)
    # every query of image 0 sees region 0 only, of image 1 region 3 only
    for img, region in ((0, (slice(0, 2), slice(0, 2))), (1, (slice(2, 4), slice(2, 4)))):
        keys, vals = k[img, 0][region].reshape(4, 4), v[img, 0][region].reshape(4, 4)
        want = torch.softmax(q[img, 0].reshape(16, 4) @ keys.T * 0.5, -1) @ vals
        torch.testing.assert_close(out[img, 0].reshape(16, 4), want)


@pytest.mark.parametrize('flash', [False, True])
def test_routed_attention_gradcheck_cpu(flash, monkeypatch):
    monkeypatch.setattr(cpu, '_FLASH_MIN_TOKENS', 1 if flash else 10 ** 9)
    b, dv = (1, 2) if flash else (2, 3)  # D != Dv never takes the flash route
    q, k, v = _qkv((b, 2, 4, 4, 2), dv, torch.float64)
    idx = torch.tensor([[[1, 0], [2, 2], [3, 1], [0, 3]], [[3, 2], [0, 1], [1, 1], [2, 0]]])[:b]
    inputs = [t.requires_grad_() for t in (q, k, v)]
    with use_backend('cpu'):
        assert torch.autograd.gradcheck(lambda q, k, v: routing.routed_attention(q, k, v, idx, 2, scale=0.9), inputs)


def test_routed_attention_cpu_accepts_strided_inputs():
    q, k, v = _qkv((2, 8, 8, 3, 4), 4)  # permuted views (B, heads, H, W, D) of channels-last maps
    q, k, v = (t.permute(0, 3, 1, 2, 4) for t in (q, k, v))
    idx = routing.region_topk(q, k, 2, 2)
    want = reference.routed_attention(q, k, v, idx, 2)
    torch.testing.assert_close(routing.routed_attention(q, k, v, idx, 2), want)


# --- valid_hw: padded tokens masked (BiFormer with exact masking) -------------------------------------------------

def _brute_topk(q, k, n_win, topk, valid_hw):
    """Region means over the valid tokens, -inf for key regions without one, by loops over regions."""
    b, h, hh, ww, d = q.shape
    rh, rw = hh // n_win, ww // n_win
    vh, vw = valid_hw
    means_q, means_k, empty = [], [], []
    for j in range(n_win):
        for i in range(n_win):
            ys, xs = slice(j * rh, min((j + 1) * rh, vh)), slice(i * rw, min((i + 1) * rw, vw))
            sub_q, sub_k = q[:, :, ys, xs], k[:, :, ys, xs]
            empty.append(sub_q.numel() == 0)
            means_q.append(sub_q.mean((2, 3)) if sub_q.numel() else torch.zeros(b, h, d, dtype=q.dtype))
            means_k.append(sub_k.mean((2, 3)) if sub_k.numel() else torch.zeros(b, h, d, dtype=q.dtype))
    q_r, k_r = (torch.stack(m, 1).reshape(b, n_win * n_win, h * d) for m in (means_q, means_k))
    affinity = (q_r @ k_r.transpose(-1, -2)).masked_fill(torch.tensor(empty), float('-inf'))
    return torch.topk(affinity, topk, -1).indices


def _brute_routed(q, k, v, idx, n_win, scale, valid_hw):
    """Per query: softmax over the valid tokens of its routed regions (zeros without any)."""
    b, h, hh, ww, d = q.shape
    rh, rw = hh // n_win, ww // n_win
    out = torch.zeros(*q.shape[:4], v.shape[-1], dtype=q.dtype)
    for bi in range(b):
        for hi in range(h):
            routes = idx[bi, hi] if idx.dim() == 4 else idx[bi]
            for y in range(hh):
                for x in range(ww):
                    keys = [(ky, kx) for r in routes[(y // rh) * n_win + x // rw].tolist()
                            for ky in range((r // n_win) * rh, (r // n_win + 1) * rh)
                            for kx in range((r % n_win) * rw, (r % n_win + 1) * rw)
                            if ky < valid_hw[0] and kx < valid_hw[1]]
                    if not keys:
                        continue
                    ky, kx = torch.tensor(keys).T
                    p = torch.softmax(k[bi, hi, ky, kx] @ q[bi, hi, y, x] * scale, 0)
                    out[bi, hi, y, x] = p @ v[bi, hi, ky, kx]
    return out


@pytest.mark.parametrize('backend', ['reference', 'cpu'])
@pytest.mark.parametrize('shape,n_win,topk,valid_hw', [
    ((2, 2, 9, 12, 3), 3, 4, (7, 10)),   # partly padded regions on both axes
    ((1, 3, 8, 8, 4), 4, 16, (3, 8)),    # whole key regions padded: fewer valid regions than topk
    ((2, 1, 6, 6, 2), 2, 2, (6, 6)),     # nothing padded: as valid_hw=None
])
def test_region_topk_valid_hw(backend, shape, n_win, topk, valid_hw):
    q, k, _ = _qkv(shape, 1, torch.float64, seed=sum(valid_hw))
    with use_backend(backend):
        got = routing.region_topk(q, k, n_win, topk, valid_hw=valid_hw)
        unmasked = routing.region_topk(q, k, n_win, topk)
    want = _brute_topk(q, k, n_win, topk, valid_hw)
    n_valid = len({(j, i) for j in range(n_win) for i in range(n_win)
                   if j * (shape[2] // n_win) < valid_hw[0] and i * (shape[3] // n_win) < valid_hw[1]})
    # the valid regions come first in the same order; beyond them, the picks are any of the empty regions
    assert torch.equal(got[..., :min(topk, n_valid)], want[..., :min(topk, n_valid)])
    if valid_hw == shape[2:4]:
        assert torch.equal(got, unmasked)


VALID_CASES = [
    # (B, heads, H, W, D, Dv, n_win, topk, per_head, valid_hw)
    (2, 2, 9, 12, 4, 5, 3, 3, False, (7, 10)),
    (1, 2, 8, 8, 8, 8, 2, 2, True, (5, 3)),     # per-head routes, 16-token regions (flash-sized)
    (1, 1, 8, 8, 3, 3, 4, 4, False, (3, 2)),    # most regions fully padded
]


def _valid_routes(case, q, k):
    b, h, hh, ww, d, dv, n_win, topk, per_head, valid_hw = case
    if per_head:
        return _random_routes(b, h, n_win * n_win, topk, seed=hh, per_head=True)
    return reference.region_topk(q, k, n_win, topk, valid_hw)


@pytest.mark.parametrize('case', VALID_CASES)
def test_routed_attention_valid_hw_reference_matches_brute_force(case):
    b, h, hh, ww, d, dv, n_win, topk, per_head, valid_hw = case
    q, k, v = _qkv((b, h, hh, ww, d), dv, torch.float64)
    idx = _valid_routes(case, q, k)
    want = _brute_routed(q, k, v, idx, n_win, 0.6, valid_hw)
    with use_backend('reference'):
        got = routing.routed_attention(q, k, v, idx, n_win, scale=0.6, valid_hw=valid_hw)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize('case', VALID_CASES)
def test_routed_attention_valid_hw_cpu_matches_reference(case, monkeypatch):
    b, h, hh, ww, d, dv, n_win, topk, per_head, valid_hw = case
    monkeypatch.setattr(cpu, '_CHUNK_ELEMENTS', 300)  # several chunks
    monkeypatch.setattr(cpu, '_FLASH_MIN_TOKENS', 1)  # masking must not take the flash route
    q, k, v = _qkv((b, h, hh, ww, d), dv, torch.float64, seed=1)
    idx = _valid_routes(case, q, k)
    grad = torch.randn(b, h, hh, ww, dv, dtype=torch.float64)
    want = _grads(lambda q, k, v: reference.routed_attention(q, k, v, idx, n_win, 0.6, valid_hw), (q, k, v), grad)
    with use_backend('cpu'):
        got = _grads(lambda q, k, v: routing.routed_attention(q, k, v, idx, n_win, scale=0.6, valid_hw=valid_hw),
                     (q, k, v), grad)
    _assert_close_all(got, want, 1e-12, 1e-12)
    ky, kx = torch.meshgrid(torch.arange(hh), torch.arange(ww), indexing='ij')
    padded = (ky >= valid_hw[0]) | (kx >= valid_hw[1])
    assert not got[2][:, :, padded].any() and not got[3][:, :, padded].any()  # no gradient to padded keys


@pytest.mark.parametrize('dtype,tol', [(torch.float32, 2e-5), (torch.float16, 2e-3)])
def test_routed_attention_valid_hw_cpu_low_precision(dtype, tol):
    b, h, hh, ww, d, n_win, topk, valid_hw = 2, 2, 8, 12, 8, 4, 3, (6, 9)
    q, k, v = _qkv((b, h, hh, ww, d), d, dtype)
    idx = routing.region_topk(q, k, n_win, topk, valid_hw=valid_hw)
    grad = torch.randn(b, h, hh, ww, d).to(dtype)
    want = _grads(lambda q, k, v: reference.routed_attention(q, k, v, idx, n_win, None, valid_hw),
                  [t.double() for t in (q, k, v)], grad.double())
    got = _grads(lambda q, k, v: routing.routed_attention(q, k, v, idx, n_win, valid_hw=valid_hw), (q, k, v), grad)
    assert all(t.dtype == dtype for t in got)
    _assert_close_all(got, want, tol, tol)


def test_routed_attention_valid_hw_query_without_valid_keys_gets_zeros():
    q, k, v = _qkv((1, 1, 4, 4, 2), 3, torch.float64)
    idx = torch.tensor([[[3], [0], [0], [0]]])  # region 0 routes only to region 3, all padding below
    for backend in ('reference', 'cpu'):
        with use_backend(backend):
            out = routing.routed_attention(q, k, v, idx, 2, valid_hw=(2, 2))
        assert torch.equal(out[0, 0, :2, :2], torch.zeros(2, 2, 3, dtype=torch.float64)), backend
        assert torch.isfinite(out).all()


def test_routed_attention_valid_hw_gradcheck_cpu():
    q, k, v = _qkv((1, 2, 4, 6, 2), 3, torch.float64)
    idx = torch.tensor([[[1, 0], [2, 3], [3, 1], [0, 2]]])
    inputs = [t.requires_grad_() for t in (q, k, v)]
    with use_backend('cpu'):
        assert torch.autograd.gradcheck(
            lambda q, k, v: routing.routed_attention(q, k, v, idx, 2, scale=0.9, valid_hw=(3, 4)), inputs)


def test_valid_hw_of_the_whole_map_is_no_masking():
    q, k, v = _qkv((2, 2, 6, 8, 4), 4, torch.float64)
    idx = routing.region_topk(q, k, 2, 2)
    for backend in ('reference', 'cpu'):
        with use_backend(backend):
            a = routing.routed_attention(q, k, v, idx, 2, valid_hw=(6, 8))
            b = routing.routed_attention(q, k, v, idx, 2)
        assert torch.equal(a, b), backend


@pytest.mark.parametrize('valid_hw,error,match', [
    ((0, 4), ValueError, r'valid_hw\[0\] .* must be in \[1, 4\], got 0'),
    ((4, 7), ValueError, r'valid_hw\[1\] .* must be in \[1, 6\], got 7'),
    ((4.0, 6), TypeError, r'valid_hw\[0\] .* must be an int, got float'),
    (4, TypeError, r'valid_hw must be None or a pair \(h, w\) of ints, got 4'),
])
def test_valid_hw_errors(valid_hw, error, match):
    args = _routed_args()
    with pytest.raises(error, match=match):
        routing.routed_attention(**args, valid_hw=valid_hw)
    with pytest.raises(error, match=match):
        routing.region_topk(args['q'], args['k'], 2, 2, valid_hw=valid_hw)


# --- sparse_attention ---------------------------------------------------------------------------------------------

def _key_index(b, h, n, nk, n_keys, seed=0, empty=0.0, repeats=False):
    g = torch.Generator().manual_seed(seed)
    if repeats:
        idx = torch.randint(0, nk, (b, h, n, n_keys), generator=g)
    else:
        idx = torch.rand(b, h, n, nk, generator=g).argsort(-1)[..., :n_keys]
    if empty:
        idx = idx.masked_fill(torch.rand(idx.shape, generator=g) < empty, -1)
    return idx


def _dense_masked(q, k, v, key_index, scale):
    """Sparsifiner's formulation: dense scores, a 0/1 connectivity mask, masked softmax, nan_to_num."""
    nk = k.shape[2]
    mask = torch.zeros(*q.shape[:3], nk + 1, dtype=torch.bool)
    mask.scatter_(-1, key_index.masked_fill(key_index < 0, nk), True)
    mask = mask[..., :nk]
    attn = (q @ k.transpose(-2, -1) * scale).masked_fill(~mask, float('-inf'))
    return torch.nan_to_num(torch.softmax(attn, -1)) @ v


SPARSE_CASES = [
    # (B, heads, N, Nk, D, Dv, K, empty, repeats)
    (2, 2, 16, 16, 16, 16, 4, 0.0, False),
    (1, 3, 13, 21, 5, 7, 21, 0.0, False),     # odd sizes, Nk != N, K = all keys
    (2, 1, 9, 9, 4, 6, 1, 0.0, False),        # a single key each
    (2, 2, 10, 10, 8, 8, 5, 0.3, False),      # empty slots
    (1, 2, 12, 7, 3, 3, 9, 0.0, True),        # repeated keys, K > Nk
    (1, 2, 11, 30, 16, 8, 19, 0.2, True),     # D a multiple of the native loop's lanes, K not
]


# the forward's routes ('native': the C++ loop; its backward runs the default route)
SPARSE_ROUTES = ['native', 'gather', 'tile']


@pytest.mark.parametrize('route', SPARSE_ROUTES)
@pytest.mark.parametrize('case', SPARSE_CASES)
def test_sparse_attention_cpu_matches_reference(case, route, monkeypatch):
    b, h, n, nk, d, dv, n_keys, empty, repeats = case
    monkeypatch.setattr(cpu, '_CHUNK_ELEMENTS', 200)
    monkeypatch.setattr(cpu, '_SPARSE_ROUTE', route)
    q, _, _ = _qkv((b, h, n, d), 1, torch.float64, seed=1)
    _, k, v = _qkv((b, h, nk, d), dv, torch.float64, seed=2)
    idx = _key_index(b, h, n, nk, n_keys, seed=n, empty=empty, repeats=repeats)
    grad = torch.randn(b, h, n, dv, dtype=torch.float64)
    want = _grads(lambda q, k, v: reference.sparse_attention(q, k, v, idx, 0.6), (q, k, v), grad)
    with use_backend('cpu'):
        got = _grads(lambda q, k, v: routing.sparse_attention(q, k, v, idx.int(), scale=0.6), (q, k, v), grad)
    _assert_close_all(got, want, 1e-12, 1e-12)


@pytest.mark.parametrize('route', SPARSE_ROUTES)
def test_sparse_attention_equals_dense_masked_attention(route, monkeypatch):
    monkeypatch.setattr(cpu, '_SPARSE_ROUTE', route)
    q, k, v = _qkv((2, 2, 20, 8), 8, torch.float64)
    idx = _key_index(2, 2, 20, 20, 5, empty=0.2)
    idx[0, 1, 3] = -1  # a query without keys gets zeros
    want = _dense_masked(q, k, v, idx, 8 ** -0.5)
    for backend in ('reference', 'cpu'):
        with use_backend(backend):
            got = routing.sparse_attention(q, k, v, idx)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
        assert torch.equal(got[0, 1, 3], torch.zeros(8, dtype=torch.float64))


def test_sparse_attention_forward_runs_the_native_loop_where_lists_are_short(monkeypatch):
    """Short lists (K * 2 <= Nk) run the C++ forward, which reads each listed key in place; longer ones the tiles."""
    if not routing_native.available():
        pytest.fail('the native sparse attention loop did not build here (g++ missing?)')
    calls = []
    real = routing_native.sparse_forward
    monkeypatch.setattr(routing_native, 'sparse_forward', lambda *a: calls.append(a[3].shape[-1]) or real(*a))
    q, k, v = _qkv((1, 2, 40, 32), 32, torch.float32)
    for n_keys in (20, 21):
        idx = _key_index(1, 2, 40, 40, n_keys, empty=0.1, repeats=True)
        with use_backend('cpu'):
            got = routing.sparse_attention(q, k, v, idx)
        torch.testing.assert_close(got, reference.sparse_attention(q, k, v, idx, 32 ** -0.5), atol=2e-6, rtol=2e-5)
    assert calls == [20]


def test_sparse_attention_flops_on_the_native_route_are_k_keys_per_query():
    """FlopCounterMode (tools/benchmark.py's GFLOPs) counts the native forward as the K products per query it runs
    (the gather route's matmuls on meta copies), not as zero and not as the dense tiles."""
    from torch.utils.flop_counter import FlopCounterMode
    b, h, n, d, dv, n_keys = 1, 2, 40, 16, 8, 5
    q, k, v = _qkv((b, h, n, d), dv, torch.float32)
    idx = _key_index(b, h, n, n, n_keys)
    with use_backend('cpu'), FlopCounterMode(display=False) as counter:
        routing.sparse_attention(q, k, v, idx)
    assert counter.get_total_flops() == 2 * b * h * n * n_keys * (d + dv)


def test_sparse_attention_operator_called_directly_refuses_an_index_out_of_range():
    """torch.ops.zoo.sparse_attention skips sparse_attention's argument checks: the native forward must neither read
    outside k and v nor return silently wrong rows."""
    if not routing_native.available():
        pytest.fail('the native sparse attention loop did not build here (g++ missing?)')
    q, k, v = _qkv((1, 2, 40, 16), 16, torch.float32)
    idx = _key_index(1, 2, 40, 40, 4)
    for bad in (40, 1 << 40, -2):
        wrong = idx.clone()
        wrong[0, 1, 7, 2] = bad
        with use_backend('cpu'), pytest.raises(ValueError, match=r'key_index holds 1 values outside \[-1, Nk\)'):
            torch.ops.zoo.sparse_attention(q, k, v, wrong, 0.25, 'cpu')


def test_sparse_attention_native_build_failure_falls_back(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(routing_native.LOOP, '_lib', None)
    monkeypatch.setattr(routing_native.LOOP, '_failed', False)
    monkeypatch.setenv('ZOO_KERNELS_CACHE', str(tmp_path))
    monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
    q, k, v = _qkv((1, 2, 40, 8), 8, torch.float64)
    idx = _key_index(1, 2, 40, 40, 4)
    with use_backend('cpu'):
        got = routing.sparse_attention(q, k, v, idx)
    assert 'sparse_attention: cannot build the native CPU loop' in caplog.text
    torch.testing.assert_close(got, reference.sparse_attention(q, k, v, idx, 8 ** -0.5), atol=1e-12, rtol=1e-12)


def test_sparse_attention_repeated_key_counts_twice():
    q, k, v = _qkv((1, 1, 1, 4), 4, torch.float64)
    k, v = torch.cat([k, k * 2], 2), torch.cat([v, -v], 2)  # Nk = 2
    out = routing.sparse_attention(q, k, v, torch.tensor([[[[0, 0, 1]]]]))
    s = (q[0, 0, 0] @ k[0, 0].T) * 0.5
    w = torch.softmax(torch.stack([s[0], s[0], s[1]]), 0)
    torch.testing.assert_close(out[0, 0, 0], (w[0] + w[1]) * v[0, 0, 0] + w[2] * v[0, 0, 1])


@pytest.mark.parametrize('route', SPARSE_ROUTES)
@pytest.mark.parametrize('dtype,tol', [(torch.float32, 2e-5), (torch.float16, 2e-3)])
def test_sparse_attention_cpu_low_precision(dtype, tol, route, monkeypatch):
    monkeypatch.setattr(cpu, '_SPARSE_ROUTE', route)
    q, k, v = _qkv((2, 2, 24, 16), 16, dtype)
    idx = _key_index(2, 2, 24, 24, 6)
    grad = torch.randn(2, 2, 24, 16).to(dtype)
    want = _grads(lambda q, k, v: reference.sparse_attention(q, k, v, idx), [t.double() for t in (q, k, v)],
                  grad.double())
    got = _grads(lambda q, k, v: routing.sparse_attention(q, k, v, idx), (q, k, v), grad)
    _assert_close_all(got, want, tol, tol)


@pytest.mark.parametrize('route', SPARSE_ROUTES)
def test_sparse_attention_gradcheck_cpu(route, monkeypatch):
    monkeypatch.setattr(cpu, '_SPARSE_ROUTE', route)
    q, _, _ = _qkv((2, 2, 5, 3), 1, torch.float64)
    _, k, v = _qkv((2, 2, 6, 3), 4, torch.float64, seed=3)
    idx = _key_index(2, 2, 5, 6, 3, empty=0.2, seed=4)
    idx[..., 0] = torch.arange(5) % 6  # at least one key per query
    inputs = [t.requires_grad_() for t in (q, k, v)]
    with use_backend('cpu'):
        assert torch.autograd.gradcheck(lambda q, k, v: routing.sparse_attention(q, k, v, idx), inputs)


# --- backend selection and errors ---------------------------------------------------------------------------------

def test_auto_backend_is_cpu_and_env_selects_reference(monkeypatch):
    q, k, v = _qkv((1, 1, 4, 4, 2), 2)
    idx = torch.tensor([[[0], [1], [2], [3]]])
    calls = []
    backends = OPERATORS['routed_attention'].backends

    class Spy:
        def __init__(self, name):
            self.name, self.backend = name, backends[name]

        def forward(self, **kw):
            calls.append(self.name)
            return self.backend.forward(**kw)

    for name in ('reference', 'cpu'):
        monkeypatch.setitem(backends, name, Spy(name))
    routing.routed_attention(q, k, v, idx, 2)
    monkeypatch.setenv(ENV_VAR, 'reference')
    routing.routed_attention(q, k, v, idx, 2)
    assert calls == ['cpu', 'reference']


def test_triton_backend_refuses_float64_when_asked(monkeypatch):
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    q, k, v = _qkv((1, 1, 4, 4, 2), 2, torch.float64)
    with use_backend('triton'), pytest.raises(ValueError, match='triton backend of routed_attention runs float16'):
        routing.routed_attention(q, k, v, torch.zeros(1, 4, 1, dtype=torch.long), 2)


def test_triton_backend_refuses_head_dims_over_64_when_asked(monkeypatch):
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    q, k, v = _qkv((1, 1, 4, 4, 80), 80)
    with use_backend('triton'), pytest.raises(ValueError, match='head dims .* up to 64'):
        routing.routed_attention(q, k, v, torch.zeros(1, 4, 1, dtype=torch.long), 2)
    q, k, v = _qkv((1, 1, 4, 16), 65)  # Dv counts too
    with use_backend('triton'), pytest.raises(ValueError, match='head dims .* up to 64'):
        routing.sparse_attention(q, k, v, torch.zeros(1, 1, 4, 2, dtype=torch.long))


def _routed_args(**over):
    q, k, v = _qkv((2, 2, 4, 6, 3), 3)
    args = dict(q=q, k=k, v=v, region_index=torch.zeros(2, 4, 2, dtype=torch.long), n_win=2)
    args.update(over)
    return args


@pytest.mark.parametrize('over,error,match', [
    (dict(q=torch.zeros(2, 4, 6, 3)), ValueError, r'q must be 5-D \(B, heads, H, W, D\), got shape \(2, 4, 6, 3\)'),
    (dict(q=[1.0]), TypeError, 'q must be a torch.Tensor'),
    (dict(k=torch.zeros(2, 2, 4, 6, 4)), ValueError, r'k must be the shape of q .* = \(2, 2, 4, 6, 3\)'),
    (dict(v=torch.zeros(2, 2, 4, 5, 3)), ValueError, r'v must be \(B, heads, H, W, Dv\)'),
    (dict(v=torch.zeros(2, 2, 4, 6, 3, dtype=torch.float64)), TypeError,
     r'v must have the dtype of q \(torch.float32\), got torch.float64'),
    (dict(q=torch.zeros(2, 2, 4, 6, 3, dtype=torch.int32)), TypeError, 'q must be float16, bfloat16, float32'),
    (dict(n_win=4), ValueError, r'H x W = 4 x 6 .* multiple of n_win = 4'),
    (dict(n_win=2.0), TypeError, 'n_win must be an int'),
    (dict(region_index=torch.zeros(2, 4, 2)), TypeError, 'region_index must be int32 or int64, got torch.float32'),
    (dict(region_index=torch.zeros(2, 3, 2, dtype=torch.long)), ValueError,
     r'region_index must be .* = \(2, 4, 2\) or \(2, 2, 4, 2\), got shape \(2, 3, 2\)'),
    (dict(region_index=torch.zeros(2, 4, 5, dtype=torch.long)), ValueError, r'must list 1\.\.4 regions'),
    (dict(region_index=torch.full((2, 4, 2), 4)), ValueError, r'values must be in \[0, 3\], got values in \[4, 4\]'),
    (dict(region_index=torch.zeros(2, 4, dtype=torch.long)), ValueError, 'region_index must be 3-D or 4-D'),
])
def test_routed_attention_errors(over, error, match):
    with pytest.raises(error, match=match):
        routing.routed_attention(**_routed_args(**over))


def test_routed_attention_scale_error():
    with pytest.raises(ValueError, match='scale must be a finite'):
        routing.routed_attention(**_routed_args(), scale=float('nan'))


@pytest.mark.parametrize('topk,match', [(0, r'topk must be in \[1, 4\], got 0'), (5, r'in \[1, 4\], got 5')])
def test_region_topk_errors(topk, match):
    q, k, _ = _qkv((1, 1, 4, 4, 2), 2)
    with pytest.raises(ValueError, match=match):
        routing.region_topk(q, k, 2, topk)


@pytest.mark.parametrize('over,error,match', [
    (dict(k=torch.zeros(2, 2, 7, 4)), ValueError, r'k must be \(B, heads, Nk, D\) .* = \(2, 2, 7, 3\)'),
    (dict(v=torch.zeros(2, 2, 6, 2)), ValueError, r'v must be \(B, heads, Nk, Dv\) .* = \(2, 2, 7, 2\)'),
    (dict(key_index=torch.zeros(2, 2, 5, 0, dtype=torch.long)), ValueError, 'at least one key'),
    (dict(key_index=torch.full((2, 2, 5, 3), 7)), ValueError, r'values must be in \[-1, 6\], got values in \[7, 7\]'),
    (dict(key_index=torch.full((2, 2, 5, 3), -2)), ValueError, r'values must be in \[-1, 6\]'),
    (dict(key_index=torch.zeros(2, 2, 4, 3, dtype=torch.long)), ValueError,
     r'\(2, 2, 5, 3\), got shape \(2, 2, 4, 3\)'),
])
def test_sparse_attention_errors(over, error, match):
    q, _, _ = _qkv((2, 2, 5, 3), 1)
    _, k, v = _qkv((2, 2, 7, 3), 2)
    args = dict(q=q, k=k, v=v, key_index=torch.zeros(2, 2, 5, 3, dtype=torch.long))
    args.update(over)
    with pytest.raises(error, match=match):
        routing.sparse_attention(**args)
