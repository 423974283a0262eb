"""Routed attention (BiFormer's bi-level routing attention) and index-sparse attention (Sparsifiner).

Three ops, each validated here once and then run on the backend :mod:`kernels.backend` picks:

``region_topk(q, k, n_win, topk)``
    The coarse level of BiFormer's routing: region means of ``q`` and ``k``, the region affinity
    ``q_r @ k_r^T`` and its ``topk`` per query region. No gradient (BiFormer's released models detach it).

``routed_attention(q, k, v, region_index, n_win, *, scale=None)``
    The fine level: every query of region ``r`` attends to all tokens of the regions ``region_index[b, r]``.

``sparse_attention(q, k, v, key_index, *, scale=None)``
    Query ``n`` attends only to the keys ``key_index[b, h, n, :]``; on the triton backend the cost scales with
    their number ``K``, not with the sequence length (Sparsifiner's released code computes the dense ``N x N``
    scores and masks them); the cpu backend picks the fastest exact CPU route (see ``sparse_attention``).

Regions (exact correspondence with BiFormer, rayleizhu/BiFormer ``ops/bra_legacy.py``): an ``H x W`` map is
split into ``n_win x n_win`` regions of ``(H/n_win) x (W/n_win)`` tokens. Region ``r = j * n_win + i`` is the
``j``-th region down and the ``i``-th across (raster order, ``rearrange(x, "n (j h) (i w) c -> n (j i) h w c")``),
and the tokens of a region are in raster order too, so the keys of query region ``r`` are the tokens of
``region_index[b, r, 0]``, then of ``region_index[b, r, 1]``, ... (``KVGather`` order; the order only matters for
summation order). BiFormer's channels are heads-major (``(m c)``), so its ``q`` of shape (N, H, W, heads * D)
is ``q.view(N, H, W, heads, D).permute(0, 3, 1, 2, 4)`` here. Two of its conventions differ from the defaults:

* scale: BiFormer multiplies by ``qk_dim ** -0.5`` with ``qk_dim = heads * D`` (the whole qk width, not the
  head width; ``bra_nchw`` keeps it "to be consistent with old models"). Pass ``scale=(heads * D) ** -0.5``
  to reproduce its models; the default here is the usual ``D ** -0.5``.
* routing: ``TopkRouting`` computes ``(q_win * scale) @ k_win^T`` over all ``heads * D`` channels of the
  region means and takes ``torch.topk`` (sorted, largest first); the positive scale does not change the
  selection, so ``region_topk`` returns the same indices (ties aside). ``kv_downsample_mode='identity'`` (all
  released BiFormer-T/S/B models) is the only key layout: keys and values live on the same regions as queries.

Padding: ``H`` and ``W`` must be multiples of ``n_win``; the model pads (BiFormer's ``auto_pad``) and crops.
Padded tokens are ordinary tokens here, as in BiFormer's released code, which does not mask them.

Dtypes float16, bfloat16, float32 and float64 (float64 on the reference and cpu backends, for gradcheck);
q and k share the head width ``D``, v may have another ``Dv`` (BiFormer's ``qk_dim`` vs ``dim``). Forward and
backward on every backend. The cpu backend keeps no ``topk``-times key copy: it walks query regions in chunks
and recomputes in backward. The triton backend is a block-sparse flash-attention kernel driven by the index
lists (online softmax, key blocks loaded by index, nothing gathered in memory); its backward is deterministic
(no atomics): key/value gradients walk an inverted index of the routes. It takes head dims ``D`` and ``Dv`` up
to 64 (larger tiles spill registers; the automatic backend then runs the cpu path, an explicit ``triton``
backend raises ValueError) and runs float32 dots in tf32 on GPUs (about 1e-3 relative error, as float16).
"""
import math
from typing import Callable, Mapping, Optional, Sequence

import torch

from ..backend import dispatch, requested_backend
from . import cpu as _cpu
from . import reference as _reference

__all__ = ['region_topk', 'routed_attention', 'sparse_attention']

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INTS = (torch.int32, torch.int64)
# kernels.routing.triton.MAX_HEAD_DIM: the largest head dim (D and Dv) its kernels compile for without register spills
_TRITON_MAX_HEAD_DIM = 64


