"""The one rule that picks how every fused op runs.

Backends:
  ``reference``  plain PyTorch, readable, the ground truth of every op;
  ``cpu``        the fast pure-PyTorch path (CPUs, and GPUs where Triton is unavailable);
  ``triton``     fused Triton kernels (CUDA tensors, or any tensor under ``TRITON_INTERPRET=1``);
  ``auto``       ``triton`` when every tensor is on CUDA and Triton imports, ``cpu`` otherwise.

The requested backend is, by priority: the innermost :func:`use_backend` context, the environment
variable ``ZOO_KERNELS``, then ``auto``. Models never branch on device: they call the op, and the op
asks :func:`resolve_backend` which implementation to run.
"""
import contextlib
import contextvars
import functools
import os
from typing import Callable, Iterator, Mapping, Optional

import torch

__all__ = ['BACKENDS', 'ENV_VAR', 'use_backend', 'requested_backend', 'resolve_backend', 'dispatch',
           'triton_available', 'triton_interpreted']

BACKENDS = ('auto', 'reference', 'cpu', 'triton')
ENV_VAR = 'ZOO_KERNELS'

_override: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar('zoo_kernels_backend', default=None)


def _check_name(name: str, origin: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f'Unknown kernel backend {name!r} from {origin}; expected one of {", ".join(BACKENDS)}')
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the ops inside the block on backend `name` (one of :data:`BACKENDS`); nests and is thread/task-local."""
    token = _override.set(_check_name(name, 'use_backend()'))
    try:
        yield
    finally:
        _override.reset(token)


def requested_backend() -> str:
    """The backend asked for: the innermost use_backend(), else $ZOO_KERNELS, else 'auto'."""
    name = _override.get()
    if name is not None:
        return name
    env = os.environ.get(ENV_VAR, '').strip().lower()
    return _check_name(env, f'${ENV_VAR}') if env else 'auto'


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # an installed but broken triton is as good as none
        return False
    return True


def triton_interpreted() -> bool:
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def resolve_backend(*tensors: torch.Tensor) -> str:
    """The concrete backend ('reference', 'cpu' or 'triton') for an op on these tensors."""
    name = requested_backend()
    on_cuda = bool(tensors) and all(t.is_cuda for t in tensors)
    if name == 'auto':
        return 'triton' if on_cuda and triton_available() else 'cpu'
    if name == 'triton':
        if not triton_available():
            raise RuntimeError('The triton kernel backend was requested but triton cannot be imported; '
                               f'install triton or choose {ENV_VAR}=cpu')
        if not on_cuda and not triton_interpreted():
            devices = sorted({str(t.device) for t in tensors})
            raise RuntimeError(f'The triton kernel backend needs CUDA tensors (got {", ".join(devices)}); '
                               'set TRITON_INTERPRET=1 before importing triton to run it on the CPU, '
                               f'or choose {ENV_VAR}=cpu')
    return name


def dispatch(op_name: str, implementations: Mapping[str, Callable], *tensors: torch.Tensor) -> Callable:
    """The implementation of `op_name` for the backend that :func:`resolve_backend` picks."""
    backend = resolve_backend(*tensors)
    try:
        return implementations[backend]
    except KeyError:
        raise NotImplementedError(
            f'{op_name} has no {backend!r} backend; it has {", ".join(sorted(implementations))}') from None
