"""The one rule that picks how every fused op runs.

Backends:
  ``reference``  plain PyTorch, readable, the ground truth of every op;
  ``cpu``        the fast pure-PyTorch path (CPUs, and GPUs where Triton is unavailable);
  ``triton``     fused Triton kernels (CUDA tensors, or any tensor under ``TRITON_INTERPRET=1``);
  ``auto``       ``triton`` when every tensor is on CUDA, Triton imports and the inputs are within the Triton
                 kernels' limits; ``cpu`` otherwise.

The requested backend is, by priority: the innermost :func:`use_backend` context, the environment
variable ``ZOO_KERNELS``, then ``auto``. Models never branch on device: they call the op, and the op
asks :func:`select` which implementation to run.

Limits: each op states what its Triton kernels take (dtypes, head dims, grid sizes) in a Triton-free
``kernels/<op>/limits.py``. Inputs beyond them run on the cpu path under ``auto``; an explicitly requested
``triton`` backend raises a ValueError that names the limit.

Environment variables read by the kernels (all of them; the README's kernels section lists the same):

  ``ZOO_KERNELS``                 ``auto`` (default), ``reference``, ``cpu`` or ``triton``: the backend of every op
                                  outside a :func:`use_backend` block.
  ``TRITON_INTERPRET``            ``1`` runs the Triton kernels in Triton's interpreter on CPU tensors (tests); it
                                  must be set before triton is imported. Also read by :func:`triton_interpreted`.
  ``ZOO_KERNELS_CACHE``           where native CPU code is compiled to (default ``~/.cache/zoo_kernels``).
  ``CXX``                         the C++ compiler for that code (default ``g++``).
  ``ZOO_SELECTIVE_SCAN_NATIVE``   ``0`` turns the selective scan's native CPU loop off (its cpu backend then runs a
                                  chunked PyTorch scan); default ``1``.
  ``ZOO_SELECTIVE_SCAN_THREADS``  threads of that loop; default (or ``0``) ``torch.get_num_threads()``.
  ``ZOO_SPARSE_ATTENTION_NATIVE`` ``0`` turns sparse_attention's native CPU forward off (its cpu backend then runs
                                  its PyTorch routes); default ``1``.
"""
import contextlib
import contextvars
import functools
import os
from typing import Callable, Iterator, Mapping, Optional, Sequence

import torch

__all__ = ['BACKENDS', 'ENV_VAR', 'use_backend', 'requested_backend', 'resolve_backend', 'choose', 'select',
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


@torch.compiler.assume_constant_result  # torch.compile calls it and keeps the answer instead of tracing it
def triton_available() -> bool:
    return _imports_triton()


@functools.cache
def _imports_triton() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # an installed but broken triton is as good as none
        return False
    return True


def triton_interpreted() -> bool:
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def resolve_backend(*tensors: torch.Tensor, requested: Optional[str] = None) -> str:
    """The concrete backend ('reference', 'cpu' or 'triton') for an op on these tensors; ``requested`` (default
    :func:`requested_backend`) is the name asked for."""
    name = requested_backend() if requested is None else _check_name(requested, 'the requested backend')
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


def choose(op_name: str, tensors: Sequence[torch.Tensor], triton_limit: Callable[[], Optional[str]],
           requested: Optional[str] = None) -> str:
    """The backend ('reference', 'cpu' or 'triton') that runs `op_name` on `tensors` under the one rule.

    ``triton_limit()`` (the op's ``limits`` bound to its arguments, called only when the rule picks triton)
    returns None when the Triton kernels take the inputs, else the limit they exceed, phrased to follow "the
    triton backend of <op>", e.g. "takes head dims up to 64, got 80". Under ``auto`` such inputs run on the
    cpu path; an explicitly requested ``triton`` raises ValueError with that phrase. ``requested`` defaults to
    :func:`requested_backend`.
    """
    requested = requested_backend() if requested is None else requested
    backend = resolve_backend(*tensors, requested=requested)
    if backend == 'triton':
        limit = triton_limit()
        if limit is not None:
            if requested != 'auto':
                raise ValueError(f'the triton backend of {op_name} {limit}; use the cpu or reference backend '
                                 f'(kernels.use_backend or ${ENV_VAR}) for these inputs')
            backend = 'cpu'
    return backend


def select(op_name: str, implementations: Mapping[str, Callable], tensors: Sequence[torch.Tensor],
           triton_limit: Callable[[], Optional[str]], requested: Optional[str] = None) -> Callable:
    """``implementations[choose(...)]``: the implementation of `op_name` for `tensors` under the one rule."""
    backend = choose(op_name, tensors, triton_limit, requested)
    try:
        return implementations[backend]
    except KeyError:
        raise NotImplementedError(
            f'{op_name} has no {backend!r} backend; it has {", ".join(sorted(implementations))}') from None
