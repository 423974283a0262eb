"""Benchmark wrappers for kernels.neighborhood: TransNeXt's aggregated attention core, four ways.

Every function takes the same random float tensors, in this order::

    q, k, v            (B, heads, H, W, D)   raw projections (normalised inside, as TransNeXt does)
    extra_k, extra_v   (B, heads, M, D)      pooled keys/values (extra_k normalised inside)
    extra_bias         (heads, H*W, M)       the CPB MLP's pooled-key bias
    query_embedding    (heads, 1, D)
    temperature        (heads, 1, 1)         softplus(temperature) is the logit scale
    rel_pos_bias       (heads, L)            L = kernel_size**2
    learnable_tokens   (heads, D, L)
    learnable_bias     (heads, 1, L)

and returns (B, heads, H, W, D): the attention output before TransNeXt's head merge and projection.
The harness draws every tensor from N(0, 1); each wrapper first rescales the parameters to the magnitudes
of TransNeXt's initialisation (query embedding and learnable tokens std 0.02, local bias std 0.0004,
softplus(temperature) ~ 1/0.24), the same for all four, so that the softmax sees realistic logits (N(0, 1)
embeddings give logits of +-100 whose exp underflows into the CPU's slow denormal path).

- :func:`transnext_native`: TransNeXt's own data flow (``classification/attention_native.py``, rewritten
  here from reading it): keys normalised, concatenated with the values in (B, C, H, W) layout and unfolded
  nine times by ``nn.Unfold``, padded keys masked with ``-inf``, one softmax over local + pooled scores.
- :func:`transnext_unfold`: the op's reference backend (the same unfold formulation, kernels' layout).
- :func:`transnext_cpu` / :func:`transnext_triton`: the op's fused backends.
"""
import math
from typing import Tuple

import torch
import torch.nn.functional as F

from kernels import neighborhood_attention, use_backend

__all__ = ['transnext_native', 'transnext_unfold', 'transnext_cpu', 'transnext_triton', 'transnext_op',
           'cpb_axis_index', 'transnext_cpb_cpu', 'transnext_cpb_triton', 'transnext_cpb_unfold',
           'transnext_cpb_native']


_SOFTPLUS_INV_1_024 = math.log(math.exp(1 / 0.24) - 1)  # TransNeXt's temperature init: softplus(t) = 1/0.24


def _transnext_magnitudes(query_embedding, temperature, rel_pos_bias, learnable_tokens, learnable_bias):
    return (query_embedding * 0.02, temperature * 0.1 + _SOFTPLUS_INV_1_024, rel_pos_bias * 4e-4,
            learnable_tokens * 0.02, learnable_bias * 0.02)


def transnext_op(q, k, v, extra_k, extra_v, extra_bias, query_embedding, temperature, rel_pos_bias, learnable_tokens,
                 learnable_bias, kernel_size: int = 3) -> torch.Tensor:
    """The model's side of the split: normalise q, k and the pooled keys, softplus the temperature; the op
    does the rest (on whatever backend is active)."""
    query_embedding, temperature, rel_pos_bias, learnable_tokens, learnable_bias = _transnext_magnitudes(
        query_embedding, temperature, rel_pos_bias, learnable_tokens, learnable_bias)
    return neighborhood_attention(
        F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, kernel_size, rel_pos_bias=rel_pos_bias,
        extra_k=F.normalize(extra_k, dim=-1), extra_v=extra_v, extra_bias=extra_bias,
        scale=F.softplus(temperature).view(-1), query_embedding=query_embedding, length_scale=True,
        learnable_tokens=learnable_tokens, learnable_bias=learnable_bias)


def transnext_unfold(*args, kernel_size: int = 3) -> torch.Tensor:
    with use_backend('reference'):
        return transnext_op(*args, kernel_size=kernel_size)


def transnext_cpu(*args, kernel_size: int = 3) -> torch.Tensor:
    with use_backend('cpu'):
        return transnext_op(*args, kernel_size=kernel_size)


def transnext_triton(*args, kernel_size: int = 3) -> torch.Tensor:
    with use_backend('triton'):
        return transnext_op(*args, kernel_size=kernel_size)


def transnext_native(q, k, v, extra_k, extra_v, extra_bias, query_embedding, temperature, rel_pos_bias,
                     learnable_tokens, learnable_bias, kernel_size: int = 3) -> torch.Tensor:
    """TransNeXt's native aggregated attention between the projections and the head merge."""
    query_embedding, temperature, rel_pos_bias, learnable_tokens, learnable_bias = _transnext_magnitudes(
        query_embedding, temperature, rel_pos_bias, learnable_tokens, learnable_bias)
    b, heads, height, width, d = q.shape
    n, local_len, pool_len = height * width, kernel_size ** 2, extra_k.shape[2]
    pad = kernel_size // 2
    # padding mask and length scale, as the authors' get_seqlen_and_mask (a buffer there; built per call here)
    with torch.no_grad():
        ones = torch.ones(1, 1, height, width, dtype=q.dtype, device=q.device)
        attn_map = F.unfold(ones, kernel_size, dilation=1, padding=(pad, pad), stride=1)
        local_seq_length = attn_map.sum(-2).squeeze().unsqueeze(-1)
        padding_mask = attn_map.squeeze(0).permute(1, 0) == 0
        seq_length_scale = torch.log(local_seq_length + pool_len)

    q_norm = F.normalize(q.reshape(b, heads, n, d), dim=-1)
    q_norm_scaled = (q_norm + query_embedding) * F.softplus(temperature) * seq_length_scale
    # (B, N, C) token layout as in the model, keys normalised per head, then one unfold of [k, v]
    k_tokens = F.normalize(k, dim=-1).permute(0, 2, 3, 1, 4).reshape(b, n, heads * d)
    v_tokens = v.permute(0, 2, 3, 1, 4).reshape(b, n, heads * d)
    kv_local = torch.cat([k_tokens, v_tokens], dim=-1).permute(0, 2, 1).reshape(b, -1, height, width)
    k_local, v_local = F.unfold(kv_local, kernel_size, padding=pad, stride=1).reshape(
        b, 2 * heads, d, local_len, n).permute(0, 1, 4, 2, 3).chunk(2, dim=1)
    attn_local = ((q_norm_scaled.unsqueeze(-2) @ k_local).squeeze(-2)
                  + rel_pos_bias.unsqueeze(1)).masked_fill(padding_mask, float('-inf'))
    attn_pool = q_norm_scaled @ F.normalize(extra_k, dim=-1).transpose(-2, -1) + extra_bias
    attn = torch.cat([attn_local, attn_pool], dim=-1).softmax(dim=-1)
    attn_local, attn_pool = torch.split(attn, [local_len, pool_len], dim=-1)
    x_local = (((q_norm @ learnable_tokens) + learnable_bias + attn_local).unsqueeze(-2)
               @ v_local.transpose(-2, -1)).squeeze(-2)
    x_pool = attn_pool @ extra_v
    return (x_local + x_pool).view(b, heads, height, width, d)


