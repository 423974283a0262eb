"""Fast exact selective scan for CPUs: a C++ loop compiled at first use, with a chunked PyTorch scan as fallback.

Native path: ``native_loop.cpp``, built and loaded by :mod:`kernels.selective_scan.native` (thread settings there;
cache and compiler: :mod:`kernels.native`). It runs the recurrence exactly as the reference does, in the compute
dtype, one (batch, channel) row at a time, vectorised over the state size n (threads:
``$ZOO_SELECTIVE_SCAN_THREADS``), delta's bias and softplus applied in the loop; the backward recomputes the states
of one (batch, channel, scan) row into a per-thread O(L * n) scratch and walks back through it, so nothing of size
O(b * d * n * L) is ever stored. Scan orders are read through the index table inside the loops (no gathered
copies). dB and dC go to partial sums per block of channels (16 blocks), added in a fixed order: results are
deterministic and independent of the thread count.

Fallback (no compiler, or ``ZOO_SELECTIVE_SCAN_NATIVE=0``): a two-pass chunked scan, chunks of T ~ sqrt(L)
steps side by side (about 2 sqrt(L) small vectorised steps instead of L); every factor is a product of decays,
never a division by one, so large steps underflow to zero instead of overflowing. Autograd differentiates it.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..library import Recompute, empty_stats
from ..native import pointer
from . import native
from .reference import compute_dtype

__all__ = ['forward', 'backward', 'selective_scan_torch']

_GRAD_BLOCKS = 16  # channel blocks of the backward, each with its own dB/dC partial sums


def _native_layout(u, delta, A, B, C, orders, gather_params, delta_bias=None, delta_softplus=False, D=None):
    """What the C++ loop reads: the compute dtype, B and C with a step's n values side by side, the dims. The loop
    adds ``delta_bias`` to delta and applies the softplus itself where they are given, and D's term (the forward)."""
    ct = compute_dtype(u)
    b, _, d, L = u.shape
    dims = torch.tensor([b, d, L, A.shape[-1], B.shape[2], C.shape[2], orders.shape[0], u.shape[1], delta.shape[1],
                         A.shape[0], B.shape[1], C.shape[1], int(gather_params), min(d, _GRAD_BLOCKS),
                         0 if delta_bias is None else delta_bias.shape[0], int(delta_softplus),
                         0 if D is None else D.shape[0]], dtype=torch.int64)
    return (u.to(ct).contiguous(), delta.to(ct).contiguous(), A.to(ct).contiguous(),
            B.to(ct).transpose(-1, -2).contiguous(), C.to(ct).transpose(-1, -2).contiguous(),  # (b, KB, g, L, n)
            orders.to(torch.int64).contiguous(), dims)


def _native_forward(u, delta, delta_bias, delta_softplus, A, B, C, D, z, orders, gather_params):
    """The recurrence proper on softplus(delta + delta_bias) (as asked), then D's term and the gate as
    :func:`_finish`: (y (b, d, L) = sum over scans of <h_t, C_t>, out (b, d, L), the last states (b, K, d, n)),
    all in the compute dtype."""
    uc, dc, Ac, Bt, Ct, oc, dims = _native_layout(u, delta, A, B, C, orders, gather_params, delta_bias,
                                                  delta_softplus, D)
    ct = dc.dtype
    bias, Dc, zc = (None if t is None else t.to(ct).contiguous() for t in (delta_bias, D, z))
    b, _, d, L = u.shape
    y = torch.zeros(b, d, L, dtype=ct)
    out = torch.empty(b, d, L, dtype=ct)
    last = torch.empty(b, orders.shape[0], d, A.shape[-1], dtype=ct)
    lib = native.library()
    fn = lib.ss_fwd_f64 if ct == torch.float64 else lib.ss_fwd_f32
    if b:  # an empty batch: nothing to scan
        fn(*map(pointer, (uc, dc, bias, Ac, Bt, Ct, oc, Dc, zc, y, out, last, dims)), native.threads())
    return y, out, last


