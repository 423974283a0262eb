"""Mamba-1 selective scan (S6) with real diagonal A, and K scan orders over one sequence in one call.

Single order: exactly state-spaces/mamba's ``selective_scan_fn`` / ``selective_scan_ref`` (real A):

    delta' = softplus(delta + delta_bias)          (bias and softplus optional)
    h_t    = exp(delta'_t * A) * h_{t-1} + delta'_t * u_t * B_t        h_{-1} = 0, state (d, n) per batch
    y_t    = <h_t, C_t>_n + D * u_t
    out    = y * silu(z)                            (z optional)

Several orders (``orders`` given, K rows): scan k visits the positions ``orders[k, 0], orders[k, 1], ...`` of
the stored sequence; its outputs go back to those positions and the K scans are summed, then gated by z:

    out[p] = silu(z[p]) * sum_k y_k[t_k(p)]        with orders[k, t_k(p)] = p

u of scan k at step t is ``u[:, k, :, orders[k, t]]``. delta, B and C are read at the same position
(``gather_params=True``), or at the step index t itself (``gather_params=False``, PlainMamba's released
weights need this). Every per-scan tensor carries a K axis of size K (one per scan) or 1 (shared by all
scans, read in place: nothing is expanded, flipped or permuted in memory; gradients of shared tensors are
summed over the scans). How the vision models map onto it (model side, no copies):

* Vim (bimamba v2): K = 2, ``orders = [arange(L), arange(L).flip(0)]``, every tensor per scan (K = 2):
  u = [conv1d(x), anti-causal conv1d_b(x)] in token order (a causal conv of the flipped sequence is an
  anti-causal conv of the sequence), delta/B/C from x_proj/x_proj_b and dt_proj/dt_proj_b, A = [A, A_b],
  D = [D, D_b], delta_bias = [dt_bias, dt_bias_b]; z shared; ``if_devide_out`` is a / 2 outside.
* PlainMamba: K = 4 continuous zig-zag orders, ``gather_params=False``; u, delta, C, A, D, delta_bias shared
  (K axis 1); B per scan (b, 4, n, L) = B + direction_Bs[directions[k]] (the direction embedding of step t
  added to the B of index t: small, n << d); z = the gate PlainMamba applies to the sum (or None).
* VMamba cross scan: K = 4, orders = [row-major, column-major, both reversed], ``gather_params=True``;
  u shared (K axis 1), delta/B/C per scan (computed per token in raster layout), A, D, delta_bias per scan.

Backends (``kernels.backend``): ``reference`` (the sequential recurrence), ``cpu`` (a C++ loop compiled at
first use, with a chunked PyTorch scan as fallback), ``triton`` (chunked scan, state in registers).

Operator: ``torch.ops.zoo.selective_scan`` (:mod:`kernels.library`) on the normalized layout: one node under
torch.compile, torch.export and FX; ONNX export decomposes it into the recurrence as an ONNX ``Scan`` node
(:mod:`.decomposition`: one exported program for every length). An empty batch (b = 0) gives an empty output.
"""
import weakref
from typing import Dict, Optional, Tuple, Union

import torch

from .. import checks
from ..backend import requested_backend
from ..library import Operator, Recompute, empty_stats, fx_leaf, lazy_module
from . import cpu, limits, native, reference
from .decomposition import selective_scan_decomposition

__all__ = ['selective_scan']

_DIFFERENTIABLE = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')


