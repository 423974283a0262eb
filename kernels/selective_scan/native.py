"""Builds and loads the selective scan's native CPU loop (``native_loop.cpp`` beside this file).

g++ compiles the source at first use into a small shared library (no PyTorch headers, about a second) in
``$ZOO_KERNELS_CACHE`` (default ``~/.cache/zoo_kernels``), keyed by the source, the compiler, the flags and the
CPU; it is loaded with ctypes. ``$CXX`` names the compiler (default g++); ``ZOO_SELECTIVE_SCAN_NATIVE=0`` turns
the loop off (the cpu backend then runs its PyTorch scan); ``$ZOO_SELECTIVE_SCAN_THREADS`` sets its threads
(:func:`threads`). Every variable is listed with the backend rule in :mod:`kernels.backend`.
"""
import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
import threading
from typing import Optional

import torch

__all__ = ['SOURCE', 'THREADS_ENV', 'NATIVE_ENV', 'CACHE_ENV', 'library', 'available', 'threads']

_log = logging.getLogger(__name__)

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'native_loop.cpp')
THREADS_ENV = 'ZOO_SELECTIVE_SCAN_THREADS'
NATIVE_ENV = 'ZOO_SELECTIVE_SCAN_NATIVE'
CACHE_ENV = 'ZOO_KERNELS_CACHE'
# -fopenmp: `omp simd` reductions and the thread loop (libgomp.so.1, the runtime torch has already loaded); no
# -ffast-math (keeps the exp's range reduction exact, NaN and inf semantics).
_FLAGS = ['-O3', '-march=native', '-std=c++17', '-shared', '-fPIC', '-fopenmp', '-fno-math-errno',
          '-fno-trapping-math']

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_failed = False


def threads() -> int:
    """Threads of the native loop: $ZOO_SELECTIVE_SCAN_THREADS, default (or 0) torch.get_num_threads().

    The loop runs on torch's own OpenMP team (the libgomp torch loaded), so it follows ``torch.set_num_threads``.
    Measured on an idle 2-core machine, two threads made Vim-S 1.4x faster than one (168 vs 235 ms at 224); with
    another process keeping both cores busy they cost 9% (963 vs 882 ms: torch's own ops slow down as much).
    A std::thread pool of its own was tried and scaled worse: torch's idle OpenMP workers spin on the cores for a
    while after each torch op, so the pool's threads competed with them.
    """
    value = os.environ.get(THREADS_ENV, '0').strip()
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f'${THREADS_ENV} must be an integer (0 = torch.get_num_threads()), got {value!r}') from None
    return torch.get_num_threads() if n <= 0 else n


def _cpu_key() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((line for line in f if line.startswith('flags')), '')
    except OSError:
        flags = ''
    return platform.machine() + flags


def _build() -> ctypes.CDLL:
    with open(SOURCE) as f:
        source = f.read()
    cxx = os.environ.get('CXX', 'g++')
    digest = hashlib.sha256('\0'.join([source, cxx, *_FLAGS, _cpu_key()]).encode()).hexdigest()[:16]
    cache = os.environ.get(CACHE_ENV, os.path.join(os.path.expanduser('~'), '.cache', 'zoo_kernels'))
    path = os.path.join(cache, f'selective_scan_{digest}.so')
    if not os.path.exists(path):
        os.makedirs(cache, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            out = os.path.join(tmp, 'lib.so')
            subprocess.run([cxx, *_FLAGS, SOURCE, '-o', out], check=True, capture_output=True, text=True,
                           timeout=300)
            os.replace(out, path)  # atomic: concurrent builders never see a half-written library
    lib = ctypes.CDLL(path)
    p, i64p = ctypes.c_void_p, ctypes.c_void_p
    for dt in ('f32', 'f64'):
        getattr(lib, f'ss_fwd_{dt}').argtypes = [p] * 6 + [i64p, p, p, i64p, ctypes.c_int]
        getattr(lib, f'ss_bwd_{dt}').argtypes = [p] * 5 + [i64p] + [p] * 7 + [i64p, ctypes.c_int]
    return lib


def available() -> bool:
    """Whether the compiled loop can be used here (builds it on the first call; False if that fails)."""
    global _lib, _failed
    if os.environ.get(NATIVE_ENV, '1') == '0':
        return False
    with _lock:
        if _lib is None and not _failed:
            try:
                _lib = _build()
            except (OSError, subprocess.SubprocessError) as e:
                detail = getattr(e, 'stderr', '') or str(e)
                _log.warning('selective_scan: cannot build the native CPU loop (%s); using the PyTorch scan',
                             detail.strip()[-500:])
                _failed = True
    return _lib is not None


def library() -> ctypes.CDLL:
    """The loaded library (raises RuntimeError where it cannot be built)."""
    if not available():
        raise RuntimeError('the native selective scan could not be built here (see the log); use the PyTorch scan '
                           f'(${NATIVE_ENV}=0) or install g++')
    return _lib