def _native_backward(u, delta, A, B, C, orders, gather_params, dy, dlast):
    """Gradients of u, delta (the prepared one), A, B, C; the states recomputed row by row."""
    uc, dc, Ac, Bt, Ct, oc, dims = _native_layout(u, delta, A, B, C, orders, gather_params)
    ct = dc.dtype
    dy = torch.zeros(uc.shape[0], uc.shape[2], uc.shape[3], dtype=ct) if dy is None else dy.to(ct).contiguous()
    dlast = None if dlast is None else dlast.to(ct).contiguous()
    blocks = int(dims[13])
    du, ddelta, dA = torch.zeros_like(uc), torch.zeros_like(dc), torch.zeros_like(Ac)
    dB = torch.zeros(blocks, *Bt.shape, dtype=ct)
    dC = torch.zeros(blocks, *Ct.shape, dtype=ct)
    lib = native.library()
    fn = lib.ss_bwd_f64 if ct == torch.float64 else lib.ss_bwd_f32
    if uc.shape[0]:
        fn(*map(pointer, (uc, dc, Ac, Bt, Ct, oc, dy, dlast, du, ddelta, dA, dB, dC, dims)), native.threads())
    dB = dB.sum(0).transpose(-1, -2).to(B.dtype)
    dC = dC.sum(0).transpose(-1, -2).to(C.dtype)
    return du.to(u.dtype), ddelta, dA.to(A.dtype), dB, dC


