"""Routed and index-sparse attention in exact pure PyTorch with bounded memory (CPUs, GPUs without Triton).

Both ops run as an autograd Function that walks the queries in chunks: a chunk gathers the keys and values it
attends to (a transient copy of a few MiB, never the whole ``topk``-times copy), computes the softmax with
its log-sum-exp and keeps only the output and the log-sum-exp for backward. Backward recomputes each chunk's
probabilities and accumulates key/value gradients with ``index_put_(accumulate=True)`` (serial on the CPU,
deterministic). Routed attention works on region-major copies of q, k and v (one copy each), so a routed
region is one contiguous slab to gather and to accumulate into. Half-precision inputs are computed in float32
chunk by chunk. Regions of 16+ tokens with equal q/v head widths go through PyTorch's fused CPU
flash-attention kernels (forward and backward, with the log-sum-exp).

Sparse attention's forward runs a C++ loop (``native_sparse.cpp``, :mod:`kernels.routing.native`) where the lists
are short (``K * 2 <= Nk``): each listed key row read in place, cost O(N * K * D); its backward, and every pass
where no compiler is found, take the PyTorch routes below, from the same log-sum-exp.
Sparse attention whose key lists cover a large share of the keys (``K * 16 >= Nk``) takes another exact route:
dense score tiles by matrix product, softmax over the listed entries only, probabilities scattered back into
the tile for the product with v. Its time scales with Nk, but on a CPU a matrix-product score is cheaper than
gathering key rows until K falls well below Nk/16 (PyTorch's fused flash kernel with a log-multiplicity bias
was measured too: 2x slower than these tiles at N = 784). The triton backend always scales with K.
"""
from typing import Dict, List, Optional, Tuple

import torch
from torch._subclasses.fake_tensor import FakeTensor

from ..library import Backend
from . import native
from .reference import from_regions, padding, to_regions, valid_tokens

__all__ = ['region_topk', 'topk_backend', 'routed_backend', 'sparse_backend']

