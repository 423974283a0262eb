"""Neighborhood attention in plain PyTorch: the unfold formulation of TransNeXt's aggregated attention.

This is the ground truth every other backend is tested against. It follows the data flow of
DaiShiResearch/TransNeXt ``classification/attention_native.py``: keys and values are unfolded with zero
padding (``F.unfold``), keys outside the image are masked with ``-inf``, local and extra (pooled) scores
share one softmax, and the learnable-token weights are added to the local attention weights after the
softmax. It materialises ``kernel_size**2`` copies of K and V and the full score matrix: readable, not fast.

The helpers :func:`valid_key_count` and :func:`scaled_query` are the elementwise prologue shared by all
backends (they cost one query-sized tensor, never a score-sized one).
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = ['neighborhood_attention', 'attend', 'valid_key_count', 'scaled_query', 'dense_extra_bias']


def valid_key_count(height: int, width: int, kernel_size: int, dilation: int, device: torch.device) -> torch.Tensor:
    """(H, W) float32: how many keys of each query's window lie inside the image."""
    radius = (kernel_size // 2) * dilation
    offsets = torch.arange(-radius, radius + 1, dilation, device=device)

    def axis(n: int) -> torch.Tensor:
        pos = torch.arange(n, device=device)[:, None] + offsets[None, :]
        return ((pos >= 0) & (pos < n)).sum(-1).float()

    return axis(height)[:, None] * axis(width)[None, :]


def scaled_query(q: torch.Tensor, scale: Union[float, torch.Tensor], query_embedding: Optional[torch.Tensor],
                 length_scale: bool, num_extra: int, kernel_size: int, dilation: int) -> torch.Tensor:
    """``(q + query_embedding) * scale [* log(valid local keys + num_extra)]``, the query the scores use."""
    heads, height, width = q.shape[1], q.shape[2], q.shape[3]
    qs = q if query_embedding is None else q + query_embedding.view(1, heads, 1, 1, -1)
    factor = scale if isinstance(scale, torch.Tensor) else q.new_full((), float(scale))
    if length_scale:
        count = valid_key_count(height, width, kernel_size, dilation, q.device)
        count = count.to(torch.promote_types(q.dtype, torch.float32))  # float64 stays exact for gradcheck
        factor = factor * torch.log(count + num_extra).to(q.dtype)
    if factor.dim() > 0:  # per query: (H, W) or (B|1, heads|1, H|1, W|1)
        factor = factor.unsqueeze(-1)
    return qs * factor


def dense_extra_bias(table: torch.Tensor, index_h: torch.Tensor, index_w: torch.Tensor) -> torch.Tensor:
    """(1, heads, H*W, Ph*Pw) bias from the factored form: table[:, index_h[y, py], index_w[x, px]]."""
    heads = table.shape[0]
    height, ph = index_h.shape
    width, pw = index_w.shape
    dense = table[:, index_h[:, None, :, None], index_w[None, :, None, :]]  # (heads, H, W, Ph, Pw)
    return dense.reshape(1, heads, height * width, ph * pw)


def _unfold(x: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """(B, heads, H, W, D) -> (B, heads, H*W, D, L) zero-padded neighbour copies, L = kernel_size**2."""
    b, h, height, width, d = x.shape
    cols = F.unfold(x.permute(0, 1, 4, 2, 3).reshape(b * h, d, height, width), kernel_size, dilation=dilation,
                    padding=(kernel_size // 2) * dilation)
    return cols.view(b, h, d, kernel_size ** 2, height * width).permute(0, 1, 4, 2, 3)


def neighborhood_attention(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int = 1,
        rel_pos_bias: Optional[torch.Tensor] = None, extra_k: Optional[torch.Tensor] = None,
        extra_v: Optional[torch.Tensor] = None, extra_bias: Optional[torch.Tensor] = None,
        scale: Union[float, torch.Tensor] = 1.0, query_embedding: Optional[torch.Tensor] = None,
        length_scale: bool = False, learnable_tokens: Optional[torch.Tensor] = None,
        learnable_bias: Optional[torch.Tensor] = None, extra_bias_table: Optional[torch.Tensor] = None,
        extra_bias_index: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """Arguments validated and normalised as :func:`kernels.neighborhood.neighborhood_attention` does."""
    num_extra = 0 if extra_k is None else extra_k.shape[2]
    qs = scaled_query(q, scale, query_embedding, length_scale, num_extra, kernel_size, dilation)
    index_h, index_w = extra_bias_index if extra_bias_index is not None else (None, None)
    return attend(qs, q, k, v, kernel_size, dilation, rel_pos_bias, extra_k, extra_v, extra_bias, learnable_tokens,
                  learnable_bias, extra_bias_table, index_h, index_w)


def attend(qs: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int,
           rel_pos_bias: Optional[torch.Tensor] = None, extra_k: Optional[torch.Tensor] = None,
           extra_v: Optional[torch.Tensor] = None, extra_bias: Optional[torch.Tensor] = None,
           learnable_tokens: Optional[torch.Tensor] = None, learnable_bias: Optional[torch.Tensor] = None,
           extra_bias_table: Optional[torch.Tensor] = None, index_h: Optional[torch.Tensor] = None,
           index_w: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Everything after the prologue: ``qs`` is :func:`scaled_query`'s output, ``q`` the raw query (learnable
    tokens); ``extra_bias`` is (1|B, heads, N, M). The backends' operator runs this on every backend."""
    b, h, height, width, d = q.shape
    if extra_bias_table is not None:
        extra_bias = dense_extra_bias(extra_bias_table, index_h, index_w)
    n, local_len = height * width, kernel_size ** 2
    num_extra = 0 if extra_k is None else extra_k.shape[2]
    q_flat = q.reshape(b, h, n, d)
    qs = qs.reshape(b, h, n, d)

    k_local, v_local = _unfold(k, kernel_size, dilation), _unfold(v, kernel_size, dilation)  # (B, h, N, D, L)
    attn_local = (qs.unsqueeze(-2) @ k_local).squeeze(-2)  # (B, h, N, L)
    if rel_pos_bias is not None:
        attn_local = attn_local + rel_pos_bias.view(1, h, 1, local_len)
    ones = torch.ones(1, 1, height, width, dtype=q.dtype, device=q.device)
    outside = F.unfold(ones, kernel_size, dilation=dilation, padding=(kernel_size // 2) * dilation)[0].t() == 0
    attn_local = attn_local.masked_fill(outside, float('-inf'))

    if extra_k is not None:
        attn_extra = qs @ extra_k.transpose(-2, -1)  # (B, h, N, M)
        if extra_bias is not None:
            attn_extra = attn_extra + extra_bias
        attn = torch.cat([attn_local, attn_extra], dim=-1).softmax(dim=-1)
        attn_local, attn_extra = attn.split([local_len, num_extra], dim=-1)
    else:
        attn_local = attn_local.softmax(dim=-1)

    weights = attn_local
    if learnable_tokens is not None:
        weights = weights + q_flat @ learnable_tokens.unsqueeze(0)  # (B, h, N, D) @ (1, h, D, L)
    if learnable_bias is not None:
        weights = weights + learnable_bias.view(1, h, 1, local_len)
    # unfolded values are zero outside the image, so the learnable weights there add nothing (as in TransNeXt)
    out = (weights.unsqueeze(-2) @ v_local.transpose(-2, -1)).squeeze(-2)
    if extra_k is not None:
        out = out + attn_extra @ extra_v
    return out.view(b, h, height, width, d)
