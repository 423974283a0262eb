"""Fused window attention in Triton: keys read by index arithmetic from (B, heads, H, W, D), online softmax.

One program per (window, batch * head, query block) in the forward pass. A token of window (wi, wj) with
in-window coordinates (a, b) lives at

    y = wi * WIN_STRIDE_Y + a * TOK_STRIDE_Y,    x = wj * WIN_STRIDE_X + b * TOK_STRIDE_X

(block windows: win stride = window, token stride 1; grid windows: win stride 1, token stride = H_pad / wh),
so no partition copy is made and tokens with y >= H or x >= W (the padding) are masked: padded keys leave
the softmax, padded queries are neither read nor written. The relative position bias is gathered from the
(heads, 2wh-1, 2ww-1) table inside the kernels. Softmax statistics (log-sum-exp, base 2) are the only extra
tensor the backward pass keeps; it recomputes the probabilities.

Backward: ``_bwd_dq_kernel`` (per window and query block: delta = rowsum(dO * O), then dq over the key
blocks) runs first, ``_bwd_dkdv_kernel`` (per window chunk and key block: dk, dv over the query blocks)
second. The bias gradient is deterministic: each dk/dv program owns a chunk of windows and accumulates its
dS tiles in a private (N, N) slot of a fp32 buffer (one slot per (batch, chunk, head)), which is summed and
scattered onto the table with fixed-order PyTorch reductions.

Launch configs: :func:`_config` maps (kernel, window block, padded head dim, bias flags) to the tiles, warps and
stages, and is the one place that defines them: the launcher calls it and ``_register`` hands every config it can
return to :mod:`kernels.aot`, which proves them spill-free on sm_80 and sm_90. 64-token windows use 64-query
tiles with 8 warps and narrower key tiles (the sm_90 fp16/bf16 builds keep wgmma); the dk/dv kernel's key tile
shrinks with the head dim. Head dims are padded to a power of two >= 16, D and Dv to the same one (the kernels
mask the padding); 64 is the largest the kernels take without spilling (:data:`MAX_HEAD_DIM`).

Precision: dots accumulate in fp32. fp32 inputs use tf32 tensor cores on GPUs (as kernels.neighborhood does:
IEEE fp32 dots need more registers than a block has, ptxas spills), so fp32 results carry tf32's 10-bit
mantissa, i.e. fp16-like errors (about 1e-3 relative; the tests allow 4e-3 on GPUs, as for fp16). Under
TRITON_INTERPRET=1 fp32 dots run in IEEE precision (tests compare them to 2e-5).
"""
import math
from typing import Dict, List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .. import aot
from ..backend import triton_interpreted
from .limits import MAX_HEAD_DIM
from .reference import padded_size, relative_bias_grad

__all__ = ['forward', 'backward']

_LOG2E = 1.4426950408889634
# dS partial slots per (batch, head) for the bias gradient: bounds its buffer to this many (N, N) tiles
_BIAS_GRAD_CHUNKS = 8
_BLOCKS = (16, 32, 64)
_HEAD_DIMS = (16, 32, 64)


@triton.jit
def _token_coords(offs, ww, wi, wj, WIN_STRIDE_Y, WIN_STRIDE_X, TOK_STRIDE_Y, TOK_STRIDE_X):
    a = offs // ww
    b = offs % ww
    return a, b, wi * WIN_STRIDE_Y + a * TOK_STRIDE_Y, wj * WIN_STRIDE_X + b * TOK_STRIDE_X


@triton.jit
def _bias_tile(bias_ptr, h, qa, qb, ka, kb, valid, wh, ww):
    """table[h, ka - qa + wh - 1, kb - qb + ww - 1] for a (queries, keys) tile, fp32."""
    vocab_w = 2 * ww - 1
    idx = (ka[None, :] - qa[:, None] + wh - 1) * vocab_w + (kb[None, :] - qb[:, None] + ww - 1)
    return tl.load(bias_ptr + h * (2 * wh - 1) * vocab_w + idx, mask=valid, other=0.0)


