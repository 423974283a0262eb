"""selective_scan on the triton backend against the reference (interpreter on CPU, or a CUDA device):
forward and every gradient, options on/off, grouped B/C, L = 1, partial chunks, n > 16, multi-order calls."""
import os

import pytest
import torch

from kernels import use_backend
from kernels.selective_scan import selective_scan

from .test_selective_scan import NAMES, _close, _inputs, _run

pytestmark = pytest.mark.triton

_INTERPRETED = os.environ.get('TRITON_INTERPRET') == '1'
DEVICE = 'cpu' if _INTERPRETED else 'cuda'


@pytest.fixture(autouse=True, scope='module')
def _interpreter_or_cuda():
    # a failure, not a skip; a fixture, not an import-time error: the "not triton" run of `make test` collects
    # this file (and deselects every test) without TRITON_INTERPRET
    if not _INTERPRETED and not torch.cuda.is_available():
        pytest.fail('the triton selective_scan tests need TRITON_INTERPRET=1 (set before triton is imported, e.g. '
                    '`TRITON_INTERPRET=1 pytest -m triton`) or a CUDA device')


def _on_device(t):
    return {k: None if v is None else v.detach().to(DEVICE).requires_grad_() for k, v in t.items()}


def _compare(t, rtol=2e-5, **kw):
    got = _run('triton', _on_device(t), **kw)
    want = _run('reference', t, **kw)
    _close([g.cpu() for g in got], want, rtol)


@pytest.mark.parametrize('case', [
    dict(inputs=dict(b=2, d=4, L=37, n=5), kw=dict(delta_softplus=True)),        # all options, partial chunk
    dict(inputs=dict(b=1, d=3, L=16, n=16, with_D=False, with_z=False, with_bias=False)),
    dict(inputs=dict(b=1, d=8, L=20, n=3, groups=2), kw=dict(delta_softplus=True)),
    dict(inputs=dict(b=1, d=2, L=1, n=4), kw=dict(delta_softplus=True)),
    dict(inputs=dict(b=1, d=2, L=18, n=20), kw=dict(delta_softplus=True)),      # BLOCK_N = 32
])
def test_triton_matches_reference_single_order(case):
    _compare(_inputs(dtype=torch.float32, **case['inputs']), **case.get('kw', {}))


@pytest.mark.parametrize('shared,gather', [
    ((), True),                                                        # Vim: per-scan everything
    (('u', 'delta', 'A', 'C', 'D', 'delta_bias'), False),             # PlainMamba: shared, params at step index
])
def test_triton_matches_reference_multi_order(shared, gather):
    K, L = 3, 21
    t = _inputs(b=1, d=3, L=L, n=4, K=K, shared=shared, dtype=torch.float32)
    orders = torch.stack([torch.randperm(L, generator=torch.Generator().manual_seed(k)) for k in range(K)])
    want = _run('reference', t, delta_softplus=True, orders=orders, gather_params=gather)
    got = _run('triton', _on_device(t), delta_softplus=True, orders=orders.to(DEVICE), gather_params=gather)
    _close([g.cpu() for g in got], want, 2e-5)


def test_triton_half_precision_inputs():
    t = _inputs(b=1, d=4, L=19, n=4, dtype=torch.float16)
    got = _run('triton', _on_device(t), delta_softplus=True)
    want = _run('reference', t, delta_softplus=True)
    assert got[0].dtype == torch.float16 and got[1].dtype == torch.float32
    _close([g.cpu() for g in got], want, 2e-3)


def test_triton_large_steps_stay_finite():
    t = _inputs(b=1, d=2, L=40, n=4, dt_scale=30.0, dtype=torch.float32, seed=5)
    got = _run('triton', _on_device(t), delta_softplus=True)
    assert all(torch.isfinite(g).all() for g in got)
    _close([g.cpu() for g in got], _run('reference', t, delta_softplus=True), 2e-5)


def test_triton_gradient_of_last_state_only():
    t = _inputs(b=1, d=2, L=19, n=3, dtype=torch.float32)
    grads = {}
    for backend, tt in (('reference', t), ('triton', _on_device(t))):
        with use_backend(backend):
            _, last = selective_scan(*[tt[k] for k in NAMES], delta_softplus=True, return_last_state=True)
        grads[backend] = torch.autograd.grad(last.sum(), [tt['u'], tt['delta'], tt['A'], tt['B']])
    _close([g.cpu() for g in grads['triton']], grads['reference'], 2e-5)


def test_triton_rejects_float64_and_large_states():
    t = {k: None if v is None else v.detach().to(DEVICE) for k, v in _inputs(b=1, d=2, L=3, n=2).items()}
    with use_backend('triton'), pytest.raises(ValueError, match='triton backend of selective_scan runs float16'):
        selective_scan(*[t[k] for k in NAMES])
    t = {k: None if v is None else v.detach().to(DEVICE) for k, v in _inputs(b=1, d=2, L=3, n=33,
                                                                           dtype=torch.float32).items()}
    with use_backend('triton'), pytest.raises(ValueError, match='state sizes n up to 32, got A with n=33'):
        selective_scan(*[t[k] for k in NAMES])