# ---- the same with TransNeXt's continuous position bias in factored form --------------------------------------
# extra_bias_table (heads, T, T) replaces extra_bias: the CPB MLP's output on the product grid of unique
# relative offsets (T per axis); the per-axis indices are built here from the map and pool sizes, as
# TransNeXt's get_relative_position_cpb does (adaptive-average-pooled key coordinates, torch.unique).

def cpb_axis_index(size: int, pooled: int, device: torch.device) -> Tuple[torch.Tensor, int]:
    """(size, pooled) index into the sorted unique relative offsets along one axis, and their count."""
    axis_q = torch.arange(size, dtype=torch.float32, device=device)
    axis_k = F.adaptive_avg_pool1d(axis_q[None], pooled)[0]
    unique, inverse = torch.unique(axis_q[:, None] - axis_k[None, :], return_inverse=True)
    return inverse, unique.numel()


def _cpb_index(q: torch.Tensor, extra_k: torch.Tensor, table: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    height, width, num_extra = q.shape[2], q.shape[3], extra_k.shape[2]
    pooled = math.isqrt(num_extra)
    if pooled * pooled != num_extra:
        raise ValueError(f'the CPB cases need a square pool, got M = {num_extra}')
    index_h, th = cpb_axis_index(height, pooled, q.device)
    index_w, tw = cpb_axis_index(width, pooled, q.device)
    if tuple(table.shape[1:]) != (th, tw):
        raise ValueError(f'extra_bias_table of shape {tuple(table.shape)}: expected (heads, {th}, {tw}) for a '
                         f'{height}x{width} map pooled to {pooled}x{pooled}')
    return index_h, index_w


def transnext_cpb_cpu(q, k, v, extra_k, extra_v, extra_bias_table, *rest, kernel_size: int = 3) -> torch.Tensor:
    """The fused CPU path with the factored bias: no (heads, N, M) bias or bias gradient exists."""
    return _transnext_cpb_op('cpu', q, k, v, extra_k, extra_v, extra_bias_table, *rest, kernel_size=kernel_size)


def transnext_cpb_triton(q, k, v, extra_k, extra_v, extra_bias_table, *rest, kernel_size: int = 3) -> torch.Tensor:
    """The Triton kernels with the factored bias gathered in-kernel (CUDA tensors)."""
    return _transnext_cpb_op('triton', q, k, v, extra_k, extra_v, extra_bias_table, *rest, kernel_size=kernel_size)


def _transnext_cpb_op(backend, q, k, v, extra_k, extra_v, extra_bias_table, *rest, kernel_size: int = 3):
    index = _cpb_index(q, extra_k, extra_bias_table)
    query_embedding, temperature, rel_pos_bias, learnable_tokens, learnable_bias = _transnext_magnitudes(*rest)
    with use_backend(backend):
        return neighborhood_attention(
            F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, kernel_size, rel_pos_bias=rel_pos_bias,
            extra_k=F.normalize(extra_k, dim=-1), extra_v=extra_v, extra_bias_table=extra_bias_table,
            extra_bias_index=index, scale=F.softplus(temperature).view(-1), query_embedding=query_embedding,
            length_scale=True, learnable_tokens=learnable_tokens, learnable_bias=learnable_bias)


def _dense(q, extra_k, table):
    index_h, index_w = _cpb_index(q, extra_k, table)
    return table[:, index_h[:, None, :, None], index_w[None, :, None, :]].reshape(
        table.shape[0], q.shape[2] * q.shape[3], extra_k.shape[2])


def transnext_cpb_unfold(q, k, v, extra_k, extra_v, extra_bias_table, *rest, kernel_size: int = 3) -> torch.Tensor:
    """The unfold reference, gathering the dense (heads, N, M) bias from the table as TransNeXt does."""
    return transnext_unfold(q, k, v, extra_k, extra_v, _dense(q, extra_k, extra_bias_table), *rest,
                            kernel_size=kernel_size)


def transnext_cpb_native(q, k, v, extra_k, extra_v, extra_bias_table, *rest, kernel_size: int = 3) -> torch.Tensor:
    """TransNeXt's native data flow, its bias gathered from the CPB table by index (``pool_bias``)."""
    return transnext_native(q, k, v, extra_k, extra_v, _dense(q, extra_k, extra_bias_table), *rest,
                            kernel_size=kernel_size)
