// The selective scan's native CPU loop (kernels/selective_scan/native.py compiles it with g++ at first use and
// loads it with ctypes; no PyTorch headers). Forward: the recurrence one (batch, channel) row at a time, vectorised
// over the state size n, delta's bias and softplus applied to the row first. Backward: per block of channels, the
// states of a row are recomputed into a per-thread O(L * n) scratch and walked back; dB, dC go to per-block partial
// sums that the caller adds in a fixed order.
#include "native_common.h"

namespace {

using namespace zoo_native;  // NOLINT: the shared helpers of native_common.h

// log for finite positive normal floats that gcc vectorises (Cephes polynomial, ~1 ulp).
inline float vlog(float x) {
    int32_t ix;
    std::memcpy(&ix, &x, sizeof(ix));
    float e = static_cast<float>(((ix >> 23) & 0xff) - 126);  // x = m * 2^e, m in [0.5, 1)
    ix = (ix & 0x007fffff) | 0x3f000000;
    float m;
    std::memcpy(&m, &ix, sizeof(m));
    const bool low = m < 0.707106781186547524f;
    e = low ? e - 1.0f : e;
    m = low ? m + m - 1.0f : m - 1.0f;
    const float z = m * m;
    float p = 7.0376836292e-2f;
    p = p * m - 1.1514610310e-1f;
    p = p * m + 1.1676998740e-1f;
    p = p * m - 1.2420140846e-1f;
    p = p * m + 1.4249322787e-1f;
    p = p * m - 1.6668057665e-1f;
    p = p * m + 2.0000714765e-1f;
    p = p * m - 2.4999993993e-1f;
    p = p * m + 3.3333331174e-1f;
    const float r = p * m * z - 2.12194440e-4f * e - 0.5f * z;
    return (m + r) + 0.693359375f * e;
}

// softplus as torch computes it (beta 1, threshold 20: x itself above 20), log1p(e^x) without a libm call:
// log1p(w) = log(1 + w) * w / ((1 + w) - 1) is exact to a few ulp (Goldberg), and w where 1 + w rounds to 1.
inline float softplus(float x) {
    const float w = vexp(x < 20.0f ? x : 20.0f);
    const float v = 1.0f + w;
    const float l = v == 1.0f ? w : vlog(v) * (w / (v - 1.0f));
    return x > 20.0f ? x : l;
}
inline double softplus(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }

struct Dims {
    int64_t b, d, L, n, gB, gC, K, Ku, Kd, KA, KB, KC, gather, Kbias, softplus, KD;
    explicit Dims(const int64_t* m)
        : b(m[0]), d(m[1]), L(m[2]), n(m[3]), gB(m[4]), gC(m[5]), K(m[6]), Ku(m[7]), Kd(m[8]), KA(m[9]),
          KB(m[10]), KC(m[11]), gather(m[12]), Kbias(m[14]), softplus(m[15]), KD(m[16]) {}
    // row offsets: u/delta (b, K?, d, L); A (K?, d, n); B/C (b, K?, g, L, n)
    int64_t ud(int64_t Kx, int64_t bi, int64_t k, int64_t di) const {
        return ((bi * Kx + (Kx > 1 ? k : 0)) * d + di) * L;
    }
    int64_t a(int64_t k, int64_t di) const { return ((KA > 1 ? k : 0) * d + di) * n; }
    int64_t bc(int64_t Kx, int64_t g, int64_t bi, int64_t k, int64_t di) const {
        return ((bi * Kx + (Kx > 1 ? k : 0)) * g + di / (d / g)) * L * n;
    }
};

// Directions that share one delta row and one A, with the parameters in raster order (not gathered per direction:
// PlainMamba's released scans), share every step's decay exp(delta_t * A): the loops compute it once per row into
// an (L, n) table and every direction reads it, instead of an exp per state, step and direction.
inline bool shared_decay(const Dims& m) { return m.K > 1 && !m.gather && m.Kd == 1 && m.KA == 1 && m.Kbias <= 1; }

// One row of delta as the scan uses it: + delta_bias (Kbias rows of d, 0: none), softplus where asked.
template <typename T>
void prepare_delta(const T* __restrict dr, const T* __restrict bias, const Dims& m, int64_t k, int64_t di,
                   T* __restrict out) {
    const T shift = m.Kbias ? bias[(m.Kbias > 1 ? k : 0) * m.d + di] : T(0);
    if (m.softplus) {
#pragma omp simd
        for (int64_t t = 0; t < m.L; ++t) out[t] = softplus(dr[t] + shift);
    } else {
#pragma omp simd
        for (int64_t t = 0; t < m.L; ++t) out[t] = dr[t] + shift;
    }
}

inline float silu(float x) { return x / (1.0f + vexp(-x)); }
inline double silu(double x) { return x / (1.0 + std::exp(-x)); }

// The epilogue of one row: out = (y + sum over the scans of D_k * u_k) * silu(z) (D: KD rows of d, 0: none;
// z: none where null), as the scan's PyTorch wrapper computes it.
template <typename T>
void finish_row(const T* __restrict yr, const T* __restrict u, const T* __restrict D, const T* __restrict zr,
                const Dims& m, int64_t bi, int64_t di, T* __restrict outr) {
    for (int64_t t = 0; t < m.L; ++t) outr[t] = yr[t];
    if (m.KD) {
        if (m.Ku == 1) {  // one u for every scan: its D summed over the scans (one D row counts K times)
            T dsum = 0;
            if (m.KD > 1)
                for (int64_t k = 0; k < m.KD; ++k) dsum += D[k * m.d + di];
            else
                dsum = T(m.K) * D[di];
            const T* __restrict ur = u + m.ud(1, bi, 0, di);
#pragma omp simd
            for (int64_t t = 0; t < m.L; ++t) outr[t] += dsum * ur[t];
        } else {
            for (int64_t k = 0; k < m.Ku; ++k) {
                const T dk = D[(m.KD > 1 ? k : 0) * m.d + di];
                const T* __restrict ur = u + m.ud(m.Ku, bi, k, di);
#pragma omp simd
                for (int64_t t = 0; t < m.L; ++t) outr[t] += dk * ur[t];
            }
        }
    }
    if (zr) {
#pragma omp simd
        for (int64_t t = 0; t < m.L; ++t) outr[t] *= silu(zr[t]);
    }
}

template <typename T, int NS, bool SHARED>
void fwd_rows(const T* __restrict u, const T* __restrict delta, const T* __restrict bias, const T* __restrict A,
              const T* __restrict B, const T* __restrict C, const int64_t* __restrict orders, const T* __restrict D,
              const T* __restrict z, T* __restrict y, T* __restrict out, T* __restrict last, const Dims& m, int64_t r0,
              int64_t r1) {
    const int64_t n = NS ? NS : m.n;
    // decay tables: shared by the directions (SHARED), else one direction's at a time where n fills a vector
    Scratch<T> hs(n), ds(m.L), decays(SHARED || NS == Lanes<T>::W ? m.L * n : 1);
    T* __restrict h = hs.p;
    T* __restrict dr = ds.p;
    T* __restrict decay = decays.p;
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t bi = r / m.d, di = r % m.d;
        T* __restrict yr = y + (bi * m.d + di) * m.L;
        if constexpr (SHARED) {
            prepare_delta(delta + m.ud(m.Kd, bi, 0, di), bias, m, 0, di, dr);
            const T* __restrict Ar = A + m.a(0, di);
            for (int64_t t = 0; t < m.L; ++t) {
#pragma omp simd
                for (int64_t j = 0; j < n; ++j) decay[t * n + j] = vexp(dr[t] * Ar[j]);
            }
        }
        for (int64_t k = 0; k < m.K; ++k) {
            const T* __restrict ur = u + m.ud(m.Ku, bi, k, di);
            if constexpr (!SHARED) prepare_delta(delta + m.ud(m.Kd, bi, k, di), bias, m, k, di, dr);
            const T* __restrict Ar = A + m.a(k, di);
            if constexpr (!SHARED && NS == Lanes<T>::W) {
                // this direction's decays first, in one streaming pass (every parameter position q is some step's)
                for (int64_t q = 0; q < m.L; ++q) {
#pragma omp simd
                    for (int64_t j = 0; j < NS; ++j) decay[q * NS + j] = vexp(dr[q] * Ar[j]);
                }
            }
            const T* __restrict Br = B + m.bc(m.KB, m.gB, bi, k, di);
            const T* __restrict Cr = C + m.bc(m.KC, m.gC, bi, k, di);
            const int64_t* __restrict ord = orders + k * m.L;
            for (int64_t j = 0; j < n; ++j) h[j] = 0;
            if constexpr (NS == Lanes<T>::W) {
                // n fills one vector: the products C_t * h_t of W steps are summed together by a transposing sum
                // (a few vector ops per step instead of a horizontal sum each)
                typedef typename Lanes<T>::V V;
                constexpr int W = Lanes<T>::W;
                // The state stays in a register: through memory, every step would wait on a store-to-load
                // forward on top of its multiply-add (the recurrence's only serial dependency).
                V prods[W], hv = {};
                for (int64_t t0 = 0; t0 < m.L; t0 += W) {
                    const int64_t steps = m.L - t0 < W ? m.L - t0 : W;
                    for (int64_t i = 0; i < steps; ++i) {
                        const int64_t t = t0 + i, p = ord[t], q = m.gather ? p : t;
                        const T dt = dr[q], du = dt * ur[p];
                        V av, bv, cv;
                        std::memcpy(&av, decay + q * n, sizeof(V));
                        std::memcpy(&bv, Br + q * n, sizeof(V));
                        std::memcpy(&cv, Cr + q * n, sizeof(V));
                        hv = av * hv + du * bv;
                        prods[i] = hv * cv;
                    }
                    for (int64_t i = steps; i < W; ++i) prods[i] = V{};
                    transposed_sums<T>(prods);
                    for (int64_t i = 0; i < steps; ++i) yr[ord[t0 + i]] += prods[0][i];
                }
                std::memcpy(h, &hv, sizeof(V));
            } else {
                for (int64_t t = 0; t < m.L; ++t) {
                    const int64_t p = ord[t], q = m.gather ? p : t;
                    const T dt = dr[q], du = dt * ur[p];
                    const T* __restrict Bt = Br + q * n;
                    const T* __restrict Ct = Cr + q * n;
                    const T* __restrict at = decay + q * n;
                    T acc = 0;
#pragma omp simd reduction(+ : acc)
                    for (int64_t j = 0; j < n; ++j) {
                        h[j] = (SHARED ? at[j] : vexp(dt * Ar[j])) * h[j] + du * Bt[j];
                        acc += Ct[j] * h[j];
                    }
                    yr[p] += acc;
                }
            }
            std::memcpy(last + ((bi * m.K + k) * m.d + di) * n, h, n * sizeof(T));
        }
        const int64_t row = (bi * m.d + di) * m.L;
        finish_row(yr, u, D, z ? z + row : nullptr, m, bi, di, out + row);
    }
}

