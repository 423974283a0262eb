"""Neighborhood attention: each query attends to the window centred on it, plus optional extra keys.

Designed so that TransNeXt's aggregated attention (arXiv 2311.17132, DaiShiResearch/TransNeXt
``classification/attention_native.py``) runs fully through this op, without unfolding keys.
"""
import math
from typing import Optional, Tuple, Union

import torch

from kernels.backend import dispatch

from . import cpu, reference

__all__ = ['neighborhood_attention']

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _triton_impl(*args, **kwargs):
    from . import triton as triton_backend  # imported only when the triton backend is chosen
    return triton_backend.neighborhood_attention(*args, **kwargs)


def _describe(name: str, t: torch.Tensor) -> str:
    return f'{name} of shape {tuple(t.shape)} and dtype {t.dtype} on {t.device}'


def _check_tensor(name: str, t: object, q: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f'{name} must be a torch.Tensor, got {type(t).__name__}')
    if t.dtype != q.dtype:
        raise TypeError(f'{_describe(name, t)}: expected dtype {q.dtype} (the dtype of q)')
    if t.device != q.device:
        raise ValueError(f'{_describe(name, t)}: expected device {q.device} (the device of q)')
    return t


def _check_shape(name: str, t: torch.Tensor, allowed: list, what: str) -> None:
    if tuple(t.shape) not in [tuple(a) for a in allowed]:
        raise ValueError(f'{_describe(name, t)}: expected {what}')