@triton.jit
def _fwd_kernel(Q, K, V, OUT, LSE, BIAS,
                sqb, sqh, sqy, sqx, skb, skh, sky, skx, svb, svh, svy, svx, sob, soh, soy, sox,
                heads, H, W, wh, ww, n_win_w, WIN_STRIDE_Y, WIN_STRIDE_X, TOK_STRIDE_Y, TOK_STRIDE_X,
                head_dim, head_dim_v, scale,
                HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                HEAD_DIM_V: tl.constexpr, DOT_PRECISION: tl.constexpr):
    pid_w = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_m = tl.program_id(2)
    b = pid_bh // heads
    h = pid_bh % heads
    wi = pid_w // n_win_w
    wj = pid_w % n_win_w
    n_tok = wh * ww

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    qa, qb, qy, qx = _token_coords(offs_m, ww, wi, wj, WIN_STRIDE_Y, WIN_STRIDE_X, TOK_STRIDE_Y, TOK_STRIDE_X)
    q_valid = (offs_m < n_tok) & (qy < H) & (qx < W)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_dv = tl.arange(0, HEAD_DIM_V)
    d_valid = offs_d < head_dim
    dv_valid = offs_dv < head_dim_v

    q = tl.load(Q + b * sqb + h * sqh + qy[:, None] * sqy + qx[:, None] * sqx + offs_d[None, :],
                mask=q_valid[:, None] & d_valid[None, :], other=0.0)
    qk_scale = scale * 1.4426950408889634  # softmax in base 2

    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite: a block whose keys are all masked leaves no NaN
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_V], tl.float32)
    for start_n in range(0, n_tok, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        ka, kb, ky, kx = _token_coords(offs_n, ww, wi, wj, WIN_STRIDE_Y, WIN_STRIDE_X, TOK_STRIDE_Y, TOK_STRIDE_X)
        k_valid = (offs_n < n_tok) & (ky < H) & (kx < W)
        k = tl.load(K + b * skb + h * skh + ky[:, None] * sky + kx[:, None] * skx + offs_d[None, :],
                    mask=k_valid[:, None] & d_valid[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if HAS_BIAS:
            tile_valid = (offs_m < n_tok)[:, None] & (offs_n < n_tok)[None, :]
            s += _bias_tile(BIAS, h, qa, qb, ka, kb, tile_valid, wh, ww) * 1.4426950408889634
        s = tl.where(k_valid[None, :], s, float('-inf'))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + b * svb + h * svh + ky[:, None] * svy + kx[:, None] * svx + offs_dv[None, :],
                    mask=k_valid[:, None] & dv_valid[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    l_i = tl.where(q_valid, l_i, 1.0)
    out = acc / l_i[:, None]
    tl.store(OUT + b * sob + h * soh + qy[:, None] * soy + qx[:, None] * sox + offs_dv[None, :],
             out.to(OUT.dtype.element_ty), mask=q_valid[:, None] & dv_valid[None, :])
    tl.store(LSE + pid_bh * H * W + qy * W + qx, m_i + tl.log2(l_i), mask=q_valid)


@triton.jit
def _bwd_dq_kernel(Q, K, V, OUT, DO, DQ, LSE, DELTA, BIAS,
                   sqb, sqh, sqy, sqx, skb, skh, sky, skx, svb, svh, svy, svx, sob, soh, soy, sox,
                   sdob, sdoh, sdoy, sdox, sdqb, sdqh, sdqy, sdqx,
                   heads, H, W, wh, ww, n_win_w, WIN_STRIDE_Y, WIN_STRIDE_X, TOK_STRIDE_Y, TOK_STRIDE_X,
                   head_dim, head_dim_v, scale,
                   HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                   HEAD_DIM_V: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """dq for one query block of one window; also writes delta = rowsum(dO * O) for the dk/dv kernel."""
    pid_w = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_m = tl.program_id(2)
    b = pid_bh // heads
    h = pid_bh % heads
    wi = pid_w // n_win_w
    wj = pid_w % n_win_w
    n_tok = wh * ww

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    qa, qb, qy, qx = _token_coords(offs_m, ww, wi, wj, WIN_STRIDE_Y, WIN_STRIDE_X, TOK_STRIDE_Y, TOK_STRIDE_X)
    q_valid = (offs_m < n_tok) & (qy < H) & (qx < W)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_dv = tl.arange(0, HEAD_DIM_V)
    d_valid = offs_d < head_dim
    dv_valid = offs_dv < head_dim_v
    qmask = q_valid[:, None] & d_valid[None, :]
    qvmask = q_valid[:, None] & dv_valid[None, :]

    q = tl.load(Q + b * sqb + h * sqh + qy[:, None] * sqy + qx[:, None] * sqx + offs_d[None, :],
                mask=qmask, other=0.0)
    do = tl.load(DO + b * sdob + h * sdoh + qy[:, None] * sdoy + qx[:, None] * sdox + offs_dv[None, :],
                 mask=qvmask, other=0.0)
    o = tl.load(OUT + b * sob + h * soh + qy[:, None] * soy + qx[:, None] * sox + offs_dv[None, :],
                mask=qvmask, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    stat = pid_bh * H * W + qy * W + qx
    tl.store(DELTA + stat, delta, mask=q_valid)
    lse = tl.load(LSE + stat, mask=q_valid, other=0.0)
    qk_scale = scale * 1.4426950408889634

    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start_n in range(0, n_tok, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        ka, kb, ky, kx = _token_coords(offs_n, ww, wi, wj, WIN_STRIDE_Y, WIN_STRIDE_X, TOK_STRIDE_Y, TOK_STRIDE_X)
        k_valid = (offs_n < n_tok) & (ky < H) & (kx < W)
        k = tl.load(K + b * skb + h * skh + ky[:, None] * sky + kx[:, None] * skx + offs_d[None, :],
                    mask=k_valid[:, None] & d_valid[None, :], other=0.0)
        v = tl.load(V + b * svb + h * svh + ky[:, None] * svy + kx[:, None] * svx + offs_dv[None, :],
                    mask=k_valid[:, None] & dv_valid[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if HAS_BIAS:
            tile_valid = (offs_m < n_tok)[:, None] & (offs_n < n_tok)[None, :]
            s += _bias_tile(BIAS, h, qa, qb, ka, kb, tile_valid, wh, ww) * 1.4426950408889634
        valid = q_valid[:, None] & k_valid[None, :]
        p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    tl.store(DQ + b * sdqb + h * sdqh + qy[:, None] * sdqy + qx[:, None] * sdqx + offs_d[None, :],
             (dq * scale).to(DQ.dtype.element_ty), mask=qmask)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, BIAS, DBIAS,
                     sqb, sqh, sqy, sqx, skb, skh, sky, skx, svb, svh, svy, svx,
                     sdob, sdoh, sdoy, sdox, sdkb, sdkh, sdky, sdkx, sdvb, sdvh, sdvy, sdvx,
                     heads, H, W, wh, ww, n_win, n_win_w, windows_per_program,
                     WIN_STRIDE_Y, WIN_STRIDE_X, TOK_STRIDE_Y, TOK_STRIDE_X, head_dim, head_dim_v, scale,
                     HAS_BIAS: tl.constexpr, BIAS_GRAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """dk, dv for one key block of each window of a chunk; dS summed over the chunk into its DBIAS slot."""
    pid_c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_n = tl.program_id(2)
    b = pid_bh // heads
    h = pid_bh % heads
    n_tok = wh * ww
    n_chunks = tl.num_programs(0)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_dv = tl.arange(0, HEAD_DIM_V)
    d_valid = offs_d < head_dim
    dv_valid = offs_dv < head_dim_v
    qk_scale = scale * 1.4426950408889634
    dbias_slot = DBIAS + ((b * n_chunks + pid_c) * heads + h) * n_tok * n_tok

    for w in range(pid_c * windows_per_program, tl.minimum(n_win, (pid_c + 1) * windows_per_program)):
        wi = w // n_win_w
        wj = w % n_win_w
        ka, kb, ky, kx = _token_coords(offs_n, ww, wi, wj, WIN_STRIDE_Y, WIN_STRIDE_X, TOK_STRIDE_Y, TOK_STRIDE_X)
        k_valid = (offs_n < n_tok) & (ky < H) & (kx < W)
        kmask = k_valid[:, None] & d_valid[None, :]
        kvmask = k_valid[:, None] & dv_valid[None, :]
        k = tl.load(K + b * skb + h * skh + ky[:, None] * sky + kx[:, None] * skx + offs_d[None, :],
                    mask=kmask, other=0.0)
        v = tl.load(V + b * svb + h * svh + ky[:, None] * svy + kx[:, None] * svx + offs_dv[None, :],
                    mask=kvmask, other=0.0)
        dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM_V], tl.float32)
        for start_m in range(0, n_tok, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            qa, qb, qy, qx = _token_coords(offs_m, ww, wi, wj, WIN_STRIDE_Y, WIN_STRIDE_X, TOK_STRIDE_Y,
                                           TOK_STRIDE_X)
            q_valid = (offs_m < n_tok) & (qy < H) & (qx < W)
            q = tl.load(Q + b * sqb + h * sqh + qy[:, None] * sqy + qx[:, None] * sqx + offs_d[None, :],
                        mask=q_valid[:, None] & d_valid[None, :], other=0.0)
            do = tl.load(DO + b * sdob + h * sdoh + qy[:, None] * sdoy + qx[:, None] * sdox + offs_dv[None, :],
                         mask=q_valid[:, None] & dv_valid[None, :], other=0.0)
            stat = pid_bh * H * W + qy * W + qx
            lse = tl.load(LSE + stat, mask=q_valid, other=0.0)
            delta = tl.load(DELTA + stat, mask=q_valid, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
            tile_valid = (offs_m < n_tok)[:, None] & (offs_n < n_tok)[None, :]
            if HAS_BIAS:
                s += _bias_tile(BIAS, h, qa, qb, ka, kb, tile_valid, wh, ww) * 1.4426950408889634
            valid = q_valid[:, None] & k_valid[None, :]
            p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)
            if BIAS_GRAD:
                # only this program touches its slot, each element always from the same thread: deterministic
                tl.atomic_add(dbias_slot + offs_m[:, None] * n_tok + offs_n[None, :], ds, mask=tile_valid,
                              sem='relaxed')
        tl.store(DK + b * sdkb + h * sdkh + ky[:, None] * sdky + kx[:, None] * sdkx + offs_d[None, :],
                 (dk * scale).to(DK.dtype.element_ty), mask=kmask)
        tl.store(DV + b * sdvb + h * sdvh + ky[:, None] * sdvy + kx[:, None] * sdvx + offs_dv[None, :],
                 dv.to(DV.dtype.element_ty), mask=kvmask)


def _block(n_tok: int) -> int:
    """Window block: the power of two (16, 32 or 64) that tiles a window of n_tok tokens."""
    return 16 if n_tok <= 16 else 32 if n_tok <= 32 else 64


def _head_dim(d: int, dv: int) -> int:
    """HEAD_DIM = HEAD_DIM_V: max(D, Dv) padded to a power of two >= 16 (in registers, masked)."""
    padded = max(16, triton.next_power_of_2(max(d, dv)))
    if padded > MAX_HEAD_DIM:
        raise ValueError(f'the triton backend of window_attention takes head dims up to {MAX_HEAD_DIM}, got D={d}, '
                         f'Dv={dv}')
    return padded


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32: tf32 tensor cores on GPUs; IEEE only under the interpreter (exact parity in tests), as neighborhood
    return 'ieee' if dtype == torch.float32 and triton_interpreted() else 'tf32'


def _config(kernel: str, block: int, head_dim: int, has_bias: bool, bias_grad: bool = False,
            precision: str = 'tf32') -> aot.Config:
    """The launch config of ``kernel`` ('fwd', 'bwd_dq', 'bwd_dkdv') for a window block and padded head dim.

    The one definition: the launcher uses it and ``_register`` registers every value it takes. Chosen from the
    offline report (``python -m kernels.aot --only window``): spill-free on sm_80 and sm_90 in fp32/fp16/bf16.
    """
    if block <= 32:  # one tile per window
        block_m = block_n = block
        num_warps = 8 if kernel == 'bwd_dkdv' and block == 32 else 4
        if kernel == 'bwd_dq' and block == 16 and head_dim == 64:
            num_warps = 2  # 4 or 8 warps leave ptxas an 8-byte stack frame on sm_80
    elif kernel == 'fwd':
        block_m, block_n, num_warps = 64, 32, 8
    elif kernel == 'bwd_dq':
        block_m, block_n, num_warps = 64, 32 if head_dim <= 32 else 16, 8
    else:  # bwd_dkdv: key tile (BLOCK_N) x query tile (BLOCK_M); 64 keys keep wgmma on sm_90 up to head dim 32
        block_m, block_n, num_warps = (16, 64, 8) if head_dim <= 32 else (32, 32, 8)
    constexprs = dict(HAS_BIAS=has_bias)
    if kernel == 'bwd_dkdv':
        constexprs['BIAS_GRAD'] = bias_grad
    constexprs.update(BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=head_dim, HEAD_DIM_V=head_dim,
                      DOT_PRECISION=precision)
    return aot.Config(constexprs, num_warps=num_warps, num_stages=2)


def _launch_options(cfg: aot.Config) -> dict:
    return dict(cfg.constexprs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _geometry(H: int, W: int, window_size: Tuple[int, int], grid: bool) -> Tuple[int, int, int, int, int, int]:
    """(windows along H, windows along W, window stride y, x, token stride y, x) in map coordinates."""
    wh, ww = window_size
    sh, sw = padded_size(H, wh) // wh, padded_size(W, ww) // ww
    if grid:  # window (i, j) holds (a * sh + i, b * sw + j): sh x sw windows
        return sh, sw, 1, 1, sh, sw
    return sh, sw, wh, ww, 1, 1


def _strides(t: torch.Tensor) -> Tuple[int, int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_pos_bias: Optional[torch.Tensor], window_h: int,
            window_w: int, grid: bool, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out, softmax log-sum-exp (B * heads, H, W) fp32); arguments as :mod:`kernels.window` passes them."""
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    B, heads, H, W, D = q.shape
    Dv = v.shape[-1]
    wh, ww = window_size = (window_h, window_w)
    n_win_h, n_win_w, wsy, wsx, tsy, tsx = _geometry(H, W, window_size, grid)
    n_tok = wh * ww
    cfg = _config('fwd', _block(n_tok), _head_dim(D, Dv), rel_pos_bias is not None, precision=_dot_precision(q.dtype))
    bias = _table(rel_pos_bias, q)
    out = q.new_empty(B, heads, H, W, Dv)
    lse = torch.empty(B * heads, H, W, device=q.device, dtype=torch.float32)
    launch = (n_win_h * n_win_w, B * heads, triton.cdiv(n_tok, cfg.constexprs['BLOCK_M']))
    wrap_triton(_fwd_kernel)[launch](
        q, k, v, out, lse, bias, *_strides(q), *_strides(k), *_strides(v), *_strides(out),
        heads, H, W, wh, ww, n_win_w, wsy, wsx, tsy, tsx, D, Dv, scale, **_launch_options(cfg))
    return out, lse


def backward(grads: List[torch.Tensor], outputs: List[torch.Tensor], needs: Dict[str, bool], q: torch.Tensor,
             k: torch.Tensor, v: torch.Tensor, rel_pos_bias: Optional[torch.Tensor], window_h: int, window_w: int,
             grid: bool, scale: float) -> List[Optional[torch.Tensor]]:
    """Gradients of q, k, v and rel_pos_bias from the forward's output and log-sum-exp."""
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    out, lse = outputs
    do = _last_dim_contiguous(grads[0])
    B, heads, H, W, D = q.shape
    Dv = v.shape[-1]
    wh, ww = window_size = (window_h, window_w)
    has_bias = rel_pos_bias is not None
    bias = _table(rel_pos_bias, q)
    n_win_h, n_win_w, wsy, wsx, tsy, tsx = _geometry(H, W, window_size, grid)
    n_win, n_tok = n_win_h * n_win_w, wh * ww
    block, head_dim, precision = _block(n_tok), _head_dim(D, Dv), _dot_precision(q.dtype)
    dq_cfg = _config('bwd_dq', block, head_dim, has_bias, precision=precision)
    geometry = (heads, H, W, wh, ww)
    coords = (wsy, wsx, tsy, tsx)
    dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    delta = torch.empty_like(lse)
    wrap_triton(_bwd_dq_kernel)[(n_win, B * heads, triton.cdiv(n_tok, dq_cfg.constexprs['BLOCK_M']))](
        q, k, v, out, do, dq, lse, delta, bias, *_strides(q), *_strides(k), *_strides(v), *_strides(out),
        *_strides(do), *_strides(dq), *geometry, n_win_w, *coords, D, Dv, scale, **_launch_options(dq_cfg))

    bias_grad = has_bias and needs['rel_pos_bias']
    n_chunks = min(n_win, _BIAS_GRAD_CHUNKS) if bias_grad else n_win
    per_program = math.ceil(n_win / n_chunks)
    n_chunks = math.ceil(n_win / per_program)
    dbias = (torch.zeros(B, n_chunks, heads, n_tok, n_tok, device=q.device, dtype=torch.float32)
             if bias_grad else bias)
    dkdv_cfg = _config('bwd_dkdv', block, head_dim, has_bias, bias_grad, precision=precision)
    dkdv_grid = (n_chunks, B * heads, triton.cdiv(n_tok, dkdv_cfg.constexprs['BLOCK_N']))
    wrap_triton(_bwd_dkdv_kernel)[dkdv_grid](
        q, k, v, do, dk, dv, lse, delta, bias, dbias, *_strides(q), *_strides(k), *_strides(v), *_strides(do),
        *_strides(dk), *_strides(dv), *geometry, n_win, n_win_w, per_program, *coords, D, Dv, scale,
        **_launch_options(dkdv_cfg))
    dtable = relative_bias_grad(dbias.sum((0, 1)), window_size).to(rel_pos_bias.dtype) if bias_grad else None
    return [dq, dk, dv, dtable]


def _table(rel_pos_bias: Optional[torch.Tensor], q: torch.Tensor) -> torch.Tensor:
    """The bias table as the kernels read it (fp32, contiguous), or a placeholder pointer."""
    if rel_pos_bias is None:
        return q.new_empty(1, dtype=torch.float32)
    return rel_pos_bias.detach().float().contiguous()


def _register() -> None:
    ptr, i32 = '*{dtype}', 'i32'
    f32p, c = '*fp32', 'constexpr'

    def strides(*names: str) -> dict:
        return {f's{n}{d}': i32 for n in names for d in 'bhyx'}

    geometry = {a: i32 for a in ('heads', 'H', 'W', 'wh', 'ww')}
    coords = {a: i32 for a in ('WIN_STRIDE_Y', 'WIN_STRIDE_X', 'TOK_STRIDE_Y', 'TOK_STRIDE_X')}
    tail = {'head_dim': i32, 'head_dim_v': i32, 'scale': 'fp32'}
    consts = {a: c for a in ('HAS_BIAS', 'BLOCK_M', 'BLOCK_N', 'HEAD_DIM', 'HEAD_DIM_V', 'DOT_PRECISION')}
    signatures = {
        'fwd': (_fwd_kernel, {'Q': ptr, 'K': ptr, 'V': ptr, 'OUT': ptr, 'LSE': f32p, 'BIAS': f32p,
                              **strides('q', 'k', 'v', 'o'), **geometry, 'n_win_w': i32, **coords, **tail, **consts}),
        'bwd_dq': (_bwd_dq_kernel, {'Q': ptr, 'K': ptr, 'V': ptr, 'OUT': ptr, 'DO': ptr, 'DQ': ptr, 'LSE': f32p,
                                    'DELTA': f32p, 'BIAS': f32p, **strides('q', 'k', 'v', 'o', 'do', 'dq'),
                                    **geometry, 'n_win_w': i32, **coords, **tail, **consts}),
        'bwd_dkdv': (_bwd_dkdv_kernel, {'Q': ptr, 'K': ptr, 'V': ptr, 'DO': ptr, 'DK': ptr, 'DV': ptr, 'LSE': f32p,
                                        'DELTA': f32p, 'BIAS': f32p, 'DBIAS': f32p,
                                        **strides('q', 'k', 'v', 'do', 'dk', 'dv'), **geometry, 'n_win': i32,
                                        'n_win_w': i32, 'windows_per_program': i32, **coords, **tail,
                                        'HAS_BIAS': c, 'BIAS_GRAD': c, **{a: c for a in consts if a != 'HAS_BIAS'}}),
    }
    # every config the launcher can pick (_config): each window block, padded head dim and bias variant; fp32
    # runs tf32 dots on GPUs, so one config list serves the three dtypes
    bias_variants = {'fwd': ((False, False), (True, False)), 'bwd_dq': ((False, False), (True, False)),
                     'bwd_dkdv': ((False, False), (True, False), (True, True))}
    for name, (fn, signature) in signatures.items():
        configs = [_config(name, block, head_dim, has_bias, bias_grad)
                   for block in _BLOCKS for head_dim in _HEAD_DIMS for has_bias, bias_grad in bias_variants[name]]
        aot.register(f'window.{name}', fn, signature, configs, dtypes=('fp32', 'fp16', 'bf16'))


_register()  # kernels.aot.register does nothing under TRITON_INTERPRET=1
