"""Attention inside non-overlapping local windows: block windows (Swin, DaViT, MaxViT) and MaxViT's grid."""
import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import torch

from ..backend import dispatch
from . import cpu, reference

__all__ = ['window_attention']

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# kernels.window.triton.MAX_HEAD_DIM: the largest head dim its kernels compile for without register spills
_TRITON_MAX_HEAD_DIM = 64
_TRITON_MAX_BATCH_HEADS = 65535


def _shape(t: torch.Tensor) -> str:
    return f'({", ".join(str(s) for s in t.shape)})'


def _window(window_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(window_size, numbers.Integral) and not isinstance(window_size, bool):
        window_size = (int(window_size), int(window_size))
    if (not isinstance(window_size, (tuple, list)) or len(window_size) != 2
            or not all(isinstance(w, numbers.Integral) and not isinstance(w, bool) for w in window_size)):
        raise TypeError(f'window_size must be an int or a pair of ints (wh, ww), got {window_size!r}')
    wh, ww = int(window_size[0]), int(window_size[1])
    if wh < 1 or ww < 1:
        raise ValueError(f'window_size must be positive, got ({wh}, {ww})')
    return wh, ww


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window_size: Union[int, Sequence[int]], grid: bool,
           rel_pos_bias: Optional[torch.Tensor], scale: Optional[float]) -> Tuple[Tuple[int, int], float]:
    for name, t in (('q', q), ('k', k), ('v', v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'{name} must be a torch.Tensor, got {type(t).__name__}')
        if t.dim() != 5:
            raise ValueError(f'{name} must be 5-D (B, heads, H, W, D), got shape {_shape(t)}')
        if t.dtype not in _DTYPES:
            raise TypeError(f'{name} must be float16, bfloat16, float32 or float64, got {t.dtype}')
    if k.shape != q.shape:
        raise ValueError(f'k must have the shape of q {_shape(q)} (B, heads, H, W, D), got {_shape(k)}')
    if v.shape[:4] != q.shape[:4]:
        raise ValueError(f'v must be (B, heads, H, W, Dv) with (B, heads, H, W) = {tuple(q.shape[:4])} as q, '
                         f'got {_shape(v)}')
    if min(q.shape) == 0 or v.shape[-1] == 0:
        raise ValueError(f'q, k, v must be non-empty, got q {_shape(q)}, v {_shape(v)}')
    for name, t in (('k', k), ('v', v)):
        if t.dtype != q.dtype:
            raise TypeError(f'{name} must have the dtype of q ({q.dtype}), got {t.dtype}')
        if t.device != q.device:
            raise ValueError(f'{name} must be on the device of q ({q.device}), got {t.device}')
    wh, ww = _window(window_size)
    if not isinstance(grid, bool):
        raise TypeError(f'grid must be a bool, got {type(grid).__name__}')
    if rel_pos_bias is not None:
        if not isinstance(rel_pos_bias, torch.Tensor):
            raise TypeError(f'rel_pos_bias must be a torch.Tensor or None, got {type(rel_pos_bias).__name__}')
        expected = (q.shape[1], 2 * wh - 1, 2 * ww - 1)
        if tuple(rel_pos_bias.shape) != expected:
            raise ValueError(f'rel_pos_bias must be (heads, 2*wh-1, 2*ww-1) = {expected} for {q.shape[1]} heads '
                             f'and window ({wh}, {ww}), got shape {_shape(rel_pos_bias)}')
        if rel_pos_bias.dtype not in (q.dtype, torch.float32):
            raise TypeError(f'rel_pos_bias must have the dtype of q ({q.dtype}) or float32, got {rel_pos_bias.dtype}')
        if rel_pos_bias.device != q.device:
            raise ValueError(f'rel_pos_bias must be on the device of q ({q.device}), got {rel_pos_bias.device}')
    if scale is None:
        scale = q.shape[-1] ** -0.5
    elif (not isinstance(scale, numbers.Real) or isinstance(scale, bool) or not math.isfinite(scale)
          or scale == 0):
        raise ValueError(f'scale must be a finite non-zero number or None (D ** -0.5), got {scale!r}')
    return (wh, ww), float(scale)


def _triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window_size: Tuple[int, int], grid: bool,
            rel_pos_bias: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    if q.dtype not in _TRITON_DTYPES:
        raise TypeError(f'the triton backend of window_attention runs float16, bfloat16 and float32, got q '
                        f'{q.dtype}; use the cpu or reference backend (kernels.use_backend) for {q.dtype}')
    if max(q.shape[-1], v.shape[-1]) > _TRITON_MAX_HEAD_DIM:
        raise ValueError(f'the triton backend of window_attention takes head dims (D and Dv) up to '
                         f'{_TRITON_MAX_HEAD_DIM} (larger tiles spill registers), got q {_shape(q)}, v {_shape(v)}; '
                         f'use the cpu or reference backend (kernels.use_backend) for larger head dims')
    if q.shape[0] * q.shape[1] > _TRITON_MAX_BATCH_HEADS:
        raise ValueError(f'the triton backend of window_attention takes B * heads up to {_TRITON_MAX_BATCH_HEADS} '
                         f'(a CUDA grid axis), got q {_shape(q)}')
    from . import triton as triton_impl  # only here: the package imports on machines without triton
    return triton_impl.window_attention(q, k, v, window_size, grid, rel_pos_bias, scale)


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window_size: Union[int, Sequence[int]], *,
                     grid: bool = False, rel_pos_bias: Optional[torch.Tensor] = None,
                     scale: Optional[float] = None) -> torch.Tensor:
    """Softmax attention inside non-overlapping windows of a 2-D map, fused (no partition copies on Triton).

    Args:
        q, k: (B, heads, H, W, D) queries and keys.
        v: (B, heads, H, W, Dv) values (Dv may differ from D).
        window_size: int or (wh, ww). With ``grid=False`` the map is cut into wh x ww blocks, numbered as timm's
            ``maxxvit.window_partition`` (Swin, DaViT, MaxViT block attention). With ``grid=True`` it is MaxViT's
            grid attention (timm's ``grid_partition`` with grid size (wh, ww)): window (i, j) holds the wh x ww
            tokens (a * H / wh + i, b * W / ww + j), i.e. one token per cell of a dilated grid.
        grid: block windows (False) or grid windows (True).
        rel_pos_bias: optional (heads, 2*wh-1, 2*ww-1) table, added to the logits as timm's ``RelPosBiasTf``
            (MaxViT ``_tf`` models): query token (qa, qb) and key token (ka, kb) of a window (in-window
            coordinates) get ``table[h, ka - qa + wh - 1, kb - qb + ww - 1]``. Gathered inside the kernels; the
            gradient flows to the table. Its dtype is q's or float32 (mixed precision master weights).
        scale: logit scale, default D ** -0.5.

    Any H, W: the map is padded at the bottom/right up to multiples of (wh, ww) (for grid: so that H and W are
    multiples of the grid size, the stride becoming ceil(H / wh)), padded keys are excluded from every
    softmax, and the output is cropped back to (H, W). At multiples the result equals timm's partition +
    softmax attention + reverse. Every real query sees at least one real key.

    Returns:
        (B, heads, H, W, Dv) in q's dtype. The cpu path lays it out heads-last in memory (a permuted view of
        (B, H, W, heads, Dv)), so merging the heads back into channels is a free view.

    dtypes: float16, bfloat16, float32 on GPU (Triton, fp32 softmax statistics; float32 dots run on tf32 tensor
    cores, fp16-like precision); float32 and float64 on the CPU paths (float16/bfloat16 run there too). Forward and
    backward on every backend. Head dims: up to 64 on Triton, any on the CPU paths.

    Complexity: O(B * heads * Hp * Wp * wh * ww * (D + Dv)) time for the padded map (Hp, Wp); the cpu path spends
    no FLOP on padded tokens, Triton neither loads nor stores them (masked lanes). Memory kept for backward
    beyond q, k, v and the output: Triton O(B * heads * H * W) softmax statistics, cpu nothing (it works in
    chunks of windows and recomputes in backward); neither keeps a partition copy of the map or a score matrix.

    Backend: ``kernels.backend`` rule (``ZOO_KERNELS`` / ``kernels.use_backend``): reference, cpu or triton.
    """
    window, scale = _check(q, k, v, window_size, grid, rel_pos_bias, scale)
    tensors = (q, k, v) if rel_pos_bias is None else (q, k, v, rel_pos_bias)
    impl = dispatch('window_attention', {'reference': reference.window_attention, 'cpu': cpu.window_attention,
                                         'triton': _triton}, *tensors)
    return impl(q, k, v, window, grid, rel_pos_bias, scale)