def _scan_two_pass(dt: torch.Tensor, du: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One scan in step order: dt, du = dt * u (b, d, L); A (d, n); B, C (b, g, n, L). Returns y (b, d, L), h_{L-1}.

    Chunks of T steps run side by side: pass 1 scans every chunk from a zero state, the chunk-boundary states
    are then carried across chunks (h_in(c+1) = decay(c) * h_in(c) + h_end(c)), and pass 2 scans every chunk
    again from its true entering state. Decays are products (exp of sums of delta * A), never divided by.
    """
    b, d, L = dt.shape
    T = max(1, int(math.sqrt(L)))
    nc = -(-L // T)
    pad = (0, nc * T - L)  # padded steps decay by 1 and add 0: the final state is unchanged

    def steps(t: torch.Tensor):  # (..., L) -> T tensors (..., nc): step j of every chunk
        return F.pad(t, pad).unflatten(-1, (nc, T)).unbind(-1)

    gB, gC = B.shape[1], C.shape[1]
    dts, dus, Bs, Cs = steps(dt), steps(du), steps(B), steps(C)
    decays = [torch.exp(dt_j[:, :, None] * A[None, :, :, None]) for dt_j in dts]          # (b, d, n, nc)
    inputs = [(du_j.unflatten(1, (gB, d // gB))[:, :, :, None] * B_j[:, :, None]).flatten(1, 2)
              for du_j, B_j in zip(dus, Bs)]                                               # (b, d, n, nc)
    h = torch.zeros_like(inputs[0])
    for a_j, x_j in zip(decays, inputs):
        h = torch.addcmul(x_j, a_j, h)
    chunk_decay = torch.exp(torch.stack(dts, -1).sum(-1)[:, :, None] * A[None, :, :, None])
    carry = torch.zeros_like(h[..., 0])
    entering = []
    for h_c, a_c in zip(h.unbind(-1), chunk_decay.unbind(-1)):
        entering.append(carry)
        carry = torch.addcmul(h_c, a_c, carry)
    h = torch.stack(entering, dim=-1)
    ys = []
    for a_j, x_j, C_j in zip(decays, inputs, Cs):
        h = torch.addcmul(x_j, a_j, h)
        ys.append((h.unflatten(1, (gC, d // gC)) * C_j[:, :, None]).sum(-2).flatten(1, 2))   # (b, d, nc)
    return torch.stack(ys, dim=-1).flatten(-2)[..., :L], carry


def _torch_scan(u, delta, A, B, C, orders, gather_params):
    ct = delta.dtype
    b, _, d, L = u.shape
    steps = torch.arange(L, device=u.device)
    y = torch.zeros(b, d, L, dtype=ct, device=u.device)
    lasts = []
    for k in range(orders.shape[0]):
        order = orders[k].long()
        pidx = order if gather_params else steps
        u_k = u[:, k if u.shape[1] > 1 else 0].to(ct)[..., order]
        dt_k = delta[:, k if delta.shape[1] > 1 else 0][..., pidx]
        A_k = A[k if A.shape[0] > 1 else 0].to(ct)
        B_k = B[:, k if B.shape[1] > 1 else 0].to(ct)[..., pidx]  # (b, g, n, L)
        C_k = C[:, k if C.shape[1] > 1 else 0].to(ct)[..., pidx]
        y_k, last = _scan_two_pass(dt_k, dt_k * u_k, A_k, B_k, C_k)
        y = y.index_add(-1, order, y_k)
        lasts.append(last)
    return y, torch.stack(lasts, dim=1)


def _orders(u: torch.Tensor, orders: Optional[torch.Tensor]) -> torch.Tensor:
    return torch.arange(u.shape[-1], device=u.device).view(1, -1) if orders is None else orders


def _prepare(u, delta, delta_bias, delta_softplus, orders):
    ct = compute_dtype(u)
    delta = delta.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[None, :, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta, _orders(u, orders)


def _finish(y, u, D, z, K: int):
    ct = y.dtype
    if D is not None:  # sum over the K scans of D_k * u_k, each at its own position (a shared axis counts K times)
        D = D.to(ct)
        if u.shape[1] == 1:
            D_sum = D.sum(0) if D.shape[0] > 1 else K * D[0]
            y = y + D_sum[:, None] * u[:, 0].to(ct)
        elif D.shape[0] == 1:
            y = y + D[0][:, None] * u.to(ct).sum(1)
        else:
            y = y + torch.einsum('kd,bkdl->bdl', D, u.to(ct))
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(u.dtype)


def selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, orders, gather_params):
    """The chunked PyTorch scan (any device; differentiated by autograd): (out, last states)."""
    delta, orders = _prepare(u, delta, delta_bias, delta_softplus, orders)
    y, last = _torch_scan(u, delta, A, B, C, orders, gather_params)
    return _finish(y, u, D, z, orders.shape[0]), last


_DIFFERENTIABLE = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')
_torch_backend = Recompute(selective_scan_torch, _DIFFERENTIABLE, n_stats=2)


def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, orders, gather_params):
    """(out, last states, y (the scan's sum before D and the gate, kept for the gate's gradient) or empty, empty).

    CPU tensors run the native loop where it builds; otherwise the chunked PyTorch scan (statistics empty)."""
    if not (u.device.type == 'cpu' and native.available()):
        return _torch_backend.forward(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                                      delta_softplus=delta_softplus, orders=orders, gather_params=gather_params)
    orders_p = _orders(u, orders)
    y, out, last = _native_forward(u, delta, delta_bias, delta_softplus, A, B, C, D, z, orders_p, gather_params)
    return out.to(u.dtype), last, (y if z is not None else empty_stats(u)), empty_stats(u)


def backward(grads, outputs, needs, u, delta, A, B, C, D, z, delta_bias, delta_softplus, orders, gather_params):
    """Gradients of (u, delta, A, B, C, D, z, delta_bias): the prologue (bias, softplus) and the epilogue (D, gate)
    by torch.func.vjp, the scan by the native loop's backward."""
    kwargs = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                  orders=orders, gather_params=gather_params)
    have_y = z is None or outputs[2].numel() > 0  # the native forward kept y for the gate
    if not (u.device.type == 'cpu' and have_y and native.available()):
        return _torch_backend.backward(grads, outputs, needs, **kwargs)
    dout, dlast = grads
    K = 1 if orders is None else orders.shape[0]
    ct = compute_dtype(u)
    y = outputs[2] if z is not None else torch.zeros(u.shape[0], u.shape[2], u.shape[3], dtype=ct)
    epilogue = {'y': y, 'u': u, 'D': D, 'z': z}
    names = [n for n, t in epilogue.items() if t is not None]

    def finish(*tensors):
        given = dict(epilogue, **dict(zip(names, tensors)))
        return _finish(given['y'], given['u'], given['D'], given['z'], K)

    dout = torch.zeros_like(outputs[0]) if dout is None else dout
    epi = dict(zip(names, torch.func.vjp(finish, *[epilogue[n] for n in names])[1](dout.to(outputs[0].dtype))))
    prologue = [t for t in (delta, delta_bias) if t is not None]
    delta_p, vjp_prologue = torch.func.vjp(
        lambda *t: _prepare(u, t[0], t[1] if len(t) > 1 else None, delta_softplus, orders)[0], *prologue)
    orders_p = _orders(u, orders)
    du, ddelta_p, dA, dB, dC = _native_backward(u, delta_p, A, B, C, orders_p, gather_params, epi['y'], dlast)
    dprologue = vjp_prologue(ddelta_p)
    return [du + epi['u'].to(du.dtype), dprologue[0], dA, dB, dC, epi.get('D'), epi.get('z'),
            dprologue[1] if delta_bias is not None else None]
