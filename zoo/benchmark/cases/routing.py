"""Benchmark wrappers for kernels.routing: BiFormer's routed attention and Sparsifiner's sparse attention.

BiFormer wrappers take random float tensors ``q, k, v`` of shape (B, heads, H, W, D) (the unpadded map) and
``n_win``, ``topk``; each pads the map up to a multiple of ``n_win`` (BiFormer's ``auto_pad``), routes the
regions (region means, affinity, top-k, as BiFormer does inside every block), attends with BiFormer's scale
``(heads * D) ** -0.5`` and crops back, returning (B, heads, H, W, D):

- :func:`biformer_cpu` / :func:`biformer_triton`: ``kernels.routing`` on its cpu / triton backend;
- :func:`biformer_reference`: the op's reference backend (the gather formulation, kernels' layout);
- :func:`biformer_legacy`: BiFormer's own data flow (``ops/bra_legacy.py``, rewritten here from reading it):
  channels-last maps, keys and values concatenated, ``torch.gather`` of every routed region's key/value
  tokens from a view expanded over the query regions, then dense attention per query region.

Sparse wrappers take ``q, k, v`` (B, heads, N, D) and ``keep`` (the kept share of keys per query, Sparsifiner's
``attn_keep_rate``). The connectivity (which keys each query keeps) is drawn once per shape from a fixed seed and
cached, so that no candidate's time includes building it:

- :func:`sparse_cpu` / :func:`sparse_triton` / :func:`sparse_reference`: ``kernels.routing.sparse_attention``
  with a (B, heads, N, K) key index, K = ceil(keep * N);
- :func:`sparse_cpu_keep100` / ``keep50`` / ``keep10``: the cpu backend at that keep rate whatever ``keep`` says
  (one case measures every rate beside the dense attention);
- :func:`sparsifiner_dense_masked`: Sparsifiner's ``Attention.forward`` (rewritten from reading
  ``src/models/sparsifiner.py``): dense scores, ``masked_fill`` of the (B, heads, N, N) 0/1 connectivity with
  ``-inf``, softmax, ``nan_to_num``, product with v;
- :func:`dense_sdpa`: the dense attention the sparse one replaces, as timm's DeiT runs it
  (``F.scaled_dot_product_attention``, PyTorch's fused kernel).
"""
import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from kernels import region_topk, routed_attention, sparse_attention, use_backend

__all__ = ['biformer_cpu', 'biformer_triton', 'biformer_reference', 'biformer_legacy', 'sparse_cpu',
           'sparse_cpu_keep100', 'sparse_cpu_keep50', 'sparse_cpu_keep10', 'sparse_triton', 'sparse_reference',
           'sparsifiner_dense_masked', 'dense_sdpa']


def _pad(x: torch.Tensor, n_win: int) -> torch.Tensor:
    pad_h, pad_w = (-x.shape[2]) % n_win, (-x.shape[3]) % n_win
    return F.pad(x, (0, 0, 0, pad_w, 0, pad_h)) if pad_h or pad_w else x


def _biformer(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_win: int, topk: int):
    height, width = q.shape[2:4]
    q, k, v = (_pad(t, n_win) for t in (q, k, v))
    with use_backend(backend):
        index = region_topk(q.detach(), k.detach(), n_win, topk)
        out = routed_attention(q, k, v, index, n_win, scale=(q.shape[1] * q.shape[-1]) ** -0.5)
    return out[:, :, :height, :width]


def biformer_cpu(q, k, v, n_win: int = 7, topk: int = 4) -> torch.Tensor:
    return _biformer('cpu', q, k, v, n_win, topk)


def biformer_triton(q, k, v, n_win: int = 7, topk: int = 4) -> torch.Tensor:
    return _biformer('triton', q, k, v, n_win, topk)


def biformer_reference(q, k, v, n_win: int = 7, topk: int = 4) -> torch.Tensor:
    return _biformer('reference', q, k, v, n_win, topk)


