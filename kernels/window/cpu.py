"""The fast pure-PyTorch path: window attention in chunks of windows, read through strided views.

Every window's real tokens form a prefix (na, nb) of its wh x ww tokens, in block and grid layouts alike, and
consecutive windows share that prefix: a map that is no multiple of the window falls into at most four
rectangular groups of windows (per axis: windows whose real tokens fill all wh rows, and the rest). A group is
a strided view of the unpadded (B, heads, H, W, D) tensors (torch.as_strided; every index real), so there is
no padding, no mask and no padded key or query costs a FLOP. Each group runs in chunks of windows: a chunk
is copied into (windows, heads, N, D) batches for scaled_dot_product_attention (with the (na, nb) slice of
the relative bias as attn_mask) and its output written back in place. The backward pass recomputes each chunk's
probabilities, so no partition copy, score matrix or padded tensor of the whole map lives between forward and
backward: only q, k, v and the output. ``forward`` and ``backward`` are the backend of the window_attention
operator (:mod:`kernels.library`).
"""
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F

from .reference import padded_size, relative_bias, relative_bias_grad

__all__ = ['forward', 'backward']

# Score elements per chunk of windows (1 MiB of fp32 per score-sized buffer in the backward pass).
_CHUNK = 1 << 18

Group = Tuple[int, int, int, int, int, int]  # (i0, i1, na, j0, j1, nb): windows [i0, i1) x [j0, j1), (na, nb) real


