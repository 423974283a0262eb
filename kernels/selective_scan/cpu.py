"""Fast exact selective scan for CPUs: a C++ loop compiled at first use, with a chunked PyTorch scan as fallback.

Native path: g++ builds a small shared library (no PyTorch headers, loaded with ctypes, about a second to build)
into ``$ZOO_KERNELS_CACHE`` (default ``~/.cache/zoo_kernels``), keyed by the source, the flags and the CPU. It
runs the recurrence exactly as the reference does, in the compute dtype, one (batch, channel) row at a time,
vectorised over the state size n (threads: ``$ZOO_SELECTIVE_SCAN_THREADS``, see :func:`_threads`); the
backward recomputes the states of one (batch, channel, scan) row into a per-thread O(L * n) scratch and walks
back through it, so nothing of size O(b * d * n * L) is ever stored. Scan orders are read through the index
table inside the loops (no gathered copies). dB and dC go to partial sums per block of channels (16 blocks),
added in a fixed order: results are deterministic and independent of the thread count.

Fallback (no compiler, or ``ZOO_SELECTIVE_SCAN_NATIVE=0``): a two-pass chunked scan, chunks of T ~ sqrt(L)
steps side by side (about 2 sqrt(L) small vectorised steps instead of L); every factor is a product of decays,
never a division by one, so large steps underflow to zero instead of overflowing. Autograd differentiates it.
"""
import ctypes
import hashlib
import logging
import math
import os
import platform
import subprocess
import tempfile
import threading
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .reference import compute_dtype

__all__ = ['selective_scan', 'selective_scan_native', 'selective_scan_torch', 'native_available']

_log = logging.getLogger(__name__)