# elements of the per-chunk temporaries (gathered keys and values, scores): ~16 MiB in float32
_CHUNK_ELEMENTS = 1 << 22
# sparse_attention gathers key rows when K * ratio < Nk, else goes through dense score tiles: on a CPU a
# matrix product costs about as much per score as gathering 1/16 of a key row (measured, 2 cores, D = 64)
_DENSE_TILE_RATIO = 16
# routed chunks with at least this many query tokens per region and D == Dv run PyTorch's fused CPU flash
# kernels (2-3x faster there than matrix products plus softmax); smaller regions are faster with plain bmm
_FLASH_MIN_TOKENS = 16
# sparse_attention's forward runs the native loop (native_sparse.cpp) when K * ratio <= Nk: it reads each listed
# key row in place, so its cost scales with K; for denser lists the matrix-product tiles are faster (measured)
_NATIVE_RATIO = 2
# force a sparse_attention route ('native', 'gather' or 'tile'; tests); None picks by K/Nk. Backward never runs
# 'native' (it takes the forward's log-sum-exp, the same on every route)
_SPARSE_ROUTE: Optional[str] = None


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def region_topk(q: torch.Tensor, k: torch.Tensor, n_win: int, topk: int,
                valid_hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Region index (B, n_win**2, topk), int64; region means by average pooling (of the valid tokens only, and
    affinity -inf for key regions without one, with ``valid_hw``), no gradient."""
    b, h, hh, ww, d = q.shape
    rh, rw = hh // n_win, ww // n_win

    def means(x: torch.Tensor) -> torch.Tensor:
        # mean over each region's rows and columns, then heads-major channels (BiFormer's (m c) layout)
        x = x.reshape(b, h, n_win, rh, n_win, rw, x.shape[-1])
        if valid_hw is None:
            mean = x.mean((3, 5))
        else:
            rows = (torch.arange(hh, device=x.device) < valid_hw[0]).view(n_win, rh, 1, 1, 1)
            cols = (torch.arange(ww, device=x.device) < valid_hw[1]).view(1, 1, n_win, rw, 1)
            mask = (rows & cols).to(x.dtype)
            mean = (x * mask).sum((3, 5)) / mask.sum((1, 3)).clamp(min=1)
        return mean.permute(0, 2, 3, 1, 4).reshape(b, n_win * n_win, h * x.shape[-1])

    with torch.no_grad():
        affinity = means(q) @ means(k).transpose(-1, -2)
        if valid_hw is not None:
            empty = ~valid_tokens(hh, ww, n_win, valid_hw, q.device).any(-1)
            affinity.masked_fill_(empty, float('-inf'))
        return torch.topk(affinity, k=topk, dim=-1).indices


def _use_flash(q: torch.Tensor, v: torch.Tensor, tokens: int) -> bool:
    """Whether chunks go through PyTorch's fused CPU flash-attention kernels (equal head widths)."""
    return (q.device.type == 'cpu' and q.shape[-1] == v.shape[-1] and tokens >= _FLASH_MIN_TOKENS
            and hasattr(torch.ops.aten, '_scaled_dot_product_flash_attention_for_cpu_backward'))


def _accumulate(dst: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> None:
    """dst[index[i]] += src[i], deterministic. index_put_ with accumulate runs serially on the CPU: index_add_
    parallelises per row and slows down 30x when the two cores are shared with other processes (measured)."""
    dst.index_put_((index,), src, accumulate=True)


def _chunk(rows_per_item: int, n_items: int) -> int:
    return max(1, min(n_items, _CHUNK_ELEMENTS // max(1, rows_per_item)))


class _IndexedAttention:
    """Softmax attention where query row ``qrows[i, t]`` attends to key rows ``krows[i, :]`` (a shared list per i).

    q2 (M, Dqk), k2 (M, Dqk), v2 (M, Dv): all tokens as rows. qrows (I, Tq), krows (I, L) long row indices,
    kmask (I, L) bool or None (False = no key). Chunks walk over I.
    """

    @staticmethod
    def forward(q2: torch.Tensor, k2: torch.Tensor, v2: torch.Tensor, qrows: torch.Tensor, krows: torch.Tensor,
                kmask: Optional[torch.Tensor], scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
        cdt = _compute_dtype(q2.dtype)
        n_items, tq = qrows.shape
        n_keys = krows.shape[1]
        out = torch.zeros(q2.shape[0], v2.shape[1], dtype=q2.dtype, device=q2.device)
        lse = torch.zeros(q2.shape[0], dtype=cdt, device=q2.device)
        step = _chunk(tq * n_keys + n_keys * (k2.shape[1] + v2.shape[1]) + tq * q2.shape[1], n_items)
        for i0 in range(0, n_items, step):
            qr, kr = qrows[i0:i0 + step], krows[i0:i0 + step]
            c = qr.shape[0]
            qc = q2.index_select(0, qr.reshape(-1)).view(c, tq, -1).to(cdt)
            kc = k2.index_select(0, kr.reshape(-1)).view(c, n_keys, -1).to(cdt)
            vc = v2.index_select(0, kr.reshape(-1)).view(c, n_keys, -1).to(cdt)
            s = (qc * scale) @ kc.transpose(1, 2)
            if kmask is not None:
                s.masked_fill_(~kmask[i0:i0 + step, None, :], float('-inf'))
            m = s.amax(-1, keepdim=True).nan_to_num_(0.0, posinf=0.0, neginf=0.0)  # rows without keys
            p = (s - m).exp_()
            denom = p.sum(-1, keepdim=True)
            o = (p @ vc) / denom.clamp_min(torch.finfo(cdt).tiny)
            out.index_copy_(0, qr.reshape(-1), o.reshape(-1, o.shape[-1]).to(out.dtype))
            lse.index_copy_(0, qr.reshape(-1), (m + denom.log()).reshape(-1))
        return out, lse

    @staticmethod
    def backward(grad_out: torch.Tensor, q2: torch.Tensor, k2: torch.Tensor, v2: torch.Tensor, qrows: torch.Tensor,
                 krows: torch.Tensor, kmask: Optional[torch.Tensor], out: torch.Tensor, lse: torch.Tensor,
                 scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cdt = lse.dtype
        n_items, tq = qrows.shape
        n_keys = krows.shape[1]
        grad_out = grad_out.contiguous()
        delta = (grad_out.to(cdt) * out.to(cdt)).sum(-1)
        dq = torch.zeros(q2.shape, dtype=cdt, device=q2.device)
        dk = torch.zeros(k2.shape, dtype=cdt, device=q2.device)
        dv = torch.zeros(v2.shape, dtype=cdt, device=q2.device)
        step = _chunk(2 * tq * n_keys + 2 * n_keys * (k2.shape[1] + v2.shape[1]) + tq * q2.shape[1], n_items)
        for i0 in range(0, n_items, step):
            qr, kr = qrows[i0:i0 + step].reshape(-1), krows[i0:i0 + step].reshape(-1)
            c = qrows[i0:i0 + step].shape[0]
            qc = q2.index_select(0, qr).view(c, tq, -1).to(cdt)
            kc = k2.index_select(0, kr).view(c, n_keys, -1).to(cdt)
            vc = v2.index_select(0, kr).view(c, n_keys, -1).to(cdt)
            doc = grad_out.index_select(0, qr).view(c, tq, -1).to(cdt)
            s = (qc * scale) @ kc.transpose(1, 2)
            p = (s - lse.index_select(0, qr).view(c, tq, 1)).exp_()
            if kmask is not None:
                p.masked_fill_(~kmask[i0:i0 + step, None, :], 0.0)
            _accumulate(dv, kr, (p.transpose(1, 2) @ doc).reshape(-1, dv.shape[1]))
            ds = (doc @ vc.transpose(1, 2)).sub_(delta.index_select(0, qr).view(c, tq, 1)).mul_(p).mul_(scale)
            dq.index_copy_(0, qr, (ds @ kc).reshape(-1, dq.shape[1]))
            _accumulate(dk, kr, (ds.transpose(1, 2) @ qc).reshape(-1, dk.shape[1]))
        return dq.to(q2.dtype), dk.to(k2.dtype), dv.to(v2.dtype)


class _DenseTileSparseAttention:
    """Index-sparse attention through dense score tiles, for key lists that cover a large share of the keys.

    A chunk of queries gets its full score rows by one matrix product (the CPU's fastest kernel), keeps the
    listed entries (gather), takes the softmax over those ``K`` only and scatters the probabilities back into a
    dense tile for the product with v. Exact, including repeated and empty slots; memory O(chunk * Nk).
    q (BH, N, D), k (BH, Nk, D), v (BH, Nk, Dv), idx (BH, N, K) long clamped to >= 0, kmask (BH, N, K) or None.
    """

    @staticmethod
    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor,
                kmask: Optional[torch.Tensor], scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
        cdt = _compute_dtype(q.dtype)
        bh, n, _ = q.shape
        n_k = k.shape[1]
        kc, vc = k.to(cdt), v.to(cdt)
        out = torch.empty(bh, n, v.shape[-1], dtype=q.dtype, device=q.device)
        lse = torch.empty(bh, n, dtype=cdt, device=q.device)
        step = _chunk(bh * 2 * n_k, n)
        for i0 in range(0, n, step):
            sl = slice(i0, i0 + step)
            p, lse_c = _DenseTileSparseAttention._probs(q[:, sl].to(cdt) * scale, kc, idx[:, sl],
                                                        None if kmask is None else kmask[:, sl])
            tile = torch.zeros(bh, p.shape[1], n_k, dtype=cdt, device=q.device).scatter_add_(-1, idx[:, sl], p)
            out[:, sl] = torch.bmm(tile, vc).to(q.dtype)
            lse[:, sl] = lse_c
        return out, lse

    @staticmethod
    def _probs(qc: torch.Tensor, k: torch.Tensor, idx: torch.Tensor, kmask: Optional[torch.Tensor],
               lse: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        s = torch.bmm(qc, k.transpose(1, 2)).gather(-1, idx)
        if kmask is not None:
            s.masked_fill_(~kmask, float('-inf'))
        if lse is None:
            m = s.amax(-1, keepdim=True).nan_to_num_(0.0, posinf=0.0, neginf=0.0)  # rows without keys
            p = (s - m).exp_()
            denom = p.sum(-1, keepdim=True)
            p /= denom.clamp_min(torch.finfo(p.dtype).tiny)
            return p, (m + denom.log()).squeeze(-1)
        p = (s - lse.unsqueeze(-1)).exp_()
        return p.nan_to_num_(0.0, posinf=0.0, neginf=0.0), lse

    @staticmethod
    def backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor,
                 kmask: Optional[torch.Tensor], out: torch.Tensor, lse: torch.Tensor,
                 scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cdt = lse.dtype
        bh, n, _ = q.shape
        n_k = k.shape[1]
        kc, vc = k.to(cdt), v.to(cdt)
        delta = (grad_out.to(cdt) * out.to(cdt)).sum(-1)
        dq = torch.empty(q.shape, dtype=cdt, device=q.device)
        dk = torch.zeros(k.shape, dtype=cdt, device=q.device)
        dv = torch.zeros(v.shape, dtype=cdt, device=q.device)
        step = _chunk(bh * 3 * n_k, n)
        for i0 in range(0, n, step):
            sl = slice(i0, i0 + step)
            qc, doc, ic = q[:, sl].to(cdt), grad_out[:, sl].to(cdt), idx[:, sl]
            p, _ = _DenseTileSparseAttention._probs(qc * scale, kc, ic, None if kmask is None else kmask[:, sl],
                                                    lse[:, sl])
            zeros = torch.zeros(bh, p.shape[1], n_k, dtype=cdt, device=q.device)
            dv.baddbmm_(zeros.scatter_add(-1, ic, p).transpose(1, 2), doc)
            ds = torch.bmm(doc, vc.transpose(1, 2)).gather(-1, ic).sub_(delta[:, sl, None]).mul_(p).mul_(scale)
            ds_tile = zeros.scatter_add_(-1, ic, ds)
            dq[:, sl] = torch.bmm(ds_tile, kc)
            dk.baddbmm_(ds_tile.transpose(1, 2), qc)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _rows(bh: int, per_bh: int, device: torch.device) -> torch.Tensor:
    return torch.arange(bh, device=device).view(bh, 1, 1) * per_bh


def _key_mask(valid: Optional[torch.Tensor], r: torch.Tensor, c: int) -> Optional[torch.Tensor]:
    """(c, 1, topk * T) bool validity of the keys of routed global region rows ``r``, or None (no padding)."""
    if valid is None:
        return None
    return valid.index_select(0, r % valid.shape[0]).view(c, 1, -1)


class _RoutedAttention:
    """Routed attention on region-major tensors: q (BH*R, T, D), k (BH*R, T*D), v (BH*R, T*Dv) and routes
    (BH*R, topk) holding global region rows. A chunk of query regions gathers its routed regions' key and value
    slabs (``index_select`` of contiguous T*D rows) and writes its output slice; backward accumulates key/value
    gradients slab-wise. ``valid`` (R, T) bool marks the real (unpadded) tokens of each region, or is None: padded
    keys then leave every softmax (a query without any real key gets zeros)."""

    @staticmethod
    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, routes: torch.Tensor,
                scale: float, valid: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        cdt = _compute_dtype(q.dtype)
        n_items, tokens, d = q.shape
        dv = v.shape[1] // tokens
        topk = routes.shape[1]
        out = torch.empty(n_items, tokens, dv, dtype=q.dtype, device=q.device)
        lse = torch.empty(n_items, tokens, dtype=cdt, device=q.device)
        flash = valid is None and _use_flash(q, out, tokens)
        step = _chunk(tokens * topk * tokens + topk * tokens * (d + dv) + tokens * d, n_items)
        for i0 in range(0, n_items, step):
            sl = slice(i0, i0 + step)
            r = routes[sl].reshape(-1)
            c = r.numel() // topk
            qc = q[sl].to(cdt)
            kc = k.index_select(0, r).view(c, topk * tokens, d).to(cdt)
            vc = v.index_select(0, r).view(c, topk * tokens, dv).to(cdt)
            if flash:
                o, lse_c = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                    qc[:, None], kc[:, None], vc[:, None], 0.0, False, scale=scale)
                out[sl] = o[:, 0].to(out.dtype)
                lse[sl] = lse_c[:, 0].to(cdt)
                continue
            s = (qc * scale) @ kc.transpose(1, 2)
            kmask = _key_mask(valid, r, c)
            if kmask is None:
                m = s.amax(-1, keepdim=True)
                p = (s - m).exp_()
                denom = p.sum(-1, keepdim=True)
                out[sl] = ((p @ vc) / denom).to(out.dtype)
            else:
                s.masked_fill_(~kmask, float('-inf'))
                m = s.amax(-1, keepdim=True).nan_to_num_(0.0, posinf=0.0, neginf=0.0)  # queries without keys
                p = (s - m).exp_()
                denom = p.sum(-1, keepdim=True)
                out[sl] = ((p @ vc) / denom.clamp_min(torch.finfo(cdt).tiny)).to(out.dtype)
            lse[sl] = (m + denom.log()).squeeze(-1)
        return out, lse

    @staticmethod
    def backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, routes: torch.Tensor,
                 out: torch.Tensor, lse: torch.Tensor, scale: float,
                 valid: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cdt = lse.dtype
        n_items, tokens, d = q.shape
        dv_dim = v.shape[1] // tokens
        topk = routes.shape[1]
        grad_out = grad_out.contiguous()
        dq = torch.empty(q.shape, dtype=cdt, device=q.device)
        dk = torch.zeros(k.shape, dtype=cdt, device=q.device)
        dv = torch.zeros(v.shape, dtype=cdt, device=q.device)
        flash = valid is None and _use_flash(q, out, tokens)
        delta = None if flash else (grad_out.to(cdt) * out.to(cdt)).sum(-1)
        step = _chunk(2 * tokens * topk * tokens + 2 * topk * tokens * (d + dv_dim) + tokens * d, n_items)
        for i0 in range(0, n_items, step):
            sl = slice(i0, i0 + step)
            r = routes[sl].reshape(-1)
            c = r.numel() // topk
            qc, doc = q[sl].to(cdt), grad_out[sl].to(cdt)
            kc = k.index_select(0, r).view(c, topk * tokens, d).to(cdt)
            vc = v.index_select(0, r).view(c, topk * tokens, dv_dim).to(cdt)
            if flash:
                dqc, dkc, dvc = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                    doc[:, None], qc[:, None], kc[:, None], vc[:, None], out[sl, None].to(cdt), lse[sl, None],
                    0.0, False, scale=scale)
                dq[sl] = dqc[:, 0]
                _accumulate(dk, r, dkc.reshape(c * topk, -1))
                _accumulate(dv, r, dvc.reshape(c * topk, -1))
                continue
            p = ((qc * scale) @ kc.transpose(1, 2)).sub_(lse[sl, :, None]).exp_()
            kmask = _key_mask(valid, r, c)
            if kmask is not None:
                p.masked_fill_(~kmask, 0.0)  # also the NaN of queries without keys (lse -inf)
            _accumulate(dv, r, (p.transpose(1, 2) @ doc).reshape(c * topk, -1))
            ds = (doc @ vc.transpose(1, 2)).sub_(delta[sl, :, None]).mul_(p).mul_(scale)
            dq[sl] = ds @ kc
            _accumulate(dk, r, (ds.transpose(1, 2) @ qc).reshape(c * topk, -1))
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _topk_forward(q: torch.Tensor, k: torch.Tensor, n_win: int, topk: int, valid_h: int,
                  valid_w: int) -> torch.Tensor:
    return region_topk(q, k, n_win, topk, padding(q, valid_h, valid_w))


def _routed_layout(q, k, v, region_index, n_win, valid_h, valid_w):
    """Region-major copies (regions and their tokens contiguous), the routes as global region rows, validity."""
    b, h, hh, ww, d = q.shape
    n_reg = n_win * n_win
    tokens = (hh // n_win) * (ww // n_win)
    q_r, k_r, v_r = (to_regions(t, n_win).reshape(b * h * n_reg, tokens, t.shape[-1]) for t in (q, k, v))
    idx = region_index.long()
    if idx.dim() == 3:
        idx = idx[:, None].expand(b, h, n_reg, idx.shape[-1])
    topk = idx.shape[-1]
    routes = (idx.reshape(b * h, n_reg, topk) + torch.arange(b * h, device=q.device).view(-1, 1, 1) * n_reg)
    valid_hw = padding(q, valid_h, valid_w)
    valid = None if valid_hw is None else valid_tokens(hh, ww, n_win, valid_hw, q.device)
    return (q_r.contiguous(), k_r.reshape(b * h * n_reg, tokens * d), v_r.reshape(b * h * n_reg, tokens * v.shape[-1]),
            routes.reshape(b * h * n_reg, topk), valid)


def _routed_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, region_index: torch.Tensor, n_win: int,
                    scale: float, valid_h: int, valid_w: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out, log-sum-exp in region-major order (B*heads*n_win**2, T))."""
    b, h, hh, ww, _ = q.shape
    q_r, k_r, v_r, routes, valid = _routed_layout(q, k, v, region_index, n_win, valid_h, valid_w)
    out, lse = _RoutedAttention.forward(q_r, k_r, v_r, routes, float(scale), valid)
    return from_regions(out.view(b, h, n_win * n_win, q_r.shape[1], v.shape[-1]), n_win, hh, ww), lse


def _routed_backward(grads: List[torch.Tensor], outputs: List[torch.Tensor], needs: Dict[str, bool], q: torch.Tensor,
                     k: torch.Tensor, v: torch.Tensor, region_index: torch.Tensor, n_win: int, scale: float,
                     valid_h: int, valid_w: int) -> List[torch.Tensor]:
    b, h, hh, ww, d = q.shape
    q_r, k_r, v_r, routes, valid = _routed_layout(q, k, v, region_index, n_win, valid_h, valid_w)
    n_items, tokens = q_r.shape[:2]
    out, do = (to_regions(t, n_win).reshape(n_items, tokens, v.shape[-1]) for t in (outputs[0], grads[0]))
    dq, dk, dv = _RoutedAttention.backward(do, q_r, k_r, v_r, routes, out, outputs[1], float(scale), valid)
    return [from_regions(g.reshape(b, h, n_win * n_win, tokens, t.shape[-1]), n_win, hh, ww)
            for g, t in ((dq, q), (dk, k), (dv, v))]


def _sparse_route(q: torch.Tensor, k: torch.Tensor, key_index: torch.Tensor, forward: bool = False):
    """('native', 'gather' or 'tile', validity of the slots or None when all are valid or not needed)."""
    n_keys, n_k = key_index.shape[-1], k.shape[2]
    shapes_only = key_index.device.type == 'meta' or isinstance(key_index, FakeTensor)
    route = _SPARSE_ROUTE if _SPARSE_ROUTE in ('gather', 'tile') else (
        'gather' if n_keys * _DENSE_TILE_RATIO < n_k else 'tile')
    if forward and (_SPARSE_ROUTE == 'native' or (_SPARSE_ROUTE is None and n_keys * _NATIVE_RATIO <= n_k)):
        if shapes_only:  # FLOP counting: the products the native loop computes, K keys per query
            route = 'gather'
        elif q.device.type == 'cpu' and native.available():
            return 'native', None  # reads the slots itself
    valid = key_index >= 0
    if shapes_only:  # no values to read: the masked products
        return route, valid
    return route, None if bool(valid.all()) else valid


def _sparse_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_index: torch.Tensor,
                    scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out, log-sum-exp (B*heads*N,))."""
    b, h, n, d = q.shape
    n_keys, n_k = key_index.shape[-1], k.shape[2]
    route, valid = _sparse_route(q, k, key_index, forward=True)
    idx = key_index.reshape(b * h, n, n_keys)
    if route == 'native':
        cdt = _compute_dtype(q.dtype)
        out, lse = native.sparse_forward(q.reshape(b * h, n, d).to(cdt), k.reshape(b * h, n_k, d).to(cdt),
                                         v.reshape(b * h, n_k, v.shape[-1]).to(cdt), idx, float(scale))
        return out.view(b, h, n, v.shape[-1]).to(q.dtype), lse
    if route == 'tile':
        # lists covering a large share of the keys: dense score tiles (matrix products) beat gathering rows
        out, lse = _DenseTileSparseAttention.forward(
            q.reshape(b * h, n, d), k.reshape(b * h, n_k, d), v.reshape(b * h, n_k, v.shape[-1]),
            idx.long().clamp(min=0), None if valid is None else valid.reshape(b * h, n, n_keys), float(scale))
    else:
        out, lse = _IndexedAttention.forward(q.reshape(-1, d), k.reshape(-1, d), v.reshape(-1, v.shape[-1]),
                                             *_gather_rows(q, k, key_index, valid), float(scale))
    return out.view(b, h, n, v.shape[-1]), lse.reshape(-1)


def _gather_rows(q, k, key_index, valid):
    """(query rows, key rows, slot validity) of the gather route: one query per item."""
    b, h, n, _ = q.shape
    n_keys = key_index.shape[-1]
    qrows = torch.arange(b * h * n, device=q.device).view(-1, 1)
    krows = (_rows(b * h, k.shape[2], q.device) + key_index.reshape(b * h, n, n_keys).long().clamp(min=0))
    kmask = None if valid is None else valid.reshape(b * h * n, n_keys)
    return qrows, krows.reshape(b * h * n, n_keys), kmask


def _sparse_backward(grads: List[torch.Tensor], outputs: List[torch.Tensor], needs: Dict[str, bool], q: torch.Tensor,
                     k: torch.Tensor, v: torch.Tensor, key_index: torch.Tensor, scale: float) -> List[torch.Tensor]:
    b, h, n, d = q.shape
    n_keys, n_k = key_index.shape[-1], k.shape[2]
    route, valid = _sparse_route(q, k, key_index)
    out, lse = outputs
    do = grads[0].contiguous()
    if route == 'tile':
        idx = key_index.reshape(b * h, n, n_keys)
        dv_dim = v.shape[-1]
        dq, dk, dv = _DenseTileSparseAttention.backward(
            do.reshape(b * h, n, dv_dim), q.reshape(b * h, n, d), k.reshape(b * h, n_k, d),
            v.reshape(b * h, n_k, dv_dim), idx.long().clamp(min=0),
            None if valid is None else valid.reshape(b * h, n, n_keys), out.reshape(b * h, n, dv_dim),
            lse.view(b * h, n), float(scale))
    else:
        dq, dk, dv = _IndexedAttention.backward(
            do.reshape(-1, v.shape[-1]), q.reshape(-1, d), k.reshape(-1, d), v.reshape(-1, v.shape[-1]),
            *_gather_rows(q, k, key_index, valid), out.reshape(-1, v.shape[-1]), lse, float(scale))
    return [dq.view(q.shape), dk.view(k.shape), dv.view(v.shape)]


# the backends of the three operators (kernels.library)
topk_backend = Backend(_topk_forward)
routed_backend = Backend(_routed_forward, _routed_backward)
sparse_backend = Backend(_sparse_forward, _sparse_backward)
