"""What the Triton kernels of selective_scan take. Triton-free: the op checks inputs against it before the triton
module is imported, and that module builds its launch configs from the same numbers."""
from typing import Optional

import torch

from ..checks import TRITON_FLOATS, dtype_names

__all__ = ['MAX_N', 'MAX_BATCH', 'CHUNK', 'triton_limit']

# the largest state size n whose (BLOCK_D, n, CHUNK) state tiles stay in registers
MAX_N = 32
# the batch is a CUDA grid axis
MAX_BATCH = 65535
# steps per chunk of the Triton scan; one state per chunk is stored for the backward (b, K, d, cdiv(L, CHUNK), n)
CHUNK = 16


def triton_limit(u: torch.Tensor, A: torch.Tensor) -> Optional[str]:
    """None when the Triton kernels take these inputs, else the limit they exceed (see kernels.backend.select)."""
    if u.dtype not in TRITON_FLOATS:
        return f'runs {dtype_names(TRITON_FLOATS, "and")} (computing in float32), got u {u.dtype}'
    if A.shape[-1] > MAX_N:
        return f'takes state sizes n up to {MAX_N}, got A with n={A.shape[-1]}'
    if u.shape[0] > MAX_BATCH:
        return f'takes batches up to {MAX_BATCH} (a CUDA grid axis), got u with b={u.shape[0]}'
    return None
