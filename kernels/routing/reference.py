"""The gather formulation of routed and index-sparse attention: plain PyTorch, the ground truth.

Every routed query region gets a full copy of the keys and values of its ``topk`` regions (BiFormer's
``KVGather``), so memory grows with ``topk``; the fused backends compute the same numbers without that copy.
"""
from typing import Optional, Tuple

import torch

__all__ = ['region_topk', 'routed_attention', 'sparse_attention', 'to_regions', 'from_regions', 'valid_tokens',
           'padding']


def to_regions(x: torch.Tensor, n_win: int) -> torch.Tensor:
    """(B, heads, H, W, D) -> (B, heads, n_win**2, (H/n_win)*(W/n_win), D): regions in raster order, tokens too."""
    b, h, hh, ww, d = x.shape
    rh, rw = hh // n_win, ww // n_win
    x = x.reshape(b, h, n_win, rh, n_win, rw, d).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, h, n_win * n_win, rh * rw, d)


def from_regions(x: torch.Tensor, n_win: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`to_regions`."""
    b, h, _, _, d = x.shape
    rh, rw = height // n_win, width // n_win
    x = x.reshape(b, h, n_win, n_win, rh, rw, d).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, h, height, width, d)


def padding(q: torch.Tensor, valid_h: int, valid_w: int) -> Optional[Tuple[int, int]]:
    """The operator's (valid_h, valid_w) as ``valid_hw``: None when nothing is padded (the unmasked computation)."""
    return None if (valid_h, valid_w) == tuple(q.shape[2:4]) else (valid_h, valid_w)


def valid_tokens(height: int, width: int, n_win: int, valid_hw: Tuple[int, int], device: torch.device) -> torch.Tensor:
    """(n_win**2, T) bool: which tokens of each region (raster order, tokens too) lie inside the valid (h, w) map."""
    h, w = valid_hw
    rows = torch.arange(height, device=device)[:, None] < h
    cols = torch.arange(width, device=device)[None, :] < w
    return to_regions((rows & cols)[None, None, :, :, None], n_win)[0, 0, :, :, 0]


def region_topk(q: torch.Tensor, k: torch.Tensor, n_win: int, topk: int,
                valid_hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Region index (B, n_win**2, topk), int64: the ``topk`` key regions of highest affinity per query region.

    With ``valid_hw``, region means average the valid tokens only and key regions without one get affinity -inf.
    """
    b = q.shape[0]

    def means(x: torch.Tensor) -> torch.Tensor:  # (B, R, heads * D), heads-major channels as BiFormer's (m c)
        x_r = to_regions(x, n_win)  # (B, heads, R, T, D)
        if valid_hw is None:
            mean = x_r.mean(3)
        else:
            valid = valid_tokens(x.shape[2], x.shape[3], n_win, valid_hw, x.device)
            count = valid.sum(-1).clamp(min=1).to(x.dtype)
            mean = (x_r * valid[:, :, None]).sum(3) / count[:, None]
        return mean.permute(0, 2, 1, 3).reshape(b, n_win * n_win, x.shape[1] * x.shape[-1])

    with torch.no_grad():
        affinity = means(q) @ means(k).transpose(-1, -2)
        if valid_hw is not None:
            empty = ~valid_tokens(q.shape[2], q.shape[3], n_win, valid_hw, q.device).any(-1)
            affinity = affinity.masked_fill(empty, float('-inf'))
        return torch.topk(affinity, k=topk, dim=-1).indices


def routed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, region_index: torch.Tensor, n_win: int,
                     scale: Optional[float] = None, valid_hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Gather the routed regions' keys and values, then dense softmax attention per query region; with
    ``valid_hw`` the padded keys are left out of the softmax (a query without any valid key gets zeros)."""
    b, h, hh, ww, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    q_r, k_r, v_r = (to_regions(t, n_win) for t in (q, k, v))  # (B, h, R, T, C)
    n_reg, tokens = q_r.shape[2], q_r.shape[3]
    idx = region_index.long()
    if idx.dim() == 3:
        idx = idx[:, None].expand(b, h, *idx.shape[1:])
    topk = idx.shape[-1]

    def gather(x: torch.Tensor) -> torch.Tensor:  # (B, h, R, T, C) -> (B, h, R, topk * T, C)
        c = x.shape[-1]
        src = x[:, :, None].expand(b, h, n_reg, n_reg, tokens, c)
        index = idx[..., None, None].expand(b, h, n_reg, topk, tokens, c)
        return torch.gather(src, 3, index).reshape(b, h, n_reg, topk * tokens, c)

    k_g, v_g = gather(k_r), gather(v_r)
    scores = (q_r * scale) @ k_g.transpose(-1, -2)  # (B, h, R, T, topk * T)
    if valid_hw is None:
        attn = torch.softmax(scores, dim=-1)
    else:
        valid = valid_tokens(hh, ww, n_win, valid_hw, q.device)[idx].reshape(b, h, n_reg, 1, topk * tokens)
        attn = torch.softmax(scores.masked_fill(~valid, float('-inf')), dim=-1).masked_fill(~valid, 0.0)
    return from_regions(attn @ v_g, n_win, hh, ww)


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_index: torch.Tensor,
                     scale: Optional[float] = None) -> torch.Tensor:
    """Gather each query's listed keys and values (negative index = no key), softmax over them."""
    b, h, n, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    n_keys = key_index.shape[-1]
    valid = key_index >= 0
    flat = key_index.long().clamp(min=0).reshape(b, h, n * n_keys, 1)
    k_g = torch.gather(k, 2, flat.expand(-1, -1, -1, k.shape[-1])).reshape(b, h, n, n_keys, k.shape[-1])
    v_g = torch.gather(v, 2, flat.expand(-1, -1, -1, v.shape[-1])).reshape(b, h, n, n_keys, v.shape[-1])
    scores = torch.einsum('bhnd,bhnkd->bhnk', q * scale, k_g).masked_fill(~valid, float('-inf'))
    # a query without any key gets zeros (Sparsifiner's nan_to_num of fully masked rows)
    attn = torch.softmax(scores, dim=-1).masked_fill(~valid, 0.0)
    return torch.einsum('bhnk,bhnkc->bhnc', attn, v_g)
