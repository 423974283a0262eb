"""Native CPU loops: C++ sources beside their op (no PyTorch headers), compiled with g++ at first use and loaded
with ctypes.

A source may include ``native_common.h`` (this directory: a vectorisable exp, the parallel loop on torch's OpenMP
threads). Libraries are built in ``$ZOO_KERNELS_CACHE`` (default ``~/.cache/zoo_kernels``), keyed by the sources,
the compiler, the flags and the CPU, and renamed into place atomically; ``$CXX`` names the compiler (default g++).
Where a build fails the op logs a warning once and runs its PyTorch path; each library can also be turned off by
its own environment variable. Every variable is listed with the backend rule in :mod:`kernels.backend`.
"""
import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
import threading
from typing import Mapping, Optional, Sequence

__all__ = ['CACHE_ENV', 'COMMON_HEADER', 'NativeLibrary', 'pointer']

_log = logging.getLogger(__name__)

CACHE_ENV = 'ZOO_KERNELS_CACHE'
COMMON_HEADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'native_common.h')
# -fopenmp: `omp simd` loops and the parallel loop (libgomp.so.1, the runtime torch has already loaded, so the
# loops share torch's threads); no -ffast-math (keeps the exp's range reduction exact, NaN and inf semantics)
_FLAGS = ['-O3', '-march=native', '-std=c++17', '-shared', '-fPIC', '-fopenmp', '-fno-math-errno',
          '-fno-trapping-math', f'-I{os.path.dirname(COMMON_HEADER)}']


def pointer(t) -> Optional[int]:
    """The address a C function reads a tensor at (None for an absent tensor)."""
    return None if t is None else t.data_ptr()


def _cpu_key() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((line for line in f if line.startswith('flags')), '')
    except OSError:
        flags = ''
    return platform.machine() + flags


class NativeLibrary:
    """One C++ source compiled into a shared library at first use.

    Args:
        name: the library's name (its cache file is ``<name>_<digest>.so``; log messages name it).
        source: path of the C++ file.
        signatures: exported function -> its ctypes argument types, or (argument types, result type).
        disable_env: the environment variable that turns the library off when ``0``.
    """

    def __init__(self, name: str, source: str, signatures: Mapping[str, Sequence], disable_env: str):
        self.name, self.source, self.signatures, self.disable_env = name, source, dict(signatures), disable_env
        self._lock = threading.Lock()
        self._lib: Optional[ctypes.CDLL] = None
        self._failed = False

    def _build(self) -> ctypes.CDLL:
        texts = []
        for path in (self.source, COMMON_HEADER):
            with open(path) as f:
                texts.append(f.read())
        cxx = os.environ.get('CXX', 'g++')
        digest = hashlib.sha256('\0'.join([*texts, cxx, *_FLAGS, _cpu_key()]).encode()).hexdigest()[:16]
        cache = os.environ.get(CACHE_ENV, os.path.join(os.path.expanduser('~'), '.cache', 'zoo_kernels'))
        path = os.path.join(cache, f'{self.name}_{digest}.so')
        if not os.path.exists(path):
            os.makedirs(cache, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                out = os.path.join(tmp, 'lib.so')
                subprocess.run([cxx, *_FLAGS, self.source, '-o', out], check=True, capture_output=True, text=True,
                               timeout=300)
                os.replace(out, path)  # atomic: concurrent builders never see a half-written library
        lib = ctypes.CDLL(path)
        for fn, signature in self.signatures.items():
            argtypes, restype = signature if isinstance(signature, tuple) else (signature, None)
            getattr(lib, fn).argtypes = list(argtypes)
            getattr(lib, fn).restype = restype
        return lib

    def available(self) -> bool:
        """Whether the library can be used here (builds it on the first call; False if that fails)."""
        if os.environ.get(self.disable_env, '1') == '0':
            return False
        with self._lock:
            if self._lib is None and not self._failed:
                try:
                    self._lib = self._build()
                except (OSError, subprocess.SubprocessError) as e:
                    detail = getattr(e, 'stderr', '') or str(e)
                    _log.warning('%s: cannot build the native CPU loop (%s); using the PyTorch path', self.name,
                                 detail.strip()[-500:])
                    self._failed = True
        return self._lib is not None

    def library(self) -> ctypes.CDLL:
        """The loaded library (raises RuntimeError where it cannot be built)."""
        if not self.available():
            raise RuntimeError(f'the native {self.name} loop could not be built here (see the log); turn it off '
                               f'(${self.disable_env}=0) or install g++')
        return self._lib
