"""Routed attention (BiFormer's bi-level routing attention) and index-sparse attention (Sparsifiner).

Three ops, each validated here once and then run on the backend :mod:`kernels.backend` picks:

``region_topk(q, k, n_win, topk, *, valid_hw=None)``
    The coarse level of BiFormer's routing: region means of ``q`` and ``k``, the region affinity
    ``q_r @ k_r^T`` and its ``topk`` per query region. No gradient (BiFormer's released models detach it).

``routed_attention(q, k, v, region_index, n_win, *, scale=None, valid_hw=None)``
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
By default padded tokens are ordinary tokens, as in BiFormer's released code, which does not mask them (its dense
checkpoints were trained so). ``valid_hw=(h, w)`` masks them exactly instead: the tokens at rows ``>= h`` or
columns ``>= w`` of the padded ``H x W`` map are padding; ``region_topk`` then averages only the valid tokens
of a region and never routes to a key region without one (affinity -inf; a query region with fewer valid key
regions than ``topk`` gets such regions as its last picks, which contribute nothing), and ``routed_attention``
gives padded keys zero attention weight (a query whose routed regions hold no valid key gets zeros). Padded
queries are computed like the others; the model crops them.

Dtypes float16, bfloat16, float32 and float64 (float64 on the reference and cpu backends, for gradcheck);
q and k share the head width ``D``, v may have another ``Dv`` (BiFormer's ``qk_dim`` vs ``dim``). Forward and
backward on every backend. The cpu backend keeps no ``topk``-times key copy: it walks query regions in chunks
and recomputes in backward. The triton backend is a block-sparse flash-attention kernel driven by the index
lists (online softmax, key blocks loaded by index, nothing gathered in memory); its backward is deterministic
(no atomics): key/value gradients walk an inverted index of the routes. It takes head dims ``D`` and ``Dv`` up
to 64 (:mod:`kernels.routing.limits`; beyond, the automatic backend runs the cpu path, an explicit ``triton``
backend raises ValueError) and runs float32 dots in tf32 on GPUs (about 1e-3 relative error, as float16). An empty
batch (B = 0) gives an empty result on every backend.

Operators: ``torch.ops.zoo.region_topk``, ``torch.ops.zoo.routed_attention`` and ``torch.ops.zoo.sparse_attention``
(:mod:`kernels.library`): one node each under torch.compile, torch.export and FX; ONNX export decomposes them into
the reference (gather) math. ``valid_hw`` travels as two ints (H and W when None).
"""
from typing import Optional, Sequence, Tuple

import torch

from .. import checks
from ..backend import requested_backend
from ..library import Operator, Recompute, empty_stats, fx_leaf, lazy_module
from . import cpu, limits, reference

__all__ = ['region_topk', 'routed_attention', 'sparse_attention']


def _topk_reference(q, k, n_win, topk, valid_h, valid_w) -> torch.Tensor:
    return reference.region_topk(q, k, n_win, topk, reference.padding(q, valid_h, valid_w))


def _routed_reference(q, k, v, region_index, n_win, scale, valid_h, valid_w) -> torch.Tensor:
    return reference.routed_attention(q, k, v, region_index, n_win, scale, reference.padding(q, valid_h, valid_w))


def _sparse_reference(q, k, v, key_index, scale) -> torch.Tensor:
    return reference.sparse_attention(q, k, v, key_index, scale)


def _compute_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _topk_fake(backend: str, q: torch.Tensor, n_win: int, topk: int, **_) -> torch.Tensor:
    return q.new_empty(q.shape[0], n_win * n_win, topk, dtype=torch.int64)


