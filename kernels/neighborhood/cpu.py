"""Neighborhood attention, fast and exact in pure PyTorch (CPUs, and GPUs without Triton).

No unfolded key copies: the local scores are ``kernel_size**2`` shifted products of q with views of k,
the extra keys one matmul per chunk. K and V are zero-padded along W once (one copy each, not
kernel_size**2), so that every shifted view covers whole rows: the elementwise kernels then run over
contiguous runs of W*D values instead of D, and the few columns whose neighbour lies in the padding are
masked out of the softmax. Rows outside the image are skipped. Queries are processed in chunks of rows,
so at most O(B * heads * rows * W * (L + M)) scores exist at a time; the backward recomputes them from the
saved log-sum-exp instead of storing them.
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ['forward', 'backward']

# scores (or chunk temporaries) per chunk; 2**22 float32 = 16 MiB
_CHUNK_ELEMENTS = 1 << 22

# (j, dy, first key column in the padded map, query rows [y0, y1), valid query columns [x0, x1))
Offset = Tuple[int, int, int, int, int, int, int]


def _offsets(r0: int, r1: int, height: int, width: int, kernel_size: int, dilation: int) -> List[Offset]:
    """The offsets with at least one in-image neighbour for query rows [r0, r1)."""
    radius = kernel_size // 2
    out = []
    for a in range(kernel_size):
        for c in range(kernel_size):
            dy, dx = (a - radius) * dilation, (c - radius) * dilation
            y0, y1 = max(r0, -dy), min(r1, height - dy)
            x0, x1 = max(0, -dx), min(width, width - dx)
            if y0 < y1 and x0 < x1:
                out.append((a * kernel_size + c, dy, c * dilation, y0, y1, x0, x1))
    return out


def _rows_per_chunk(b: int, heads: int, height: int, width: int, d: int, num_keys: int) -> int:
    per_row = b * heads * width * max(num_keys, d)
    return max(1, min(height, _CHUNK_ELEMENTS // max(per_row, 1)))


def _pad_w(x: torch.Tensor, pad: int) -> torch.Tensor:
    return F.pad(x, (0, 0, pad, pad)) if pad else x


def _local_weights(qt: torch.Tensor, lt: Optional[torch.Tensor], lb: Optional[torch.Tensor],
                   local_len: int) -> Optional[torch.Tensor]:
    """(B, h, L, R, W) learnable-token weights q @ learnable_tokens + learnable_bias, or None."""
    if lt is None and lb is None:
        return None
    b, h, rows, width, d = qt.shape
    if lt is None:
        return lb.view(1, h, local_len, 1, 1).expand(b, h, local_len, rows, width)
    t = lt.transpose(-2, -1).unsqueeze(0) @ qt.reshape(b, h, rows * width, d).transpose(-2, -1)  # (B, h, L, R*W)
    if lb is not None:
        t += lb.view(1, h, local_len, 1)
    return t.view(b, h, local_len, rows, width)


def _table_index(ih: torch.Tensor, iw: torch.Tensor, table_w: int, r0: int, r1: int) -> torch.Tensor:
    """(R*W*M,) flat table positions of the factored extra bias for query rows [r0, r1)."""
    return (ih[r0:r1, None, :, None] * table_w + iw[None, :, None, :]).reshape(-1)


def _is_blocked(ebt: Optional[torch.Tensor], ih: Optional[torch.Tensor], iw: Optional[torch.Tensor]) -> bool:
    """Whether the factored index is ``index[y, p] = y * P + p`` on both axes over a (heads, H*Ph, W*Pw) table:
    the table is then the dense bias with its axes in (y, py, x, px) order (TransNeXt's bias resized to a new map
    size), and a chunk of it is a strided slice instead of a gather."""
    if ebt is None or ebt.device.type == 'meta' or ebt.shape[1:] != (ih.numel(), iw.numel()):
        return False
    return all(torch.equal(i, torch.arange(i.numel(), device=i.device).view_as(i)) for i in (ih, iw))


def _blocked_view(t: torch.Tensor, ih: torch.Tensor, iw: torch.Tensor) -> torch.Tensor:
    """(heads, H*Ph, W*Pw) table as (heads, H, Ph, W, Pw)."""
    return t.view(t.shape[0], ih.shape[0], ih.shape[1], iw.shape[0], iw.shape[1])


def _bias_chunk(eb: Optional[torch.Tensor], ebt: Optional[torch.Tensor], ih: Optional[torch.Tensor],
                iw: Optional[torch.Tensor], r0: int, r1: int, width: int, blocked: bool) -> Optional[torch.Tensor]:
    """The extra bias of query rows [r0, r1): (1|B, h, R*W, M), gathered from the table when factored."""
    if ebt is not None:
        h = ebt.shape[0]
        if blocked:
            chunk = _blocked_view(ebt, ih, iw)[:, r0:r1].permute(0, 1, 3, 2, 4)
            return chunk.reshape(1, h, (r1 - r0) * width, ih.shape[1] * iw.shape[1])
        idx = _table_index(ih, iw, ebt.shape[2], r0, r1)
        return ebt.reshape(h, -1)[:, idx].view(1, h, (r1 - r0) * width, ih.shape[1] * iw.shape[1])
    return None if eb is None else eb[:, :, r0 * width:r1 * width]


def _scores(qs: torch.Tensor, k_pad: torch.Tensor, rpb: Optional[torch.Tensor], ek: Optional[torch.Tensor],
            eb: Optional[torch.Tensor], r0: int, r1: int, offsets: List[Offset],
            local_len: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Local scores (B, h, L, R, W), -inf outside the image, and extra scores (B, h, R*W, M) or None;
    ``eb`` is the chunk's extra bias (1|B, h, R*W, M)."""
    b, h, height, width, d = qs.shape
    q_chunk = qs[:, :, r0:r1]
    s_loc = qs.new_full((b, h, local_len, r1 - r0, width), float('-inf'))
    for j, dy, kx, y0, y1, x0, x1 in offsets:
        s_j = s_loc[:, :, j, y0 - r0:y1 - r0]
        torch.linalg.vecdot(q_chunk[:, :, y0 - r0:y1 - r0], k_pad[:, :, y0 + dy:y1 + dy, kx:kx + width], out=s_j)
        s_j[..., :x0] = float('-inf')
        s_j[..., x1:] = float('-inf')
    if rpb is not None:
        s_loc += rpb.view(1, h, local_len, 1, 1)
    s_ext = None
    if ek is not None:
        q_flat = q_chunk.reshape(b, h, -1, d)
        if eb is not None:
            s_ext = torch.baddbmm(eb.expand(b, h, -1, -1).reshape(b * h, -1, ek.shape[2]),
                                  q_flat.reshape(b * h, -1, d), ek.reshape(b * h, -1, d).transpose(-2, -1))
            s_ext = s_ext.view(b, h, -1, ek.shape[2])
        else:
            s_ext = q_flat @ ek.transpose(-2, -1)
    return s_loc, s_ext


