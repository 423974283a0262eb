"""selective_scan: reference against mamba_ssm's selective_scan_ref semantics, cpu paths against reference
(forward + gradients, gradcheck), multi-order calls against K single calls, large steps, errors."""
import pytest
import torch
import torch.nn.functional as F

from kernels import use_backend
from kernels.selective_scan import native, selective_scan
from kernels.selective_scan import reference as reference_backend

NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')


def _inputs(b=2, d=6, L=23, n=5, groups=None, K=None, shared=(), dtype=torch.float64, seed=0, with_D=True,
            with_z=True, with_bias=True, dt_scale=1.0):
    """Random arguments. With K: per-scan tensors (K axis K), except the names in `shared` (K axis 1)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def k_axis(name):
        return () if K is None else ((1,) if name in shared else (K,))

    gr = () if groups is None else (groups,)
    t = dict(u=rand(b, *k_axis('u'), d, L), delta=rand(b, *k_axis('delta'), d, L) * dt_scale,
             A=-torch.exp(rand(*k_axis('A'), d, n) * 0.5), B=rand(b, *k_axis('B'), *gr, n, L),
             C=rand(b, *k_axis('C'), *gr, n, L), D=rand(*k_axis('D'), d) if with_D else None,
             z=rand(b, d, L) if with_z else None, delta_bias=rand(*k_axis('delta_bias'), d) if with_bias else None)
    return {k: None if v is None else v.to(dtype).requires_grad_() for k, v in t.items()}


def _run(backend, t, loss_last=True, **kwargs):
    """Outputs and the gradients of a loss on out and the last state, for every tensor argument."""
    with use_backend(backend) if isinstance(backend, str) else backend():
        out, last = selective_scan(*[t[k] for k in NAMES], return_last_state=True, **kwargs)
    loss = (out.float() * torch.linspace(-1, 1, out.shape[-1])).sum()
    if loss_last:
        loss = loss + last.float().square().sum()
    leaves = [v for v in t.values() if v is not None]
    return [out, last, *torch.autograd.grad(loss, leaves)]


class _torch_fallback:
    """Context: the cpu backend with the native loop switched off (the PyTorch scan)."""

    def __enter__(self):
        self.ctx = use_backend('cpu')
        self.ctx.__enter__()
        self.available = native.available
        native.available = lambda: False

    def __exit__(self, *exc):
        native.available = self.available
        return self.ctx.__exit__(*exc)


CPU_PATHS = {'native': 'cpu', 'torch': _torch_fallback}


def _close(got, want, rtol):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        a, b = a.detach(), b.detach()
        assert a.dtype == b.dtype and a.shape == b.shape, (i, a.dtype, b.dtype, a.shape, b.shape)
        scale = b.abs().max().double().clamp_min(1e-30)
        err = float((a.double() - b.double()).abs().max() / scale)
        assert err <= rtol, f'output {i}: relative error {err:.3g} > {rtol}'


def _mamba_selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mamba_ssm's selective_scan_ref for real A, written out independently (einsum precompute, step loop)."""
    dtype_in = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    dim = A.shape[0]
    B, C = B.float(), C.float()
    deltaA = torch.exp(torch.einsum('bdl,dn->bdln', delta, A))
    if B.dim() == 3:
        deltaB_u = torch.einsum('bdl,bnl,bdl->bdln', delta, B, u)
    else:
        B = B.repeat_interleave(dim // B.shape[1], dim=1)
        deltaB_u = torch.einsum('bdl,bdnl,bdl->bdln', delta, B, u)
    if C.dim() == 4:
        C = C.repeat_interleave(dim // C.shape[1], dim=1)
    x = A.new_zeros((u.shape[0], dim, A.shape[1]))
    ys = []
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        ys.append(torch.einsum('bdn,bn->bd', x, C[:, :, i]) if C.dim() == 3 else
                  torch.einsum('bdn,bdn->bd', x, C[:, :, :, i]))
    out = torch.stack(ys, dim=2)
    out = out if D is None else out + u * D[:, None]
    if z is not None:
        out = out * F.silu(z)
    return out.to(dtype_in), x


# --------------------------------------------------------------------------------------------- reference = mamba


@pytest.mark.parametrize('groups', [None, 3])
@pytest.mark.parametrize('full', [True, False])
def test_reference_is_mamba_selective_scan_ref(groups, full):
    t = _inputs(groups=groups, dtype=torch.float32, with_D=full, with_z=full, with_bias=full)
    want = _mamba_selective_scan_ref(*[t[k] for k in NAMES], delta_softplus=full)
    with use_backend('reference'):
        got = selective_scan(*[t[k] for k in NAMES], delta_softplus=full, return_last_state=True)
    _close(got, want, 1e-6)


def test_half_inputs_compute_in_float32_and_return_input_dtype():
    t = _inputs(dtype=torch.bfloat16)
    for backend in ('reference', 'cpu'):
        with use_backend(backend):
            out, last = selective_scan(*[t[k] for k in NAMES], delta_softplus=True, return_last_state=True)
        assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    want = _mamba_selective_scan_ref(*[t[k] for k in NAMES], delta_softplus=True)[0]
    assert torch.allclose(out.float(), want.float(), rtol=1e-2, atol=1e-2)


# ------------------------------------------------------------------------------------------------ cpu = reference


@pytest.mark.parametrize('path', list(CPU_PATHS))
@pytest.mark.parametrize('case', [
    dict(),                                                              # D, z, bias, softplus, n=5
    dict(kw=dict(delta_softplus=False), inputs=dict(with_D=False, with_z=False, with_bias=False)),
    dict(inputs=dict(groups=2)),                                         # grouped B and C
    dict(inputs=dict(n=16, d=3, L=40)),                                  # the n=16 specialisation
    dict(inputs=dict(L=1)),
    dict(inputs=dict(b=1, d=1, L=2, n=1)),
])
def test_cpu_matches_reference_single_order(path, case):
    t = _inputs(**case.get('inputs', {}))
    kw = {'delta_softplus': True, **case.get('kw', {})}
    _close(_run(CPU_PATHS[path], t, **kw), _run('reference', t, **kw), 1e-10)


@pytest.mark.parametrize('path', list(CPU_PATHS))
@pytest.mark.parametrize('shared,gather,groups', [
    ((), True, None),                                                    # Vim: everything per scan
    (('u', 'delta', 'A', 'C', 'D', 'delta_bias'), False, None),          # PlainMamba: only B per scan
    (('u',), True, 2),                                                   # VMamba-like: shared u, grouped B/C
])
def test_cpu_matches_reference_multi_order(path, shared, gather, groups):
    K, L = 3, 19
    t = _inputs(K=K, shared=shared, groups=groups, L=L)
    orders = torch.stack([torch.randperm(L, generator=torch.Generator().manual_seed(k)) for k in range(K)])
    kw = dict(delta_softplus=True, orders=orders, gather_params=gather)
    _close(_run(CPU_PATHS[path], t, **kw), _run('reference', t, **kw), 1e-10)


@pytest.mark.parametrize('shared,gather,groups', [
    ((), True, None),                                                    # Vim: everything per scan
    (('u', 'delta', 'A', 'C', 'D', 'delta_bias'), False, None),          # PlainMamba: only B per scan
    (('u',), True, 2),                                                   # VMamba-like: shared u, grouped B/C
])
def test_native_float32_state_size_16_matches_reference(shared, gather, groups):
    """float32 with n = 16 (one 64-byte vector: the native loop sums the C_t * h_t products, and in backward its
    two per-step sums, 16 steps at a time by transposing sums): forward and every gradient against the float64
    reference, with a length that leaves a partial block of steps."""
    if not native.available():
        pytest.fail('the native CPU loop did not build here (g++ missing?)')
    K, L = 2, 37
    t64 = _inputs(b=2, d=6, L=L, n=16, K=K, shared=shared, groups=groups, seed=5)
    t32 = {k: None if v is None else v.detach().float().requires_grad_() for k, v in t64.items()}
    orders = torch.stack([torch.randperm(L, generator=torch.Generator().manual_seed(k)) for k in range(K)])
    kw = dict(delta_softplus=True, orders=orders, gather_params=gather)
    _close([g.double() for g in _run('cpu', t32, **kw)], _run('reference', t64, **kw), 2e-5)


@pytest.mark.parametrize('path', list(CPU_PATHS))
@pytest.mark.parametrize('multi', [False, True])
def test_gradcheck(path, multi):
    L = 7
    if multi:
        t = _inputs(b=1, d=2, L=L, n=3, K=2, shared=('u', 'A', 'D'))
        orders = torch.stack([torch.arange(L), torch.arange(L).flip(0)])
        kw = dict(orders=orders, gather_params=True)
    else:
        t = _inputs(b=1, d=2, L=L, n=3, groups=2)
        kw = {}
    leaves = [k for k in NAMES if t[k] is not None]

    def fn(*xs):
        args = dict(t, **dict(zip(leaves, xs)))
        out, last = selective_scan(*[args[k] for k in NAMES], delta_softplus=True, return_last_state=True, **kw)
        return out, last

    with CPU_PATHS[path]() if path == 'torch' else use_backend('cpu'):
        assert torch.autograd.gradcheck(fn, [t[k] for k in leaves], eps=1e-6, atol=1e-7, rtol=1e-5)


def _pick(x, k, axis=1):
    return x.select(axis, k if x.shape[axis] > 1 else 0)


def test_multi_order_equals_separate_calls_on_permuted_inputs():
    """K orders in one call == K single-order calls on gathered inputs, scattered back and summed, then gated."""
    K, L = 4, 12
    t = _inputs(K=K, shared=('u', 'delta', 'C'), L=L, with_z=True)
    orders = torch.stack([torch.randperm(L, generator=torch.Generator().manual_seed(10 + k)) for k in range(K)])
    for gather in (True, False):
        with use_backend('cpu'):
            got = selective_scan(*[t[k] for k in NAMES], delta_softplus=True, orders=orders, gather_params=gather)
            want = 0
            for k in range(K):
                o = orders[k]
                p = o if gather else torch.arange(L)
                y = selective_scan(_pick(t['u'], k)[..., o], _pick(t['delta'], k)[..., p], _pick(t['A'], k, 0),
                                   _pick(t['B'], k)[..., p], _pick(t['C'], k)[..., p], _pick(t['D'], k, 0),
                                   delta_bias=_pick(t['delta_bias'], k, 0), delta_softplus=True)
                want = want + y[..., torch.argsort(o)]
            want = want * F.silu(t['z'])
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


def test_vim_bidirectional_mapping():
    """Vim v2: out + flip(scan(flip(x))) with separate parameters == one call with orders [arange, reversed]."""
    L = 9
    t = _inputs(K=2, L=L, with_z=False)
    orders = torch.stack([torch.arange(L), torch.arange(L).flip(0)])
    with use_backend('cpu'):
        got = selective_scan(*[t[k] for k in NAMES], delta_softplus=True, orders=orders)
        fwd = selective_scan(*[t[k][:, 0] if k in 'u delta B C' else t[k][0] for k in NAMES[:5]], t['D'][0],
                             delta_bias=t['delta_bias'][0], delta_softplus=True)
        bwd = selective_scan(*[t[k][:, 1].flip(-1) if k in 'u delta B C' else t[k][1] for k in NAMES[:5]], t['D'][1],
                             delta_bias=t['delta_bias'][1], delta_softplus=True)
    assert torch.allclose(got, fwd + bwd.flip(-1), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------- large steps, accuracy


@pytest.fixture(scope='module')
def long_case():
    """L = 4096 with steps up to ~30 (decays down to exp(-100) per step), and the float64 reference on it."""
    t64 = _inputs(b=1, d=2, L=4096, n=4, dt_scale=6.0, seed=3, with_z=False)
    t64['delta_bias'] = (torch.full((2,), 3.0, dtype=torch.float64)).requires_grad_()
    return t64, _run('reference', t64, delta_softplus=True)


@pytest.mark.parametrize('path', list(CPU_PATHS))
def test_long_sequence_large_steps_stay_exact(path, long_case):
    """No NaN/inf, no division by a cumulative decay: float32 paths match the float64 reference."""
    t64, want = long_case
    t32 = {k: None if v is None else v.detach().float().requires_grad_() for k, v in t64.items()}
    got = _run(CPU_PATHS[path], t32, delta_softplus=True)
    for g in got:
        assert torch.isfinite(g).all()
    _close([g.double() for g in got], want, 2e-5)


def test_native_float32_accuracy_at_benchmark_size():
    """The issue's accuracy goal on the native path: L=3136, n=16, float32 vs float64 reference, <= 1e-5."""
    if not native.available():
        pytest.fail('the native CPU loop did not build here (g++ missing?)')
    t64 = _inputs(b=1, d=4, L=3136, n=16, seed=4, with_z=True)
    t32 = {k: None if v is None else v.detach().float() for k, v in t64.items()}
    with use_backend('reference'), torch.no_grad():
        want = selective_scan(*[t64[k] for k in NAMES], delta_softplus=True)
    with use_backend('cpu'), torch.no_grad():
        got = selective_scan(*[t32[k] for k in NAMES], delta_softplus=True)
    assert float((got.double() - want).abs().max() / want.abs().max()) <= 1e-5


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_native_softplus_of_delta_is_torchs_over_the_whole_range(dtype):
    """The native loop applies delta's bias and softplus itself (no libm log1p): one step per channel, so
    out = softplus(delta + bias) exactly where torch's is, across the range, the threshold at 20 and the
    underflow (within a few ulp; below exp's range both are < 1e-37)."""
    if not native.available():
        pytest.fail('the native CPU loop did not build here (g++ missing?)')
    x = torch.cat([torch.linspace(-100, 100, 4001, dtype=torch.float64),
                   torch.tensor([19.999, 20.0, 20.0001, 1e-7, -1e-7, 0.0, 16.6, -16.6, -87.5, -88.0])]).to(dtype)
    bias = torch.linspace(-0.5, 0.5, x.numel(), dtype=dtype)
    d = x.numel()
    ones = torch.ones(1, 1, 1, dtype=dtype)
    with use_backend('cpu'), torch.no_grad():
        got = selective_scan(torch.ones(1, d, 1, dtype=dtype), (x - bias).view(1, d, 1), -torch.ones(d, 1, dtype=dtype),
                             ones, ones, delta_bias=bias, delta_softplus=True).view(-1)
    want = F.softplus((x - bias) + bias)
    tol = 4 * torch.finfo(dtype).eps * want.abs() + 1e-37
    assert ((got - want).abs() <= tol).all(), float(((got - want).abs() / want.abs().clamp_min(1e-30)).max())


def test_native_is_deterministic_for_any_thread_count(monkeypatch):
    t = _inputs(b=2, d=40, L=50, n=16, K=2, shared=('u',), dtype=torch.float32)
    orders = torch.stack([torch.arange(50), torch.arange(50).flip(0)])
    monkeypatch.setenv(native.THREADS_ENV, '1')
    first = _run('cpu', t, orders=orders, delta_softplus=True)
    monkeypatch.setenv(native.THREADS_ENV, '2')
    second = _run('cpu', t, orders=orders, delta_softplus=True)
    assert all(torch.isfinite(x).all() for x in first)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_gradient_of_last_state_only():
    t = _inputs(L=11)
    for backend in ('reference', 'cpu'):
        with use_backend(backend):
            _, last = selective_scan(*[t[k] for k in NAMES], delta_softplus=True, return_last_state=True)
        grads = torch.autograd.grad(last.sum(), [t['u'], t['B']])
        if backend == 'reference':
            want = grads
    _close(grads, want, 1e-10)


def test_reference_backend_is_the_sequential_loop():
    # the module the 'reference' backend names is the readable recurrence, and the public function returns
    # last_state (b, d, n) for a single order
    t = _inputs(L=5)
    out, last = reference_backend.selective_scan(
        t['u'][:, None], t['delta'][:, None], t['A'][None], t['B'][:, None, None], t['C'][:, None, None],
        t['D'][None], t['z'], t['delta_bias'][None], True, None, True)
    with use_backend('reference'):
        out2, last2 = selective_scan(*[t[k] for k in NAMES], delta_softplus=True, return_last_state=True)
    assert torch.equal(out, out2) and torch.equal(last[:, 0], last2) and last2.shape == (2, 6, 5)


# ---------------------------------------------------------------------------------------------------- errors


def _args(**over):
    t = {k: None if v is None else v.detach() for k, v in _inputs(dtype=torch.float32).items()}
    t.update(over)
    return t


@pytest.mark.parametrize('over,kw,exc,match', [
    (dict(u=torch.zeros(2, 6)), {}, ValueError, r'u must be \(b, d, L\), got shape \(2, 6\)'),
    (dict(delta=torch.zeros(2, 6, 22)), {}, ValueError, r'delta must be \(b, d, L\) like u = \(2, 6, 23\)'),
    (dict(A=torch.zeros(5, 5)), {}, ValueError, r'A must be \(d=6, n\), got shape \(5, 5\)'),
    (dict(B=torch.zeros(2, 4, 23)), {}, ValueError, r'B must be \(b, n, L\) or \(b, g, n, L\) with b=2, n=5'),
    (dict(C=torch.zeros(2, 4, 5, 23)), {}, ValueError, r'C has 4 groups, which must divide d=6'),
    (dict(D=torch.zeros(5)), {}, ValueError, r'D must be \(d,\) = \(6,\), got shape \(5\)'),
    (dict(z=torch.zeros(2, 6, 5)), {}, ValueError, r'z must be \(b, d, L\)'),
    (dict(A=torch.zeros(6, 5, dtype=torch.complex64)), {}, TypeError, 'A must be real'),
    (dict(u=torch.zeros(2, 6, 23, dtype=torch.int64)), {}, TypeError,
     'u must be float16, bfloat16, float32 or float64, got torch.int64'),
    (dict(delta_bias=[0.0] * 6), {}, TypeError, 'delta_bias must be a torch.Tensor or None, got list'),
    ({}, dict(delta_softplus=1), TypeError, 'delta_softplus must be a bool, got int'),
    ({}, dict(gather_params=False), ValueError, 'gather_params=False only applies to a multi-order call'),
    ({}, dict(orders=torch.zeros(2, 23, dtype=torch.int64)), ValueError, r'u must be \(b, K\|1, d, L\)'),
])
def test_errors_name_the_argument(over, kw, exc, match):
    t = _args(**over)
    with pytest.raises(exc, match=match):
        selective_scan(*[t[k] for k in NAMES], **kw)


def test_multi_order_errors():
    t = {k: v.detach() for k, v in _inputs(K=2, L=6).items()}
    args = [t[k] for k in NAMES]
    with pytest.raises(ValueError, match=r'orders must be \(K, L\) with L=6'):
        selective_scan(*args, orders=torch.zeros(2, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match='row 1 is not one'):
        selective_scan(*args, orders=torch.tensor([[0, 1, 2, 3, 4, 5], [0, 0, 2, 3, 4, 5]]))
    with pytest.raises(TypeError, match='orders must be int32 or int64'):
        selective_scan(*args, orders=torch.zeros(2, 6))
    good = torch.stack([torch.arange(6), torch.arange(6).flip(0)])
    selective_scan(*args, orders=good)
    good[1, :2] = 0  # changed in place after a successful check: checked again
    with pytest.raises(ValueError, match='row 1 is not one'):
        selective_scan(*args, orders=good)
    with torch.inference_mode():
        selective_scan(*args, orders=torch.stack([torch.arange(6)] * 2))
    bad = dict(t, A=torch.zeros(3, 6, 5))
    with pytest.raises(ValueError, match=r'A must be \(K\|1, d, n\) with a scan axis of size K=2'):
        selective_scan(*[bad[k] for k in NAMES], orders=torch.stack([torch.arange(6)] * 2))


def test_native_build_failure_falls_back_to_the_torch_scan(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(native.LOOP, '_lib', None)
    monkeypatch.setattr(native.LOOP, '_failed', False)
    monkeypatch.setenv('ZOO_KERNELS_CACHE', str(tmp_path))
    monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
    assert not native.available()
    assert 'cannot build the native CPU loop' in caplog.text
    t = _inputs(L=9)
    _close(_run('cpu', t, delta_softplus=True), _run('reference', t, delta_softplus=True), 1e-10)


def test_native_builds_into_the_cache(monkeypatch, tmp_path):
    if not native.available():
        pytest.fail('the native CPU loop did not build here (g++ missing?)')
    monkeypatch.setattr(native.LOOP, '_lib', None)
    monkeypatch.setenv('ZOO_KERNELS_CACHE', str(tmp_path))
    assert native.available()
    assert [p.suffix for p in tmp_path.iterdir()] == ['.so']