_SOURCE = r'''
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// exp for float that gcc vectorises (Cephes polynomial, ~1 ulp); exp(x) = 0 below -88.
inline float vexp(float x) {
    x = x < -88.0f ? -88.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float k = std::floor(x * 1.44269504088896341f + 0.5f);
    const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float y = p * r * r + r + 1.0f;
    const int32_t e = (static_cast<int32_t>(k) + 127) << 23;
    float s;
    std::memcpy(&s, &e, sizeof(s));
    return y * s;
}
inline double vexp(double x) { return std::exp(x); }

// Per-thread scratch on its own cache lines: threads writing neighbouring heap words (false sharing) would
// slow the per-step state updates down several-fold.
template <typename T>
struct Scratch {
    std::vector<T> buf;
    T* p;
    explicit Scratch(int64_t size) : buf(size + 48, T(0)) {
        auto addr = reinterpret_cast<std::uintptr_t>(buf.data());
        p = reinterpret_cast<T*>((addr + 64 + 63) & ~std::uintptr_t(63));
    }
};

struct Dims {
    int64_t b, d, L, n, gB, gC, K, Ku, Kd, KA, KB, KC, gather;
    explicit Dims(const int64_t* m)
        : b(m[0]), d(m[1]), L(m[2]), n(m[3]), gB(m[4]), gC(m[5]), K(m[6]), Ku(m[7]), Kd(m[8]), KA(m[9]),
          KB(m[10]), KC(m[11]), gather(m[12]) {}
    // row offsets: u/delta (b, K?, d, L); A (K?, d, n); B/C (b, K?, g, L, n)
    int64_t ud(int64_t Kx, int64_t bi, int64_t k, int64_t di) const {
        return ((bi * Kx + (Kx > 1 ? k : 0)) * d + di) * L;
    }
    int64_t a(int64_t k, int64_t di) const { return ((KA > 1 ? k : 0) * d + di) * n; }
    int64_t bc(int64_t Kx, int64_t g, int64_t bi, int64_t k, int64_t di) const {
        return ((bi * Kx + (Kx > 1 ? k : 0)) * g + di / (d / g)) * L * n;
    }
};

template <typename T, int NS>
void fwd_rows(const T* __restrict u, const T* __restrict delta, const T* __restrict A, const T* __restrict B,
              const T* __restrict C, const int64_t* __restrict orders, T* __restrict y, T* __restrict last,
              const Dims& m, int64_t r0, int64_t r1) {
    const int64_t n = NS ? NS : m.n;
    Scratch<T> hs(n);
    T* __restrict h = hs.p;
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t bi = r / m.d, di = r % m.d;
        T* __restrict yr = y + (bi * m.d + di) * m.L;
        for (int64_t k = 0; k < m.K; ++k) {
            const T* __restrict ur = u + m.ud(m.Ku, bi, k, di);
            const T* __restrict dr = delta + m.ud(m.Kd, bi, k, di);
            const T* __restrict Ar = A + m.a(k, di);
            const T* __restrict Br = B + m.bc(m.KB, m.gB, bi, k, di);
            const T* __restrict Cr = C + m.bc(m.KC, m.gC, bi, k, di);
            const int64_t* __restrict ord = orders + k * m.L;
            for (int64_t j = 0; j < n; ++j) h[j] = 0;
            for (int64_t t = 0; t < m.L; ++t) {
                const int64_t p = ord[t], q = m.gather ? p : t;
                const T dt = dr[q], du = dt * ur[p];
                const T* __restrict Bt = Br + q * n;
                const T* __restrict Ct = Cr + q * n;
                T acc = 0;
#pragma omp simd reduction(+ : acc)
                for (int64_t j = 0; j < n; ++j) {
                    h[j] = vexp(dt * Ar[j]) * h[j] + du * Bt[j];
                    acc += Ct[j] * h[j];
                }
                yr[p] += acc;
            }
            std::memcpy(last + ((bi * m.K + k) * m.d + di) * n, h, n * sizeof(T));
        }
    }
}

template <typename T, int NS>
void bwd_channels(const T* __restrict u, const T* __restrict delta, const T* __restrict A, const T* __restrict B,
                  const T* __restrict C, const int64_t* __restrict orders, const T* __restrict dy,
                  const T* __restrict dlast, T* __restrict du, T* __restrict ddelta, T* __restrict dA,
                  T* __restrict dB, T* __restrict dC, const Dims& m, int64_t d0, int64_t d1) {
    const int64_t n = NS ? NS : m.n, L = m.L;
    Scratch<T> Hs(L * n), As(L * n), gs(n), zs(n);
    T* __restrict H = Hs.p;
    T* __restrict Adec = As.p;
    T* __restrict g = gs.p;
    for (int64_t di = d0; di < d1; ++di) {
        for (int64_t bi = 0; bi < m.b; ++bi) {
            const T* __restrict dyr = dy + (bi * m.d + di) * L;
            for (int64_t k = 0; k < m.K; ++k) {
                const T* __restrict ur = u + m.ud(m.Ku, bi, k, di);
                const T* __restrict dr = delta + m.ud(m.Kd, bi, k, di);
                const T* __restrict Ar = A + m.a(k, di);
                const T* __restrict Br = B + m.bc(m.KB, m.gB, bi, k, di);
                const T* __restrict Cr = C + m.bc(m.KC, m.gC, bi, k, di);
                T* __restrict dur = du + m.ud(m.Ku, bi, k, di);
                T* __restrict ddr = ddelta + m.ud(m.Kd, bi, k, di);
                T* __restrict dAr = dA + m.a(k, di);
                T* __restrict dBr = dB + m.bc(m.KB, m.gB, bi, k, di);
                T* __restrict dCr = dC + m.bc(m.KC, m.gC, bi, k, di);
                const int64_t* __restrict ord = orders + k * L;
                for (int64_t j = 0; j < n; ++j) g[j] = 0;
                // recompute the states of this row
                for (int64_t t = 0; t < L; ++t) {
                    const int64_t p = ord[t], q = m.gather ? p : t;
                    const T dt = dr[q], dtu = dt * ur[p];
                    const T* __restrict Bt = Br + q * n;
                    const T* __restrict hp = t > 0 ? H + (t - 1) * n : g;
                    T* __restrict ht = H + t * n;
                    T* __restrict at = Adec + t * n;
#pragma omp simd
                    for (int64_t j = 0; j < n; ++j) {
                        at[j] = vexp(dt * Ar[j]);
                        ht[j] = at[j] * hp[j] + dtu * Bt[j];
                    }
                }
                if (dlast) {
                    const T* dl = dlast + ((bi * m.K + k) * m.d + di) * n;
                    for (int64_t j = 0; j < n; ++j) g[j] = dl[j];
                }
                // walk back: g holds dL/dh_t once C_t * dy_t is added
                for (int64_t t = L - 1; t >= 0; --t) {
                    const int64_t p = ord[t], q = m.gather ? p : t;
                    const T dt = dr[q], ut = ur[p], dyt = dyr[p], dtu = dt * ut;
                    const T* __restrict Bt = Br + q * n;
                    const T* __restrict Ct = Cr + q * n;
                    const T* __restrict ht = H + t * n;
                    const T* __restrict hp = t > 0 ? H + (t - 1) * n : zs.p;
                    const T* __restrict at = Adec + t * n;
                    T* __restrict dBt = dBr + q * n;
                    T* __restrict dCt = dCr + q * n;
                    T sgb = 0, sgha = 0;
#pragma omp simd reduction(+ : sgb, sgha)
                    for (int64_t j = 0; j < n; ++j) {
                        const T gj = g[j] + Ct[j] * dyt;
                        dCt[j] += dyt * ht[j];
                        sgb += gj * Bt[j];
                        const T gha = gj * hp[j] * at[j];
                        sgha += gha * Ar[j];
                        dAr[j] += gha * dt;
                        dBt[j] += gj * dtu;
                        g[j] = gj * at[j];
                    }
                    dur[p] += dt * sgb;
                    ddr[q] += ut * sgb + sgha;
                }
            }
        }
    }
}

// Work items [0, items) are handed out dynamically on OpenMP threads (torch's own libgomp is already loaded in the
// process, so this shares its thread pool instead of oversubscribing the cores); each item's result is
// independent of the thread that ran it (deterministic).
template <typename F>
void run_parallel(int64_t items, int nthreads, F&& body) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nthreads > 1 && items > 1)
    for (int64_t i = 0; i < items; ++i) body(i);
}

template <typename T>
void fwd(const T* u, const T* delta, const T* A, const T* B, const T* C, const int64_t* orders, T* y, T* last,
         const int64_t* dims, int nthreads) {
    const Dims m(dims);
    const int64_t rows = m.b * m.d, per = (rows + 63) / 64;  // 64 items of consecutive (batch, channel) rows
    run_parallel((rows + per - 1) / per, nthreads, [&](int64_t i) {
        const int64_t r0 = i * per, r1 = r0 + per < rows ? r0 + per : rows;
        if (m.n == 16) fwd_rows<T, 16>(u, delta, A, B, C, orders, y, last, m, r0, r1);
        else fwd_rows<T, 0>(u, delta, A, B, C, orders, y, last, m, r0, r1);
    });
}

// Channel blocks are the work items; block i adds its dB, dC into partial slot i (dims[13] blocks, each the
// size of B / C), which the caller sums in a fixed order: the result does not depend on the thread count.
template <typename T>
void bwd(const T* u, const T* delta, const T* A, const T* B, const T* C, const int64_t* orders, const T* dy,
         const T* dlast, T* du, T* ddelta, T* dA, T* dB, T* dC, const int64_t* dims, int nthreads) {
    const Dims m(dims);
    const int64_t blocks = dims[13];
    const int64_t szB = m.b * m.KB * m.gB * m.L * m.n, szC = m.b * m.KC * m.gC * m.L * m.n;
    run_parallel(blocks, nthreads, [&](int64_t i) {
        const int64_t d0 = m.d * i / blocks, d1 = m.d * (i + 1) / blocks;
        if (m.n == 16)
            bwd_channels<T, 16>(u, delta, A, B, C, orders, dy, dlast, du, ddelta, dA, dB + i * szB, dC + i * szC,
                                m, d0, d1);
        else
            bwd_channels<T, 0>(u, delta, A, B, C, orders, dy, dlast, du, ddelta, dA, dB + i * szB, dC + i * szC,
                               m, d0, d1);
    });
}

}  // namespace

extern "C" {
void ss_fwd_f32(const float* u, const float* delta, const float* A, const float* B, const float* C,
                const int64_t* orders, float* y, float* last, const int64_t* dims, int nthreads) {
    fwd<float>(u, delta, A, B, C, orders, y, last, dims, nthreads);
}
void ss_fwd_f64(const double* u, const double* delta, const double* A, const double* B, const double* C,
                const int64_t* orders, double* y, double* last, const int64_t* dims, int nthreads) {
    fwd<double>(u, delta, A, B, C, orders, y, last, dims, nthreads);
}
void ss_bwd_f32(const float* u, const float* delta, const float* A, const float* B, const float* C,
                const int64_t* orders, const float* dy, const float* dlast, float* du, float* ddelta, float* dA,
                float* dB, float* dC, const int64_t* dims, int nthreads) {
    bwd<float>(u, delta, A, B, C, orders, dy, dlast, du, ddelta, dA, dB, dC, dims, nthreads);
}
void ss_bwd_f64(const double* u, const double* delta, const double* A, const double* B, const double* C,
                const int64_t* orders, const double* dy, const double* dlast, double* du, double* ddelta,
                double* dA, double* dB, double* dC, const int64_t* dims, int nthreads) {
    bwd<double>(u, delta, A, B, C, orders, dy, dlast, du, ddelta, dA, dB, dC, dims, nthreads);
}
}
'''

