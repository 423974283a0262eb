"""What the Triton kernels of window_attention take. Triton-free: the op checks inputs against it before the
triton module is imported, and that module builds its launch configs from the same numbers."""
from typing import Optional

import torch

from ..checks import TRITON_FLOATS, dtype_names, shape_str

__all__ = ['MAX_HEAD_DIM', 'MAX_BATCH_HEADS', 'triton_limit']

# the largest (padded) head dim with spill-free configs (python -m kernels.aot --only window)
MAX_HEAD_DIM = 64
# B * heads is a CUDA grid axis
MAX_BATCH_HEADS = 65535


def triton_limit(q: torch.Tensor, v: torch.Tensor) -> Optional[str]:
    """None when the Triton kernels take these inputs, else the limit they exceed (see kernels.backend.select)."""
    if q.dtype not in TRITON_FLOATS:
        return f'runs {dtype_names(TRITON_FLOATS, "and")}, got q {q.dtype}'
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        return (f'takes head dims (D and Dv) up to {MAX_HEAD_DIM} (larger tiles spill registers), got q '
                f'{shape_str(q)}, v {shape_str(v)}')
    if q.shape[0] * q.shape[1] > MAX_BATCH_HEADS:
        return f'takes B * heads up to {MAX_BATCH_HEADS} (a CUDA grid axis), got q {shape_str(q)}'
    return None