def _routed_fake(backend: str, q: torch.Tensor, v: torch.Tensor, n_win: int, **_) -> Tuple[torch.Tensor, torch.Tensor]:
    b, h, hh, ww, _d = q.shape
    out = q.new_empty(b, h, hh, ww, v.shape[-1])
    if backend == 'cpu':  # log-sum-exp in region-major order
        return out, q.new_empty(b * h * n_win * n_win, (hh // n_win) * (ww // n_win), dtype=_compute_dtype(q))
    if backend == 'triton':
        return out, q.new_empty(b * h, hh * ww, dtype=torch.float32)
    return out, empty_stats(q)


def _sparse_fake(backend: str, q: torch.Tensor, v: torch.Tensor, **_) -> Tuple[torch.Tensor, torch.Tensor]:
    b, h, n, _d = q.shape
    out = q.new_empty(b, h, n, v.shape[-1])
    if backend in ('cpu', 'triton'):  # log-sum-exp per query
        return out, q.new_empty(b * h * n, dtype=_compute_dtype(q) if backend == 'cpu' else torch.float32)
    return out, empty_stats(q)


_TOPK = Operator(
    'region_topk', '(Tensor q, Tensor k, int n_win, int topk, SymInt valid_h, SymInt valid_w) -> Tensor',
    differentiable=(), n_outputs=1,
    backends={'reference': Recompute(_topk_reference, (), n_stats=0), 'cpu': cpu.topk_backend,
              'triton': lazy_module('kernels.routing.triton', 'topk_backend')},
    triton_limit=lambda **_: None, fake=_topk_fake, decomposition=_topk_reference)
_ROUTED = Operator(
    'routed_attention',
    '(Tensor q, Tensor k, Tensor v, Tensor region_index, int n_win, float scale, SymInt valid_h, SymInt valid_w)'
    ' -> (Tensor, Tensor)',
    differentiable=('q', 'k', 'v'), n_outputs=1,
    backends={'reference': Recompute(_routed_reference, ('q', 'k', 'v')), 'cpu': cpu.routed_backend,
              'triton': lazy_module('kernels.routing.triton', 'routed_backend')},
    triton_limit=lambda q, v, n_win, **_: limits.routed_limit(q, v, n_win), fake=_routed_fake,
    decomposition=_routed_reference)
_SPARSE = Operator(
    'sparse_attention', '(Tensor q, Tensor k, Tensor v, Tensor key_index, float scale) -> (Tensor, Tensor)',
    differentiable=('q', 'k', 'v'), n_outputs=1,
    backends={'reference': Recompute(_sparse_reference, ('q', 'k', 'v')), 'cpu': cpu.sparse_backend,
              'triton': lazy_module('kernels.routing.triton', 'sparse_backend')},
    triton_limit=lambda q, v, **_: limits.sparse_limit(q, v), fake=_sparse_fake, decomposition=_sparse_reference)


def _check_floats(**tensors: torch.Tensor) -> None:
    """Same dtype and device as the first; every dim >= 1 but the batch."""
    names = list(tensors)
    first = tensors[names[0]]
    for name, t in tensors.items():
        checks.like(name, t, names[0], first)
        if min(t.shape[1:]) == 0:
            raise ValueError(f'{name} must be non-empty apart from the batch, got shape {checks.shape_str(t)}')


def _check_regions(q: torch.Tensor, n_win: int) -> int:
    n_win = checks.integer('n_win', n_win, 1)
    height, width = q.shape[2], q.shape[3]
    if height % n_win or width % n_win:
        raise ValueError(f'the map H x W = {height} x {width} of q (shape {checks.shape_str(q)}) must be a multiple '
                         f'of n_win = {n_win} on both sides; pad it (BiFormer\'s auto_pad) first')
    return n_win


def _check_index(name: str, index: object, shapes: Sequence[tuple], low: int, high: int, layout: str,
                 q: torch.Tensor) -> torch.Tensor:
    checks.tensor(name, index, layout, dtypes=checks.INDICES)
    checks.expect_shape(name, index, shapes, layout)
    checks.same_device(name, index, 'q', q)
    checks.index_values(name, index, low, high)
    return index


def _check_valid_hw(valid_hw: object, q: torch.Tensor) -> Tuple[int, int]:
    """(h, w) with 1 <= h <= H, 1 <= w <= W; (H, W) for None (the operator then computes without masking)."""
    height, width = q.shape[2], q.shape[3]
    if valid_hw is None:
        return height, width
    if not isinstance(valid_hw, (tuple, list)) or len(valid_hw) != 2:
        raise TypeError(f'valid_hw must be None or a pair (h, w) of ints, got {valid_hw!r:.80}')
    h = checks.integer('valid_hw[0] (valid rows h of the padded map)', valid_hw[0], 1, height)
    w = checks.integer('valid_hw[1] (valid columns w of the padded map)', valid_hw[1], 1, width)
    return h, w


def _index_width(name: str, index: object, ndims: Sequence[int], layout: str) -> int:
    checks.tensor(name, index, layout, ndim=ndims, dtypes=checks.INDICES)
    return index.shape[-1]


@fx_leaf
def region_topk(q: torch.Tensor, k: torch.Tensor, n_win: int, topk: int, *,
                valid_hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """The ``topk`` most related key regions of every query region (BiFormer's region-level routing).

    Args:
        q: (B, heads, H, W, D) queries; H and W multiples of ``n_win``.
        k: (B, heads, H, W, D) keys.
        n_win: regions per side; the map has ``n_win**2`` regions in raster order (see the module docstring).
        topk: routed regions per query region, ``1 <= topk <= n_win**2``.
        valid_hw: optional (h, w), ``1 <= h <= H``, ``1 <= w <= W``: the map's valid size; rows ``>= h`` and
            columns ``>= w`` are padding (module docstring). None (default): every token counts, as BiFormer.

    Returns:
        int64 tensor (B, n_win**2, topk): for query region ``r``, the key regions in decreasing affinity
        ``mean_r(q) . mean_s(k)``, the means over a region's (valid) tokens, the dot over all heads and channels;
        with ``valid_hw`` key regions without a valid token have affinity -inf (picked last, if at all).
        No gradient flows (the indices are discrete; BiFormer's released models detach the routing).

    Cost: O(B * heads * H * W * D) for the means plus O(B * n_win**4 * heads * D) for the affinity.
    """
    layout = '(B, heads, H, W, D)'
    checks.tensor('q', q, layout, ndim=5)
    checks.tensor('k', k, layout, ndim=5)
    _check_floats(q=q, k=k)
    checks.expect_shape('k', k, tuple(q.shape), f'the shape of q {layout}')
    n_win = _check_regions(q, n_win)
    topk = checks.integer('topk', topk, 1, n_win * n_win)
    valid_h, valid_w = _check_valid_hw(valid_hw, q)
    return _TOPK(q=q, k=k, n_win=n_win, topk=topk, valid_h=valid_h, valid_w=valid_w, backend=requested_backend())[0]


@fx_leaf
def routed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, region_index: torch.Tensor, n_win: int,
                     *, scale: Optional[float] = None, valid_hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
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
        valid_hw: optional (h, w), ``1 <= h <= H``, ``1 <= w <= W``: keys at rows ``>= h`` or columns ``>= w``
            are padding and get zero attention weight (module docstring). None (default): every key counts.

    Returns:
        (B, heads, H, W, Dv), dtype of q: ``out[b, h, y, x] = softmax(scale * q . k_j) @ v_j`` over the
        ``topk * (H/n_win) * (W/n_win)`` tokens ``j`` of the regions routed to the region of ``(y, x)`` (the valid
        ones with ``valid_hw``; zeros where there is none). Gradients flow to q, k and v, none to padded keys.

    Cost: O(B * heads * H * W * topk * (H*W / n_win**2) * (D + Dv)) time; memory O(inputs) on the cpu and
    triton backends (the reference gathers ``topk`` copies of k and v and the full score matrix).
    """
    layout = '(B, heads, H, W, D)'
    checks.tensor('q', q, layout, ndim=5)
    checks.tensor('k', k, layout, ndim=5)
    checks.tensor('v', v, '(B, heads, H, W, Dv)', ndim=5)
    _check_floats(q=q, k=k, v=v)
    checks.expect_shape('k', k, tuple(q.shape), f'the shape of q {layout}')
    checks.expect_shape('v', v, tuple(q.shape[:4]) + (v.shape[-1],), '(B, heads, H, W, Dv) with (B, heads, H, W) of q')
    n_win = _check_regions(q, n_win)
    scale = checks.scale(scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    b, h = q.shape[:2]
    n_reg = n_win * n_win
    layout = '(B, n_win**2, topk) or (B, heads, n_win**2, topk)'
    topk = _index_width('region_index', region_index, (3, 4), layout)
    if not 1 <= topk <= n_reg:
        raise ValueError(f'region_index must list 1..{n_reg} regions per query region (its last dim), got shape '
                         f'{checks.shape_str(region_index)}')
    _check_index('region_index', region_index, [(b, n_reg, topk), (b, h, n_reg, topk)], 0, n_reg, layout, q)
    valid_h, valid_w = _check_valid_hw(valid_hw, q)
    return _ROUTED(q=q, k=k, v=v, region_index=region_index, n_win=n_win, scale=scale, valid_h=valid_h,
                   valid_w=valid_w, backend=requested_backend())[0]


@fx_leaf
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
    backend's forward where K * 2 <= Nk (a C++ loop reading the listed keys in place; backward gathers key rows
    while K * 16 < Nk); for denser lists the cpu backend computes dense scores in query chunks,
    O(B * heads * N * Nk * (D + Dv)) (matrix-product tiles, a softmax over the K listed keys only), which on a
    CPU is faster than reading key rows one by one. Memory O(inputs) on the cpu and triton backends (the
    reference gathers K copies of the listed keys and values).
    """
    checks.tensor('q', q, '(B, heads, N, D)', ndim=4)
    checks.tensor('k', k, '(B, heads, Nk, D)', ndim=4)
    checks.tensor('v', v, '(B, heads, Nk, Dv)', ndim=4)
    _check_floats(q=q, k=k, v=v)
    checks.expect_shape('k', k, tuple(q.shape[:2]) + (k.shape[2], q.shape[3]),
                        '(B, heads, Nk, D) with (B, heads) and D of q')
    checks.expect_shape('v', v, tuple(k.shape[:3]) + (v.shape[3],), '(B, heads, Nk, Dv) with (B, heads, Nk) of k')
    scale = checks.scale(scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    layout = '(B, heads, N, K)'
    n_keys = _index_width('key_index', key_index, (4,), layout)
    if n_keys < 1:
        raise ValueError(f'key_index must list at least one key per query (K >= 1), got shape '
                         f'{checks.shape_str(key_index)}')
    _check_index('key_index', key_index, [tuple(q.shape[:3]) + (n_keys,)], -1, k.shape[2], layout, q)
    return _SPARSE(q=q, k=k, v=v, key_index=key_index, scale=scale, backend=requested_backend())[0]
