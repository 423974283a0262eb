"""The selective scan as the sequential recurrence: readable PyTorch, the ground truth of every backend.

Same signature as the other backends (the normalized layout of ``kernels.selective_scan``): u, delta (b, Ku, d, L);
A (KA, d, n); B, C (b, KB, g, n, L); D, delta_bias (KD, d) or None; z (b, d, L) or None; orders (K, L) or None.
A scan axis of size 1 is shared by every scan.
"""
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ['selective_scan', 'compute_dtype', 'sequential_recurrence']


def compute_dtype(u: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs, float32 for everything else (as mamba_ssm)."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _pick(t: torch.Tensor, axis: int, k: int) -> torch.Tensor:
    """Scan k's slice of a tensor whose scan axis has size K or 1 (shared)."""
    return t.select(axis, k if t.shape[axis] > 1 else 0)


def sequential_recurrence(delta: torch.Tensor, u: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                          C: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One scan in step order: delta, u (b, d, L); A (d, n); B, C (b, g, n, L), channel c in group c // (d/g).
    Returns y (b, d, L) and the last state (b, d, n)."""
    batch, d, L = u.shape
    B = B.repeat_interleave(d // B.shape[1], dim=1)                        # (b, d, n, L)
    C = C.repeat_interleave(d // C.shape[1], dim=1)
    h = u.new_zeros(batch, d, A.shape[-1])
    ys = []
    for t in range(L):
        decay = torch.exp(delta[:, :, t, None] * A)
        h = decay * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * B[..., t]
        ys.append((h * C[..., t]).sum(-1))
    return torch.stack(ys, dim=-1), h


def selective_scan(
        u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
        D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
        delta_softplus: bool, orders: Optional[torch.Tensor], gather_params: bool,
        recurrence: Callable[..., Tuple[torch.Tensor, torch.Tensor]] = sequential_recurrence,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Returns (out (b, d, L) in u's dtype, last states (b, K, d, n) in the compute dtype). ``recurrence`` runs
    one scan (:func:`sequential_recurrence`, or the same steps in another form)."""
    ct = compute_dtype(u)
    batch, _, d, L = u.shape
    K = 1 if orders is None else orders.shape[0]
    steps = torch.arange(L, device=u.device)
    out = torch.zeros(batch, d, L, dtype=ct, device=u.device)
    last_states = []
    for k in range(K):
        order = steps if orders is None else orders[k].long()
        param_order = order if gather_params else steps
        u_k = _pick(u, 1, k).to(ct)[..., order]                          # (b, d, L) in scan order
        delta_k = _pick(delta, 1, k).to(ct)[..., param_order]
        if delta_bias is not None:
            delta_k = delta_k + _pick(delta_bias, 0, k).to(ct)[:, None]
        if delta_softplus:
            delta_k = F.softplus(delta_k)
        A_k = _pick(A, 0, k).to(ct)                                        # (d, n)
        B_k = _pick(B, 1, k).to(ct)[..., param_order]                      # (b, g, n, L)
        C_k = _pick(C, 1, k).to(ct)[..., param_order]
        y, h = recurrence(delta_k, u_k, A_k, B_k, C_k)
        if D is not None:
            y = y + _pick(D, 0, k).to(ct)[:, None] * u_k
        out = out.index_add(-1, order, y)                                  # back to stored positions, summed
        last_states.append(h)
    if z is not None:
        out = out * F.silu(z.to(ct))
    return out.to(u.dtype), torch.stack(last_states, dim=1)
