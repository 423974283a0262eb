"""Triton selective scan: chunked, state in registers, K scan orders gathered and scattered inside the kernels.

One program owns BLOCK_D channels of one batch element and runs the K scans one after another (so summing the
K outputs, and the gradients of tensors shared by the scans, needs no atomics: every result is deterministic).
A chunk of CHUNK steps is loaded through the order table, its (decay, input) pairs are combined with
``tl.associative_scan`` into the states h_t (BLOCK_D x n x CHUNK, in registers), and only the state entering
each chunk is written to memory. The backward walks the chunks in reverse, recomputes the states of a chunk from
its stored entering state and runs the adjoint recurrence g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1} as a reverse
associative scan; a_t h_{t-1} is h_t - x_t (no division). dB and dC are reduced over the channels of a program
into a per-program slot and summed in a fixed order afterwards (deterministic, no atomics).
"""
from typing import NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from kernels import aot

from .limits import CHUNK, MAX_N

__all__ = ['forward', 'backward']

# (BLOCK_N, BLOCK_D, num_warps): n up to 16 or 32; BLOCK_D * BLOCK_N * CHUNK = 2048 fp32 per 3-D tensor
_CONFIGS = {16: (8, 4), MAX_N: (4, 8)}


@triton.jit
def _combine(a1, x1, a2, x2):
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, tl.where(x < -15.0, tl.exp(x), tl.log(1.0 + tl.exp(x))))


