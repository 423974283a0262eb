"""The selective scan in standard PyTorch ops for ONNX export: the reference's recurrence as one ``torch`` scan per
order (``torch._higher_order_ops.scan``, which ``torch.onnx.export(..., dynamo=True)`` writes as an ONNX ``Scan``
node). The number of steps stays symbolic, so one exported program runs at every sequence length; a loop written in
Python (the reference's, or the chunked scan's ``sqrt(L)`` steps) would be unrolled for the export size only."""
import functools
from typing import Tuple

import torch
from torch._higher_order_ops.scan import scan

from . import reference

__all__ = ['selective_scan_decomposition']


def scanned_recurrence(delta: torch.Tensor, u: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                       C: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`reference.sequential_recurrence` as a scan over the steps: delta, u (b, d, L); A (d, n); B, C
    (b, g, n, L). Returns y (b, d, L) and the last state (b, d, n)."""
    batch, d, _ = u.shape
    g, n = B.shape[1], A.shape[-1]
    A = A.view(1, g, d // g, n)

    def step(h: torch.Tensor, xs: Tuple[torch.Tensor, ...]) -> Tuple[torch.Tensor, torch.Tensor]:
        delta_t, u_t, B_t, C_t = xs                       # (b, g, d/g), (b, g, d/g), (b, g, n), (b, g, n)
        h = torch.exp(delta_t[..., None] * A) * h + (delta_t * u_t)[..., None] * B_t[:, :, None]
        return h, (h * C_t[:, :, None]).sum(-1)

    def steps_first(t: torch.Tensor, groups: int) -> torch.Tensor:  # (b, c, L) -> (L, b, g, c / g)
        return t.unflatten(1, (groups, t.shape[1] // groups)).permute(3, 0, 1, 2)

    xs = (steps_first(delta, g), steps_first(u, g), B.permute(3, 0, 1, 2), C.permute(3, 0, 1, 2))
    last, ys = scan(step, u.new_zeros(batch, g, d // g, n), xs)
    return ys.permute(1, 2, 3, 0).flatten(1, 2), last.flatten(1, 2)


selective_scan_decomposition = functools.partial(reference.selective_scan, recurrence=scanned_recurrence)
