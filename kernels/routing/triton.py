"""Triton kernels for routed attention (BiFormer) and index-sparse attention (Sparsifiner).

Routed attention is block-sparse flash attention driven by the region index: a program owns a block of one
query region's tokens and walks the ``topk * T`` routed key tokens in blocks, computing each key's address from
its region id (``region_index``) and its place in the region, so keys and values are read where they lie and
nothing is gathered into memory; online softmax in float32, the log-sum-exp kept for backward. Backward is
deterministic, without atomics: dq walks the same key lists, and dk/dv walk an inverted index (for each key
region, the query regions routed to it, with multiplicity) built with a stable sort on the device.

Sparse attention runs one query per program over its ``K`` listed keys in blocks (scores as vector products:
the keys of neighbouring queries differ, so there is no shared tile for tensor cores); its dk/dv pass likewise
walks, per key, the inverted list of the (query, slot) pairs that name it. Cost is O(K), never O(N), per query.

Launch configs: :func:`_routed_config` maps (kernel, region block, padded head dim, dot precision) to the tiles
and warps, and :func:`_sparse_config` does the same for the sparse kernels; they are the one definition: the
launchers call them and ``_register`` hands every config they can return to :mod:`kernels.aot`, which proves
them spill-free on sm_80 and sm_90 (``python -m kernels.aot --only routing``). Regions of up to 16 tokens use
16-row query tiles with 4 warps (2 in dk/dv at head dims up to 32); larger regions use 64-row query tiles
with 8 warps and narrower key tiles (``BLOCK_N`` 32; 16 in dq at head dim 64); the dk/dv kernel's key and
query tiles shrink with the head dim. Queries,
keys and values may have different head widths D and Dv; both are padded (masked) to one power of two >= 16, at
most :data:`MAX_HEAD_DIM` = 64, the largest the kernels take without spilling (:mod:`kernels.routing` checks it
before importing this module).

Precision: dots accumulate in fp32. fp32 inputs use tf32 tensor cores on GPUs (IEEE fp32 dots need more
registers than a block has, ptxas spills), so fp32 results carry tf32's 10-bit mantissa, i.e. fp16-like errors
(about 1e-3 relative; the tests allow 3e-3 on GPUs, as for fp16). Under TRITON_INTERPRET=1 fp32 dots run in
IEEE precision (tests compare them to 2e-5). The sparse kernels use no tensor cores (fp32 vector products).
"""
from typing import Dict, List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .. import aot
from ..backend import triton_interpreted
from ..library import Backend
from . import cpu
from .limits import MAX_HEAD_DIM

__all__ = ['topk_backend', 'routed_backend', 'sparse_backend']

_HEAD_DIMS = (16, 32, 64)
_REGION_BLOCKS = (16, 64)


@triton.jit
def _dot(a, b, TF32: tl.constexpr):
    if TF32:
        return tl.dot(a, b, input_precision='tf32')
    else:
        return tl.dot(a, b, input_precision='ieee')