@triton.jit
def _ss_fwd(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr, orders_ptr,
        y_ptr, out_ptr, last_ptr, hs_ptr,
        s_ub, s_uk, s_ud, s_ul, s_db, s_dk, s_dd, s_dl, s_ak, s_ad, s_an,
        s_bb, s_bk, s_bg, s_bn, s_bl, s_cb, s_ck, s_cg, s_cn, s_cl,
        s_Dk, s_biask, s_zb, s_zd, s_zl, s_ok,
        d, L, n, K, dpg_B, dpg_C, n_chunks,
        HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr,
        HAS_ORDERS: tl.constexpr, GATHER: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, CHUNK)
    mask_d = offs_d < d
    mask_n = offs_n < n
    mask_dn = mask_d[:, None] & mask_n[None, :]
    gB = (pid_d * BLOCK_D) // dpg_B
    gC = (pid_d * BLOCK_D) // dpg_C
    for k in range(K):
        A = tl.load(A_ptr + k * s_ak + offs_d[:, None] * s_ad + offs_n[None, :] * s_an, mask=mask_dn,
                    other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + k * s_biask + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_D:
            Dk = tl.load(D_ptr + k * s_Dk + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        u_base = u_ptr + pid_b * s_ub + k * s_uk + offs_d[:, None] * s_ud
        dt_base = delta_ptr + pid_b * s_db + k * s_dk + offs_d[:, None] * s_dd
        B_base = B_ptr + pid_b * s_bb + k * s_bk + gB * s_bg + offs_n[:, None] * s_bn
        C_base = C_ptr + pid_b * s_cb + k * s_ck + gC * s_cg + offs_n[:, None] * s_cn
        hs_base = hs_ptr + (((pid_b * K + k) * d + offs_d[:, None]) * n_chunks) * n + offs_n[None, :]
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        for c in range(n_chunks):
            t = c * CHUNK + offs_c
            mask_t = t < L
            if HAS_ORDERS:
                pos = tl.load(orders_ptr + k * s_ok + t, mask=mask_t, other=0).to(tl.int64)
            else:
                pos = t.to(tl.int64)
            if GATHER:
                ppos = pos
            else:
                ppos = t.to(tl.int64)
            tl.store(hs_base + c * n, h, mask=mask_dn)
            m2 = mask_d[:, None] & mask_t[None, :]
            u = tl.load(u_base + pos[None, :] * s_ul, mask=m2, other=0.0).to(tl.float32)
            dt = tl.load(dt_base + ppos[None, :] * s_dl, mask=m2, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias[:, None]
            if SOFTPLUS:
                dt = _softplus(dt)
            dt = tl.where(m2, dt, 0.0)
            mnt = mask_n[:, None] & mask_t[None, :]
            Bt = tl.load(B_base + ppos[None, :] * s_bl, mask=mnt, other=0.0).to(tl.float32)
            Ct = tl.load(C_base + ppos[None, :] * s_cl, mask=mnt, other=0.0).to(tl.float32)
            a = tl.exp(dt[:, None, :] * A[:, :, None])
            x = (dt * u)[:, None, :] * Bt[None, :, :]
            acc_a, acc_x = tl.associative_scan((a, x), 2, _combine)
            hh = acc_a * h[:, :, None] + acc_x
            y = tl.sum(hh * Ct[None, :, :], axis=1)
            if HAS_D:
                y += Dk[:, None] * u
            y_ptrs = y_ptr + (pid_b * d + offs_d[:, None]) * L + pos[None, :]
            if k > 0:
                y += tl.load(y_ptrs, mask=m2, other=0.0)
            tl.store(y_ptrs, y, mask=m2)
            # steps past L decay by 1 and add 0: the last column is h_{L-1} in the final chunk
            h = tl.sum(tl.where(offs_c[None, None, :] == CHUNK - 1, hh, 0.0), axis=2)
        tl.store(last_ptr + ((pid_b * K + k) * d + offs_d[:, None]) * n + offs_n[None, :], h, mask=mask_dn)
        tl.debug_barrier()  # the next scan reads the outputs this one wrote, at other positions
    for c in range(n_chunks):
        t = c * CHUNK + offs_c
        m2 = mask_d[:, None] & (t < L)[None, :]
        y = tl.load(y_ptr + (pid_b * d + offs_d[:, None]) * L + t[None, :], mask=m2, other=0.0)
        if HAS_Z:
            zz = tl.load(z_ptr + pid_b * s_zb + offs_d[:, None] * s_zd + t[None, :] * s_zl, mask=m2,
                         other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + (pid_b * d + offs_d[:, None]) * L + t[None, :], y.to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _ss_bwd(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr, orders_ptr,
        dout_ptr, hs_ptr, dlast_ptr,
        du_ptr, ddelta_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr,
        s_ub, s_uk, s_ud, s_ul, s_db, s_dk, s_dd, s_dl, s_ak, s_ad, s_an,
        s_bb, s_bk, s_bg, s_bn, s_bl, s_cb, s_ck, s_cg, s_cn, s_cl,
        s_Dk, s_biask, s_zb, s_zd, s_zl, s_ok,
        s_dub, s_duk, s_ddb, s_ddk, s_dAb, s_dAk, s_dDb, s_dDk, s_dbiasb, s_dbiask,
        s_dBb, s_dBblk, s_dBk, s_dCb, s_dCblk, s_dCk,
        d, L, n, K, dpg_B, dpg_C, n_chunks,
        HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr,
        HAS_ORDERS: tl.constexpr, GATHER: tl.constexpr, HAS_DLAST: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, CHUNK)
    mask_d = offs_d < d
    mask_n = offs_n < n
    mask_dn = mask_d[:, None] & mask_n[None, :]
    gB = (pid_d * BLOCK_D) // dpg_B
    gC = (pid_d * BLOCK_D) // dpg_C
    # fp32 gradient slots: du/ddelta (b, K|1, d, L) contiguous in (d, L); dA (b, K|1, d, n); dD, dbias (b, K|1, d);
    # dB/dC (b, program, K|1, n, L). A shared tensor has k-stride 0: every scan adds into the same slot.
    for k in range(K):
        A = tl.load(A_ptr + k * s_ak + offs_d[:, None] * s_ad + offs_n[None, :] * s_an, mask=mask_dn,
                    other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + k * s_biask + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_D:
            Dk = tl.load(D_ptr + k * s_Dk + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        u_base = u_ptr + pid_b * s_ub + k * s_uk + offs_d[:, None] * s_ud
        dt_base = delta_ptr + pid_b * s_db + k * s_dk + offs_d[:, None] * s_dd
        B_base = B_ptr + pid_b * s_bb + k * s_bk + gB * s_bg + offs_n[:, None] * s_bn
        C_base = C_ptr + pid_b * s_cb + k * s_ck + gC * s_cg + offs_n[:, None] * s_cn
        hs_base = hs_ptr + (((pid_b * K + k) * d + offs_d[:, None]) * n_chunks) * n + offs_n[None, :]
        du_base = du_ptr + pid_b * s_dub + k * s_duk + offs_d[:, None] * L
        dd_base = ddelta_ptr + pid_b * s_ddb + k * s_ddk + offs_d[:, None] * L
        dB_base = dB_ptr + pid_b * s_dBb + pid_d * s_dBblk + k * s_dBk + offs_n[:, None] * L
        dC_base = dC_ptr + pid_b * s_dCb + pid_d * s_dCblk + k * s_dCk + offs_n[:, None] * L
        if HAS_DLAST:
            g = tl.load(dlast_ptr + ((pid_b * K + k) * d + offs_d[:, None]) * n + offs_n[None, :], mask=mask_dn,
                        other=0.0).to(tl.float32)
        else:
            g = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for cc in range(n_chunks):
            c = n_chunks - 1 - cc
            t = c * CHUNK + offs_c
            tn = t + 1
            mask_t = t < L
            mask_tn = tn < L
            if HAS_ORDERS:
                pos = tl.load(orders_ptr + k * s_ok + t, mask=mask_t, other=0).to(tl.int64)
                posn = tl.load(orders_ptr + k * s_ok + tn, mask=mask_tn, other=0).to(tl.int64)
            else:
                pos = t.to(tl.int64)
                posn = tn.to(tl.int64)
            if GATHER:
                ppos = pos
                pposn = posn
            else:
                ppos = t.to(tl.int64)
                pposn = tn.to(tl.int64)
            m2 = mask_d[:, None] & mask_t[None, :]
            m2n = mask_d[:, None] & mask_tn[None, :]
            mnt = mask_n[:, None] & mask_t[None, :]
            u = tl.load(u_base + pos[None, :] * s_ul, mask=m2, other=0.0).to(tl.float32)
            dt_raw = tl.load(dt_base + ppos[None, :] * s_dl, mask=m2, other=0.0).to(tl.float32)
            dtn = tl.load(dt_base + pposn[None, :] * s_dl, mask=m2n, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt_raw = dt_raw + bias[:, None]
                dtn = dtn + bias[:, None]
            if SOFTPLUS:
                dt = _softplus(dt_raw)
                dtn = _softplus(dtn)
            else:
                dt = dt_raw
            dt = tl.where(m2, dt, 0.0)
            dtn = tl.where(m2n, dtn, 0.0)  # past the end: decay 1, so the carry in is dlast
            Bt = tl.load(B_base + ppos[None, :] * s_bl, mask=mnt, other=0.0).to(tl.float32)
            Ct = tl.load(C_base + ppos[None, :] * s_cl, mask=mnt, other=0.0).to(tl.float32)
            dy = tl.load(dout_ptr + (pid_b * d + offs_d[:, None]) * L + pos[None, :], mask=m2, other=0.0)
            dy = dy.to(tl.float32)
            if HAS_Z:
                zz = tl.load(z_ptr + pid_b * s_zb + offs_d[:, None] * s_zd + pos[None, :] * s_zl, mask=m2,
                             other=0.0).to(tl.float32)
                dy = dy * zz * tl.sigmoid(zz)
            # recompute the states of this chunk
            h0 = tl.load(hs_base + c * n, mask=mask_dn, other=0.0)
            a = tl.exp(dt[:, None, :] * A[:, :, None])
            dtu = dt * u
            x = dtu[:, None, :] * Bt[None, :, :]
            acc_a, acc_x = tl.associative_scan((a, x), 2, _combine)
            hh = acc_a * h0[:, :, None] + acc_x
            # adjoint: g_t = C_t dy_t + a_{t+1} g_{t+1}, the carry g entering from the next chunk
            an = tl.exp(dtn[:, None, :] * A[:, :, None])
            cy = Ct[None, :, :] * dy[:, None, :]
            r_a, r_x = tl.associative_scan((an, cy), 2, _combine, reverse=True)
            gg = r_x + r_a * g[:, :, None]
            g = tl.sum(tl.where(offs_c[None, None, :] == 0, gg, 0.0), axis=2)
            gh = gg * (hh - x)  # g_t * a_t * h_{t-1}
            dA_acc += tl.sum(gh * dt[:, None, :], axis=2)
            sgb = tl.sum(gg * Bt[None, :, :], axis=1)
            ddt = u * sgb + tl.sum(gh * A[:, :, None], axis=1)
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(dt_raw)
            ddt = tl.where(m2, ddt, 0.0)
            dbias_acc += tl.sum(ddt, axis=1)
            du = dt * sgb
            if HAS_D:
                du += Dk[:, None] * dy
                dD_acc += tl.sum(dy * u, axis=1)
            dB = tl.sum(gg * dtu[:, None, :], axis=0)
            dC = tl.sum(hh * dy[:, None, :], axis=0)
            # accumulate (a tensor shared by the scans is revisited by the next k, after the barrier)
            du_ptrs = du_base + pos[None, :]
            tl.store(du_ptrs, tl.load(du_ptrs, mask=m2, other=0.0) + du, mask=m2)
            dd_ptrs = dd_base + ppos[None, :]
            tl.store(dd_ptrs, tl.load(dd_ptrs, mask=m2, other=0.0) + ddt, mask=m2)
            dB_ptrs = dB_base + ppos[None, :]
            tl.store(dB_ptrs, tl.load(dB_ptrs, mask=mnt, other=0.0) + dB, mask=mnt)
            dC_ptrs = dC_base + ppos[None, :]
            tl.store(dC_ptrs, tl.load(dC_ptrs, mask=mnt, other=0.0) + dC, mask=mnt)
        dA_ptrs = dA_ptr + pid_b * s_dAb + k * s_dAk + offs_d[:, None] * n + offs_n[None, :]
        tl.store(dA_ptrs, tl.load(dA_ptrs, mask=mask_dn, other=0.0) + dA_acc, mask=mask_dn)
        if HAS_D:
            dD_ptrs = dD_ptr + pid_b * s_dDb + k * s_dDk + offs_d
            tl.store(dD_ptrs, tl.load(dD_ptrs, mask=mask_d, other=0.0) + dD_acc, mask=mask_d)
        if HAS_BIAS:
            db_ptrs = dbias_ptr + pid_b * s_dbiasb + k * s_dbiask + offs_d
            tl.store(db_ptrs, tl.load(db_ptrs, mask=mask_d, other=0.0) + dbias_acc, mask=mask_d)
        tl.debug_barrier()


def _kstride(t: torch.Tensor, axis: int) -> int:
    """Stride of a scan axis; 0 for a shared (size 1) axis, so that every scan reads the same slice."""
    return 0 if t.shape[axis] == 1 else t.stride(axis)


def _block_d(block_d: int, d: int, groups: Tuple[int, ...]) -> int:
    """A program's channels must lie in one B/C group: BLOCK_D divides d // g when g > 1."""
    for g in groups:
        if g > 1:
            while (d // g) % block_d:
                block_d //= 2
    return block_d


def _to(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    return None if t is None else t.to(dtype)


def _group_sum(part: torch.Tensor, g: int) -> torch.Tensor:
    """(b, programs, K|1, n, L) partial sums -> (b, K|1, g, n, L), added in a fixed order."""
    b, blocks = part.shape[:2]
    summed = part.sum(1, keepdim=True) if g == 1 else part.view(b, g, blocks // g, *part.shape[2:]).sum(2)
    return summed.transpose(1, 2)


class _Launch(NamedTuple):
    """The kernels' view of the arguments (both passes): tensors converted, strides, sizes, flags, grid."""
    u: torch.Tensor
    delta: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: Optional[torch.Tensor]
    z: Optional[torch.Tensor]
    delta_bias: Optional[torch.Tensor]
    orders: torch.Tensor
    grid: Tuple[int, int]
    common: tuple
    sizes: tuple
    flags: dict
    block_d: int
    block_n: int
    warps: int


def _launch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, orders, gather_params) -> _Launch:
    io = u.dtype
    b, Ku, d, L = u.shape
    n = A.shape[-1]
    K = 1 if orders is None else orders.shape[0]
    delta, B, C, z = _to(delta, io), _to(B, io), _to(C, io), _to(z, io)
    A = A.float().contiguous()
    D = None if D is None else D.float().contiguous()
    delta_bias = None if delta_bias is None else delta_bias.float().contiguous()
    orders_i = u if orders is None else orders.to(torch.int32).contiguous()
    block_n = 16 if n <= 16 else 32
    block_d, warps = _CONFIGS[block_n]
    block_d = _block_d(block_d, d, (B.shape[2], C.shape[2]))
    n_chunks = triton.cdiv(L, CHUNK)
    zz = u if z is None else z
    common = (
        u.stride(0), _kstride(u, 1), u.stride(2), u.stride(3),
        delta.stride(0), _kstride(delta, 1), delta.stride(2), delta.stride(3),
        _kstride(A, 0), A.stride(1), A.stride(2),
        B.stride(0), _kstride(B, 1), B.stride(2), B.stride(3), B.stride(4),
        C.stride(0), _kstride(C, 1), C.stride(2), C.stride(3), C.stride(4),
        0 if D is None else _kstride(D, 0), 0 if delta_bias is None else _kstride(delta_bias, 0),
        zz.stride(0), zz.stride(-2), zz.stride(-1), L,
    )
    sizes = (d, L, n, K, d // B.shape[2], d // C.shape[2], n_chunks)
    flags = dict(HAS_D=D is not None, HAS_BIAS=delta_bias is not None, HAS_Z=z is not None,
                 SOFTPLUS=delta_softplus, HAS_ORDERS=orders is not None, GATHER=gather_params)
    return _Launch(u, delta, A, B, C, D, z, delta_bias, orders_i, (triton.cdiv(d, block_d), b), common, sizes, flags,
                   block_d, block_n, warps)


def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, orders, gather_params):
    """(out, last states, chunk-entering states (b, K, d, n_chunks, n), y (fp32, with z) or empty); the normalized
    layout of :mod:`kernels.selective_scan`."""
    a = _launch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, orders, gather_params)
    b, _, d, L = u.shape
    K, n, n_chunks = a.sizes[3], a.sizes[2], a.sizes[6]
    dev = u.device
    y = torch.empty(b, d, L, device=dev, dtype=torch.float32)
    out = torch.empty(b, d, L, device=dev, dtype=u.dtype)
    last = torch.empty(b, K, d, n, device=dev, dtype=torch.float32)
    hs = torch.empty(b, K, d, n_chunks, n, device=dev, dtype=torch.float32)
    dummy = a.u
    wrap_triton(_ss_fwd)[a.grid](
        a.u, a.delta, a.A, a.B, a.C, dummy if a.D is None else a.D, dummy if a.delta_bias is None else a.delta_bias,
        dummy if a.z is None else a.z, a.orders, y, out, last, hs, *a.common, *a.sizes, **a.flags,
        BLOCK_D=a.block_d, BLOCK_N=a.block_n, CHUNK=CHUNK, num_warps=a.warps)
    return out, last, hs, (y if z is not None else u.new_empty(0, dtype=torch.float32))


def backward(grads, outputs, needs, u, delta, A, B, C, D, z, delta_bias, delta_softplus, orders, gather_params):
    """Gradients of (u, delta, A, B, C, D, z, delta_bias) from the stored chunk states (and y for the gate)."""
    a = _launch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, orders, gather_params)
    dout, dlast = grads
    hs, y = outputs[2], outputs[3]
    b, Ku, d, L = u.shape
    n = a.sizes[2]
    dev, f32 = u.device, torch.float32
    dout = torch.zeros(b, d, L, device=dev, dtype=f32) if dout is None else dout.contiguous()
    dlast_c = None if dlast is None else dlast.float().contiguous()
    du = torch.zeros(b, Ku, d, L, device=dev, dtype=f32)
    ddelta = torch.zeros(b, delta.shape[1], d, L, device=dev, dtype=f32)
    dA = torch.zeros(b, A.shape[0], d, n, device=dev, dtype=f32)
    dD = torch.zeros(b, 1 if D is None else D.shape[0], d, device=dev, dtype=f32)
    dbias = torch.zeros(b, 1 if delta_bias is None else delta_bias.shape[0], d, device=dev, dtype=f32)
    blocks = a.grid[0]
    dB = torch.zeros(b, blocks, B.shape[1], n, L, device=dev, dtype=f32)
    dC = torch.zeros(b, blocks, C.shape[1], n, L, device=dev, dtype=f32)
    dummy = a.u
    grad_strides = (
        du.stride(0), _kstride(du, 1), ddelta.stride(0), _kstride(ddelta, 1), dA.stride(0), _kstride(dA, 1),
        dD.stride(0), _kstride(dD, 1), dbias.stride(0), _kstride(dbias, 1),
        dB.stride(0), dB.stride(1), _kstride(dB, 2), dC.stride(0), dC.stride(1), _kstride(dC, 2),
    )
    wrap_triton(_ss_bwd)[a.grid](
        a.u, a.delta, a.A, a.B, a.C, dummy if a.D is None else a.D, dummy if a.delta_bias is None else a.delta_bias,
        dummy if a.z is None else a.z, a.orders, dout, hs, dummy if dlast_c is None else dlast_c,
        du, ddelta, dA, dD, dbias, dB, dC, *a.common, *grad_strides, *a.sizes, **a.flags,
        HAS_DLAST=dlast_c is not None, BLOCK_D=a.block_d, BLOCK_N=a.block_n, CHUNK=CHUNK, num_warps=a.warps)
    dz = None
    if z is not None:
        zf = a.z.float()
        sig = torch.sigmoid(zf)
        dz = (dout.float() * y * sig * (1 + zf * (1 - sig))).to(z.dtype)
    return [du.to(u.dtype), ddelta.to(delta.dtype), dA.sum(0).to(A.dtype), _group_sum(dB, B.shape[2]).to(B.dtype),
            _group_sum(dC, C.shape[2]).to(C.dtype), None if D is None else dD.sum(0).to(D.dtype), dz,
            None if delta_bias is None else dbias.sum(0).to(delta_bias.dtype)]


_FWD_SIG = {
    **{p: '*{dtype}' for p in ('u_ptr', 'delta_ptr')}, 'A_ptr': '*fp32', 'B_ptr': '*{dtype}', 'C_ptr': '*{dtype}',
    'D_ptr': '*fp32', 'bias_ptr': '*fp32', 'z_ptr': '*{dtype}', 'orders_ptr': '*i32',
}
_STRIDES = ('s_ub', 's_uk', 's_ud', 's_ul', 's_db', 's_dk', 's_dd', 's_dl', 's_ak', 's_ad', 's_an',
            's_bb', 's_bk', 's_bg', 's_bn', 's_bl', 's_cb', 's_ck', 's_cg', 's_cn', 's_cl',
            's_Dk', 's_biask', 's_zb', 's_zd', 's_zl', 's_ok')
_SIZES = ('d', 'L', 'n', 'K', 'dpg_B', 'dpg_C', 'n_chunks')
_FLAGS = ('HAS_D', 'HAS_BIAS', 'HAS_Z', 'SOFTPLUS', 'HAS_ORDERS', 'GATHER')


def _aot_configs(extra_flags=()):
    return [aot.Config(constexprs={**{f: True for f in (*_FLAGS, *extra_flags)}, 'BLOCK_D': bd, 'BLOCK_N': bn,
                                   'CHUNK': CHUNK}, num_warps=w, num_stages=1)
            for bn, (bd, w) in _CONFIGS.items()]


def _register() -> None:
    aot.register(
        name='selective_scan.fwd', fn=_ss_fwd, dtypes=('fp32', 'fp16', 'bf16'), configs=_aot_configs(),
        signature={**_FWD_SIG, 'y_ptr': '*fp32', 'out_ptr': '*{dtype}', 'last_ptr': '*fp32', 'hs_ptr': '*fp32',
                   **{s: 'i32' for s in (*_STRIDES, *_SIZES)}, **{f: 'constexpr' for f in _FLAGS},
                   'BLOCK_D': 'constexpr', 'BLOCK_N': 'constexpr', 'CHUNK': 'constexpr'},
    )
    aot.register(
        name='selective_scan.bwd', fn=_ss_bwd, dtypes=('fp32', 'fp16', 'bf16'), configs=_aot_configs(('HAS_DLAST',)),
        signature={**_FWD_SIG, 'dout_ptr': '*{dtype}', 'hs_ptr': '*fp32', 'dlast_ptr': '*fp32',
                   **{p: '*fp32' for p in ('du_ptr', 'ddelta_ptr', 'dA_ptr', 'dD_ptr', 'dbias_ptr', 'dB_ptr',
                                           'dC_ptr')},
                   **{s: 'i32' for s in _STRIDES},
                   **{s: 'i32' for s in ('s_dub', 's_duk', 's_ddb', 's_ddk', 's_dAb', 's_dAk', 's_dDb', 's_dDk',
                                         's_dbiasb', 's_dbiask', 's_dBb', 's_dBblk', 's_dBk', 's_dCb', 's_dCblk',
                                         's_dCk')},
                   **{s: 'i32' for s in _SIZES}, **{f: 'constexpr' for f in (*_FLAGS, 'HAS_DLAST')},
                   'BLOCK_D': 'constexpr', 'BLOCK_N': 'constexpr', 'CHUNK': 'constexpr'},
    )


_register()  # kernels.aot.register does nothing under TRITON_INTERPRET=1
