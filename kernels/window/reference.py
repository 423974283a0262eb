"""Window attention in plain PyTorch: pad, partition, scores, mask, softmax. The ground truth of the op."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ['window_attention', 'padded_size', 'partition', 'reverse', 'relative_bias', 'relative_bias_grad']


def padded_size(size: int, window: int) -> int:
    """The map size rounded up to a multiple of the window (block) or grid (grid) size. A floor division of a
    non-negative number: ONNX export translates a floor division of a negative one as a truncating division."""
    return (size + window - 1) // window * window


def partition(x: torch.Tensor, window_size: Tuple[int, int], grid: bool) -> torch.Tensor:
    """(B, heads, Hp, Wp, D) -> (B, heads, windows, wh * ww, D) in timm's window/grid_partition order.

    Block windows are numbered row-major over the (Hp / wh, Wp / ww) window grid, tokens row-major inside a
    window. Grid window (i, j) holds the tokens (a * Hp / wh + i, b * Wp / ww + j), token index a * ww + b.
    """
    B, heads, Hp, Wp, D = x.shape
    wh, ww = window_size
    if grid:
        x = x.view(B, heads, wh, Hp // wh, ww, Wp // ww, D).permute(0, 1, 3, 5, 2, 4, 6)
    else:
        x = x.view(B, heads, Hp // wh, wh, Wp // ww, ww, D).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(B, heads, (Hp // wh) * (Wp // ww), wh * ww, D)


def reverse(x: torch.Tensor, window_size: Tuple[int, int], grid: bool, Hp: int, Wp: int) -> torch.Tensor:
    """The inverse of :func:`partition`."""
    B, heads, _, _, D = x.shape
    wh, ww = window_size
    if grid:
        x = x.view(B, heads, Hp // wh, Wp // ww, wh, ww, D).permute(0, 1, 4, 2, 5, 3, 6)
    else:
        x = x.view(B, heads, Hp // wh, Wp // ww, wh, ww, D).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(B, heads, Hp, Wp, D)


def relative_bias(table: torch.Tensor, window_size: Tuple[int, int]) -> torch.Tensor:
    """(heads, 2wh-1, 2ww-1) table -> (heads, N, N) bias, N = wh * ww, as timm's RelPosBiasTf.get_bias().

    Query token (qa, qb) and key token (ka, kb) (in-window coordinates) get table[:, ka - qa + wh - 1,
    kb - qb + ww - 1]: the key-minus-query offset of the TensorFlow MaxViT models.
    """
    wh, ww = window_size
    a = torch.arange(wh, device=table.device).repeat_interleave(ww)
    b = torch.arange(ww, device=table.device).repeat(wh)
    rows = a[None, :] - a[:, None] + wh - 1
    cols = b[None, :] - b[:, None] + ww - 1
    return table[:, rows, cols]


def relative_bias_grad(dbias: torch.Tensor, window_size: Tuple[int, int]) -> torch.Tensor:
    """(heads, N, N) gradient of :func:`relative_bias` -> (heads, 2wh-1, 2ww-1) gradient of the table.

    The transpose of the gather as two one-hot contractions: fixed-order reductions, hence deterministic (unlike
    index_add/scatter_add on CUDA)."""
    wh, ww = window_size
    heads = dbias.shape[0]

    def one_hot(n: int) -> torch.Tensor:  # [query, key, key - query + n - 1]
        i = torch.arange(n, device=dbias.device)
        return torch.nn.functional.one_hot(i[None, :] - i[:, None] + n - 1, 2 * n - 1).to(dbias.dtype)

    dbias = dbias.reshape(heads, wh, ww, wh, ww)  # (h, qa, qb, ka, kb)
    return torch.einsum('hapbq,abu,pqv->huv', dbias, one_hot(wh), one_hot(ww))


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window_size: Tuple[int, int], grid: bool,
                     rel_pos_bias: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    """Arguments already validated by :func:`kernels.window.window_attention`; window_size is (wh, ww)."""
    B, heads, H, W, _ = q.shape
    wh, ww = window_size
    Hp, Wp = padded_size(H, wh), padded_size(W, ww)

    def pad_and_partition(x: torch.Tensor) -> torch.Tensor:
        return partition(F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H)), window_size, grid)

    qw, kw, vw = pad_and_partition(q), pad_and_partition(k), pad_and_partition(v)
    scores = (qw * scale) @ kw.transpose(-2, -1)  # (B, heads, windows, N, N)
    if rel_pos_bias is not None:
        scores = scores + relative_bias(rel_pos_bias.to(q.dtype), window_size)[:, None]
    real = q.new_ones(1, 1, H, W, 1, dtype=torch.bool)
    real_keys = pad_and_partition(real)[..., 0]  # (1, 1, windows, N)
    scores = scores.masked_fill(~real_keys[..., None, :], float('-inf'))
    out = scores.softmax(dim=-1) @ vw
    return reverse(out, window_size, grid, Hp, Wp)[:, :, :H, :W]