# -fopenmp: `omp simd` reductions and the thread loop (libgomp.so.1, the runtime torch has already loaded); no
# -ffast-math (keeps the exp's range reduction exact, NaN and inf semantics).
_FLAGS = ['-O3', '-march=native', '-std=c++17', '-shared', '-fPIC', '-fopenmp', '-fno-math-errno',
          '-fno-trapping-math']
_GRAD_BLOCKS = 16  # channel blocks of the backward, each with its own dB/dC partial sums
THREADS_ENV = 'ZOO_SELECTIVE_SCAN_THREADS'


def _threads() -> int:
    """Threads of the native loop: $ZOO_SELECTIVE_SCAN_THREADS (0 = torch.get_num_threads()), default 1.

    One thread by default: on the shared 2-core machines this was measured on, a second thread made the loop
    slower (the other core is rarely free), while one thread already beats the sequential scan many times over.
    """
    value = os.environ.get(THREADS_ENV, '1').strip()
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f'${THREADS_ENV} must be an integer (0 = torch.get_num_threads()), got {value!r}') from None
    return torch.get_num_threads() if n <= 0 else n


_lib_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_lib_failed = False


def _cpu_key() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((line for line in f if line.startswith('flags')), '')
    except OSError:
        flags = ''
    return platform.machine() + flags


