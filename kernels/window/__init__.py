"""Attention inside non-overlapping local windows: block windows (Swin, DaViT, MaxViT) and MaxViT's grid."""
import numbers
from typing import Optional, Sequence, Tuple, Union

import torch

from .. import checks
from ..backend import requested_backend
from ..library import Operator, Recompute, empty_stats, fx_leaf, lazy_module
from . import cpu, limits, reference

__all__ = ['window_attention']


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_pos_bias: Optional[torch.Tensor], window_h: int,
               window_w: int, grid: bool, scale: float) -> torch.Tensor:
    return reference.window_attention(q, k, v, (window_h, window_w), grid, rel_pos_bias, scale).contiguous()


def _fake(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_pos_bias: Optional[torch.Tensor],
          window_h: int, window_w: int, grid: bool, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    B, heads, H, W, _ = q.shape
    if backend == 'cpu':  # heads-last memory (kernels.window.cpu)
        return q.new_empty(B, H, W, heads, v.shape[-1]).permute(0, 3, 1, 2, 4), empty_stats(q)
    out = q.new_empty(B, heads, H, W, v.shape[-1])
    if backend == 'triton':  # the softmax log-sum-exp per query
        return out, q.new_empty(B * heads, H, W, dtype=torch.float32)
    return out, empty_stats(q)


_OP = Operator(
    'window_attention',
    '(Tensor q, Tensor k, Tensor v, Tensor? rel_pos_bias, int window_h, int window_w, bool grid, float scale)'
    ' -> (Tensor, Tensor)',
    differentiable=('q', 'k', 'v', 'rel_pos_bias'), n_outputs=1,
    backends={'reference': Recompute(_reference, ('q', 'k', 'v', 'rel_pos_bias')), 'cpu': cpu,
              'triton': lazy_module('kernels.window.triton')},
    triton_limit=lambda q, v, **_: limits.triton_limit(q, v), fake=_fake, decomposition=_reference)


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


@fx_leaf
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
    backward on every backend. Head dims: up to 64 on Triton (:mod:`kernels.window.limits`; beyond, ``auto`` runs
    the cpu path), any on the CPU paths. An empty batch (B = 0) gives an empty output.

    Complexity: O(B * heads * Hp * Wp * wh * ww * (D + Dv)) time for the padded map (Hp, Wp); the cpu path spends
    no FLOP on padded tokens, Triton neither loads nor stores them (masked lanes). Memory kept for backward
    beyond q, k, v and the output: Triton O(B * heads * H * W) softmax statistics, cpu nothing (it works in
    chunks of windows and recomputes in backward); neither keeps a partition copy of the map or a score matrix.

    Backend: ``kernels.backend`` rule (``ZOO_KERNELS`` / ``kernels.use_backend``): reference, cpu or triton.
    Operator: ``torch.ops.zoo.window_attention`` (:mod:`kernels.library`): one node under torch.compile,
    torch.export and FX; ONNX export decomposes it into the reference math.
    """
    layout = '(B, heads, H, W, D)'
    checks.tensor('q', q, layout, ndim=5)
    checks.tensor('k', k, layout, ndim=5)
    checks.tensor('v', v, '(B, heads, H, W, Dv)', ndim=5)
    checks.like('k', k, 'q', q)
    checks.like('v', v, 'q', q)
    checks.expect_shape('k', k, tuple(q.shape), f'the shape of q {layout}')
    checks.expect_shape('v', v, tuple(q.shape[:4]) + (v.shape[-1],), '(B, heads, H, W, Dv) with (B, heads, H, W) of q')
    if min(q.shape[1:]) == 0 or v.shape[-1] == 0:
        raise ValueError(f'q, k, v must be non-empty apart from the batch, got q {checks.shape_str(q)}, '
                         f'v {checks.shape_str(v)}')
    wh, ww = _window(window_size)
    checks.flag('grid', grid)
    if rel_pos_bias is not None:
        checks.tensor('rel_pos_bias', rel_pos_bias, '(heads, 2*wh-1, 2*ww-1)')
        checks.like('rel_pos_bias', rel_pos_bias, 'q', q, also=(torch.float32,))
        checks.expect_shape('rel_pos_bias', rel_pos_bias, (q.shape[1], 2 * wh - 1, 2 * ww - 1),
                            '(heads, 2*wh-1, 2*ww-1)')
    scale = checks.scale(scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _OP(q=q, k=k, v=v, rel_pos_bias=rel_pos_bias, window_h=wh, window_w=ww, grid=grid, scale=scale,
               backend=requested_backend())[0]
