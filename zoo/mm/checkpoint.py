"""Reading mmengine training checkpoints with torch's safe loader.

torch >= 2.6 loads with ``weights_only=True``; mmengine 0.10.7 calls ``torch.load`` without the argument, and its
checkpoints hold a few objects beside the tensors: the message hub's ``HistoryBuffer`` of logged scalars, the numpy
arrays and scalars inside it, and references to ``HistoryBuffer``'s statistics methods, which protocol-2 pickles
spell ``getattr(HistoryBuffer, 'mean')``. Those exact classes are allow-listed, and ``getattr`` is replaced by a
function that resolves only those four methods; safe loading itself stays on.
"""
from typing import Any, List

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

__all__ = ['MMENGINE_SAFE_GLOBALS', 'allow_mmengine_checkpoints']

_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')
_multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray  # numpy 2 / numpy 1


def _history_buffer_method(obj: Any, name: str) -> Any:
    """Stands in for ``builtins.getattr`` while unpickling: only ``HistoryBuffer.<min|max|current|mean>``."""
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(HistoryBuffer, name)
    raise torch.serialization.pickle.UnpicklingError(
        f'getattr({obj!r}, {name!r}) is not allowed in a checkpoint (only HistoryBuffer statistics methods)')


MMENGINE_SAFE_GLOBALS: List[Any] = [
    HistoryBuffer,
    (_history_buffer_method, 'builtins.getattr'),
    np.ndarray,
    np.dtype,
    _multiarray._reconstruct,
    _multiarray.scalar,
    # numpy >= 1.25 pickles a dtype with its class (numpy.dtypes.Float64DType, ...): the numeric ones
    *{type(np.dtype(t)) for t in ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64',
                                  'float16', 'float32', 'float64')},
]


def allow_mmengine_checkpoints() -> None:
    """Add :data:`MMENGINE_SAFE_GLOBALS` to torch's safe-globals allow-list (process-wide; idempotent)."""
    torch.serialization.add_safe_globals(MMENGINE_SAFE_GLOBALS)
