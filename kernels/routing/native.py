"""sparse_attention's native CPU forward (``native_sparse.cpp`` beside this file), built and loaded by
:class:`kernels.native.NativeLibrary` (cache, compiler and flags there); it runs on torch's threads.
``ZOO_SPARSE_ATTENTION_NATIVE=0`` turns it off (the cpu backend then runs its PyTorch routes).
"""
import ctypes
import os

import torch

from ..native import NativeLibrary, pointer

__all__ = ['NATIVE_ENV', 'LOOP', 'available', 'sparse_forward']

NATIVE_ENV = 'ZOO_SPARSE_ATTENTION_NATIVE'
_p = ctypes.c_void_p
# q, k, v, idx, out, lse, dims, scale, threads -> slots outside [-1, Nk)
LOOP = NativeLibrary('sparse_attention', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'native_sparse.cpp'),
                     {f'sparse_fwd_{dt}': ([_p] * 7 + [ctypes.c_double, ctypes.c_int], ctypes.c_int64)
                      for dt in ('f32', 'f64')}, NATIVE_ENV)


def available() -> bool:
    """Whether the compiled forward can be used here (builds it on the first call; False if that fails)."""
    return LOOP.available()


def sparse_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor,
                   scale: float) -> tuple:
    """q (BH, N, D), k (BH, Nk, D), v (BH, Nk, Dv) in one compute dtype (float32/float64), idx (BH, N, K) in
    [-1, Nk) -> (out (BH, N, Dv), log-sum-exp (BH * N,)) in that dtype."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    idx = idx.to(torch.int64).contiguous()
    bh, n, d = q.shape
    out = torch.empty(bh, n, v.shape[-1], dtype=q.dtype)
    lse = torch.empty(bh * n, dtype=q.dtype)
    dims = torch.tensor([bh, n, k.shape[1], d, v.shape[-1], idx.shape[-1]], dtype=torch.int64)
    if bh * n:
        lib = LOOP.library()
        fn = lib.sparse_fwd_f64 if q.dtype == torch.float64 else lib.sparse_fwd_f32
        bad = fn(*map(pointer, (q, k, v, idx, out, lse, dims)), float(scale), torch.get_num_threads())
        if bad:  # only a direct operator call gets here: sparse_attention checks the index first
            raise ValueError(f'key_index holds {bad} values outside [-1, Nk) with Nk = {k.shape[1]} keys '
                             '(-1 marks an empty slot)')
    return out, lse
