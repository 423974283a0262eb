"""Benchmark cases for kernels.selective_scan: candidates and anchors that take random float tensors.

The harness (zoo.benchmark) fills every tensor with randn, so each function here builds a well-posed Mamba call
from them the same way: A = -exp(A_log), delta (+ delta_bias, softplus) as Mamba's dt, everything else as given.
Multi-order cases build their orders deterministically inside (Vim: forward + reversed; PlainMamba: four
zig-zags; both are timed with the index table cached, as a model holds it).

Anchors:
  ``sequential``: the fair sequential scan: per-step decays and inputs precomputed for the whole sequence, the
  steps taken with unbind, autograd for the backward; a multi-order call runs it K times on gathered inputs.
  ``mamba_ref``: mamba_ssm's selective_scan_ref semantics (einsum precompute, indexing loop, einsum per step),
  written here from its documented behaviour (mamba_ssm does not import on CPUs).
"""
import functools
import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from kernels import selective_scan, use_backend

# the torch_chunked anchor times the cpu backend's PyTorch fallback, which has no public entry
from kernels.selective_scan import cpu as _cpu

# ----------------------------------------------------------------------------------------------------------- orders


def _zigzag_rows(H: int, W: int, flip_rows: bool) -> List[int]:
    rows = range(H - 1, -1, -1) if flip_rows else range(H)
    out = []
    for i, r in enumerate(rows):
        cols = range(W) if i % 2 == 0 else range(W - 1, -1, -1)
        out.extend(r * W + c for c in cols)
    return out