def _fake(backend: str, u: torch.Tensor, A: torch.Tensor, z: Optional[torch.Tensor], orders: Optional[torch.Tensor],
          **_) -> Tuple[torch.Tensor, ...]:
    b, _K, d, L = u.shape
    K, n = 1 if orders is None else orders.shape[0], A.shape[-1]
    ct = reference.compute_dtype(u)
    out, last = u.new_empty(b, d, L), u.new_empty(b, K, d, n, dtype=ct)
    if backend == 'triton':  # chunk-entering states; y (fp32) for the gate's gradient
        hs = u.new_empty(b, K, d, -(-L // limits.CHUNK), n, dtype=torch.float32)
        return out, last, hs, u.new_empty((b, d, L) if z is not None else (0,), dtype=torch.float32)
    if backend == 'cpu' and u.device.type == 'cpu' and native.available():  # y for the gate's gradient
        return out, last, u.new_empty((b, d, L) if z is not None else (0,), dtype=ct), empty_stats(u)
    return out, last, empty_stats(u), empty_stats(u)


_OP = Operator(
    'selective_scan',
    '(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, '
    'bool delta_softplus, Tensor? orders, bool gather_params) -> (Tensor, Tensor, Tensor, Tensor)',
    differentiable=_DIFFERENTIABLE, n_outputs=2,
    backends={'reference': Recompute(reference.selective_scan, _DIFFERENTIABLE, n_stats=2), 'cpu': cpu,
              'triton': lazy_module('kernels.selective_scan.triton')},
    triton_limit=lambda u, A, **_: limits.triton_limit(u, A), fake=_fake,
    # ONNX: the recurrence as an ONNX Scan (any length)
    decomposition=selective_scan_decomposition)
# id(orders) -> (weak reference, (data pointer, version)) of the index tables already checked
_checked_orders: Dict[int, Tuple[weakref.ref, Tuple[int, int]]] = {}


def _expect(name: str, t: torch.Tensor, expected: Tuple[int, ...], layout: str) -> None:
    if tuple(t.shape) != expected:
        raise ValueError(f'{name} must be {layout} = {expected}, got shape {checks.shape_str(t)}')


def _k_axis(name: str, t: torch.Tensor, axis: int, K: int, layout: str) -> None:
    if t.shape[axis] not in (1, K):
        raise ValueError(f'{name} must be {layout} with a scan axis of size K={K} (one per order) or 1 (shared), '
                         f'got shape {checks.shape_str(t)}')


def _check_orders(orders: torch.Tensor, L: int) -> None:
    if orders.dim() != 2 or orders.shape[1] != L or orders.shape[0] < 1:
        raise ValueError(f'orders must be (K, L) with L={L} (the length of u), got shape {checks.shape_str(orders)}')
    if checks.tracing(orders):
        return  # values are data: not read while tracing
    # inference tensors have no version counter: they are checked at every call
    stamp = None if orders.is_inference() else (orders.data_ptr(), orders._version)
    entry = _checked_orders.get(id(orders))
    if stamp is not None and entry is not None and entry[0]() is orders and entry[1] == stamp:
        return  # a model's cached index table is checked once (again after an in-place change)
    expected = torch.arange(L, device=orders.device, dtype=orders.dtype).expand_as(orders)
    if not torch.equal(orders.sort(dim=1).values, expected):
        bad = int((orders.sort(dim=1).values != expected).any(dim=1).nonzero()[0])
        raise ValueError(f'orders must hold a permutation of 0..{L - 1} in every row; row {bad} is not one')
    if stamp is not None:
        if len(_checked_orders) > 1024:
            _checked_orders.clear()
        _checked_orders[id(orders)] = (weakref.ref(orders), stamp)


def _check(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, orders, gather_params) -> None:
    for name, t, optional in (('u', u, False), ('delta', delta, False), ('A', A, False), ('B', B, False),
                              ('C', C, False), ('D', D, True), ('z', z, True), ('delta_bias', delta_bias, True)):
        (checks.optional_tensor if optional else checks.tensor)(name, t, '')
    checks.optional_tensor('orders', orders, '(K, L)', dtypes=checks.INDICES)
    for name, value in (('delta_softplus', delta_softplus), ('return_last_state', return_last_state),
                        ('gather_params', gather_params)):
        checks.flag(name, value)
    if orders is None and not gather_params:
        raise ValueError('gather_params=False only applies to a multi-order call (orders given)')
    multi = orders is not None
    if u.dim() != (4 if multi else 3):
        layout = '(b, K|1, d, L) when orders is given' if multi else '(b, d, L)'
        raise ValueError(f'u must be {layout}, got shape {checks.shape_str(u)}')
    b, d, L = u.shape[0], u.shape[-2], u.shape[-1]
    if d == 0 or L == 0:
        raise ValueError(f'u must be non-empty apart from the batch (d, L >= 1), got shape {checks.shape_str(u)}')
    if A.dim() != (3 if multi else 2) or A.shape[-2] != d or A.shape[-1] == 0:
        layout = f'(K|1, d={d}, n)' if multi else f'(d={d}, n)'
        raise ValueError(f'A must be {layout}, got shape {checks.shape_str(A)}')
    n = A.shape[-1]
    K = orders.shape[0] if multi else 1
    if multi:
        _check_orders(orders, L)
        _k_axis('u', u, 1, K, '(b, K|1, d, L)')
        _k_axis('A', A, 0, K, '(K|1, d, n)')
        if delta.dim() != 4 or (delta.shape[0], delta.shape[2], delta.shape[3]) != (b, d, L):
            raise ValueError(f'delta must be (b, K|1, d, L) = ({b}, K|1, {d}, {L}), got shape '
                             f'{checks.shape_str(delta)}')
        _k_axis('delta', delta, 1, K, '(b, K|1, d, L)')
    else:
        _expect('delta', delta, (b, d, L), '(b, d, L) like u')
    for name, t in (('B', B), ('C', C)):
        lead = 2 if multi else 1  # (b[, K|1]) before (g, n, L) or (n, L)
        layout = '(b, K|1, n, L) or (b, K|1, g, n, L)' if multi else '(b, n, L) or (b, g, n, L)'
        if t.dim() not in (lead + 2, lead + 3) or t.shape[0] != b or tuple(t.shape[-2:]) != (n, L):
            raise ValueError(f'{name} must be {layout} with b={b}, n={n}, L={L}, got shape {checks.shape_str(t)}')
        if multi:
            _k_axis(name, t, 1, K, layout)
        if t.dim() == lead + 3:
            g = t.shape[lead]
            if g == 0 or d % g:
                raise ValueError(f'{name} has {g} groups, which must divide d={d}; got shape {checks.shape_str(t)}')
    for name, t in (('D', D), ('delta_bias', delta_bias)):
        if t is None:
            continue
        if multi:
            if t.dim() != 2 or t.shape[1] != d:
                raise ValueError(f'{name} must be (K|1, d={d}), got shape {checks.shape_str(t)}')
            _k_axis(name, t, 0, K, '(K|1, d)')
        else:
            _expect(name, t, (d,), '(d,)')
    if z is not None:
        _expect('z', z, (b, d, L), '(b, d, L) (positions in stored order)')
    for name, t in (('delta', delta), ('A', A), ('B', B), ('C', C), ('D', D), ('z', z), ('delta_bias', delta_bias),
                    ('orders', orders)):
        if t is not None:
            checks.same_device(name, t, 'u', u)


def _normalize(u, delta, A, B, C, D, delta_bias, multi: bool):
    """The backends' common layout: a scan axis everywhere, B and C always grouped."""
    if not multi:
        u, delta, A = u.unsqueeze(1), delta.unsqueeze(1), A.unsqueeze(0)
        B, C = B.unsqueeze(1), C.unsqueeze(1)
        D = None if D is None else D.unsqueeze(0)
        delta_bias = None if delta_bias is None else delta_bias.unsqueeze(0)
    if B.dim() == 4:
        B = B.unsqueeze(2)
    if C.dim() == 4:
        C = C.unsqueeze(2)
    return u, delta, A, B, C, D, delta_bias


@fx_leaf
def selective_scan(
        u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
        D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None, delta_bias: Optional[torch.Tensor] = None,
        delta_softplus: bool = False, return_last_state: bool = False, *, orders: Optional[torch.Tensor] = None,
        gather_params: bool = True,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Mamba-1 selective scan; with ``orders``, K scans over permutations of one sequence, summed.

    Args (single order, mamba_ssm's ``selective_scan_fn`` with real A):
        u: (b, d, L) input.
        delta: (b, d, L) step sizes (before ``delta_bias`` and softplus).
        A: (d, n) real state matrix (diagonal per channel; Mamba uses -exp(A_log)).
        B, C: (b, n, L), or grouped (b, g, n, L) with g dividing d (channel c uses group c // (d // g)).
        D: optional (d,) skip, ``out += D * u``.
        z: optional (b, d, L) gate, ``out *= silu(z)``.
        delta_bias: optional (d,) added to delta before the softplus.
        delta_softplus: apply softplus to delta (+ bias).
        return_last_state: also return the final state h_{L-1}.
        orders: optional (K, L) int32/int64, each row a permutation of 0..L-1: run K scans (module docstring).
            Then u and delta are (b, K|1, d, L), A (K|1, d, n), B and C (b, K|1, n, L) or (b, K|1, g, n, L),
            D and delta_bias (K|1, d): size K gives one tensor per scan, size 1 shares it. z stays (b, d, L).
        gather_params: with orders, read delta, B, C at ``orders[k, t]`` like u (True) or at t (False).

    Returns:
        out (b, d, L) in u's dtype, and with ``return_last_state`` the final state in the compute dtype: (b, d, n),
        or (b, K, d, n) per scan with orders. Unlike mamba_ssm, gradients flow through the last state too.

    dtypes: any of float16, bfloat16, float32, float64 for every tensor; the scan computes in float32 (float64
    when u is float64, CPU backends only). The triton backend reads delta, B, C, z in u's dtype (converting them
    when they differ) and A, D, delta_bias in float32. Forward and backward on every backend.

    Complexity: O(b * K * d * n * L) time on every backend. Memory beyond inputs and output: reference O(b*d*n*L)
    (autograd of the loop); cpu O(b*d*L) plus per-thread O(L*n) scratch (the backward recomputes the states);
    triton O(b*K*d*n*L/16) chunk-boundary states and an fp32 (b, d, L) sum, recomputing the rest in the backward,
    whose deterministic dB/dC partial sums take O(b * d/BLOCK_D * n * L).
    """
    _check(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, orders, gather_params)
    multi = orders is not None
    u4, delta4, A3, B5, C5, D2, bias2 = _normalize(u, delta, A, B, C, D, delta_bias, multi)
    out, last = _OP(u=u4, delta=delta4, A=A3, B=B5, C=C5, D=D2, z=z, delta_bias=bias2, delta_softplus=delta_softplus,
                    orders=orders, gather_params=gather_params, backend=requested_backend())
    if not return_last_state:
        return out
    return out, (last if multi else last[:, 0])