def biformer_legacy(q, k, v, n_win: int = 7, topk: int = 4) -> torch.Tensor:
    b, heads, height, width, d = q.shape
    dv = v.shape[-1]
    # BiFormer's layout: channels-last maps with heads-major channels, padded (auto_pad)
    q, k, v = (_pad(t, n_win).permute(0, 2, 3, 1, 4).reshape(b, *_pad(t, n_win).shape[2:4], -1) for t in (q, k, v))
    n, hh, ww, c_qk = q.shape
    rh, rw = hh // n_win, ww // n_win
    p2, w2 = n_win * n_win, rh * rw

    def windows(x: torch.Tensor) -> torch.Tensor:  # n (j h) (i w) c -> n (j i) (h w) c
        return x.view(n, n_win, rh, n_win, rw, -1).permute(0, 1, 3, 2, 4, 5).reshape(n, p2, w2, -1)

    q_pix, kv_pix = windows(q), windows(torch.cat([k, v], -1))
    scale = c_qk ** -0.5
    q_win, k_win = q_pix.detach().mean(2), kv_pix[..., :c_qk].detach().mean(2)  # region means
    r_idx = torch.topk((q_win * scale) @ k_win.transpose(-2, -1), k=topk, dim=-1).indices
    kv_sel = torch.gather(kv_pix.view(n, 1, p2, w2, -1).expand(-1, p2, -1, -1, -1), 2,
                          r_idx.view(n, p2, topk, 1, 1).expand(-1, -1, -1, w2, kv_pix.shape[-1]))
    k_sel, v_sel = kv_sel.split([c_qk, heads * dv], -1)
    k_sel = k_sel.reshape(n, p2, topk, w2, heads, d).permute(0, 1, 4, 5, 2, 3).reshape(n * p2, heads, d, topk * w2)
    v_sel = v_sel.reshape(n, p2, topk, w2, heads, dv).permute(0, 1, 4, 2, 3, 5).reshape(n * p2, heads, topk * w2, dv)
    q_pix = q_pix.reshape(n * p2, w2, heads, d).transpose(1, 2)
    out = torch.softmax((q_pix * scale) @ k_sel, dim=-1) @ v_sel  # (n p2, heads, w2, dv)
    out = out.reshape(n, n_win, n_win, heads, rh, rw, dv).permute(0, 3, 1, 4, 2, 5, 6).reshape(n, heads, hh, ww, dv)
    return out[:, :, :height, :width]


_CONNECTIVITY: Dict[Tuple, Tuple[torch.Tensor, torch.Tensor]] = {}


def _connectivity(q: torch.Tensor, n_k: int, keep: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(key_index (B, heads, N, K) int64, dense 0/1 mask (B, heads, N, Nk) bool), fixed seed, cached per shape."""
    key = (tuple(q.shape), n_k, keep, q.device)
    if key not in _CONNECTIVITY:
        _CONNECTIVITY[key] = _draw_connectivity(q, n_k, keep)
    return _CONNECTIVITY[key]


@torch.inference_mode(False)  # normal tensors: a train-mode run after an inference one saves them for backward
def _draw_connectivity(q: torch.Tensor, n_k: int, keep: float) -> Tuple[torch.Tensor, torch.Tensor]:
    b, h, n, _ = q.shape
    n_keys = math.ceil(keep * n_k)
    g = torch.Generator().manual_seed(0)
    index = torch.stack([torch.randperm(n_k, generator=g)[:n_keys] for _ in range(b * h * n)])
    index = index.view(b, h, n, n_keys).to(q.device)
    mask = torch.zeros(b, h, n, n_k, dtype=torch.bool, device=q.device).scatter_(-1, index, True)
    return index, mask


def _sparse(backend: str, q, k, v, keep: float) -> torch.Tensor:
    index, _ = _connectivity(q, k.shape[2], keep)
    with use_backend(backend):
        return sparse_attention(q, k, v, index)


def sparse_cpu(q, k, v, keep: float = 0.25) -> torch.Tensor:
    return _sparse('cpu', q, k, v, keep)


def sparse_cpu_keep100(q, k, v, keep: float = 0.25) -> torch.Tensor:
    return _sparse('cpu', q, k, v, 1.0)


def sparse_cpu_keep50(q, k, v, keep: float = 0.25) -> torch.Tensor:
    return _sparse('cpu', q, k, v, 0.5)


def sparse_cpu_keep10(q, k, v, keep: float = 0.25) -> torch.Tensor:
    return _sparse('cpu', q, k, v, 0.1)


def dense_sdpa(q, k, v, keep: float = 0.25) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def sparse_triton(q, k, v, keep: float = 0.25) -> torch.Tensor:
    return _sparse('triton', q, k, v, keep)


def sparse_reference(q, k, v, keep: float = 0.25) -> torch.Tensor:
    return _sparse('reference', q, k, v, keep)


def sparsifiner_dense_masked(q, k, v, keep: float = 0.25) -> torch.Tensor:
    _, mask = _connectivity(q, k.shape[2], keep)
    attn = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    attn = attn.masked_fill(~mask, float('-inf')).softmax(dim=-1)
    return torch.nan_to_num(attn) @ v