def plainmamba_orders(H: int, W: int) -> torch.Tensor:
    """PlainMamba's four continuous zig-zag scans (row-wise from the top and the bottom, column-wise from the left
    and the right), as (4, H*W) positions in raster order (start corners as in its get_permute_order)."""
    o1 = _zigzag_rows(H, W, False)
    o2 = _zigzag_rows(H, W, True)
    if H % 2 == 1:  # PlainMamba starts its upward scan at the corner where the first scan ended
        o2 = [r * W + (W - 1 - c) for r, c in ((p // W, p % W) for p in o2)]
    t1 = _zigzag_rows(W, H, False)  # column-wise: zig-zag on the transposed map
    t2 = _zigzag_rows(W, H, True)
    if W % 2 == 1:
        t2 = [r * H + (H - 1 - c) for r, c in ((p // H, p % H) for p in t2)]
    o3 = [(p % H) * W + p // H for p in t1]
    o4 = [(p % H) * W + p // H for p in t2]
    return torch.tensor([o1, o2, o3, o4], dtype=torch.int64)


@functools.cache
def _orders(kind: str, L: int, device: str = 'cpu') -> torch.Tensor:
    if kind == 'vim':
        ar = torch.arange(L)
        return torch.stack([ar, ar.flip(0)]).to(device)
    side = math.isqrt(L)
    if side * side != L:
        raise ValueError(f'plainmamba cases need a square map, got L={L}')
    return plainmamba_orders(side, side).to(device)


# ------------------------------------------------------------------------------------------------------- the anchors


def _prep_delta(delta: torch.Tensor, delta_bias: Optional[torch.Tensor]) -> torch.Tensor:
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[..., None]
    return F.softplus(delta)


def _sequential_one(u, delta, A, B, C, D, delta_bias) -> torch.Tensor:
    """One scan, B/C (b, n, L); per-step decays precomputed, steps via unbind; y without z."""
    delta = _prep_delta(delta, delta_bias)
    decay = torch.exp(delta[..., None] * A[:, None, :])                 # (b, d, L, n)
    inp = (delta * u)[..., None] * B.transpose(1, 2)[:, None]           # (b, d, L, n)
    Cs = C.transpose(1, 2)[:, None].unbind(2)                            # L x (b, 1, n)
    h = torch.zeros_like(inp[:, :, 0])
    ys = []
    for a_t, x_t, c_t in zip(decay.unbind(2), inp.unbind(2), Cs):
        h = a_t * h + x_t
        ys.append((h * c_t).sum(-1))
    return torch.stack(ys, dim=-1) + D[:, None] * u


def _mamba_ref_one(u, delta, A, B, C, D, delta_bias) -> torch.Tensor:
    """mamba_ssm's selective_scan_ref for real A and variable B/C (b, n, L); y without z."""
    delta = _prep_delta(delta, delta_bias)
    deltaA = torch.exp(torch.einsum('bdl,dn->bdln', delta, A))
    deltaB_u = torch.einsum('bdl,bnl,bdl->bdln', delta, B, u)
    x = A.new_zeros((u.shape[0], A.shape[0], A.shape[1]))
    ys = []
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        ys.append(torch.einsum('bdn,bn->bd', x, C[:, :, i]))
    return torch.stack(ys, dim=2) + u * D[:, None]


def sequential(u, delta, A_log, B, C, D, z, delta_bias):
    """Fair sequential anchor, single order (Mamba block call: D, z, delta_bias, softplus)."""
    return _sequential_one(u, delta, -torch.exp(A_log), B, C, D, delta_bias) * F.silu(z)


def mamba_ref(u, delta, A_log, B, C, D, z, delta_bias):
    """selective_scan_ref semantics, single order."""
    return _mamba_ref_one(u, delta, -torch.exp(A_log), B, C, D, delta_bias) * F.silu(z)


def _scan_slice(t: torch.Tensor, k: int) -> torch.Tensor:
    return t[:, k] if t.shape[1] > 1 else t[:, 0]


def _multi(one, kind, u, delta, A_log, B, C, D, z, delta_bias, gather_params=True):
    """K separate calls on gathered inputs, outputs scattered back and summed (what the models do today)."""
    L = u.shape[-1]
    orders = _orders(kind, L, str(u.device))
    out = 0
    for k in range(orders.shape[0]):
        o = orders[k]
        p = o if gather_params else torch.arange(L, device=u.device)
        y = one(_scan_slice(u, k)[..., o], _scan_slice(delta, k)[..., p], -torch.exp(A_log[k % A_log.shape[0]]),
                _scan_slice(B, k)[..., p], _scan_slice(C, k)[..., p], D[k % D.shape[0]],
                delta_bias[k % delta_bias.shape[0]])
        out = out + y[..., torch.argsort(o)]
    return out * F.silu(z)


def vim_sequential(*args):
    return _multi(_sequential_one, 'vim', *args)


def vim_mamba_ref(*args):
    return _multi(_mamba_ref_one, 'vim', *args)


def plainmamba_sequential(*args):
    return _multi(_sequential_one, 'plainmamba', *args, gather_params=False)


def plainmamba_mamba_ref(*args):
    return _multi(_mamba_ref_one, 'plainmamba', *args, gather_params=False)


# ------------------------------------------------------------------------------------------------------ candidates


def _call(backend: str, u, delta, A_log, B, C, D, z, delta_bias, kind=None, gather_params=True):
    orders = None if kind is None else _orders(kind, u.shape[-1], str(u.device))
    with use_backend(backend):
        return selective_scan(u, delta, -torch.exp(A_log), B, C, D, z, delta_bias, delta_softplus=True,
                              orders=orders, gather_params=gather_params)


def cpu(*args):
    """kernels.selective_scan on the cpu backend (the native loop where it builds)."""
    return _call('cpu', *args)


def triton(*args):
    return _call('triton', *args)


def torch_chunked(u, delta, A_log, B, C, D, z, delta_bias):
    """The cpu backend's PyTorch fallback (chunked scan, autograd)."""
    orders = None
    args = (u[:, None], delta[:, None], -torch.exp(A_log)[None], B[:, None, None], C[:, None, None], D[None], z,
            delta_bias[None], True, orders, True)
    return _cpu.selective_scan_torch(*args)[0]


def reference(*args):
    return _call('reference', *args)


def vim_cpu(*args):
    return _call('cpu', *args, kind='vim')


def vim_triton(*args):
    return _call('triton', *args, kind='vim')


def plainmamba_cpu(*args):
    return _call('cpu', *args, kind='plainmamba', gather_params=False)


def plainmamba_triton(*args):
    return _call('triton', *args, kind='plainmamba', gather_params=False)


def max_rel_error(fn_a, fn_b, *args) -> Tuple[float, float]:
    """(forward, gradient) max |a - b| / max |b| over the outputs and every input gradient."""
    def run(fn):
        xs = [a.detach().clone().requires_grad_() for a in args]
        out = fn(*xs)
        out.backward(torch.ones_like(out))
        return out.detach(), [x.grad for x in xs]
    oa, ga = run(fn_a)
    ob, gb = run(fn_b)
    fwd = float((oa - ob).abs().max() / ob.abs().max())
    bwd = max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(ga, gb))
    return fwd, bwd