def _check_bias_table(table: Optional[torch.Tensor], index: object, extra_bias: Optional[torch.Tensor],
                      extra_k: Optional[torch.Tensor], q: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    if table is None or index is None:
        raise ValueError('extra_bias_table and extra_bias_index must be given together')
    if extra_k is None:
        raise ValueError('extra_bias_table needs extra_k and extra_v')
    if extra_bias is not None:
        raise ValueError('give either extra_bias or extra_bias_table/extra_bias_index, not both')
    _check_tensor('extra_bias_table', table, q)
    heads, height, width, num_extra = q.shape[1], q.shape[2], q.shape[3], extra_k.shape[2]
    if table.dim() != 3 or table.shape[0] != heads or min(table.shape) < 1:
        raise ValueError(f'{_describe("extra_bias_table", table)}: expected ({heads}, Th, Tw) = (heads, Th, Tw)')
    if not isinstance(index, (tuple, list)) or len(index) != 2:
        raise TypeError(f'extra_bias_index must be a pair (index_h, index_w) of integer tensors, got {index!r:.80}')
    out = []
    for name, idx, size, limit in (('index_h', index[0], height, table.shape[1]),
                                   ('index_w', index[1], width, table.shape[2])):
        if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int32, torch.int64):
            raise TypeError(f'extra_bias_index {name} must be an int32/int64 tensor, got '
                            f'{idx.dtype if isinstance(idx, torch.Tensor) else type(idx).__name__}')
        if idx.device != q.device:
            raise ValueError(f'{_describe(name, idx)}: expected device {q.device} (the device of q)')
        if idx.dim() != 2 or idx.shape[0] != size:
            raise ValueError(f'{_describe(name, idx)}: expected ({size}, P) = (H or W, pooled size along that axis)')
        # meta tensors (shape-only model construction and FLOP counting) have no values to check
        if idx.numel() and idx.device.type != 'meta' and (int(idx.min()) < 0 or int(idx.max()) >= limit):
            raise ValueError(f'{_describe(name, idx)}: values must lie in [0, {limit}), the table\'s size there')
        out.append(idx.long())
    if out[0].shape[1] * out[1].shape[1] != num_extra:
        raise ValueError(f'extra_bias_index pooled sizes {out[0].shape[1]} x {out[1].shape[1]} must multiply to the '
                         f'number of extra keys M = {num_extra}')
    return out[0], out[1]


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
    Gradients flow to every tensor argument on every backend.

    Complexity: O(B * heads * N * (L + M) * D) time. The reference materialises L copies of K and V and the
    (N, L + M) scores; ``cpu`` keeps O(B * heads * rows * W * (L + M)) scores per chunk of query rows (16 MiB
    chunks), one zero-padded copy of K and V instead of L unfolded ones, and recomputes the scores in
    backward from one saved log-sum-exp per query; ``triton`` keeps only O(N) softmax statistics.
    A dense ``extra_bias`` has a dense gradient, (1|B, heads, N, M) like itself; the factored form
    (``extra_bias_table``) keeps the bias and its gradient at the table's size (cpu: gathered per chunk;
    triton: gathered in-kernel, gradient by atomic adds).
    """
    for name, t in (('q', q), ('k', k), ('v', v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'{name} must be a torch.Tensor, got {type(t).__name__}')
    if q.dim() != 5:
        raise ValueError(f'{_describe("q", q)}: expected 5 dims (B, heads, H, W, D)')
    if q.dtype not in _FLOAT_DTYPES:
        raise TypeError(f'{_describe("q", q)}: expected a floating dtype (float16, bfloat16, float32, float64)')
    b, heads, height, width, d = q.shape
    if min(q.shape) < 1:
        raise ValueError(f'{_describe("q", q)}: every dimension must be >= 1')
    for name, t in (('k', k), ('v', v)):
        _check_tensor(name, t, q)
        _check_shape(name, t, [q.shape], f'the shape of q {tuple(q.shape)}')
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size must be an odd int >= 1, got {kernel_size!r}')
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f'dilation must be an int >= 1, got {dilation!r}')
    local_len = kernel_size ** 2
    tensors = [q, k, v]

    if rel_pos_bias is not None:
        _check_tensor('rel_pos_bias', rel_pos_bias, q)
        _check_shape('rel_pos_bias', rel_pos_bias, [(heads, local_len), (heads, kernel_size, kernel_size)],
                     f'({heads}, {local_len}) or ({heads}, {kernel_size}, {kernel_size}) = (heads, kernel_size**2)')
        rel_pos_bias = rel_pos_bias.reshape(heads, local_len)
        tensors.append(rel_pos_bias)

    if (extra_k is None) != (extra_v is None):
        raise ValueError('extra_k and extra_v must be given together (both (B, heads, M, D)) or not at all')
    num_extra = 0
    if extra_k is not None:
        _check_tensor('extra_k', extra_k, q)
        _check_tensor('extra_v', extra_v, q)
        if extra_k.dim() != 4 or extra_k.shape[:2] != (b, heads) or extra_k.shape[3] != d or extra_k.shape[2] < 1:
            raise ValueError(f'{_describe("extra_k", extra_k)}: expected ({b}, {heads}, M, {d}) = (B, heads, M, D)')
        num_extra = extra_k.shape[2]
        _check_shape('extra_v', extra_v, [extra_k.shape], f'the shape of extra_k {tuple(extra_k.shape)}')
        tensors += [extra_k, extra_v]
    if extra_bias is not None:
        if extra_k is None:
            raise ValueError('extra_bias needs extra_k and extra_v')
        _check_tensor('extra_bias', extra_bias, q)
        n = height * width
        _check_shape('extra_bias', extra_bias, [(heads, n, num_extra), (1, heads, n, num_extra),
                                                (b, heads, n, num_extra)],
                     f'({heads}, {n}, {num_extra}) or (1|{b}, {heads}, {n}, {num_extra}) = (B, heads, H*W, M)')
        if extra_bias.dim() == 3:
            extra_bias = extra_bias.unsqueeze(0)
        tensors.append(extra_bias)

    if extra_bias_table is not None or extra_bias_index is not None:
        extra_bias_index = _check_bias_table(extra_bias_table, extra_bias_index, extra_bias, extra_k, q)
        tensors.append(extra_bias_table)

    if scale is None:
        scale = d ** -0.5
    elif isinstance(scale, torch.Tensor):
        _check_tensor('scale', scale, q)
        if scale.dim() == 1 and scale.shape[0] == heads:
            scale = scale.view(1, heads, 1, 1)
        else:
            try:
                torch.broadcast_shapes(scale.shape, (b, heads, height, width))
                ok = scale.dim() <= 4 and torch.broadcast_shapes(scale.shape, (b, heads, height, width)) == (
                    b, heads, height, width)
            except RuntimeError:
                ok = False
            if not ok:
                raise ValueError(f'{_describe("scale", scale)}: expected ({heads},) or a shape broadcastable to '
                                 f'({b}, {heads}, {height}, {width}) = (B, heads, H, W)')
            scale = scale.reshape((1,) * (4 - scale.dim()) + tuple(scale.shape))
        tensors.append(scale)
    elif isinstance(scale, (int, float)) and not isinstance(scale, bool):
        if not math.isfinite(scale):
            raise ValueError(f'scale must be finite, got {scale!r}')
        scale = float(scale)
    else:
        raise TypeError(f'scale must be None, a float or a tensor, got {type(scale).__name__}')

    if query_embedding is not None:
        _check_tensor('query_embedding', query_embedding, q)
        _check_shape('query_embedding', query_embedding, [(heads, d), (heads, 1, d)],
                     f'({heads}, {d}) or ({heads}, 1, {d}) = (heads, D)')
        query_embedding = query_embedding.reshape(heads, d)
        tensors.append(query_embedding)
    if not isinstance(length_scale, bool):
        raise TypeError(f'length_scale must be a bool, got {type(length_scale).__name__}')
    if learnable_tokens is not None:
        _check_tensor('learnable_tokens', learnable_tokens, q)
        _check_shape('learnable_tokens', learnable_tokens, [(heads, d, local_len)],
                     f'({heads}, {d}, {local_len}) = (heads, D, kernel_size**2)')
        tensors.append(learnable_tokens)
    if learnable_bias is not None:
        _check_tensor('learnable_bias', learnable_bias, q)
        _check_shape('learnable_bias', learnable_bias, [(heads, local_len), (heads, 1, local_len)],
                     f'({heads}, {local_len}) or ({heads}, 1, {local_len}) = (heads, kernel_size**2)')
        learnable_bias = learnable_bias.reshape(heads, local_len)
        tensors.append(learnable_bias)

    impl = dispatch('neighborhood_attention', {'reference': reference.neighborhood_attention,
                                               'cpu': cpu.neighborhood_attention, 'triton': _triton_impl},
                    *tensors)
    return impl(q, k, v, kernel_size, dilation, rel_pos_bias, extra_k, extra_v, extra_bias, scale, query_embedding,
                length_scale, learnable_tokens, learnable_bias, extra_bias_table, extra_bias_index)
