"""The selective scan's native CPU loop (``native_loop.cpp`` beside this file), built and loaded by
:class:`kernels.native.NativeLibrary` (cache, compiler and flags there).

``ZOO_SELECTIVE_SCAN_NATIVE=0`` turns the loop off (the cpu backend then runs its PyTorch scan);
``$ZOO_SELECTIVE_SCAN_THREADS`` sets its threads (:func:`threads`). Every variable is listed with the backend rule
in :mod:`kernels.backend`.
"""
import ctypes
import os

import torch

from ..native import CACHE_ENV, NativeLibrary

__all__ = ['SOURCE', 'THREADS_ENV', 'NATIVE_ENV', 'CACHE_ENV', 'LOOP', 'library', 'available', 'threads']

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'native_loop.cpp')
THREADS_ENV = 'ZOO_SELECTIVE_SCAN_THREADS'
NATIVE_ENV = 'ZOO_SELECTIVE_SCAN_NATIVE'

_p = ctypes.c_void_p
_SIGNATURES = {}
for _dt in ('f32', 'f64'):
    # u, delta, delta_bias, A, B, C, orders, D, z, y, out, last, dims, threads
    _SIGNATURES[f'ss_fwd_{_dt}'] = [_p] * 13 + [ctypes.c_int]
    # u, delta, A, B, C, orders, dy, dlast, du, ddelta, dA, dB, dC, dims, threads
    _SIGNATURES[f'ss_bwd_{_dt}'] = [_p] * 14 + [ctypes.c_int]
LOOP = NativeLibrary('selective_scan', SOURCE, _SIGNATURES, NATIVE_ENV)


def threads() -> int:
    """Threads of the native loop: $ZOO_SELECTIVE_SCAN_THREADS, default (or 0) torch.get_num_threads().

    The loop runs on torch's own OpenMP team (the libgomp torch loaded), so it follows ``torch.set_num_threads``.
    Measured on an idle 2-core machine, two threads made Vim-S 1.4x faster than one (168 vs 235 ms at 224); with
    another process keeping both cores busy they cost 9% (963 vs 882 ms: torch's own ops slow down as much).
    """
    value = os.environ.get(THREADS_ENV, '0').strip()
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f'${THREADS_ENV} must be an integer (0 = torch.get_num_threads()), got {value!r}') from None
    return torch.get_num_threads() if n <= 0 else n


def available() -> bool:
    """Whether the compiled loop can be used here (builds it on the first call; False if that fails)."""
    return LOOP.available()


def library() -> ctypes.CDLL:
    """The loaded library (raises RuntimeError where it cannot be built)."""
    return LOOP.library()
