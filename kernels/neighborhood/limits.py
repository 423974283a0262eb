"""What the Triton kernels of neighborhood_attention take. Triton-free: the op checks inputs against it before the
triton module is imported, and that module pads head dims within the same bound."""
from typing import Optional

import torch

from ..checks import TRITON_FLOATS, dtype_names, shape_str

__all__ = ['MAX_HEAD_DIM', 'MAX_BATCH_HEADS', 'triton_limit']

# the largest (padded) head dim the kernels are compiled and proven spill-free for (python -m kernels.aot)
MAX_HEAD_DIM = 64
# B * heads is a CUDA grid axis
MAX_BATCH_HEADS = 65535


def triton_limit(q: torch.Tensor) -> Optional[str]:
    """None when the Triton kernels take these inputs, else the limit they exceed (see kernels.backend.select)."""
    if q.dtype not in TRITON_FLOATS:
        return f'runs {dtype_names(TRITON_FLOATS, "and")}, got q {q.dtype}'
    if q.shape[-1] > MAX_HEAD_DIM:
        return f'takes head dims up to {MAX_HEAD_DIM} (larger tiles spill registers), got q {shape_str(q)}'
    if q.shape[0] * q.shape[1] > MAX_BATCH_HEADS:
        return f'takes B * heads up to {MAX_BATCH_HEADS} (a CUDA grid axis), got q {shape_str(q)}'
    return None