def _inputs(qs, q, k, v, rel_pos_bias, extra_k, extra_v, extra_bias, learnable_tokens, learnable_bias,
            extra_bias_table, index_h, index_w):
    """The layouts the loops read: contiguous maps, extra keys, dense bias and table."""
    def c(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if t is None else t.contiguous()

    return (c(qs), c(q), c(k), c(v), rel_pos_bias, c(extra_k), c(extra_v), c(extra_bias), learnable_tokens,
            learnable_bias, c(extra_bias_table), index_h, index_w)


def forward(qs: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_pos_bias: Optional[torch.Tensor],
            extra_k: Optional[torch.Tensor], extra_v: Optional[torch.Tensor], extra_bias: Optional[torch.Tensor],
            learnable_tokens: Optional[torch.Tensor], learnable_bias: Optional[torch.Tensor],
            extra_bias_table: Optional[torch.Tensor], index_h: Optional[torch.Tensor], index_w: Optional[torch.Tensor],
            kernel_size: int, dilation: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out, log-sum-exp (B, heads, H, W)); arguments as :mod:`kernels.neighborhood` passes them to its operator
    (``qs`` the scaled query, ``q`` the raw one for the learnable tokens)."""
    qs, qt, k, v, rpb, ek, ev, eb, lt, lb, ebt, ih, iw = _inputs(
        qs, q, k, v, rel_pos_bias, extra_k, extra_v, extra_bias, learnable_tokens, learnable_bias, extra_bias_table,
        index_h, index_w)
    blocked = _is_blocked(ebt, ih, iw)
    b, h, height, width, d = qs.shape
    local_len = kernel_size ** 2
    num_extra = 0 if ek is None else ek.shape[2]
    pad = (kernel_size // 2) * dilation
    k_pad, v_pad = _pad_w(k, pad), _pad_w(v, pad)
    out = torch.empty_like(v)
    lse = qs.new_empty(b, h, height, width)
    rows = _rows_per_chunk(b, h, height, width, d, local_len + num_extra)
    for r0 in range(0, height if b else 0, rows):  # an empty batch: nothing to compute
        r1 = min(height, r0 + rows)
        offsets = _offsets(r0, r1, height, width, kernel_size, dilation)
        s_loc, s_ext = _scores(qs, k_pad, rpb, ek, _bias_chunk(eb, ebt, ih, iw, r0, r1, width, blocked), r0, r1,
                               offsets,
                               local_len)
        m = s_loc.amax(2, keepdim=True)  # (B, h, 1, R, W)
        if s_ext is not None:
            m = torch.maximum(m, s_ext.amax(-1).view_as(m))
        p_loc = s_loc.sub_(m).exp_()
        denom = p_loc.sum(2, keepdim=True)
        if s_ext is not None:
            p_ext = s_ext.sub_(m.view(b, h, -1, 1)).exp_()
            denom += p_ext.sum(-1).view_as(denom)
            p_ext /= denom.view(b, h, -1, 1)
        p_loc /= denom
        lse[:, :, r0:r1] = (m + denom.log()).view(b, h, r1 - r0, width)
        t = _local_weights(qt[:, :, r0:r1], lt, lb, local_len)
        w_loc = p_loc if t is None else p_loc.add_(t)
        out_chunk = out[:, :, r0:r1]
        if ek is not None:
            torch.matmul(p_ext, ev, out=out_chunk.view(b, h, -1, d))
        else:
            out_chunk.zero_()
        for j, dy, kx, y0, y1, _x0, _x1 in offsets:  # padded values are zero: no column mask needed
            out_chunk[:, :, y0 - r0:y1 - r0].addcmul_(
                w_loc[:, :, j, y0 - r0:y1 - r0, :, None], v_pad[:, :, y0 + dy:y1 + dy, kx:kx + width])
    return out, lse


def backward(grads: List[torch.Tensor], outputs: List[torch.Tensor], needs: Dict[str, bool], qs: torch.Tensor,
             q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_pos_bias: Optional[torch.Tensor],
             extra_k: Optional[torch.Tensor], extra_v: Optional[torch.Tensor], extra_bias: Optional[torch.Tensor],
             learnable_tokens: Optional[torch.Tensor], learnable_bias: Optional[torch.Tensor],
             extra_bias_table: Optional[torch.Tensor], index_h: Optional[torch.Tensor], index_w: Optional[torch.Tensor],
             kernel_size: int, dilation: int) -> List[Optional[torch.Tensor]]:
    """Gradients of (qs, q, k, v, rel_pos_bias, extra_k, extra_v, extra_bias, learnable_tokens, learnable_bias,
    extra_bias_table): the scores of each chunk recomputed from the saved log-sum-exp."""
    qs, qt, k, v, rpb, ek, ev, eb, lt, lb, ebt, ih, iw = _inputs(
        qs, q, k, v, rel_pos_bias, extra_k, extra_v, extra_bias, learnable_tokens, learnable_bias, extra_bias_table,
        index_h, index_w)
    blocked = _is_blocked(ebt, ih, iw)
    lse = outputs[1]
    dout = grads[0]
    b, h, height, width, d = qs.shape
    local_len = kernel_size ** 2
    num_extra = 0 if ek is None else ek.shape[2]
    pad = (kernel_size // 2) * dilation
    k_pad, v_pad = _pad_w(k, pad), _pad_w(v, pad)
    dout = dout.contiguous()
    dqs = torch.zeros_like(qs)
    dk_pad, dv_pad = torch.zeros_like(k_pad), torch.zeros_like(v_pad)
    dqt = torch.zeros_like(qt) if lt is not None and needs['q'] else None
    drpb = torch.zeros_like(rpb) if rpb is not None else None
    dek = torch.zeros_like(ek) if ek is not None else None
    dev = torch.zeros_like(ev) if ev is not None else None
    deb = torch.zeros_like(eb) if eb is not None and needs['extra_bias'] else None
    dlt = torch.zeros_like(lt) if lt is not None else None
    dlb = torch.zeros_like(lb) if lb is not None else None
    debt = torch.zeros_like(ebt) if ebt is not None and needs['extra_bias_table'] else None
    rows = _rows_per_chunk(b, h, height, width, d, local_len + num_extra)
    for r0 in range(0, height if b else 0, rows):  # an empty batch: zero gradients
        r1 = min(height, r0 + rows)
        n0, n1 = r0 * width, r1 * width
        offsets = _offsets(r0, r1, height, width, kernel_size, dilation)
        s_loc, s_ext = _scores(qs, k_pad, rpb, ek, _bias_chunk(eb, ebt, ih, iw, r0, r1, width, blocked), r0, r1,
                               offsets,
                               local_len)
        chunk_lse = lse[:, :, None, r0:r1]  # (B, h, 1, R, W)
        p_loc = s_loc.sub_(chunk_lse).exp_()  # (B, h, L, R, W), 0 outside the image
        do_chunk = dout[:, :, r0:r1]
        dp_loc = torch.zeros_like(p_loc)  # 0 outside the image: padded values are zero, rows are skipped
        for j, dy, kx, y0, y1, _x0, _x1 in offsets:
            torch.linalg.vecdot(do_chunk[:, :, y0 - r0:y1 - r0], v_pad[:, :, y0 + dy:y1 + dy, kx:kx + width],
                                out=dp_loc[:, :, j, y0 - r0:y1 - r0])
        delta = (p_loc * dp_loc).sum(2, keepdim=True)  # (B, h, 1, R, W)
        if ek is not None:
            do_flat = do_chunk.reshape(b, h, -1, d)
            p_ext = s_ext.sub_(chunk_lse.reshape(b, h, -1, 1)).exp_()
            dp_ext = do_flat @ ev.transpose(-2, -1)
            delta += (p_ext * dp_ext).sum(-1).view_as(delta)
            ds_ext = dp_ext.sub_(delta.view(b, h, -1, 1)).mul_(p_ext)
            q_flat = qs[:, :, r0:r1].reshape(b, h, -1, d)
            torch.matmul(ds_ext, ek, out=dqs[:, :, r0:r1].view(b, h, -1, d))
            dek += ds_ext.transpose(-2, -1) @ q_flat
            dev += p_ext.transpose(-2, -1) @ do_flat
            if deb is not None:
                deb[:, :, n0:n1] += ds_ext if deb.shape[0] == b else ds_ext.sum(0, keepdim=True)
            if debt is not None and blocked:
                _blocked_view(debt, ih, iw)[:, r0:r1] += ds_ext.sum(0).view(
                    h, r1 - r0, width, ih.shape[1], iw.shape[1]).permute(0, 1, 3, 2, 4)
            elif debt is not None:
                debt.view(h, -1).index_add_(1, _table_index(ih, iw, ebt.shape[2], r0, r1),
                                            ds_ext.sum(0).reshape(h, -1))
        ds_loc = (dp_loc - delta).mul_(p_loc)
        if drpb is not None:
            drpb += ds_loc.sum((0, 3, 4))
        t = _local_weights(qt[:, :, r0:r1], lt, lb, local_len)
        w_loc = p_loc if t is None else p_loc.add_(t)  # p_loc is not needed after ds_loc
        if lt is not None:  # dp_loc is also the gradient of the learnable weights (0 outside the image)
            dt_flat = dp_loc.view(b, h, local_len, -1)
            dlt += (dt_flat @ qt[:, :, r0:r1].reshape(b, h, -1, d)).sum(0).transpose(-2, -1)
            if dqt is not None:
                dqt[:, :, r0:r1] += (dt_flat.transpose(-2, -1) @ lt.transpose(-2, -1).unsqueeze(0)).view(
                    b, h, r1 - r0, width, d)
        if dlb is not None:
            dlb += dp_loc.sum((0, 3, 4)).view_as(dlb)
        q_chunk, dqs_chunk = qs[:, :, r0:r1], dqs[:, :, r0:r1]
        for j, dy, kx, y0, y1, _x0, _x1 in offsets:
            ys, yk, xk = slice(y0 - r0, y1 - r0), slice(y0 + dy, y1 + dy), slice(kx, kx + width)
            ds_j = ds_loc[:, :, j, ys, :, None]  # 0 where the neighbour is padding
            dqs_chunk[:, :, ys].addcmul_(ds_j, k_pad[:, :, yk, xk])
            dk_pad[:, :, yk, xk].addcmul_(ds_j, q_chunk[:, :, ys])
            # w_loc is not 0 in padded columns (learnable weights): those land in dv_pad's padding, cropped
            dv_pad[:, :, yk, xk].addcmul_(w_loc[:, :, j, ys, :, None], do_chunk[:, :, ys])
    dk, dv = dk_pad[:, :, :, pad:pad + width], dv_pad[:, :, :, pad:pad + width]
    return [dqs, dqt, dk, dv, drpb, dek, dev, deb, dlt, dlb, debt]