def _triton(name: str) -> Callable:
    def run(*args, **kwargs):
        from . import triton as _tr  # imported only when the triton backend runs
        return getattr(_tr, name)(*args, **kwargs)
    return run


def _implementations(name: str) -> Mapping[str, Callable]:
    return {'reference': getattr(_reference, name), 'cpu': getattr(_cpu, name), 'triton': _triton(name)}


def _pick(op: str, tensors: Sequence[torch.Tensor]) -> Callable:
    """The backend's implementation; checked here, before the triton module is imported. Where the automatic
    choice is triton but its kernels cannot take the inputs (float64, head dims over ``_TRITON_MAX_HEAD_DIM``),
    the cpu path runs; an explicitly requested triton backend raises instead."""
    impls = _implementations(op)
    fn = dispatch(op, impls, *tensors)
    if fn is not impls['triton']:
        return fn
    q, v = tensors[0], tensors[-1]
    if q.dtype == torch.float64:
        if requested_backend() != 'auto':
            raise TypeError(f'{op}: the triton backend has no float64 kernels; use the cpu or reference backend')
        return impls['cpu']
    if op != 'region_topk' and max(q.shape[-1], v.shape[-1]) > _TRITON_MAX_HEAD_DIM:
        if requested_backend() != 'auto':
            raise ValueError(f'{op}: the triton backend takes head dims (D and Dv) up to {_TRITON_MAX_HEAD_DIM} '
                             f'(larger tiles spill registers), got q {tuple(q.shape)}, v {tuple(v.shape)}; use the '
                             f'cpu or reference backend (kernels.use_backend) for larger head dims')
        return impls['cpu']
    return fn


def _check_tensor(name: str, t: object, ndim: int, layout: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f'{name} must be a torch.Tensor of shape {layout}, got {type(t).__name__}')
    if t.dim() != ndim:
        raise ValueError(f'{name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}')
    return t


def _check_floats(op: str, **tensors: torch.Tensor) -> None:
    names = list(tensors)
    first = tensors[names[0]]
    for name, t in tensors.items():
        if t.dtype not in _FLOATS:
            raise TypeError(f'{op}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}')
        if t.dtype != first.dtype:
            raise TypeError(f'{op}: {name} has dtype {t.dtype} but {names[0]} has {first.dtype}; they must match')
        if t.device != first.device:
            raise ValueError(f'{op}: {name} is on {t.device} but {names[0]} is on {first.device}; they must match')
        if t.numel() == 0:
            raise ValueError(f'{op}: {name} is empty, shape {tuple(t.shape)}')


def _check_int(name: str, value: object, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'{name} must be an int, got {type(value).__name__}')
    if value < low or (high is not None and value > high):
        bound = f'in [{low}, {high}]' if high is not None else f'>= {low}'
        raise ValueError(f'{name} must be {bound}, got {value}')
    return value


def _check_scale(op: str, scale: Optional[float]) -> Optional[float]:
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f'{op}: scale must be a float or None, got {type(scale).__name__}')
    if not math.isfinite(scale):
        raise ValueError(f'{op}: scale must be finite, got {scale}')
    return float(scale)


def _check_regions(op: str, q: torch.Tensor, n_win: int) -> None:
    _check_int('n_win', n_win, 1)
    height, width = q.shape[2], q.shape[3]
    if height % n_win or width % n_win:
        raise ValueError(f'{op}: the map H x W = {height} x {width} of q (shape {tuple(q.shape)}) must be a '
                         f'multiple of n_win = {n_win} on both sides; pad it (BiFormer\'s auto_pad) first')