def _runs(size: int, window: int, grid: bool) -> List[Tuple[int, int, int]]:
    """(first window, last window + 1, real tokens per window along this axis), consecutive windows grouped."""
    padded = padded_size(size, window)
    if grid:
        stride = padded // window
        counts = [-(-(size - i) // stride) for i in range(stride)]  # ceil((size - i) / stride)
    else:
        counts = [min(window, size - i * window) for i in range(padded // window)]
    runs: List[Tuple[int, int, int]] = []
    for i, n in enumerate(counts):
        if runs and runs[-1][2] == n:
            runs[-1] = (runs[-1][0], i + 1, n)
        else:
            runs.append((i, i + 1, n))
    return runs


def _chunks(B: int, heads: int, H: int, W: int, window_size: Tuple[int, int], grid: bool) -> Iterator[Group]:
    """Groups of equal real-token prefix, split along window rows into chunks of about _CHUNK scores."""
    if B * heads == 0:
        return  # an empty batch: nothing to compute
    for i0, i1, na in _runs(H, window_size[0], grid):
        for j0, j1, nb in _runs(W, window_size[1], grid):
            n = na * nb
            step = max(1, _CHUNK // (B * heads * (j1 - j0) * n * n))
            for i in range(i0, i1, step):
                yield i, min(i + step, i1), na, j0, j1, nb


class _Geometry:
    """Where token (a, b) of window (i, j) lives: y = i * win_y + a * tok_y, x = j * win_x + b * tok_x."""

    def __init__(self, H: int, W: int, window_size: Tuple[int, int], grid: bool):
        wh, ww = window_size
        sh, sw = padded_size(H, wh) // wh, padded_size(W, ww) // ww
        self.win_y, self.win_x, self.tok_y, self.tok_x = (1, 1, sh, sw) if grid else (wh, ww, 1, 1)

    def view(self, x: torch.Tensor, g: Group) -> torch.Tensor:
        """(B, heads, i1 - i0, j1 - j0, na, nb, D) strided view of the group's real tokens (no copy)."""
        i0, i1, na, j0, j1, nb = g
        sb, sh, sy, sx, sd = x.stride()
        return x.as_strided((x.shape[0], x.shape[1], i1 - i0, j1 - j0, na, nb, x.shape[4]),
                            (sb, sh, self.win_y * sy, self.win_x * sx, self.tok_y * sy, self.tok_x * sx, sd),
                            x.storage_offset() + i0 * self.win_y * sy + j0 * self.win_x * sx)

    def take(self, x: torch.Tensor, g: Group) -> torch.Tensor:
        """The group's windows as a contiguous (windows, heads, na * nb, D) batch (a copy, also of a broadcast
        gradient such as the one of out.sum(), which batched matmuls would otherwise walk matrix by matrix)."""
        t = self.view(x, g).permute(0, 2, 3, 1, 4, 5, 6)
        return t.reshape(-1, x.shape[1], g[2] * g[5], x.shape[4]).contiguous()

    def put(self, x: torch.Tensor, g: Group, value: torch.Tensor) -> None:
        """Write a (windows, heads, na * nb, D) batch back to the group's tokens of x."""
        i0, i1, na, j0, j1, nb = g
        B, heads, D = x.shape[0], x.shape[1], x.shape[4]
        self.view(x, g).copy_(value.view(B, i1 - i0, j1 - j0, heads, na, nb, D).permute(0, 3, 1, 2, 4, 5, 6))


def _bias_slice(bias: Optional[torch.Tensor], g: Group) -> Optional[torch.Tensor]:
    if bias is None:
        return None
    na, nb = g[2], g[5]
    return bias[:, :na, :nb, :na, :nb].reshape(1, bias.shape[0], na * nb, na * nb)


def _bias(table: Optional[torch.Tensor], dtype: torch.dtype, window_size: Tuple[int, int]) -> Optional[torch.Tensor]:
    """(heads, wh, ww, wh, ww) bias of every (query, key) pair of a window, from the (heads, 2wh-1, 2ww-1) table."""
    if table is None:
        return None
    wh, ww = window_size
    return relative_bias(table.to(dtype), window_size).view(table.shape[0], wh, ww, wh, ww)


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_pos_bias: Optional[torch.Tensor], window_h: int,
            window_w: int, grid: bool, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out, no statistics); arguments as :data:`kernels.window` passes them to its operator."""
    window_size = (window_h, window_w)
    B, heads, H, W, _ = q.shape
    geo = _Geometry(H, W, window_size, grid)
    bias = _bias(rel_pos_bias, q.dtype, window_size)
    # heads-last memory: the caller's merge of the heads, out.permute(0, 2, 3, 1, 4).reshape(B, H, W, C), is
    # then a view instead of a copy of the map
    out = q.new_empty(B, H, W, heads, v.shape[-1]).permute(0, 3, 1, 2, 4)
    for g in _chunks(B, heads, H, W, window_size, grid):
        o = F.scaled_dot_product_attention(geo.take(q, g), geo.take(k, g), geo.take(v, g),
                                           attn_mask=_bias_slice(bias, g), scale=scale)
        geo.put(out, g, o)
    return out, q.new_empty(0, dtype=torch.float32)


def backward(grads: List[torch.Tensor], outputs: List[torch.Tensor], needs: Dict[str, bool], q: torch.Tensor,
             k: torch.Tensor, v: torch.Tensor, rel_pos_bias: Optional[torch.Tensor], window_h: int, window_w: int,
             grid: bool, scale: float) -> List[Optional[torch.Tensor]]:
    """Gradients of q, k, v, rel_pos_bias: each chunk's probabilities recomputed, nothing was stored."""
    window_size = (window_h, window_w)
    do = grads[0]
    B, heads, H, W, _ = q.shape
    geo = _Geometry(H, W, window_size, grid)
    bias = _bias(rel_pos_bias, q.dtype, window_size)
    dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    dbias = None
    if bias is not None and needs['rel_pos_bias']:
        dbias = torch.zeros(bias.shape, dtype=torch.promote_types(bias.dtype, torch.float32), device=bias.device)
    for g in _chunks(B, heads, H, W, window_size, grid):
        qg, kg, vg, dog = (geo.take(t, g) for t in (q, k, v, do))
        s = qg @ kg.transpose(-2, -1)
        s = s.mul_(scale) if bias is None else torch.add(_bias_slice(bias, g), s, alpha=scale)
        p = s.softmax(dim=-1)
        geo.put(dv, g, p.transpose(-2, -1) @ dog)
        dp = dog @ vg.transpose(-2, -1)
        ds = dp.sub_((p * dp).sum(-1, keepdim=True)).mul_(p)  # p * (dp - rowsum(p * dp))
        if dbias is not None:
            na, nb = g[2], g[5]
            dbias[:, :na, :nb, :na, :nb] += ds.sum(0, dtype=dbias.dtype).view(heads, na, nb, na, nb)
        geo.put(dq, g, (ds @ kg).mul_(scale))
        geo.put(dk, g, (ds.transpose(-2, -1) @ qg).mul_(scale))
    dtable = None
    if dbias is not None:
        dtable = relative_bias_grad(dbias.view(heads, window_h * window_w, -1), window_size).to(rel_pos_bias.dtype)
    return [dq, dk, dv, dtable]
