"""What the Triton kernels of routed_attention and sparse_attention take. Triton-free: the ops check inputs against
it before the triton module is imported, and that module builds its launch configs from the same numbers.
(region_topk has no Triton kernel: its triton backend is the cpu one, which runs on any device.)"""
from typing import Optional

import torch

from ..checks import TRITON_FLOATS, dtype_names, shape_str

__all__ = ['MAX_HEAD_DIM', 'MAX_GRID', 'routed_limit', 'sparse_limit']

# the largest (padded) head dim, D and Dv, with spill-free configs (python -m kernels.aot --only routing)
MAX_HEAD_DIM = 64
# B * heads and the number of regions are CUDA grid axes (y, z)
MAX_GRID = 65535


def _common(q: torch.Tensor, v: torch.Tensor) -> Optional[str]:
    if q.dtype not in TRITON_FLOATS:
        return f'runs {dtype_names(TRITON_FLOATS, "and")}, got q {q.dtype}'
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        return (f'takes head dims (D and Dv) up to {MAX_HEAD_DIM} (larger tiles spill registers), got q '
                f'{shape_str(q)}, v {shape_str(v)}')
    if q.shape[0] * q.shape[1] > MAX_GRID:
        return f'takes B * heads up to {MAX_GRID} (a CUDA grid axis), got q {shape_str(q)}'
    return None


def routed_limit(q: torch.Tensor, v: torch.Tensor, n_win: int) -> Optional[str]:
    """None when the Triton kernels take these inputs, else the limit they exceed (see kernels.backend.select)."""
    if n_win * n_win > MAX_GRID:
        return f'takes up to {MAX_GRID} regions (a CUDA grid axis), got n_win = {n_win}'
    return _common(q, v)


def sparse_limit(q: torch.Tensor, v: torch.Tensor) -> Optional[str]:
    """None when the Triton kernels take these inputs, else the limit they exceed (see kernels.backend.select)."""
    return _common(q, v)