def _check_index(op: str, name: str, index: object, shapes: Sequence[tuple], low: int, high: int,
                 layout: str, device: torch.device) -> torch.Tensor:
    if not isinstance(index, torch.Tensor):
        raise TypeError(f'{op}: {name} must be an int32/int64 tensor of shape {layout}, got {type(index).__name__}')
    if index.dtype not in _INTS:
        raise TypeError(f'{op}: {name} must be int32 or int64, got {index.dtype}')
    if tuple(index.shape) not in [tuple(s) for s in shapes]:
        expected = ' or '.join(str(tuple(s)) for s in shapes)
        raise ValueError(f'{op}: {name} must have shape {layout} = {expected}, got {tuple(index.shape)}')
    if index.device != device:
        raise ValueError(f'{op}: {name} is on {index.device} but q is on {device}; they must match')
    if index.numel():
        lo, hi = int(index.min()), int(index.max())
        if lo < low or hi >= high:
            raise ValueError(f'{op}: {name} values must be in [{low}, {high - 1}], got values in [{lo}, {hi}]')
    return index


def _index_width(op: str, name: str, index: object, ndims: Sequence[int], layout: str) -> int:
    if not isinstance(index, torch.Tensor):
        raise TypeError(f'{op}: {name} must be an int32/int64 tensor of shape {layout}, got {type(index).__name__}')
    if index.dim() not in ndims:
        raise ValueError(f'{op}: {name} must have shape {layout}, got shape {tuple(index.shape)}')
    return index.shape[-1]


def region_topk(q: torch.Tensor, k: torch.Tensor, n_win: int, topk: int) -> torch.Tensor:
    """The ``topk`` most related key regions of every query region (BiFormer's region-level routing).

    Args:
        q: (B, heads, H, W, D) queries; H and W multiples of ``n_win``.
        k: (B, heads, H, W, D) keys.
        n_win: regions per side; the map has ``n_win**2`` regions in raster order (see the module docstring).
        topk: routed regions per query region, ``1 <= topk <= n_win**2``.

    Returns:
        int64 tensor (B, n_win**2, topk): for query region ``r``, the key regions in decreasing affinity
        ``mean_r(q) . mean_s(k)``, the means over a region's tokens, the dot over all heads and channels.
        No gradient flows (the indices are discrete; BiFormer's released models detach the routing).

    Cost: O(B * heads * H * W * D) for the means plus O(B * n_win**4 * heads * D) for the affinity.
    """
    _check_tensor('q', q, 5, '(B, heads, H, W, D)')
    _check_tensor('k', k, 5, '(B, heads, H, W, D)')
    _check_floats('region_topk', q=q, k=k)
    if k.shape != q.shape:
        raise ValueError(f'region_topk: k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}')
    _check_regions('region_topk', q, n_win)
    _check_int('topk', topk, 1, n_win * n_win)
    return _pick('region_topk', (q, k))(q, k, n_win, topk)