@triton.jit
def _region_tokens(region, offs, n_win, reg_h, reg_w, width):
    """Flat token index (y * width + x) of the tokens ``offs`` (raster order) of ``region`` (raster order)."""
    y = (region // n_win) * reg_h + offs // reg_w
    x = (region % n_win) * reg_w + offs % reg_w
    return y * width + x


@triton.jit
def _real_tokens(region, offs, n_win, reg_h, reg_w, valid_h, valid_w):
    """Whether the tokens ``offs`` of ``region`` lie inside the valid (unpadded) valid_h x valid_w map."""
    y = (region // n_win) * reg_h + offs // reg_w
    x = (region % n_win) * reg_w + offs % reg_w
    return (y < valid_h) & (x < valid_w)


@triton.jit
def _routed_fwd(Q, K, V, OUT, LSE, IDX, scale, height, width, valid_h, valid_w, heads, n_win, reg_h, reg_w, topk,
                idx_sb, idx_sh, qk_dim, v_dim, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, TF32: tl.constexpr, MASKED: tl.constexpr):
    pid_m = tl.program_id(0)
    region = tl.program_id(1)
    bh = tl.program_id(2)
    b = bh // heads
    hd = bh % heads
    tokens = reg_h * reg_w
    hw = (height * width).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < tokens
    tok_m = _region_tokens(region, offs_m, n_win, reg_h, reg_w, width)
    offs_dk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_dk = offs_dk < qk_dim
    mask_dv = offs_dv < v_dim
    q_base = Q + bh * hw * qk_dim
    k_base = K + bh * hw * qk_dim
    v_base = V + bh * hw * v_dim
    q = tl.load(q_base + tok_m[:, None] * qk_dim + offs_dk[None, :], mask=mask_m[:, None] & mask_dk[None, :],
                other=0.0)
    qk_scale = scale * 1.4426950408889634
    if MASKED:
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite: a block whose keys are all padding leaves no NaN
    else:
        m_i = tl.full([BLOCK_M], float('-inf'), tl.float32)  # the first key of every block is a real one
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    idx_base = IDX + b * idx_sb + hd * idx_sh + region * topk
    n_keys = topk * tokens
    for start in range(0, n_keys, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n_keys
        key_region = tl.load(idx_base + offs_n // tokens, mask=mask_n, other=0)
        tok_n = _region_tokens(key_region, offs_n % tokens, n_win, reg_h, reg_w, width)
        if MASKED:
            real_n = mask_n & _real_tokens(key_region, offs_n % tokens, n_win, reg_h, reg_w, valid_h, valid_w)
        else:
            real_n = mask_n
        k = tl.load(k_base + tok_n[:, None] * qk_dim + offs_dk[None, :], mask=real_n[:, None] & mask_dk[None, :],
                    other=0.0)
        s = _dot(q, tl.trans(k), TF32) * qk_scale
        s = tl.where(real_n[None, :], s, float('-inf'))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + tok_n[:, None] * v_dim + offs_dv[None, :], mask=real_n[:, None] & mask_dv[None, :],
                    other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, TF32)
        m_i = m_new
    if MASKED:  # a query without any real key: zeros, and an infinite lse (p = 0 in backward)
        has_keys = l_i > 0.0
        l_i = tl.where(has_keys, l_i, 1.0)
        lse = tl.where(has_keys, m_i + tl.log2(l_i), float('inf'))
    else:
        lse = m_i + tl.log2(l_i)
    acc = acc / l_i[:, None]
    tl.store(OUT + bh * hw * v_dim + tok_m[:, None] * v_dim + offs_dv[None, :], acc.to(OUT.dtype.element_ty),
             mask=mask_m[:, None] & mask_dv[None, :])
    # base-2 units of the scaled logits
    tl.store(LSE + bh * hw + tok_m, lse, mask=mask_m)


@triton.jit
def _routed_bwd_dq(Q, K, V, DO, DQ, LSE, DELTA, IDX, scale, height, width, valid_h, valid_w, heads, n_win, reg_h,
                   reg_w, topk, idx_sb, idx_sh, qk_dim, v_dim, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TF32: tl.constexpr, MASKED: tl.constexpr):
    pid_m = tl.program_id(0)
    region = tl.program_id(1)
    bh = tl.program_id(2)
    b = bh // heads
    hd = bh % heads
    tokens = reg_h * reg_w
    hw = (height * width).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < tokens
    tok_m = _region_tokens(region, offs_m, n_win, reg_h, reg_w, width)
    offs_dk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_dk = offs_dk < qk_dim
    mask_dv = offs_dv < v_dim
    k_base = K + bh * hw * qk_dim
    v_base = V + bh * hw * v_dim
    qmask = mask_m[:, None] & mask_dk[None, :]
    q = tl.load(Q + bh * hw * qk_dim + tok_m[:, None] * qk_dim + offs_dk[None, :], mask=qmask, other=0.0)
    do = tl.load(DO + bh * hw * v_dim + tok_m[:, None] * v_dim + offs_dv[None, :],
                 mask=mask_m[:, None] & mask_dv[None, :], other=0.0)
    lse = tl.load(LSE + bh * hw + tok_m, mask=mask_m, other=0.0)
    delta = tl.load(DELTA + bh * hw + tok_m, mask=mask_m, other=0.0)
    qk_scale = scale * 1.4426950408889634
    dq = tl.zeros([BLOCK_M, BLOCK_DQK], tl.float32)
    idx_base = IDX + b * idx_sb + hd * idx_sh + region * topk
    n_keys = topk * tokens
    for start in range(0, n_keys, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n_keys
        key_region = tl.load(idx_base + offs_n // tokens, mask=mask_n, other=0)
        tok_n = _region_tokens(key_region, offs_n % tokens, n_win, reg_h, reg_w, width)
        if MASKED:
            real_n = mask_n & _real_tokens(key_region, offs_n % tokens, n_win, reg_h, reg_w, valid_h, valid_w)
        else:
            real_n = mask_n
        k = tl.load(k_base + tok_n[:, None] * qk_dim + offs_dk[None, :], mask=real_n[:, None] & mask_dk[None, :],
                    other=0.0)
        v = tl.load(v_base + tok_n[:, None] * v_dim + offs_dv[None, :], mask=real_n[:, None] & mask_dv[None, :],
                    other=0.0)
        s = _dot(q, tl.trans(k), TF32) * qk_scale
        p = tl.where(real_n[None, :], tl.exp2(s - lse[:, None]), 0.0)
        dp = _dot(do, tl.trans(v), TF32)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, TF32)
    tl.store(DQ + bh * hw * qk_dim + tok_m[:, None] * qk_dim + offs_dk[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=qmask)


@triton.jit
def _routed_bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA, QLIST, OFFS, scale, height, width, valid_h, valid_w, heads,
                     n_win, reg_h, reg_w, row_sb, row_sh, qk_dim, v_dim, BLOCK_DQK: tl.constexpr,
                     BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TF32: tl.constexpr,
                     MASKED: tl.constexpr):
    pid_n = tl.program_id(0)
    key_region = tl.program_id(1)
    bh = tl.program_id(2)
    b = bh // heads
    hd = bh % heads
    n_reg = n_win * n_win
    tokens = reg_h * reg_w
    hw = (height * width).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < tokens
    tok_n = _region_tokens(key_region, offs_n, n_win, reg_h, reg_w, width)
    if MASKED:
        real_n = mask_n & _real_tokens(key_region, offs_n, n_win, reg_h, reg_w, valid_h, valid_w)
    else:
        real_n = mask_n
    offs_dk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_dk = offs_dk < qk_dim
    mask_dv = offs_dv < v_dim
    q_base = Q + bh * hw * qk_dim
    do_base = DO + bh * hw * v_dim
    kmask = mask_n[:, None] & mask_dk[None, :]
    vmask = mask_n[:, None] & mask_dv[None, :]
    k = tl.load(K + bh * hw * qk_dim + tok_n[:, None] * qk_dim + offs_dk[None, :], mask=kmask, other=0.0)
    v = tl.load(V + bh * hw * v_dim + tok_n[:, None] * v_dim + offs_dv[None, :], mask=vmask, other=0.0)
    qk_scale = scale * 1.4426950408889634
    dk = tl.zeros([BLOCK_N, BLOCK_DQK], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    row = (b * row_sb + hd * row_sh) * n_reg + key_region
    first = tl.load(OFFS + row)
    last = tl.load(OFFS + row + 1)
    for e in range(first, last):  # the query regions routed to this key region, with multiplicity
        query_region = tl.load(QLIST + e)
        for start in range(0, tokens, BLOCK_M):
            offs_m = start + tl.arange(0, BLOCK_M)
            mask_m = offs_m < tokens
            tok_m = _region_tokens(query_region, offs_m, n_win, reg_h, reg_w, width)
            q = tl.load(q_base + tok_m[:, None] * qk_dim + offs_dk[None, :], mask=mask_m[:, None] & mask_dk[None, :],
                        other=0.0)
            do = tl.load(do_base + tok_m[:, None] * v_dim + offs_dv[None, :],
                         mask=mask_m[:, None] & mask_dv[None, :], other=0.0)
            lse = tl.load(LSE + bh * hw + tok_m, mask=mask_m, other=0.0)
            delta = tl.load(DELTA + bh * hw + tok_m, mask=mask_m, other=0.0)
            s_t = _dot(k, tl.trans(q), TF32) * qk_scale
            if MASKED:
                p_t = tl.where(real_n[:, None] & mask_m[None, :], tl.exp2(s_t - lse[None, :]), 0.0)
            else:
                p_t = tl.where(mask_m[None, :], tl.exp2(s_t - lse[None, :]), 0.0)
            dv += _dot(p_t.to(do.dtype), do, TF32)
            dp_t = _dot(v, tl.trans(do), TF32)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += _dot(ds_t.to(q.dtype), q, TF32)
    tl.store(DK + bh * hw * qk_dim + tok_n[:, None] * qk_dim + offs_dk[None, :], (dk * scale).to(DK.dtype.element_ty),
             mask=kmask)
    tl.store(DV + bh * hw * v_dim + tok_n[:, None] * v_dim + offs_dv[None, :], dv.to(DV.dtype.element_ty), mask=vmask)


@triton.jit
def _sparse_fwd(Q, K, V, OUT, LSE, IDX, scale, n_q, n_k, n_keys, qk_dim, v_dim, BLOCK_DQK: tl.constexpr,
                BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr):
    n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    row = bh * n_q + n
    offs_dk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_dk = offs_dk < qk_dim
    mask_dv = offs_dv < v_dim
    q = tl.load(Q + row * qk_dim + offs_dk, mask=mask_dk, other=0.0).to(tl.float32)
    qk_scale = scale * 1.4426950408889634
    m_i = tl.max(tl.full([BLOCK_N], -1.0e30, tl.float32), 0)  # finite start: a query may have no key at all
    l_i = tl.sum(tl.zeros([BLOCK_N], tl.float32), 0)
    acc = tl.zeros([BLOCK_DV], tl.float32)
    for start in range(0, n_keys, BLOCK_N):
        offs = start + tl.arange(0, BLOCK_N)
        key = tl.load(IDX + row * n_keys + offs, mask=offs < n_keys, other=-1)
        valid = key >= 0
        key_row = bh * n_k + key
        k = tl.load(K + key_row[:, None] * qk_dim + offs_dk[None, :], mask=valid[:, None] & mask_dk[None, :],
                    other=0.0).to(tl.float32)
        s = tl.where(valid, tl.sum(k * q[None, :], 1) * qk_scale, float('-inf'))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new)
        l_i = l_i * alpha + tl.sum(p, 0)
        v = tl.load(V + key_row[:, None] * v_dim + offs_dv[None, :], mask=valid[:, None] & mask_dv[None, :],
                    other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * v, 0)
        m_i = m_new
    has_keys = l_i > 0.0
    out = tl.where(has_keys, acc / tl.where(has_keys, l_i, 1.0), 0.0)
    tl.store(OUT + row * v_dim + offs_dv, out.to(OUT.dtype.element_ty), mask=mask_dv)
    tl.store(LSE + row, tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), 0.0))


@triton.jit
def _sparse_bwd_dq(Q, K, V, DO, DQ, LSE, DELTA, IDX, scale, n_q, n_k, n_keys, qk_dim, v_dim,
                   BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr):
    n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    row = bh * n_q + n
    offs_dk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_dk = offs_dk < qk_dim
    mask_dv = offs_dv < v_dim
    q = tl.load(Q + row * qk_dim + offs_dk, mask=mask_dk, other=0.0).to(tl.float32)
    do = tl.load(DO + row * v_dim + offs_dv, mask=mask_dv, other=0.0).to(tl.float32)
    lse = tl.load(LSE + row)
    delta = tl.load(DELTA + row)
    qk_scale = scale * 1.4426950408889634
    dq = tl.zeros([BLOCK_DQK], tl.float32)
    for start in range(0, n_keys, BLOCK_N):
        offs = start + tl.arange(0, BLOCK_N)
        key = tl.load(IDX + row * n_keys + offs, mask=offs < n_keys, other=-1)
        valid = key >= 0
        key_row = bh * n_k + key
        k = tl.load(K + key_row[:, None] * qk_dim + offs_dk[None, :], mask=valid[:, None] & mask_dk[None, :],
                    other=0.0).to(tl.float32)
        v = tl.load(V + key_row[:, None] * v_dim + offs_dv[None, :], mask=valid[:, None] & mask_dv[None, :],
                    other=0.0).to(tl.float32)
        p = tl.where(valid, tl.exp2(tl.sum(k * q[None, :], 1) * qk_scale - lse), 0.0)
        ds = p * (tl.sum(v * do[None, :], 1) - delta)
        dq += tl.sum(ds[:, None] * k, 0)
    tl.store(DQ + row * qk_dim + offs_dk, (dq * scale).to(DQ.dtype.element_ty), mask=mask_dk)


@triton.jit
def _sparse_bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA, QLIST, OFFS, scale, n_q, n_k, qk_dim, v_dim,
                     BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr):
    j = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    key_row = bh * n_k + j
    offs_dk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_dk = offs_dk < qk_dim
    mask_dv = offs_dv < v_dim
    k = tl.load(K + key_row * qk_dim + offs_dk, mask=mask_dk, other=0.0).to(tl.float32)
    v = tl.load(V + key_row * v_dim + offs_dv, mask=mask_dv, other=0.0).to(tl.float32)
    qk_scale = scale * 1.4426950408889634
    dk = tl.zeros([BLOCK_DQK], tl.float32)
    dv = tl.zeros([BLOCK_DV], tl.float32)
    first = tl.load(OFFS + bh * (n_k + 1) + j)
    last = tl.load(OFFS + bh * (n_k + 1) + j + 1)
    for start in range(first, last, BLOCK_N):  # the (query, slot) pairs that list this key
        offs = start + tl.arange(0, BLOCK_N)
        mask = offs < last
        q_row = bh * n_q + tl.load(QLIST + offs, mask=mask, other=0)
        q = tl.load(Q + q_row[:, None] * qk_dim + offs_dk[None, :], mask=mask[:, None] & mask_dk[None, :],
                    other=0.0).to(tl.float32)
        do = tl.load(DO + q_row[:, None] * v_dim + offs_dv[None, :], mask=mask[:, None] & mask_dv[None, :],
                     other=0.0).to(tl.float32)
        lse = tl.load(LSE + q_row, mask=mask, other=0.0)
        delta = tl.load(DELTA + q_row, mask=mask, other=0.0)
        p = tl.where(mask, tl.exp2(tl.sum(q * k[None, :], 1) * qk_scale - lse), 0.0)
        dv += tl.sum(p[:, None] * do, 0)
        ds = p * (tl.sum(do * v[None, :], 1) - delta)
        dk += tl.sum(ds[:, None] * q, 0)
    tl.store(DK + key_row * qk_dim + offs_dk, (dk * scale).to(DK.dtype.element_ty), mask=mask_dk)
    tl.store(DV + key_row * v_dim + offs_dv, dv.to(DV.dtype.element_ty), mask=mask_dv)


# --- launch helpers -----------------------------------------------------------------------------------------------

def _head_dim(d: int, dv: int) -> int:
    """BLOCK_DQK = BLOCK_DV: max(D, Dv) padded to a power of two >= 16 (in registers, masked)."""
    padded = max(16, triton.next_power_of_2(max(d, dv)))
    if padded > MAX_HEAD_DIM:
        raise ValueError(f'the triton routing kernels take head dims (D and Dv) up to {MAX_HEAD_DIM} (larger tiles '
                         f'spill registers), got D={d}, Dv={dv}; use the cpu or reference backend')
    return padded


def _region_block(tokens: int) -> int:
    """Region block: 16 for regions of up to 16 tokens (BiFormer at 224, stages 2-4), 64 for larger ones."""
    return 16 if tokens <= 16 else 64


def _tf32(dtype: torch.dtype) -> bool:
    # fp32: tf32 tensor cores on GPUs; IEEE only under the interpreter (exact parity in tests), as kernels.window
    return dtype == torch.float32 and not triton_interpreted()


def _routed_config(kernel: str, block: int, head_dim: int, tf32: bool = True, masked: bool = False) -> aot.Config:
    """The launch config of ``kernel`` ('fwd', 'bwd_dq', 'bwd_dkdv') for a region block and padded head dim.

    The one definition: the launchers use it and ``_register`` registers every value it takes. BLOCK_M tiles the
    queries, BLOCK_N the keys (in 'bwd_dkdv' the program owns a BLOCK_N key tile and walks BLOCK_M query tiles).
    Chosen from the offline report: spill-free on sm_80 and sm_90 in fp32 (tf32 dots), fp16 and bf16. ``masked``:
    padded keys (``valid_hw``) are left out, which costs a few registers.
    """
    if block == 16:  # 16-row query tiles; a 16-token region is one tile, its routed keys topk * 16
        if kernel == 'fwd':  # masked at head dim 64: 64 keys spill fp32 on sm_90
            block_m, block_n, num_warps = (16, 32, 8) if masked and head_dim > 32 else (16, 64, 4)
        elif kernel == 'bwd_dq':  # 64 keys spill (fp32 at head dim 64, fp16 at 32 on sm_80); masked: 4 warps spill
            block_m, block_n, num_warps = 16, 32, 2 if masked and head_dim <= 32 else 4
        else:  # bwd_dkdv: 4 warps on 16 x 16 tiles leave an 8-byte stack frame; 2 warps spill at head dim 64
            block_m, block_n, num_warps = (16, 16, 2) if head_dim <= 32 else (16, 32, 8 if masked else 4)
    elif kernel == 'fwd':
        block_m, block_n, num_warps = 64, 32, 8
    elif kernel == 'bwd_dq':
        block_m, block_n, num_warps = 64, 32 if head_dim <= 32 else 16, 8
    else:  # bwd_dkdv
        block_m, block_n, num_warps = (16, 64, 8) if head_dim <= 32 else (32, 32, 8)
    return aot.Config(dict(BLOCK_DQK=head_dim, BLOCK_DV=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, TF32=tf32,
                           MASKED=masked), num_warps=num_warps, num_stages=2)


def _sparse_config(kernel: str, head_dim: int) -> aot.Config:
    """The launch config of the sparse ``kernel`` ('fwd', 'bwd_dq', 'bwd_dkdv') for a padded head dim."""
    block_n = 32 if kernel == 'bwd_dkdv' and head_dim >= 64 else 64
    return aot.Config(dict(BLOCK_DQK=head_dim, BLOCK_DV=head_dim, BLOCK_N=block_n), num_warps=4, num_stages=2)


def _launch_options(cfg: aot.Config) -> dict:
    return dict(cfg.constexprs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _inverse_lists(index: torch.Tensor, n_buckets: int, valid: Optional[torch.Tensor] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """For rows of ``index`` (R, L) with values in [0, n_buckets): the positions listing each value, grouped.

    Returns (positions int32 (entries,), offsets int32 (R * n_buckets + 1,)): the entries of row r, value j are
    ``positions[offsets[r * n_buckets + j]:offsets[r * n_buckets + j + 1]]`` (positions within the row, in order).
    Entries where ``valid`` is False are left out.
    """
    rows, length = index.shape
    keys = index.long() + torch.arange(rows, device=index.device).view(rows, 1) * n_buckets
    if valid is not None:
        keys = keys.masked_fill(~valid, rows * n_buckets)  # one bucket past the end: dropped below
    order = torch.argsort(keys.reshape(-1), stable=True)
    # a scatter rather than bincount, whose output size depends on the values (torch.compile traces this)
    counts = keys.new_zeros(rows * n_buckets + 1).index_add_(0, keys.reshape(-1), torch.ones_like(keys).reshape(-1))
    counts = counts[:rows * n_buckets]
    offsets = torch.zeros(rows * n_buckets + 1, dtype=torch.long, device=index.device)
    torch.cumsum(counts, 0, out=offsets[1:])
    return (order % length).to(torch.int32), offsets.to(torch.int32)


def _routed_index(region_index: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
    """The routes as int32, and their strides over images and heads (0: shared by the heads)."""
    idx = region_index.to(torch.int32).contiguous()
    return idx, idx.stride(0), (idx.stride(1) if idx.dim() == 4 else 0)


def _routed_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, region_index: torch.Tensor, n_win: int,
                    scale: float, valid_h: int, valid_w: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out, log-sum-exp (B*heads, H*W) fp32); arguments as :mod:`kernels.routing` passes them."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    b, h, hh, ww, d = q.shape
    dv = v.shape[-1]
    idx, idx_sb, idx_sh = _routed_index(region_index)
    n_reg, topk = idx.shape[-2], idx.shape[-1]
    reg_h, reg_w = hh // n_win, ww // n_win
    tokens = reg_h * reg_w
    masked = (valid_h, valid_w) != (hh, ww)
    cfg = _routed_config('fwd', _region_block(tokens), _head_dim(d, dv), _tf32(q.dtype), masked)
    out = torch.empty(b, h, hh, ww, dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(b * h, hh * ww, dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(tokens, cfg.constexprs['BLOCK_M']), n_reg, b * h)
    wrap_triton(_routed_fwd)[grid](q, k, v, out, lse, idx, scale, hh, ww, valid_h, valid_w, h, n_win, reg_h, reg_w,
                                   topk, idx_sb, idx_sh, d, dv, **_launch_options(cfg))
    return out, lse


def _routed_backward(grads: List[torch.Tensor], outputs: List[torch.Tensor], needs: Dict[str, bool], q: torch.Tensor,
                     k: torch.Tensor, v: torch.Tensor, region_index: torch.Tensor, n_win: int, scale: float,
                     valid_h: int, valid_w: int) -> List[torch.Tensor]:
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out, lse = outputs
    b, h, hh, ww, d = q.shape
    dv_dim = v.shape[-1]
    do = grads[0].contiguous()
    delta = (do.float() * out.float()).sum(-1).reshape(b * h, hh * ww)
    idx, idx_sb, idx_sh = _routed_index(region_index)
    n_reg, topk = idx.shape[-2], idx.shape[-1]
    reg_h, reg_w = hh // n_win, ww // n_win
    tokens = reg_h * reg_w
    block, head_dim, tf32 = _region_block(tokens), _head_dim(d, dv_dim), _tf32(q.dtype)
    masked = (valid_h, valid_w) != (hh, ww)
    dq_cfg = _routed_config('bwd_dq', block, head_dim, tf32, masked)
    dkdv_cfg = _routed_config('bwd_dkdv', block, head_dim, tf32, masked)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    wrap_triton(_routed_bwd_dq)[(triton.cdiv(tokens, dq_cfg.constexprs['BLOCK_M']), n_reg, b * h)](
        q, k, v, do, dq, lse, delta, idx, scale, hh, ww, valid_h, valid_w, h, n_win, reg_h, reg_w, topk, idx_sb,
        idx_sh, d, dv_dim, **_launch_options(dq_cfg))
    # query regions routed to each key region: entries of each (image[, head]) row, grouped by key region
    positions, offsets = _inverse_lists(idx.reshape(-1, n_reg * topk), n_reg)
    qlist = (positions // topk).to(torch.int32)
    row_sb, row_sh = (h, 1) if idx.dim() == 4 else (1, 0)
    wrap_triton(_routed_bwd_dkdv)[(triton.cdiv(tokens, dkdv_cfg.constexprs['BLOCK_N']), n_reg, b * h)](
        q, k, v, do, dk, dv, lse, delta, qlist, offsets, scale, hh, ww, valid_h, valid_w, h, n_win, reg_h, reg_w,
        row_sb, row_sh, d, dv_dim, **_launch_options(dkdv_cfg))
    return [dq, dk, dv]


def _sparse_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_index: torch.Tensor,
                    scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out, log-sum-exp (B*heads*N,) fp32); arguments as :mod:`kernels.routing` passes them."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    b, h, n, d = q.shape
    n_k, dv = k.shape[2], v.shape[-1]
    idx = key_index.to(torch.int32).contiguous()
    n_keys = idx.shape[-1]
    out = torch.empty(b, h, n, dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(b * h * n, dtype=torch.float32, device=q.device)
    cfg = _sparse_config('fwd', _head_dim(d, dv))
    wrap_triton(_sparse_fwd)[(n, b * h)](q, k, v, out, lse, idx, scale, n, n_k, n_keys, d, dv,
                                         **_launch_options(cfg))
    return out, lse


def _sparse_backward(grads: List[torch.Tensor], outputs: List[torch.Tensor], needs: Dict[str, bool], q: torch.Tensor,
                     k: torch.Tensor, v: torch.Tensor, key_index: torch.Tensor, scale: float) -> List[torch.Tensor]:
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out, lse = outputs
    b, h, n, d = q.shape
    n_k, dv_dim = k.shape[2], v.shape[-1]
    idx = key_index.to(torch.int32).contiguous()
    n_keys = idx.shape[-1]
    do = grads[0].contiguous()
    delta = (do.float() * out.float()).sum(-1).reshape(-1)
    head_dim = _head_dim(d, dv_dim)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    wrap_triton(_sparse_bwd_dq)[(n, b * h)](q, k, v, do, dq, lse, delta, idx, scale, n, n_k, n_keys, d, dv_dim,
                                            **_launch_options(_sparse_config('bwd_dq', head_dim)))
    rows = idx.reshape(b * h, n * n_keys)
    positions, offsets = _inverse_lists(rows.clamp(min=0), n_k + 1, valid=rows >= 0)
    qlist = (positions // n_keys).to(torch.int32)
    wrap_triton(_sparse_bwd_dkdv)[(n_k, b * h)](q, k, v, do, dk, dv, lse, delta, qlist, offsets, scale, n, n_k, d,
                                                dv_dim, **_launch_options(_sparse_config('bwd_dkdv', head_dim)))
    return [dq, dk, dv]


# the backends of the three operators (kernels.library); region routing is a few small dense ops: the cpu
# backend's PyTorch version runs on any device
topk_backend = cpu.topk_backend
routed_backend = Backend(_routed_forward, _routed_backward)
sparse_backend = Backend(_sparse_forward, _sparse_backward)


# --- offline compile registry (python -m kernels.aot) -------------------------------------------------------------

def _signature(fn, types: dict) -> dict:
    """Every parameter of ``fn`` in order: tensors and scalars from ``types``, the rest i32, constexprs last."""
    return {name: types.get(name, 'constexpr' if name.isupper() and name.startswith(('BLOCK', 'TF32', 'MASKED'))
                            else 'i32')
            for name in fn.arg_names}


_TENSORS = {'Q': '*{dtype}', 'K': '*{dtype}', 'V': '*{dtype}', 'OUT': '*{dtype}', 'DO': '*{dtype}',
            'DQ': '*{dtype}', 'DK': '*{dtype}', 'DV': '*{dtype}', 'LSE': '*fp32', 'DELTA': '*fp32', 'IDX': '*i32',
            'QLIST': '*i32', 'OFFS': '*i32', 'scale': 'fp32'}


def _register() -> None:
    # every config the launchers can pick: each region block and padded head dim; fp32 runs tf32 dots on GPUs
    # (TF32 is ignored for fp16/bf16 operands), so one config list serves the three dtypes
    for kind, fn in (('fwd', _routed_fwd), ('bwd_dq', _routed_bwd_dq), ('bwd_dkdv', _routed_bwd_dkdv)):
        configs = [_routed_config(kind, block, d, masked=masked)
                   for block in _REGION_BLOCKS for d in _HEAD_DIMS for masked in (False, True)]
        aot.register(name=f'routing.routed_{kind}', fn=fn, signature=_signature(fn, _TENSORS), configs=configs)
    for kind, fn in (('fwd', _sparse_fwd), ('bwd_dq', _sparse_bwd_dq), ('bwd_dkdv', _sparse_bwd_dkdv)):
        configs = [_sparse_config(kind, d) for d in _HEAD_DIMS]
        aot.register(name=f'routing.sparse_{kind}', fn=fn, signature=_signature(fn, _TENSORS), configs=configs)


_register()  # kernels.aot.register does nothing under TRITON_INTERPRET=1
