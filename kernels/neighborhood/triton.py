"""Neighborhood attention as fused Triton kernels (forward + backward).

Forward: one program per (batch*head, block of BLOCK_M queries in row-major order). The neighbour keys and
values of each query are loaded by index arithmetic (no unfolded copies), scored with an elementwise
product, and joined by an online softmax with the extra keys (tl.dot over BLOCK_N blocks); biases (the
factored CPB table by its two axis indices) and the learnable-token weights are gathered in-kernel. Only
the output and one log-sum-exp per query are written.

Backward (recompute, no stored scores), three kernels:
  ``dq``:          per query block: dq, the learnable-token gradients (partial sums per block), the
                   relative-bias gradient (partial sums per block), the extra-bias gradient (dense, or
                   atomically added into the factored CPB table), and
                   ``delta = dout . (attention part of out)`` for the other two kernels;
  ``dkdv_local``:  per key block: every key's up to kernel_size**2 queries are found by inverse index
                   arithmetic (deterministic, no atomics);
  ``dkdv_extra``:  per block of extra keys and split of the queries (flash-attention style; fp32 partial
                   sums over the splits, so that a few pooled keys still fill the device).

Head dims are padded to a power of two >= 16 in registers (TransNeXt's 24 -> 32). The extra-key dots
accumulate in fp32; fp32 inputs use tf32 tensor cores on GPUs (IEEE fp32 dots, as the interpreter runs
them for exact parity, need more registers than a block has: ptxas spills) and fp16/bf16 their own.
"""
from typing import Dict, List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from kernels import aot
from kernels.backend import triton_interpreted

from .limits import MAX_HEAD_DIM

__all__ = ['forward', 'backward']