def routed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, region_index: torch.Tensor, n_win: int,
                     *, scale: Optional[float] = None) -> torch.Tensor:
    """Region-routed softmax attention (the token level of BiFormer's bi-level routing attention).

    Args:
        q: (B, heads, H, W, D) queries; H and W multiples of ``n_win``.
        k: (B, heads, H, W, D) keys.
        v: (B, heads, H, W, Dv) values; ``Dv`` may differ from ``D``.
        region_index: int32/int64 (B, n_win**2, topk) routes shared by all heads (``region_topk``'s output),
            or (B, heads, n_win**2, topk) per head; values in ``[0, n_win**2)``. Repeated regions count as
            often as they are listed (the gather semantics).
        n_win: regions per side.
        scale: logit scale, default ``D ** -0.5`` (BiFormer's models use ``(heads * D) ** -0.5``).

    Returns:
        (B, heads, H, W, Dv), dtype of q: ``out[b, h, y, x] = softmax(scale * q . k_j) @ v_j`` over the
        ``topk * (H/n_win) * (W/n_win)`` tokens ``j`` of the regions routed to the region of ``(y, x)``.

    Cost: O(B * heads * H * W * topk * (H*W / n_win**2) * (D + Dv)) time; memory O(inputs) on the cpu and
    triton backends (the reference gathers ``topk`` copies of k and v and the full score matrix).
    """
    layout = '(B, heads, H, W, D)'
    _check_tensor('q', q, 5, layout)
    _check_tensor('k', k, 5, layout)
    _check_tensor('v', v, 5, '(B, heads, H, W, Dv)')
    _check_floats('routed_attention', q=q, k=k, v=v)
    if k.shape != q.shape:
        raise ValueError(f'routed_attention: k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}')
    if v.shape[:4] != q.shape[:4]:
        raise ValueError(f'routed_attention: v must be (B, heads, H, W, Dv) = {tuple(q.shape[:4])} + (Dv,), '
                         f'got {tuple(v.shape)}')
    _check_regions('routed_attention', q, n_win)
    scale = _check_scale('routed_attention', scale)
    b, h = q.shape[:2]
    n_reg = n_win * n_win
    layout = '(B, n_win**2, topk) or (B, heads, n_win**2, topk)'
    topk = _index_width('routed_attention', 'region_index', region_index, (3, 4), layout)
    if not 1 <= topk <= n_reg:
        raise ValueError(f'routed_attention: region_index must list 1..{n_reg} regions per query region '
                         f'(its last dim), got shape {tuple(region_index.shape)}')
    _check_index('routed_attention', 'region_index', region_index, [(b, n_reg, topk), (b, h, n_reg, topk)], 0,
                 n_reg, layout, q.device)
    return _pick('routed_attention', (q, k, v))(q, k, v, region_index, n_win, scale)


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_index: torch.Tensor,
                     *, scale: Optional[float] = None) -> torch.Tensor:
    """Index-sparse softmax attention: every query attends to its own list of keys.

    Args:
        q: (B, heads, N, D) queries.
        k: (B, heads, Nk, D) keys.
        v: (B, heads, Nk, Dv) values; ``Dv`` may differ from ``D``.
        key_index: int32/int64 (B, heads, N, K), the keys of each query, values in ``[-1, Nk)``; ``-1`` marks an
            empty slot (a query whose slots are all empty gets zeros, like Sparsifiner's ``nan_to_num`` of a
            fully masked row). Repeated keys count as often as they are listed (the gather semantics; a dense
            0/1 mask would count them once).
        scale: logit scale, default ``D ** -0.5``.

    Returns:
        (B, heads, N, Dv), dtype of q: ``out[b, h, n] = softmax_j(scale * q_n . k_j) @ v_j`` over
        ``j in key_index[b, h, n]``.

    Cost: O(B * heads * N * K * (D + Dv)) time, independent of Nk, on the triton backend and on the cpu
    backend's gather route (K * 16 < Nk); for denser lists the cpu backend computes dense scores in query
    chunks, O(B * heads * N * Nk * (D + Dv)) (matrix-product tiles, a softmax over the K listed keys only),
    which on a CPU is faster than gathering key rows. Memory O(inputs) on the cpu and triton backends (the
    reference gathers K copies of the listed keys and values).
    """
    _check_tensor('q', q, 4, '(B, heads, N, D)')
    _check_tensor('k', k, 4, '(B, heads, Nk, D)')
    _check_tensor('v', v, 4, '(B, heads, Nk, Dv)')
    _check_floats('sparse_attention', q=q, k=k, v=v)
    if k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
        raise ValueError(f'sparse_attention: k must be (B, heads, Nk, D) with (B, heads) = {tuple(q.shape[:2])} '
                         f'and D = {q.shape[3]} as in q, got {tuple(k.shape)}')
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f'sparse_attention: v must be (B, heads, Nk, Dv) = {tuple(k.shape[:3])} + (Dv,), '
                         f'got {tuple(v.shape)}')
    scale = _check_scale('sparse_attention', scale)
    n_keys = _index_width('sparse_attention', 'key_index', key_index, (4,), '(B, heads, N, K)')
    if n_keys < 1:
        raise ValueError(f'sparse_attention: key_index must list at least one key per query, '
                         f'got shape {tuple(key_index.shape)}')
    _check_index('sparse_attention', 'key_index', key_index, [tuple(q.shape[:3]) + (n_keys,)], -1, k.shape[2],
                 '(B, heads, N, K)', q.device)
    return _pick('sparse_attention', (q, k, v))(q, k, v, key_index, scale)