template <typename T, int NS, bool SHARED>
void bwd_channels(const T* __restrict u, const T* __restrict delta, const T* __restrict A, const T* __restrict B,
                  const T* __restrict C, const int64_t* __restrict orders, const T* __restrict dy,
                  const T* __restrict dlast, T* __restrict du, T* __restrict ddelta, T* __restrict dA,
                  T* __restrict dB, T* __restrict dC, const Dims& m, int64_t d0, int64_t d1) {
    const int64_t n = NS ? NS : m.n, L = m.L;
    Scratch<T> Hs(L * n), As(L * n), gs(n), zs(n), gbs_scratch(n), ghs_scratch(n);
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
                if constexpr (NS == Lanes<T>::W) {
                    // as the forward: the decays first (direction 0's serve every direction when SHARED), then the
                    // recurrence with the state in a register
                    typedef typename Lanes<T>::V V;
                    if (!SHARED || k == 0) {
                        for (int64_t t = 0; t < L; ++t) {
                            const T dt = dr[m.gather ? ord[t] : t];
#pragma omp simd
                            for (int64_t j = 0; j < NS; ++j) Adec[t * NS + j] = vexp(dt * Ar[j]);
                        }
                    }
                    V hv = {};
                    for (int64_t t = 0; t < L; ++t) {
                        const int64_t p = ord[t], q = m.gather ? p : t;
                        const T dtu = dr[q] * ur[p];
                        V av, bv;
                        std::memcpy(&av, Adec + t * NS, sizeof(V));
                        std::memcpy(&bv, Br + q * NS, sizeof(V));
                        hv = av * hv + dtu * bv;
                        std::memcpy(H + t * NS, &hv, sizeof(V));
                    }
                } else for (int64_t t = 0; t < L; ++t) {
                    const int64_t p = ord[t], q = m.gather ? p : t;
                    const T dt = dr[q], dtu = dt * ur[p];
                    const T* __restrict Bt = Br + q * n;
                    const T* __restrict hp = t > 0 ? H + (t - 1) * n : g;
                    T* __restrict ht = H + t * n;
                    T* __restrict at = Adec + t * n;
                    if (SHARED && k > 0) {  // the decays of direction 0, already in Adec
#pragma omp simd
                        for (int64_t j = 0; j < n; ++j) ht[j] = at[j] * hp[j] + dtu * Bt[j];
                    } else {
#pragma omp simd
                        for (int64_t j = 0; j < n; ++j) {
                            at[j] = vexp(dt * Ar[j]);
                            ht[j] = at[j] * hp[j] + dtu * Bt[j];
                        }
                    }
                }
                if (dlast) {
                    const T* dl = dlast + ((bi * m.K + k) * m.d + di) * n;
                    for (int64_t j = 0; j < n; ++j) g[j] = dl[j];
                }
                // walk back: g holds dL/dh_t once C_t * dy_t is added
                auto step = [&](int64_t t, T* __restrict gb, T* __restrict gh) {
                    const int64_t p = ord[t], q = m.gather ? p : t;
                    const T dt = dr[q], ut = ur[p], dyt = dyr[p], dtu = dt * ut;
                    const T* __restrict Bt = Br + q * n;
                    const T* __restrict Ct = Cr + q * n;
                    const T* __restrict ht = H + t * n;
                    const T* __restrict hp = t > 0 ? H + (t - 1) * n : zs.p;
                    const T* __restrict at = Adec + t * n;
                    T* __restrict dBt = dBr + q * n;
                    T* __restrict dCt = dCr + q * n;
#pragma omp simd
                    for (int64_t j = 0; j < n; ++j) {
                        const T gj = g[j] + Ct[j] * dyt;
                        dCt[j] += dyt * ht[j];
                        gb[j] = gj * Bt[j];
                        const T gha = gj * hp[j] * at[j];
                        gh[j] = gha * Ar[j];
                        dAr[j] += gha * dt;
                        dBt[j] += gj * dtu;
                        g[j] = gj * at[j];
                    }
                };
                auto finish = [&](int64_t t, T sgb, T sgha) {
                    const int64_t p = ord[t], q = m.gather ? p : t;
                    dur[p] += dr[q] * sgb;
                    ddr[q] += ur[p] * sgb + sgha;
                };
                if constexpr (NS == Lanes<T>::W) {
                    // the two sums over n of W steps at a time, by transposing sums (as in the forward)
                    typedef typename Lanes<T>::V V;
                    constexpr int W = Lanes<T>::W;
                    // dL/dh and dA's sum stay in registers through the walk (as the forward's state)
                    V gbs[W], ghs[W], gv, Av, dAv = {};
                    std::memcpy(&gv, g, sizeof(V));
                    std::memcpy(&Av, Ar, sizeof(V));
                    for (int64_t t1 = L - 1; t1 >= 0; t1 -= W) {
                        const int64_t steps = t1 + 1 < W ? t1 + 1 : W;
                        for (int64_t i = 0; i < steps; ++i) {
                            const int64_t t = t1 - i, p = ord[t], q = m.gather ? p : t;
                            const T dt = dr[q], dyt = dyr[p], dtu = dt * ur[p];
                            V bv, cv, hv, hpv = {}, av, dBv, dCv;
                            std::memcpy(&bv, Br + q * NS, sizeof(V));
                            std::memcpy(&cv, Cr + q * NS, sizeof(V));
                            std::memcpy(&hv, H + t * NS, sizeof(V));
                            if (t > 0) std::memcpy(&hpv, H + (t - 1) * NS, sizeof(V));
                            std::memcpy(&av, Adec + t * NS, sizeof(V));
                            const V gj = gv + cv * dyt;
                            std::memcpy(&dCv, dCr + q * NS, sizeof(V));
                            dCv += dyt * hv;
                            std::memcpy(dCr + q * NS, &dCv, sizeof(V));
                            gbs[i] = gj * bv;
                            const V gha = gj * hpv * av;
                            ghs[i] = gha * Av;
                            dAv += gha * dt;
                            std::memcpy(&dBv, dBr + q * NS, sizeof(V));
                            dBv += gj * dtu;
                            std::memcpy(dBr + q * NS, &dBv, sizeof(V));
                            gv = gj * av;
                        }
                        for (int64_t i = steps; i < W; ++i) gbs[i] = ghs[i] = V{};
                        transposed_sums<T>(gbs);
                        transposed_sums<T>(ghs);
                        for (int64_t i = 0; i < steps; ++i) finish(t1 - i, gbs[0][i], ghs[0][i]);
                    }
                    for (int64_t j = 0; j < NS; ++j) dAr[j] += dAv[j];
                } else {
                    T* __restrict gb = gbs_scratch.p;
                    T* __restrict gh = ghs_scratch.p;
                    for (int64_t t = L - 1; t >= 0; --t) {
                        step(t, gb, gh);
                        T sgb = 0, sgha = 0;
#pragma omp simd reduction(+ : sgb, sgha)
                        for (int64_t j = 0; j < n; ++j) {
                            sgb += gb[j];
                            sgha += gh[j];
                        }
                        finish(t, sgb, sgha);
                    }
                }
            }
        }
    }
}