@triton.jit
def _nbr_index(offs, pid_valid, H, W, j, KS: tl.constexpr, DIL: tl.constexpr, SIGN: tl.constexpr):
    """Flat index of the j-th neighbour (SIGN=1) or of the query whose j-th neighbour is offs (SIGN=-1)."""
    y = offs // W
    x = offs % W
    dy = (j // KS - KS // 2) * DIL * SIGN
    dx = (j % KS - KS // 2) * DIL * SIGN
    ny = y + dy
    nx = x + dx
    valid = pid_valid & (ny >= 0) & (ny < H) & (nx >= 0) & (nx < W)
    return ny * W + nx, valid


@triton.jit
def _extra_bias_offsets(IH, IW, offs_m, offs_n, mask, eb_base, W, M, PW, TW, HAS_EBT: tl.constexpr):
    """Offsets of the extra bias of (query, extra key) pairs: dense rows of M, or the factored table
    ``table[index_h[y, py], index_w[x, px]]`` (TransNeXt's CPB) gathered by index."""
    if HAS_EBT:
        ph = M // PW
        ih = tl.load(IH + (offs_m // W)[:, None] * ph + (offs_n // PW)[None, :], mask=mask, other=0)
        iw = tl.load(IW + (offs_m % W)[:, None] * PW + (offs_n % PW)[None, :], mask=mask, other=0)
        off = eb_base + ih * TW + iw
    else:
        off = eb_base + offs_m[:, None] * M + offs_n[None, :]
    return off


@triton.jit
def _fwd_kernel(QS, QT, K, V, RPB, EK, EV, EB, IH, IW, LT, LB, OUT, LSE,
                H, W, M, D, HEADS, stride_eb_b, stride_eb_h, PW, TW,
                KS: tl.constexpr, DIL: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, HAS_RPB: tl.constexpr, HAS_EXTRA: tl.constexpr, HAS_EB: tl.constexpr,
                HAS_EBT: tl.constexpr, HAS_LT: tl.constexpr, HAS_LB: tl.constexpr, IEEE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HEADS
    h = pid_bh % HEADS
    N = H * W
    L: tl.constexpr = KS * KS
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    mask_m = offs_m < N
    mask_d = offs_d < D
    base = pid_bh.to(tl.int64) * N * D
    q_ptrs = base + offs_m[:, None] * D + offs_d[None, :]
    q_mask = mask_m[:, None] & mask_d[None, :]
    qs_raw = tl.load(QS + q_ptrs, mask=q_mask, other=0.0)
    qs = qs_raw.to(tl.float32)
    if HAS_LT:
        qt = tl.load(QT + q_ptrs, mask=q_mask, other=0.0).to(tl.float32)

    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite: exp(m_old - m_new) stays NaN-free
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    acc_t = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    for j in range(L):  # a real loop: unrolled, all 2L gathers are hoisted and spill
        nidx, valid = _nbr_index(offs_m, mask_m, H, W, j, KS, DIL, 1)
        kv_ptrs = base + nidx[:, None] * D + offs_d[None, :]
        kv_mask = valid[:, None] & mask_d[None, :]
        kj = tl.load(K + kv_ptrs, mask=kv_mask, other=0.0).to(tl.float32)
        vj = tl.load(V + kv_ptrs, mask=kv_mask, other=0.0).to(tl.float32)
        s = tl.sum(qs * kj, axis=1)
        if HAS_RPB:
            s += tl.load(RPB + h * L + j).to(tl.float32)
        s = tl.where(valid, s, float('-inf'))
        m_new = tl.maximum(m_i, s)
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new)
        l_i = l_i * alpha + p
        acc = acc * alpha[:, None] + p[:, None] * vj
        m_i = m_new
        if HAS_LT or HAS_LB:
            t = tl.zeros([BLOCK_M], tl.float32)
            if HAS_LT:
                lt_j = tl.load(LT + h * D * L + offs_d * L + j, mask=mask_d, other=0.0).to(tl.float32)
                t += tl.sum(qt * lt_j[None, :], axis=1)
            if HAS_LB:
                t += tl.load(LB + h * L + j).to(tl.float32)
            acc_t += tl.where(valid, t, 0.0)[:, None] * vj

    if HAS_EXTRA:
        ebase = pid_bh.to(tl.int64) * M * D
        eb_base = b.to(tl.int64) * stride_eb_b + h.to(tl.int64) * stride_eb_h
        for n0 in range(0, M, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < M
            e_ptrs = ebase + offs_n[:, None] * D + offs_d[None, :]
            e_mask = mask_n[:, None] & mask_d[None, :]
            ek = tl.load(EK + e_ptrs, mask=e_mask, other=0.0)
            ev = tl.load(EV + e_ptrs, mask=e_mask, other=0.0)
            if IEEE:
                se = tl.dot(qs_raw, tl.trans(ek), input_precision='ieee')
            else:
                se = tl.dot(qs_raw, tl.trans(ek))
            if HAS_EB:
                nm_mask = mask_m[:, None] & mask_n[None, :]
                eb_off = _extra_bias_offsets(IH, IW, offs_m, offs_n, nm_mask, eb_base, W, M, PW, TW, HAS_EBT)
                se += tl.load(EB + eb_off, mask=nm_mask, other=0.0).to(tl.float32)
            se = tl.where(mask_n[None, :], se, float('-inf'))
            m_ext = tl.maximum(m_i, tl.max(se, axis=1))
            alpha_e = tl.exp(m_i - m_ext)
            pe = tl.exp(se - m_ext[:, None])
            l_i = l_i * alpha_e + tl.sum(pe, axis=1)
            if IEEE:
                pv = tl.dot(pe.to(ev.dtype), ev, input_precision='ieee')
            else:
                pv = tl.dot(pe.to(ev.dtype), ev)
            acc = acc * alpha_e[:, None] + pv
            m_i = m_ext

    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None] + acc_t
    tl.store(OUT + q_ptrs, out.to(OUT.dtype.element_ty), mask=q_mask)
    tl.store(LSE + pid_bh.to(tl.int64) * N + offs_m, m_i + tl.log(l_safe), mask=mask_m)


@triton.jit
def _bwd_dq_kernel(QS, QT, K, V, RPB, EK, EV, EB, IH, IW, LT, LB, OUT, DOUT, LSE, DELTA, DQS, DQT, DEB, DRPB_P,
                   DLT_P, DLB_P, H, W, M, D, HEADS, stride_eb_b, stride_eb_h, PW, TW,
                   KS: tl.constexpr, DIL: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, HAS_RPB: tl.constexpr, HAS_EXTRA: tl.constexpr, HAS_EB: tl.constexpr,
                   HAS_EBT: tl.constexpr, HAS_LT: tl.constexpr, HAS_LB: tl.constexpr, IEEE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    num_m = tl.num_programs(0)
    b = pid_bh // HEADS
    h = pid_bh % HEADS
    N = H * W
    L: tl.constexpr = KS * KS
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    mask_m = offs_m < N
    mask_d = offs_d < D
    base = pid_bh.to(tl.int64) * N * D
    q_ptrs = base + offs_m[:, None] * D + offs_d[None, :]
    q_mask = mask_m[:, None] & mask_d[None, :]
    qs_raw = tl.load(QS + q_ptrs, mask=q_mask, other=0.0)
    qs = qs_raw.to(tl.float32)
    do_raw = tl.load(DOUT + q_ptrs, mask=q_mask, other=0.0)
    do = do_raw.to(tl.float32)
    out = tl.load(OUT + q_ptrs, mask=q_mask, other=0.0).to(tl.float32)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * N + offs_m, mask=mask_m, other=0.0)
    if HAS_LT:
        qt = tl.load(QT + q_ptrs, mask=q_mask, other=0.0).to(tl.float32)
    part = (pid_bh.to(tl.int64) * num_m + pid_m)

    # delta = dout . (out - learnable part of out); the learnable part of dout . out is sum_j t_j (dout . v_j)
    delta = tl.sum(do * out, axis=1)
    if HAS_LT or HAS_LB:
        for j in range(L):  # a real loop: unrolled, all 2L gathers are hoisted and spill
            nidx, valid = _nbr_index(offs_m, mask_m, H, W, j, KS, DIL, 1)
            vj = tl.load(V + base + nidx[:, None] * D + offs_d[None, :], mask=valid[:, None] & mask_d[None, :],
                         other=0.0).to(tl.float32)
            t = tl.zeros([BLOCK_M], tl.float32)
            if HAS_LT:
                lt_j = tl.load(LT + h * D * L + offs_d * L + j, mask=mask_d, other=0.0).to(tl.float32)
                t += tl.sum(qt * lt_j[None, :], axis=1)
            if HAS_LB:
                t += tl.load(LB + h * L + j).to(tl.float32)
            delta -= tl.where(valid, t, 0.0) * tl.sum(do * vj, axis=1)
    tl.store(DELTA + pid_bh.to(tl.int64) * N + offs_m, delta, mask=mask_m)

    dqs = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    dqt = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    for j in range(L):  # a real loop: unrolled, all 2L gathers are hoisted and spill
        nidx, valid = _nbr_index(offs_m, mask_m, H, W, j, KS, DIL, 1)
        kv_ptrs = base + nidx[:, None] * D + offs_d[None, :]
        kv_mask = valid[:, None] & mask_d[None, :]
        kj = tl.load(K + kv_ptrs, mask=kv_mask, other=0.0).to(tl.float32)
        vj = tl.load(V + kv_ptrs, mask=kv_mask, other=0.0).to(tl.float32)
        s = tl.sum(qs * kj, axis=1)
        if HAS_RPB:
            s += tl.load(RPB + h * L + j).to(tl.float32)
        p = tl.where(valid, tl.exp(s - lse), 0.0)
        dp = tl.where(valid, tl.sum(do * vj, axis=1), 0.0)
        ds = p * (dp - delta)
        dqs += ds[:, None] * kj
        if HAS_RPB:
            tl.store(DRPB_P + part * L + j, tl.sum(ds, axis=0))
        if HAS_LT:  # dp is also the gradient of the learnable weight t_j
            lt_j = tl.load(LT + h * D * L + offs_d * L + j, mask=mask_d, other=0.0).to(tl.float32)
            dqt += dp[:, None] * lt_j[None, :]
            tl.store(DLT_P + part * D_PAD * L + offs_d * L + j, tl.sum(qt * dp[:, None], axis=0))
        if HAS_LB:
            tl.store(DLB_P + part * L + j, tl.sum(dp, axis=0))

    if HAS_EXTRA:
        ebase = pid_bh.to(tl.int64) * M * D
        eb_base = b.to(tl.int64) * stride_eb_b + h.to(tl.int64) * stride_eb_h
        # dense bias: one fp32 gradient row block per (batch, head); table: fp32 table, atomics
        if HAS_EBT:
            deb_base = h.to(tl.int64) * stride_eb_h
        else:
            deb_base = pid_bh.to(tl.int64) * N * M
        for n0 in range(0, M, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < M
            e_ptrs = ebase + offs_n[:, None] * D + offs_d[None, :]
            e_mask = mask_n[:, None] & mask_d[None, :]
            ek = tl.load(EK + e_ptrs, mask=e_mask, other=0.0)
            ev = tl.load(EV + e_ptrs, mask=e_mask, other=0.0)
            if IEEE:
                se = tl.dot(qs_raw, tl.trans(ek), input_precision='ieee')
                dpe = tl.dot(do_raw, tl.trans(ev), input_precision='ieee')
            else:
                se = tl.dot(qs_raw, tl.trans(ek))
                dpe = tl.dot(do_raw, tl.trans(ev))
            nm_mask = mask_m[:, None] & mask_n[None, :]
            if HAS_EB:
                eb_off = _extra_bias_offsets(IH, IW, offs_m, offs_n, nm_mask, eb_base, W, M, PW, TW, HAS_EBT)
                se += tl.load(EB + eb_off, mask=nm_mask, other=0.0).to(tl.float32)
            pe = tl.where(nm_mask, tl.exp(se - lse[:, None]), 0.0)
            dse = pe * (dpe - delta[:, None])
            if HAS_EB:
                deb_off = _extra_bias_offsets(IH, IW, offs_m, offs_n, nm_mask, deb_base, W, M, PW, TW, HAS_EBT)
                if HAS_EBT:
                    tl.atomic_add(DEB + deb_off, dse, mask=nm_mask)
                else:
                    tl.store(DEB + deb_off, dse, mask=nm_mask)
            if IEEE:
                dqs += tl.dot(dse.to(ek.dtype), ek, input_precision='ieee')
            else:
                dqs += tl.dot(dse.to(ek.dtype), ek)

    tl.store(DQS + q_ptrs, dqs.to(DQS.dtype.element_ty), mask=q_mask)
    if HAS_LT:
        tl.store(DQT + q_ptrs, dqt.to(DQT.dtype.element_ty), mask=q_mask)


@triton.jit
def _bwd_dkdv_local_kernel(QS, QT, K, V, RPB, LT, LB, DOUT, LSE, DELTA, DK, DV, H, W, D, HEADS,
                           KS: tl.constexpr, DIL: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
                           HAS_RPB: tl.constexpr, HAS_LT: tl.constexpr, HAS_LB: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    h = pid_bh % HEADS
    N = H * W
    L: tl.constexpr = KS * KS
    offs_k = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    mask_k = offs_k < N
    mask_d = offs_d < D
    base = pid_bh.to(tl.int64) * N * D
    k_ptrs = base + offs_k[:, None] * D + offs_d[None, :]
    k_mask = mask_k[:, None] & mask_d[None, :]
    kb = tl.load(K + k_ptrs, mask=k_mask, other=0.0).to(tl.float32)
    vb = tl.load(V + k_ptrs, mask=k_mask, other=0.0).to(tl.float32)
    dk = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    dv = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    for j in range(L):  # a real loop: unrolled, all 2L gathers are hoisted and spill
        qidx, valid = _nbr_index(offs_k, mask_k, H, W, j, KS, DIL, -1)
        q_ptrs = base + qidx[:, None] * D + offs_d[None, :]
        q_mask = valid[:, None] & mask_d[None, :]
        qs = tl.load(QS + q_ptrs, mask=q_mask, other=0.0).to(tl.float32)
        do = tl.load(DOUT + q_ptrs, mask=q_mask, other=0.0).to(tl.float32)
        lse = tl.load(LSE + pid_bh.to(tl.int64) * N + qidx, mask=valid, other=0.0)
        delta = tl.load(DELTA + pid_bh.to(tl.int64) * N + qidx, mask=valid, other=0.0)
        s = tl.sum(qs * kb, axis=1)
        if HAS_RPB:
            s += tl.load(RPB + h * L + j).to(tl.float32)
        p = tl.where(valid, tl.exp(s - lse), 0.0)
        dp = tl.sum(do * vb, axis=1)
        w = p
        if HAS_LT:
            qt = tl.load(QT + q_ptrs, mask=q_mask, other=0.0).to(tl.float32)
            lt_j = tl.load(LT + h * D * L + offs_d * L + j, mask=mask_d, other=0.0).to(tl.float32)
            w += tl.where(valid, tl.sum(qt * lt_j[None, :], axis=1), 0.0)
        if HAS_LB:
            w += tl.where(valid, tl.load(LB + h * L + j).to(tl.float32), 0.0)
        dv += w[:, None] * do
        dk += (p * (dp - delta))[:, None] * qs
    tl.store(DK + k_ptrs, dk.to(DK.dtype.element_ty), mask=k_mask)
    tl.store(DV + k_ptrs, dv.to(DV.dtype.element_ty), mask=k_mask)


@triton.jit
def _bwd_dkdv_extra_kernel(QS, EK, EV, EB, IH, IW, DOUT, LSE, DELTA, DEK_P, DEV_P, N, W, M, D, HEADS, stride_eb_b,
                           stride_eb_h, PW, TW, SPLIT, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
                           BLOCK_N: tl.constexpr, HAS_EB: tl.constexpr, HAS_EBT: tl.constexpr, IEEE: tl.constexpr):
    # program (extra-key block, batch*head, split s) sums over query blocks s, s + SPLIT, ... into fp32 partials
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = pid_bh // HEADS
    h = pid_bh % HEADS
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    mask_n = offs_n < M
    mask_d = offs_d < D
    e_ptrs = pid_bh.to(tl.int64) * M * D + offs_n[:, None] * D + offs_d[None, :]
    e_mask = mask_n[:, None] & mask_d[None, :]
    ek = tl.load(EK + e_ptrs, mask=e_mask, other=0.0)
    ev = tl.load(EV + e_ptrs, mask=e_mask, other=0.0)
    base = pid_bh.to(tl.int64) * N * D
    eb_base = b.to(tl.int64) * stride_eb_b + h.to(tl.int64) * stride_eb_h
    dek = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    dev = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    for m0 in range(pid_s * BLOCK_M, N, SPLIT * BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < N
        q_ptrs = base + offs_m[:, None] * D + offs_d[None, :]
        q_mask = mask_m[:, None] & mask_d[None, :]
        qs = tl.load(QS + q_ptrs, mask=q_mask, other=0.0)
        do = tl.load(DOUT + q_ptrs, mask=q_mask, other=0.0)
        lse = tl.load(LSE + pid_bh.to(tl.int64) * N + offs_m, mask=mask_m, other=0.0)
        delta = tl.load(DELTA + pid_bh.to(tl.int64) * N + offs_m, mask=mask_m, other=0.0)
        if IEEE:
            s = tl.dot(qs, tl.trans(ek), input_precision='ieee')
            dp = tl.dot(do, tl.trans(ev), input_precision='ieee')
        else:
            s = tl.dot(qs, tl.trans(ek))
            dp = tl.dot(do, tl.trans(ev))
        nm_mask = mask_m[:, None] & mask_n[None, :]
        if HAS_EB:
            eb_off = _extra_bias_offsets(IH, IW, offs_m, offs_n, nm_mask, eb_base, W, M, PW, TW, HAS_EBT)
            s += tl.load(EB + eb_off, mask=nm_mask, other=0.0).to(tl.float32)
        p = tl.where(nm_mask, tl.exp(s - lse[:, None]), 0.0)
        ds = p * (dp - delta[:, None])
        if IEEE:
            dev += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision='ieee')
            dek += tl.dot(tl.trans(ds.to(qs.dtype)), qs, input_precision='ieee')
        else:
            dev += tl.dot(tl.trans(p.to(do.dtype)), do)
            dek += tl.dot(tl.trans(ds.to(qs.dtype)), qs)
    part = (pid_s * tl.num_programs(1) + pid_bh).to(tl.int64) * M * D
    tl.store(DEK_P + part + offs_n[:, None] * D + offs_d[None, :], dek, mask=e_mask)
    tl.store(DEV_P + part + offs_n[:, None] * D + offs_d[None, :], dev, mask=e_mask)


# ---------------------------------------------------------------------------------------------- launch
_BLOCK_M, _BLOCK_N = 32, 32
_TARGET_PROGRAMS = 1024  # enough programs to fill an H100's 132 SMs several times over


def _d_pad(d: int) -> int:
    padded = max(16, triton.next_power_of_2(d))
    if padded > MAX_HEAD_DIM:
        raise ValueError(f'the triton backend of neighborhood_attention takes head dims up to {MAX_HEAD_DIM}, got {d}')
    return padded


def _num_warps(d_pad: int, kernel: str = '') -> int:
    # dkdv_local at head dim 64 spills with 4 warps on sm_80; bwd_dq spills with 8 (ptxas then caps at 128 regs)
    return 8 if kernel == 'bwd_dkdv_local' and d_pad > 32 else 4


def _flags(rpb, ek, eb, ebt, lt, lb, dtype: torch.dtype) -> dict:
    return dict(HAS_RPB=rpb is not None, HAS_EXTRA=ek is not None, HAS_EB=eb is not None or ebt is not None,
                HAS_EBT=ebt is not None, HAS_LT=lt is not None, HAS_LB=lb is not None,
                IEEE=dtype == torch.float32 and triton_interpreted())


def _bias_args(eb, ebt, ih, iw, b: int, h: int, n: int, m: int, device: torch.device) -> tuple:
    """(bias or table, index_h, index_w, stride_eb_b, stride_eb_h, PW, TW) for the kernels."""
    if ebt is not None:
        return ebt, ih, iw, 0, ebt.shape[1] * ebt.shape[2], iw.shape[1], ebt.shape[2]
    no_index = torch.zeros(1, dtype=torch.int64, device=device)
    stride_b = 0 if eb is None or eb.shape[0] == 1 else h * n * m
    return eb, no_index, no_index, stride_b, n * m, 1, 1


def _inputs(*tensors: Optional[torch.Tensor]) -> List[Optional[torch.Tensor]]:
    return [None if t is None else t.contiguous() for t in tensors]


def forward(qs: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_pos_bias: Optional[torch.Tensor],
            extra_k: Optional[torch.Tensor], extra_v: Optional[torch.Tensor], extra_bias: Optional[torch.Tensor],
            learnable_tokens: Optional[torch.Tensor], learnable_bias: Optional[torch.Tensor],
            extra_bias_table: Optional[torch.Tensor], index_h: Optional[torch.Tensor], index_w: Optional[torch.Tensor],
            kernel_size: int, dilation: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out, log-sum-exp (B, heads, H*W) fp32); arguments as :mod:`kernels.neighborhood` passes them."""
    qs, qt, k, v, rpb, ek, ev, eb, lt, lb, ebt, ih, iw = _inputs(
        qs, q, k, v, rel_pos_bias, extra_k, extra_v, extra_bias, learnable_tokens, learnable_bias, extra_bias_table,
        index_h, index_w)
    b, h, height, width, d = qs.shape
    n = height * width
    m = 0 if ek is None else ek.shape[2]
    opt = lambda t: t if t is not None else qs  # noqa: E731  (a pointer the kernel never reads)
    bias, index_h, index_w, stride_eb_b, stride_eb_h, pw, tw = _bias_args(eb, ebt, ih, iw, b, h, n, m, qs.device)
    out = torch.empty_like(qs)
    lse = torch.empty(b, h, n, dtype=torch.float32, device=qs.device)
    grid = (triton.cdiv(n, _BLOCK_M), b * h)
    wrap_triton(_fwd_kernel)[grid](
        qs, qt, k, v, opt(rpb), opt(ek), opt(ev), opt(bias), index_h, index_w, opt(lt), opt(lb), out, lse,
        height, width, m, d, h, stride_eb_b, stride_eb_h, pw, tw,
        KS=kernel_size, DIL=dilation, D_PAD=_d_pad(d), BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N,
        num_warps=_num_warps(_d_pad(d)), **_flags(rpb, ek, eb, ebt, lt, lb, qs.dtype))
    return out, lse


def backward(grads: List[torch.Tensor], outputs: List[torch.Tensor], needs: Dict[str, bool], qs: torch.Tensor,
             q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_pos_bias: Optional[torch.Tensor],
             extra_k: Optional[torch.Tensor], extra_v: Optional[torch.Tensor], extra_bias: Optional[torch.Tensor],
             learnable_tokens: Optional[torch.Tensor], learnable_bias: Optional[torch.Tensor],
             extra_bias_table: Optional[torch.Tensor], index_h: Optional[torch.Tensor], index_w: Optional[torch.Tensor],
             kernel_size: int, dilation: int) -> List[Optional[torch.Tensor]]:
    """Gradients of (qs, q, k, v, rel_pos_bias, extra_k, extra_v, extra_bias, learnable_tokens, learnable_bias,
    extra_bias_table) from the forward's output and log-sum-exp."""
    qs, qt, k, v, rpb, ek, ev, eb, lt, lb, ebt, ih, iw = _inputs(
        qs, q, k, v, rel_pos_bias, extra_k, extra_v, extra_bias, learnable_tokens, learnable_bias, extra_bias_table,
        index_h, index_w)
    out, lse = outputs
    dout = grads[0]
    b, h, height, width, d = qs.shape
    n, local_len, d_pad = height * width, kernel_size ** 2, _d_pad(d)
    m = 0 if ek is None else ek.shape[2]
    dout = dout.contiguous()
    dev_ = qs.device
    opt = lambda t: t if t is not None else qs  # noqa: E731
    flags = _flags(rpb, ek, eb, ebt, lt, lb, qs.dtype)
    bias, index_h, index_w, stride_eb_b, stride_eb_h, pw, tw = _bias_args(eb, ebt, ih, iw, b, h, n, m, dev_)
    num_m = triton.cdiv(n, _BLOCK_M)
    parts = b * h * num_m
    f32 = dict(dtype=torch.float32, device=dev_)
    delta = torch.empty(b, h, n, **f32)
    dqs = torch.empty_like(qs)
    dqt = torch.empty_like(qt) if lt is not None else None
    deb = torch.empty(b, h, n, m, **f32) if eb is not None else None
    debt = torch.zeros(ebt.shape, **f32) if ebt is not None else None  # accumulated with atomics
    drpb_p = torch.empty(parts, local_len, **f32) if rpb is not None else None
    dlt_p = torch.empty(parts, d_pad, local_len, **f32) if lt is not None else None
    dlb_p = torch.empty(parts, local_len, **f32) if lb is not None else None
    opt32 = lambda t: t if t is not None else lse  # noqa: E731
    wrap_triton(_bwd_dq_kernel)[(num_m, b * h)](
        qs, qt, k, v, opt(rpb), opt(ek), opt(ev), opt(bias), index_h, index_w, opt(lt), opt(lb), out, dout, lse,
        delta, dqs, opt(dqt), opt32(debt if ebt is not None else deb), opt32(drpb_p), opt32(dlt_p), opt32(dlb_p),
        height, width, m, d, h, stride_eb_b, stride_eb_h, pw, tw, KS=kernel_size, DIL=dilation, D_PAD=d_pad,
        BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, num_warps=_num_warps(d_pad), **flags)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    wrap_triton(_bwd_dkdv_local_kernel)[(num_m, b * h)](
        qs, qt, k, v, opt(rpb), opt(lt), opt(lb), dout, lse, delta, dk, dv, height, width, d, h,
        KS=kernel_size, DIL=dilation, D_PAD=d_pad, BLOCK_M=_BLOCK_M, HAS_RPB=flags['HAS_RPB'],
        HAS_LT=flags['HAS_LT'], HAS_LB=flags['HAS_LB'], num_warps=_num_warps(d_pad, 'bwd_dkdv_local'))
    dek = dev = None
    if ek is not None:
        # few extra-key blocks per (batch, head): split the loop over queries to fill the device
        n_blocks = triton.cdiv(m, _BLOCK_N)
        split = max(1, min(num_m, _TARGET_PROGRAMS // max(1, n_blocks * b * h)))
        dek_p = torch.empty(split, b, h, m, d, **f32)
        dev_p = torch.empty(split, b, h, m, d, **f32)
        wrap_triton(_bwd_dkdv_extra_kernel)[(n_blocks, b * h, split)](
            qs, ek, ev, opt(bias), index_h, index_w, dout, lse, delta, dek_p, dev_p, n, width, m, d, h,
            stride_eb_b, stride_eb_h, pw, tw, split, D_PAD=d_pad, BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N,
            HAS_EB=flags['HAS_EB'], HAS_EBT=flags['HAS_EBT'], IEEE=flags['IEEE'], num_warps=_num_warps(d_pad))
        dek, dev = dek_p.sum(0).to(ek.dtype), dev_p.sum(0).to(ev.dtype)
    drpb = drpb_p.view(b, h, num_m, local_len).sum((0, 2)).to(rpb.dtype) if rpb is not None else None
    dlt = (dlt_p.view(b, h, num_m, d_pad, local_len).sum((0, 2))[:, :d].to(lt.dtype)
           if lt is not None else None)
    dlb = dlb_p.view(b, h, num_m, local_len).sum((0, 2)).to(lb.dtype) if lb is not None else None
    if deb is not None:
        deb = (deb if eb.shape[0] == b else deb.sum(0, keepdim=True)).to(eb.dtype)
    if debt is not None:
        debt = debt.to(ebt.dtype)
    return [dqs, dqt, dk, dv, drpb, dek, dev, deb, dlt, dlb, debt]


# ---------------------------------------------------------------------------------------------- AOT
def _register() -> None:
    common = {'KS': 3, 'DIL': 1}
    flags_all = dict(HAS_RPB=True, HAS_EXTRA=True, HAS_EB=True, HAS_EBT=True, HAS_LT=True, HAS_LB=True)
    flags_none = dict(HAS_RPB=False, HAS_EXTRA=False, HAS_EB=False, HAS_EBT=False, HAS_LT=False, HAS_LB=False)
    # TransNeXt (head dim 24 -> 32, every term on) and plain neighborhood attention at head dims 32 and 64
    variants = [dict(D_PAD=32, **flags_all), dict(D_PAD=32, **flags_none), dict(D_PAD=MAX_HEAD_DIM, **flags_none)]
    blocks = dict(BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N)
    p, f, i = '*{dtype}', '*fp32', 'i32'
    c = 'constexpr'
    const_sig = {'KS': c, 'DIL': c, 'D_PAD': c, 'BLOCK_M': c, 'BLOCK_N': c, 'HAS_RPB': c, 'HAS_EXTRA': c,
                 'HAS_EB': c, 'HAS_EBT': c, 'HAS_LT': c, 'HAS_LB': c, 'IEEE': c}

    def configs(keys, ieee, kernel):
        return [aot.Config(constexprs={k: v for k, v in {**common, **blocks, **var, 'IEEE': ieee}.items() if k in keys},
                           num_warps=_num_warps(var['D_PAD'], kernel), num_stages=2) for var in variants]

    def register(name, fn, signature, keys):
        # on GPUs fp32 dots run as tf32 (IEEE fp32 dots spill registers); IEEE is the interpreter's setting
        aot.register(f'neighborhood.{name}', fn, signature, configs(keys, False, name), dtypes=('fp32', 'fp16', 'bf16'))

    idx = {'IH': '*i64', 'IW': '*i64'}
    bias_ints = ('stride_eb_b', 'stride_eb_h', 'PW', 'TW')
    fwd_sig = {**{a: p for a in ('QS', 'QT', 'K', 'V', 'RPB', 'EK', 'EV', 'EB')}, **idx,
               **{a: p for a in ('LT', 'LB', 'OUT')}, 'LSE': f,
               **{a: i for a in ('H', 'W', 'M', 'D', 'HEADS', *bias_ints)}, **const_sig}
    register('fwd', _fwd_kernel, fwd_sig, const_sig)
    dq_sig = {**{a: p for a in ('QS', 'QT', 'K', 'V', 'RPB', 'EK', 'EV', 'EB')}, **idx,
              **{a: p for a in ('LT', 'LB', 'OUT', 'DOUT')},
              'LSE': f, 'DELTA': f, 'DQS': p, 'DQT': p, 'DEB': f, 'DRPB_P': f, 'DLT_P': f, 'DLB_P': f,
              **{a: i for a in ('H', 'W', 'M', 'D', 'HEADS', *bias_ints)}, **const_sig}
    register('bwd_dq', _bwd_dq_kernel, dq_sig, const_sig)
    local_const = {a: c for a in ('KS', 'DIL', 'D_PAD', 'BLOCK_M', 'HAS_RPB', 'HAS_LT', 'HAS_LB')}
    local_sig = {**{a: p for a in ('QS', 'QT', 'K', 'V', 'RPB', 'LT', 'LB', 'DOUT')}, 'LSE': f, 'DELTA': f,
                 'DK': p, 'DV': p, **{a: i for a in ('H', 'W', 'D', 'HEADS')}, **local_const}
    register('bwd_dkdv_local', _bwd_dkdv_local_kernel, local_sig, local_const)
    extra_const = {a: c for a in ('D_PAD', 'BLOCK_M', 'BLOCK_N', 'HAS_EB', 'HAS_EBT', 'IEEE')}
    extra_sig = {**{a: p for a in ('QS', 'EK', 'EV', 'EB')}, **idx, 'DOUT': p, 'LSE': f, 'DELTA': f, 'DEK_P': f,
                 'DEV_P': f, **{a: i for a in ('N', 'W', 'M', 'D', 'HEADS', *bias_ints, 'SPLIT')}, **extra_const}
    register('bwd_dkdv_extra', _bwd_dkdv_extra_kernel, extra_sig, extra_const)

_register()  # kernels.aot.register does nothing under TRITON_INTERPRET=1
