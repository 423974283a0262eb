"""Benchmark wrappers for window_attention: one signature for the op, its reference and timm's MaxViT path.

All take ``(q, k, v[, table], *, window_size, grid)`` with q, k, v (B, heads, H, W, D) and an optional
(heads, 2w-1, 2w-1) relative position table, so the harness (zoo.benchmark) can pass the tensors positionally.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers.pos_embed_rel import generate_lookup_tensor, reindex_2d_einsum_lookup
from timm.models.maxxvit import grid_partition, grid_reverse, window_partition, window_reverse

from kernels import use_backend, window_attention

__all__ = ['fused', 'reference', 'timm_partition_sdpa']


def fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: Optional[torch.Tensor] = None, *,
          window_size: int = 7, grid: bool = False) -> torch.Tensor:
    """kernels.window.window_attention on the default backend (cpu path on CPU tensors, triton on CUDA)."""
    return window_attention(q, k, v, window_size, grid=grid, rel_pos_bias=table)


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: Optional[torch.Tensor] = None, *,
              window_size: int = 7, grid: bool = False) -> torch.Tensor:
    """The op's reference backend: pad, partition, score matrices, mask, softmax."""
    with use_backend('reference'):
        return window_attention(q, k, v, window_size, grid=grid, rel_pos_bias=table)


def timm_partition_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: Optional[torch.Tensor] = None, *,
                        window_size: int = 7, grid: bool = False) -> torch.Tensor:
    """timm's MaxViT: (B, H, W, C) maps cut by window_partition / grid_partition, RelPosBiasTf's einsum lookup
    as SDPA's attn_mask, window_reverse / grid_reverse. Needs H, W multiples of the window."""
    B, heads, H, W, D = q.shape
    ws = [window_size, window_size]
    part, rev = (grid_partition, grid_reverse) if grid else (window_partition, window_reverse)

    def split(x: torch.Tensor) -> torch.Tensor:
        x = part(x.permute(0, 2, 3, 1, 4).reshape(B, H, W, heads * x.shape[-1]), ws)
        return x.reshape(x.shape[0], -1, heads, x.shape[-1] // heads).transpose(1, 2)

    bias = None
    if table is not None:
        lookup = generate_lookup_tensor(window_size, device=q.device, dtype=table.dtype)
        bias = reindex_2d_einsum_lookup(table, window_size, window_size, lookup, lookup).to(q.dtype)
    out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=bias)
    out = rev(out.transpose(1, 2).reshape(-1, window_size, window_size, heads * v.shape[-1]), ws, (H, W))
    return out.view(B, H, W, heads, v.shape[-1]).permute(0, 3, 1, 2, 4)