template <typename T>
void fwd(const T* u, const T* delta, const T* bias, const T* A, const T* B, const T* C, const int64_t* orders,
         const T* D, const T* z, T* y, T* out, T* last, const int64_t* dims, int nthreads) {
    const Dims m(dims);
    const int64_t rows = m.b * m.d, per = (rows + 63) / 64;  // 64 items of consecutive (batch, channel) rows
    if (rows == 0) return;
    run_parallel((rows + per - 1) / per, nthreads, [&](int64_t i) {
        const int64_t r0 = i * per, r1 = r0 + per < rows ? r0 + per : rows;
        const bool shared = shared_decay(m);
        auto rows = m.n == 16 ? (shared ? fwd_rows<T, 16, true> : fwd_rows<T, 16, false>)
                              : (shared ? fwd_rows<T, 0, true> : fwd_rows<T, 0, false>);
        rows(u, delta, bias, A, B, C, orders, D, z, y, out, last, m, r0, r1);
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
        T* dBi = dB + i * szB;
        T* dCi = dC + i * szC;
        const bool shared = shared_decay(m);
        if (m.n == 16 && shared)
            bwd_channels<T, 16, true>(u, delta, A, B, C, orders, dy, dlast, du, ddelta, dA, dBi, dCi, m, d0, d1);
        else if (m.n == 16)
            bwd_channels<T, 16, false>(u, delta, A, B, C, orders, dy, dlast, du, ddelta, dA, dBi, dCi, m, d0, d1);
        else if (shared)
            bwd_channels<T, 0, true>(u, delta, A, B, C, orders, dy, dlast, du, ddelta, dA, dBi, dCi, m, d0, d1);
        else
            bwd_channels<T, 0, false>(u, delta, A, B, C, orders, dy, dlast, du, ddelta, dA, dBi, dCi, m, d0, d1);
    });
}

}  // namespace

extern "C" {
// y: the scans' sum (b, d, L); out: y + D-term, gated by silu(z) (D, z may be null).
void ss_fwd_f32(const float* u, const float* delta, const float* bias, const float* A, const float* B,
                const float* C, const int64_t* orders, const float* D, const float* z, float* y, float* out,
                float* last, const int64_t* dims, int nthreads) {
    fwd<float>(u, delta, bias, A, B, C, orders, D, z, y, out, last, dims, nthreads);
}
void ss_fwd_f64(const double* u, const double* delta, const double* bias, const double* A, const double* B,
                const double* C, const int64_t* orders, const double* D, const double* z, double* y, double* out,
                double* last, const int64_t* dims, int nthreads) {
    fwd<double>(u, delta, bias, A, B, C, orders, D, z, y, out, last, dims, nthreads);
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
