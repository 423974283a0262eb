"""Argument checks shared by every op (after NATTEN's ``natten/utils/checks.py``).

A public op validates all its arguments here, before any backend runs; every error names the argument, what
it got (shape, dtype or value) and what was expected. The dtype tuples below are the only ones in the package.

Checks of index *values* (the min/max of an index tensor) read data. They are skipped while tracing
(torch.compile, torch.export, FX) and for meta/fake tensors, where there is no data to read: shapes, dtypes and
devices are still checked there, because they are known at trace time.
"""
import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import torch

__all__ = ['FLOATS', 'TRITON_FLOATS', 'INDICES', 'shape_str', 'dtype_names', 'tracing', 'tensor', 'optional_tensor',
           'like', 'same_device', 'expect_shape', 'integer', 'flag', 'scale', 'index_values']

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # every op on the reference and cpu paths
TRITON_FLOATS = (torch.float16, torch.bfloat16, torch.float32)  # the Triton kernels (fp32 statistics, no fp64)
INDICES = (torch.int32, torch.int64)  # index tensors (routes, key lists, scan orders, bias indices)

Shape = Tuple[int, ...]


def _spaced(layout: str) -> str:
    return f' {layout}' if layout else ''


def shape_str(t: torch.Tensor) -> str:
    return f'({", ".join(str(s) for s in t.shape)})'


def dtype_names(dtypes: Sequence[torch.dtype], last: str = 'or') -> str:
    """'float16, bfloat16, float32 or float64'."""
    names = [str(d).replace('torch.', '') for d in dtypes]
    return names[0] if len(names) == 1 else f'{", ".join(names[:-1])} {last} {names[-1]}'


def tracing(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether values cannot (or must not) be read: under torch.compile/export/FX tracing, or meta/fake tensors."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    from torch._subclasses.fake_tensor import is_fake
    return any(t is not None and (t.device.type == 'meta' or is_fake(t)) for t in tensors)


def tensor(name: str, t: object, layout: str, ndim: Union[None, int, Sequence[int]] = None,
           dtypes: Sequence[torch.dtype] = FLOATS) -> torch.Tensor:
    """``t`` is a tensor with ``ndim`` dims (one of them) and a dtype in ``dtypes``; ``layout`` names its axes."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f'{name} must be a torch.Tensor{_spaced(layout)}, got {type(t).__name__}')
    if ndim is not None:
        ndims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in ndims:
            dims = ' or '.join(f'{n}-D' for n in ndims)
            raise ValueError(f'{name} must be {dims}{_spaced(layout)}, got shape {shape_str(t)}')
    if t.dtype not in dtypes:
        if t.is_complex() and all(d.is_floating_point for d in dtypes):
            raise TypeError(f'{name} must be real ({dtype_names(dtypes)}), got {t.dtype}')
        raise TypeError(f'{name} must be {dtype_names(dtypes)}, got {t.dtype} (shape {shape_str(t)})')
    return t


def optional_tensor(name: str, t: object, layout: str, ndim: Union[None, int, Sequence[int]] = None,
                    dtypes: Sequence[torch.dtype] = FLOATS) -> Optional[torch.Tensor]:
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f'{name} must be a torch.Tensor{_spaced(layout)} or None, got {type(t).__name__}')
    return tensor(name, t, layout, ndim, dtypes)


def like(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor, also: Sequence[torch.dtype] = ()) -> None:
    """``t`` has the dtype of ``ref`` (or one of ``also``) and lives on its device."""
    if t.dtype != ref.dtype and t.dtype not in also:
        extra = f' or {dtype_names(also)}' if also else ''
        raise TypeError(f'{name} must have the dtype of {ref_name} ({ref.dtype}){extra}, got {t.dtype} '
                        f'(shape {shape_str(t)})')
    same_device(name, t, ref_name, ref)


def same_device(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f'{name} must be on the device of {ref_name} ({ref.device}), got {t.device} '
                         f'(shape {shape_str(t)})')


def expect_shape(name: str, t: torch.Tensor, expected: Union[Shape, Sequence[Shape]], layout: str) -> None:
    """``t.shape`` is ``expected`` (or one of several shapes); ``layout`` names the axes."""
    single = len(expected) == 0 or isinstance(expected[0], (int, torch.SymInt))
    options = [tuple(expected)] if single else [tuple(e) for e in expected]
    if tuple(t.shape) not in options:
        wanted = ' or '.join(str(o) for o in options)
        raise ValueError(f'{name} must be {layout} = {wanted}, got shape {shape_str(t)}')


def integer(name: str, value: object, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, torch.SymInt):  # a size while tracing: the bounds become checks of the traced program
        torch._check(value >= low, lambda: f'{name} must be >= {low}')
        if high is not None:
            torch._check(value <= high, lambda: f'{name} must be <= {high}')
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f'{name} must be an int, got {type(value).__name__}')
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f'in [{low}, {high}]' if high is not None else f'>= {low}'
        raise ValueError(f'{name} must be {bound}, got {value}')
    return value


def flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f'{name} must be a bool, got {type(value).__name__}')
    return value


def scale(value: object, name: str = 'scale', default: str = 'D ** -0.5') -> Optional[float]:
    """A finite non-zero logit scale, or None for the op's default."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f'{name} must be a float or None ({default}), got {type(value).__name__}')
    if not math.isfinite(value) or value == 0:
        raise ValueError(f'{name} must be a finite non-zero number or None ({default}), got {value!r}')
    return float(value)


def index_values(name: str, index: torch.Tensor, low: int, high: int) -> None:
    """Every value of ``index`` lies in [low, high); skipped while tracing and for meta/fake tensors."""
    if index.numel() == 0 or tracing(index):
        return
    lo, hi = int(index.min()), int(index.max())
    if lo < low or hi >= high:
        raise ValueError(f'{name} values must be in [{low}, {high - 1}], got values in [{lo}, {hi}] '
                         f'(shape {shape_str(index)})')