def _build() -> ctypes.CDLL:
    cxx = os.environ.get('CXX', 'g++')
    digest = hashlib.sha256('\0'.join([_SOURCE, cxx, *_FLAGS, _cpu_key()]).encode()).hexdigest()[:16]
    cache = os.environ.get('ZOO_KERNELS_CACHE', os.path.join(os.path.expanduser('~'), '.cache', 'zoo_kernels'))
    path = os.path.join(cache, f'selective_scan_{digest}.so')
    if not os.path.exists(path):
        os.makedirs(cache, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            src = os.path.join(tmp, 'selective_scan.cpp')
            with open(src, 'w') as f:
                f.write(_SOURCE)
            out = os.path.join(tmp, 'lib.so')
            subprocess.run([cxx, *_FLAGS, src, '-o', out], check=True, capture_output=True, text=True, timeout=300)
            os.replace(out, path)  # atomic: concurrent builders never see a half-written library
    lib = ctypes.CDLL(path)
    p, i64p = ctypes.c_void_p, ctypes.c_void_p
    for dt in ('f32', 'f64'):
        getattr(lib, f'ss_fwd_{dt}').argtypes = [p] * 5 + [i64p, p, p, i64p, ctypes.c_int]
        getattr(lib, f'ss_bwd_{dt}').argtypes = [p] * 5 + [i64p] + [p] * 7 + [i64p, ctypes.c_int]
    return lib


def native_available() -> bool:
    """Whether the compiled CPU loop can be used here (builds it on first call; False if that fails)."""
    global _lib, _lib_failed
    if os.environ.get('ZOO_SELECTIVE_SCAN_NATIVE', '1') == '0':
        return False
    with _lib_lock:
        if _lib is None and not _lib_failed:
            try:
                _lib = _build()
            except (OSError, subprocess.SubprocessError) as e:
                detail = getattr(e, 'stderr', '') or str(e)
                _log.warning('selective_scan: cannot build the native CPU loop (%s); using the PyTorch scan',
                             detail.strip()[-500:])
                _lib_failed = True
    return _lib is not None


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


class _NativeScan(torch.autograd.Function):
    """The recurrence proper: y (b, d, L) = sum over scans of <h_t, C_t>, and the last states (b, K, d, n)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, orders, gather_params):
        ct = delta.dtype
        b, _, d, L = u.shape
        K = orders.shape[0]
        uc = u.to(ct).contiguous()
        dc = delta.contiguous()
        Ac = A.to(ct).contiguous()
        Bt = B.to(ct).transpose(-1, -2).contiguous()  # (b, KB, g, L, n): the n values of a step side by side
        Ct = C.to(ct).transpose(-1, -2).contiguous()
        oc = orders.to(torch.int64).contiguous()
        dims = torch.tensor([b, d, L, A.shape[-1], B.shape[2], C.shape[2], K, u.shape[1], delta.shape[1],
                             A.shape[0], B.shape[1], C.shape[1], int(gather_params), min(d, _GRAD_BLOCKS)],
                            dtype=torch.int64)
        y = torch.zeros(b, d, L, dtype=ct)
        last = torch.empty(b, K, d, A.shape[-1], dtype=ct)
        fn = _lib.ss_fwd_f64 if ct == torch.float64 else _lib.ss_fwd_f32
        fn(*map(_ptr, (uc, dc, Ac, Bt, Ct, oc, y, last, dims)), _threads())
        ctx.save_for_backward(uc, dc, Ac, Bt, Ct, oc, dims)
        ctx.dtypes = (u.dtype, A.dtype, B.dtype, C.dtype)
        ctx.set_materialize_grads(False)
        return y, last

    @staticmethod
    def backward(ctx, dy, dlast):
        uc, dc, Ac, Bt, Ct, oc, dims = ctx.saved_tensors
        ct = dc.dtype
        dy = torch.zeros(uc.shape[0], uc.shape[2], uc.shape[3], dtype=ct) if dy is None else dy.to(ct).contiguous()
        dlast = None if dlast is None else dlast.to(ct).contiguous()
        blocks = int(dims[13])
        du, ddelta, dA = torch.zeros_like(uc), torch.zeros_like(dc), torch.zeros_like(Ac)
        dB = torch.zeros(blocks, *Bt.shape, dtype=ct)
        dC = torch.zeros(blocks, *Ct.shape, dtype=ct)
        fn = _lib.ss_bwd_f64 if ct == torch.float64 else _lib.ss_bwd_f32
        fn(*map(_ptr, (uc, dc, Ac, Bt, Ct, oc, dy, dlast, du, ddelta, dA, dB, dC, dims)), _threads())
        u_dt, A_dt, B_dt, C_dt = ctx.dtypes
        dB = dB.sum(0).transpose(-1, -2).to(B_dt)
        dC = dC.sum(0).transpose(-1, -2).to(C_dt)
        return du.to(u_dt), ddelta, dA.to(A_dt), dB, dC, None, None


def _scan_two_pass(dt: torch.Tensor, du: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One scan in step order: dt, du = dt * u (b, d, L); A (d, n); B, C (b, g, n, L). Returns y (b, d, L), h_{L-1}.

    Chunks of T steps run side by side: pass 1 scans every chunk from a zero state, the chunk-boundary states
    are then carried across chunks (h_in(c+1) = decay(c) * h_in(c) + h_end(c)), and pass 2 scans every chunk
    again from its true entering state. Decays are products (exp of sums of delta * A), never divided by.
    """
    b, d, L = dt.shape
    T = max(1, int(math.sqrt(L)))
    nc = -(-L // T)
    pad = (0, nc * T - L)  # padded steps decay by 1 and add 0: the final state is unchanged

    def steps(t: torch.Tensor):  # (..., L) -> T tensors (..., nc): step j of every chunk
        return F.pad(t, pad).unflatten(-1, (nc, T)).unbind(-1)

    gB, gC = B.shape[1], C.shape[1]
    dts, dus, Bs, Cs = steps(dt), steps(du), steps(B), steps(C)
    decays = [torch.exp(dt_j[:, :, None] * A[None, :, :, None]) for dt_j in dts]          # (b, d, n, nc)
    inputs = [(du_j.unflatten(1, (gB, d // gB))[:, :, :, None] * B_j[:, :, None]).flatten(1, 2)
              for du_j, B_j in zip(dus, Bs)]                                               # (b, d, n, nc)
    h = torch.zeros_like(inputs[0])
    for a_j, x_j in zip(decays, inputs):
        h = torch.addcmul(x_j, a_j, h)
    chunk_decay = torch.exp(torch.stack(dts, -1).sum(-1)[:, :, None] * A[None, :, :, None])
    carry = torch.zeros_like(h[..., 0])
    entering = []
    for h_c, a_c in zip(h.unbind(-1), chunk_decay.unbind(-1)):
        entering.append(carry)
        carry = torch.addcmul(h_c, a_c, carry)
    h = torch.stack(entering, dim=-1)
    ys = []
    for a_j, x_j, C_j in zip(decays, inputs, Cs):
        h = torch.addcmul(x_j, a_j, h)
        ys.append((h.unflatten(1, (gC, d // gC)) * C_j[:, :, None]).sum(-2).flatten(1, 2))   # (b, d, nc)
    return torch.stack(ys, dim=-1).flatten(-2)[..., :L], carry


def _torch_scan(u, delta, A, B, C, orders, gather_params):
    ct = delta.dtype
    b, _, d, L = u.shape
    steps = torch.arange(L, device=u.device)
    y = torch.zeros(b, d, L, dtype=ct, device=u.device)
    lasts = []
    for k in range(orders.shape[0]):
        order = orders[k].long()
        pidx = order if gather_params else steps
        u_k = u[:, k if u.shape[1] > 1 else 0].to(ct)[..., order]
        dt_k = delta[:, k if delta.shape[1] > 1 else 0][..., pidx]
        A_k = A[k if A.shape[0] > 1 else 0].to(ct)
        B_k = B[:, k if B.shape[1] > 1 else 0].to(ct)[..., pidx]  # (b, g, n, L)
        C_k = C[:, k if C.shape[1] > 1 else 0].to(ct)[..., pidx]
        y_k, last = _scan_two_pass(dt_k, dt_k * u_k, A_k, B_k, C_k)
        y = y.index_add(-1, order, y_k)
        lasts.append(last)
    return y, torch.stack(lasts, dim=1)


def _prepare(u, delta, delta_bias, delta_softplus, orders):
    ct = compute_dtype(u)
    delta = delta.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[None, :, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    if orders is None:
        orders = torch.arange(u.shape[-1], device=u.device).view(1, -1)
    return delta, orders


def _finish(y, u, D, z, K: int):
    ct = y.dtype
    if D is not None:  # sum over the K scans of D_k * u_k, each at its own position (a shared axis counts K times)
        D = D.to(ct)
        if u.shape[1] == 1:
            D_sum = D.sum(0) if D.shape[0] > 1 else K * D[0]
            y = y + D_sum[:, None] * u[:, 0].to(ct)
        elif D.shape[0] == 1:
            y = y + D[0][:, None] * u.to(ct).sum(1)
        else:
            y = y + torch.einsum('kd,bkdl->bdl', D, u.to(ct))
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(u.dtype)


def selective_scan_native(u, delta, A, B, C, D, z, delta_bias, delta_softplus, orders, gather_params):
    """The compiled loop (raises RuntimeError where it cannot be built)."""
    if not native_available():
        raise RuntimeError('the native selective scan could not be built here (see the log); use '
                           'selective_scan_torch or install g++')
    delta, orders = _prepare(u, delta, delta_bias, delta_softplus, orders)
    y, last = _NativeScan.apply(u, delta, A, B, C, orders, gather_params)
    return _finish(y, u, D, z, orders.shape[0]), last


def selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, orders, gather_params):
    """The chunked PyTorch scan (any device; differentiated by autograd)."""
    delta, orders = _prepare(u, delta, delta_bias, delta_softplus, orders)
    y, last = _torch_scan(u, delta, A, B, C, orders, gather_params)
    return _finish(y, u, D, z, orders.shape[0]), last


def selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, orders, gather_params):
    """CPU tensors: the native loop when it builds, else the PyTorch scan; other devices: the PyTorch scan."""
    if u.device.type == 'cpu' and native_available():
        return selective_scan_native(u, delta, A, B, C, D, z, delta_bias, delta_softplus, orders, gather_params)
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, orders, gather_params)
