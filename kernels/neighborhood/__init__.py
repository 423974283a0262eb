"""Neighborhood attention: each query attends to the window centred on it, plus optional extra keys.

Designed so that TransNeXt's aggregated attention (arXiv 2311.17132, DaiShiResearch/TransNeXt
``classification/attention_native.py``) runs fully through this op, without unfolding keys.
"""
import numbers
from typing import List, Optional, Tuple, Union

import torch

from .. import checks
from ..backend import requested_backend
from ..library import Operator, Recompute, empty_stats, fx_leaf, lazy_module
from . import cpu, limits, reference

__all__ = ['neighborhood_attention']

_TENSORS = ('qs', 'q', 'k', 'v', 'rel_pos_bias', 'extra_k', 'extra_v', 'extra_bias', 'learnable_tokens',
            'learnable_bias', 'extra_bias_table')


def _reference(qs, q, k, v, rel_pos_bias, extra_k, extra_v, extra_bias, learnable_tokens, learnable_bias,
               extra_bias_table, index_h, index_w, kernel_size, dilation) -> torch.Tensor:
    return reference.attend(qs, q, k, v, kernel_size, dilation, rel_pos_bias, extra_k, extra_v, extra_bias,
                            learnable_tokens, learnable_bias, extra_bias_table, index_h, index_w)


def _fake(backend: str, qs: torch.Tensor, v: torch.Tensor, **_) -> Tuple[torch.Tensor, torch.Tensor]:
    b, heads, height, width, _d = qs.shape
    out = v.new_empty(v.shape)
    if backend == 'cpu':  # log-sum-exp per query
        return out, qs.new_empty(b, heads, height, width)
    if backend == 'triton':
        return out, qs.new_empty(b, heads, height * width, dtype=torch.float32)
    return out, empty_stats(qs)


def _gradients(**kwargs) -> List[str]:
    """The tensors given, but the raw q only with learnable tokens (the only term it feeds)."""
    return [n for n in _TENSORS if kwargs[n] is not None and (n != 'q' or kwargs['learnable_tokens'] is not None)]


_OP = Operator(
    'neighborhood_attention',
    '(Tensor qs, Tensor q, Tensor k, Tensor v, Tensor? rel_pos_bias, Tensor? extra_k, Tensor? extra_v, '
    'Tensor? extra_bias, Tensor? learnable_tokens, Tensor? learnable_bias, Tensor? extra_bias_table, '
    'Tensor? index_h, Tensor? index_w, int kernel_size, int dilation) -> (Tensor, Tensor)',
    differentiable=_TENSORS, n_outputs=1,
    backends={'reference': Recompute(_reference, _TENSORS), 'cpu': cpu,
              'triton': lazy_module('kernels.neighborhood.triton')},
    triton_limit=lambda qs, **_: limits.triton_limit(qs), fake=_fake, decomposition=_reference,
    gradients=_gradients)


def _optional(name: str, t: object, q: torch.Tensor, layout: str) -> Optional[torch.Tensor]:
    """None, or a tensor with q's dtype and device."""
    if checks.optional_tensor(name, t, layout) is not None:
        checks.like(name, t, 'q', q)
    return t


def _check_bias_table(table: torch.Tensor, index: object, extra_bias: Optional[torch.Tensor],
                      extra_k: Optional[torch.Tensor], q: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    if table is None or index is None:
        raise ValueError('extra_bias_table and extra_bias_index must be given together')
    if extra_k is None:
        raise ValueError('extra_bias_table needs extra_k and extra_v')
    if extra_bias is not None:
        raise ValueError('give either extra_bias or extra_bias_table/extra_bias_index, not both')
    heads, height, width, num_extra = q.shape[1], q.shape[2], q.shape[3], extra_k.shape[2]
    _optional('extra_bias_table', table, q, '(heads, Th, Tw)')
    if table.dim() != 3 or table.shape[0] != heads or min(table.shape) < 1:
        raise ValueError(f'extra_bias_table must be (heads, Th, Tw) = ({heads}, Th, Tw) with Th, Tw >= 1, got shape '
                         f'{checks.shape_str(table)}')
    if not isinstance(index, (tuple, list)) or len(index) != 2:
        raise TypeError(f'extra_bias_index must be a pair (index_h, index_w) of integer tensors, got {index!r:.80}')
    out = []
    for name, idx, size, limit in (('index_h', index[0], height, table.shape[1]),
                                   ('index_w', index[1], width, table.shape[2])):
        checks.tensor(name, idx, '(H or W, pooled size along that axis)', dtypes=checks.INDICES)
        checks.same_device(name, idx, 'q', q)
        if idx.dim() != 2 or idx.shape[0] != size:
            raise ValueError(f'{name} must be ({size}, P) = (H or W, pooled size along that axis), got shape '
                             f'{checks.shape_str(idx)}')
        checks.index_values(name, idx, 0, limit)
        out.append(idx)
    if out[0].shape[1] * out[1].shape[1] != num_extra:
        raise ValueError(f'extra_bias_index pooled sizes {out[0].shape[1]} x {out[1].shape[1]} must multiply to the '
                         f'number of extra keys M = {num_extra}')
    return out[0].long(), out[1].long()


@fx_leaf
def neighborhood_attention(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, *, dilation: int = 1,
        rel_pos_bias: Optional[torch.Tensor] = None, extra_k: Optional[torch.Tensor] = None,
        extra_v: Optional[torch.Tensor] = None, extra_bias: Optional[torch.Tensor] = None,
        scale: Union[None, float, torch.Tensor] = None, query_embedding: Optional[torch.Tensor] = None,
        length_scale: bool = False, learnable_tokens: Optional[torch.Tensor] = None,
        learnable_bias: Optional[torch.Tensor] = None, extra_bias_table: Optional[torch.Tensor] = None,
        extra_bias_index: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    r"""Attention of every query to the ``kernel_size x kernel_size`` window centred on it (+ extra keys).

    Shapes (``L = kernel_size**2``, ``N = H*W``, ``M`` extra keys):

    - ``q``, ``k``, ``v``: (B, heads, H, W, D), any H, W >= 1, any D >= 1.
    - ``rel_pos_bias``: (heads, L) or (heads, kernel_size, kernel_size); entry ``j = a*kernel_size + b``
      is the bias of the key at offset ``((a - kernel_size//2)*dilation, (b - kernel_size//2)*dilation)``
      (TransNeXt's ``relative_pos_bias_local``; F.unfold order).
    - ``extra_k``, ``extra_v``: (B, heads, M, D), both or neither: keys every query also attends to, in the
      same softmax (TransNeXt's pooled keys).
    - ``extra_bias``: (heads, N, M) or (1|B, heads, N, M), added to the extra scores (TransNeXt's CPB bias).
    - ``extra_bias_table`` (heads, Th, Tw) with ``extra_bias_index = (index_h, index_w)``, integer tensors
      (H, Ph) and (W, Pw) with ``Ph * Pw = M``: the same bias in factored form, never materialised at
      (N, M): ``extra_bias[n = y*W + x, m = py*Pw + px] = table[index_h[y, py],
      index_w[x, px]]``. This is TransNeXt's continuous position bias: its ``torch.unique`` table of
      (dy, dx) pairs is the product grid of the unique dy and dx values, so the CPB MLP output reshapes
      to (heads, Th, Tw) and each axis indexes separately. Exclusive with ``extra_bias``; the table gets
      the gradient.
    - ``scale``: None (``D**-0.5``), a float, or a tensor of shape (heads,) or broadcastable to
      (B, heads, H, W): the logit scale, per head or per query (TransNeXt: ``softplus(temperature)``).
    - ``query_embedding``: (heads, D) or (heads, 1, D), added to q before scaling (scores only).
    - ``length_scale``: multiply the logit scale by ``log(n_valid + M)``, ``n_valid`` the number of the
      query's window keys inside the image (TransNeXt's length-scaled cosine attention: border queries
      see fewer keys, so their scale is smaller).
    - ``learnable_tokens``: (heads, D, L) and ``learnable_bias``: (heads, L) or (heads, 1, L): TransNeXt's
      post-softmax term: ``q @ learnable_tokens + learnable_bias`` (with the raw ``q``, no embedding or
      scale) is added to the local attention weights before they weight the values.

    Semantics (per batch and head; keys outside the image are excluded, never clamped, unlike NATTEN)::

        qs[n]      = (q[n] + query_embedding) * scale [* log(n_valid(n) + M)]
        s_loc[n,j] = qs[n] . k[n + offset_j] + rel_pos_bias[j]        for the in-image neighbours j of n
        s_ext[n,m] = qs[n] . extra_k[m] + extra_bias[n,m]
        p          = softmax over {s_loc[n, valid j]} and {s_ext[n, :]} together
        out[n]     = sum_j (p_loc[n,j] + q[n] . learnable_tokens[:,j] + learnable_bias[j]) v[n + offset_j]
                     + sum_m p_ext[n,m] extra_v[m]

    TransNeXt's aggregated attention maps onto it as: the model computes the q/kv projections, the L2
    normalisation of q, k and the pooled keys, the pooling (sr conv, GELU, pool, LayerNorm), the CPB MLP
    (its output on the unique offsets is ``extra_bias_table``; gathered by its index it is ``extra_bias``)
    and the output projection; the op gets ``q = normalize(q)``, ``k = normalize(k)``,
    ``extra_k = normalize(k_pool)``, ``scale = softplus(temperature)``, ``length_scale=True`` and the
    block's ``query_embedding``, ``relative_pos_bias_local``, ``learnable_tokens``, ``learnable_bias``,
    and computes the scores, the joint softmax and both value aggregations. Returns (B, heads, H, W, D).

    Dtypes: all tensors share q's dtype and device; float32/float64 on CPU, float16/bfloat16/float32 on CUDA.
    Head dims up to 64 on Triton (:mod:`kernels.neighborhood.limits`; beyond, ``auto`` runs the cpu path).
    Gradients flow to every tensor argument on every backend. An empty batch (B = 0) gives an empty output.

    Operator: ``torch.ops.zoo.neighborhood_attention`` (:mod:`kernels.library`) after the elementwise prologue
    (``scaled_query``, plain PyTorch): one node under torch.compile, torch.export and FX; ONNX export decomposes it
    into the reference (unfold) math.

    Complexity: O(B * heads * N * (L + M) * D) time. The reference materialises L copies of K and V and the
    (N, L + M) scores; ``cpu`` keeps O(B * heads * rows * W * (L + M)) scores per chunk of query rows (16 MiB
    chunks), one zero-padded copy of K and V instead of L unfolded ones, and recomputes the scores in
    backward from one saved log-sum-exp per query; ``triton`` keeps only O(N) softmax statistics.
    A dense ``extra_bias`` has a dense gradient, (1|B, heads, N, M) like itself; the factored form
    (``extra_bias_table``) keeps the bias and its gradient at the table's size (cpu: gathered per chunk;
    triton: gathered in-kernel, gradient by atomic adds).
    """
    layout = '(B, heads, H, W, D)'
    checks.tensor('q', q, layout, ndim=5)
    checks.tensor('k', k, layout)
    checks.tensor('v', v, layout)
    b, heads, height, width, d = q.shape
    if min(q.shape[1:]) < 1:
        raise ValueError(f'q must be {layout} with heads, H, W, D >= 1 (B may be 0), got shape {checks.shape_str(q)}')
    for name, t in (('k', k), ('v', v)):
        checks.like(name, t, 'q', q)
        checks.expect_shape(name, t, tuple(q.shape), f'the shape of q {layout}')
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, numbers.Integral) or kernel_size < 1 \
            or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size must be an odd int >= 1, got {kernel_size!r}')
    kernel_size = int(kernel_size)
    dilation = checks.integer('dilation', dilation, 1)
    local_len = kernel_size ** 2

    if _optional('rel_pos_bias', rel_pos_bias, q, '(heads, kernel_size**2)') is not None:
        checks.expect_shape('rel_pos_bias', rel_pos_bias, [(heads, local_len), (heads, kernel_size, kernel_size)],
                            '(heads, kernel_size**2) or (heads, kernel_size, kernel_size)')
        rel_pos_bias = rel_pos_bias.reshape(heads, local_len)

    if (extra_k is None) != (extra_v is None):
        raise ValueError('extra_k and extra_v must be given together (both (B, heads, M, D)) or not at all')
    num_extra = 0
    if extra_k is not None:
        _optional('extra_k', extra_k, q, '(B, heads, M, D)')
        _optional('extra_v', extra_v, q, '(B, heads, M, D)')
        if extra_k.dim() != 4 or extra_k.shape[:2] != (b, heads) or extra_k.shape[3] != d or extra_k.shape[2] < 1:
            raise ValueError(f'extra_k must be (B, heads, M, D) = ({b}, {heads}, M, {d}) with M >= 1, got shape '
                             f'{checks.shape_str(extra_k)}')
        num_extra = extra_k.shape[2]
        checks.expect_shape('extra_v', extra_v, tuple(extra_k.shape), 'the shape of extra_k (B, heads, M, D)')
    if extra_bias is not None:
        if extra_k is None:
            raise ValueError('extra_bias needs extra_k and extra_v')
        _optional('extra_bias', extra_bias, q, '(1|B, heads, H*W, M)')
        n = height * width
        checks.expect_shape('extra_bias', extra_bias,
                            [(heads, n, num_extra), (1, heads, n, num_extra), (b, heads, n, num_extra)],
                            '(heads, H*W, M) or (1|B, heads, H*W, M)')
        if extra_bias.dim() == 3:
            extra_bias = extra_bias.unsqueeze(0)

    if extra_bias_table is not None or extra_bias_index is not None:
        extra_bias_index = _check_bias_table(extra_bias_table, extra_bias_index, extra_bias, extra_k, q)

    if isinstance(scale, torch.Tensor):
        checks.like('scale', scale, 'q', q)
        if scale.dim() == 1 and scale.shape[0] == heads:
            scale = scale.view(1, heads, 1, 1)
        else:
            try:
                ok = scale.dim() <= 4 and torch.broadcast_shapes(scale.shape, (b, heads, height, width)) == (
                    b, heads, height, width)
            except RuntimeError:
                ok = False
            if not ok:
                raise ValueError(f'scale must be ({heads},) = (heads,) or broadcastable to (B, heads, H, W) = '
                                 f'({b}, {heads}, {height}, {width}), got shape {checks.shape_str(scale)}')
            scale = scale.reshape((1,) * (4 - scale.dim()) + tuple(scale.shape))
    elif scale is None or isinstance(scale, numbers.Real) and not isinstance(scale, bool):
        scale = checks.scale(scale)
        scale = d ** -0.5 if scale is None else scale
    else:
        raise TypeError(f'scale must be None, a float or a tensor, got {type(scale).__name__}')

    if _optional('query_embedding', query_embedding, q, '(heads, D)') is not None:
        checks.expect_shape('query_embedding', query_embedding, [(heads, d), (heads, 1, d)],
                            '(heads, D) or (heads, 1, D)')
        query_embedding = query_embedding.reshape(heads, d)
    checks.flag('length_scale', length_scale)
    if _optional('learnable_tokens', learnable_tokens, q, '(heads, D, kernel_size**2)') is not None:
        checks.expect_shape('learnable_tokens', learnable_tokens, (heads, d, local_len), '(heads, D, kernel_size**2)')
    if _optional('learnable_bias', learnable_bias, q, '(heads, kernel_size**2)') is not None:
        checks.expect_shape('learnable_bias', learnable_bias, [(heads, local_len), (heads, 1, local_len)],
                            '(heads, kernel_size**2) or (heads, 1, kernel_size**2)')
        learnable_bias = learnable_bias.reshape(heads, local_len)

    # the elementwise prologue (plain PyTorch: autograd, compile and export see it), then the operator
    qs = reference.scaled_query(q, scale, query_embedding, length_scale, num_extra, kernel_size, dilation)
    index_h, index_w = extra_bias_index if extra_bias_index is not None else (None, None)
    return _OP(qs=qs, q=q, k=k, v=v, rel_pos_bias=rel_pos_bias, extra_k=extra_k, extra_v=extra_v,
               extra_bias=extra_bias, learnable_tokens=learnable_tokens, learnable_bias=learnable_bias,
               extra_bias_table=extra_bias_table, index_h=index_h, index_w=index_w, kernel_size=kernel_size,
               dilation=dilation, backend=requested_backend())[0]
