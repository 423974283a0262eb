// sparse_attention's native CPU forward (kernels/routing/native.py builds it through kernels/native.py; no PyTorch
// headers): one query row at a time, its listed key rows read in place (nothing gathered into memory), the scores
// and the weighted sum of values vectorised over the head dims. Exact softmax over the listed slots: a repeated
// key counts as often as listed, an empty slot (-1) not at all, a row without keys gives zeros and lse = -inf.
#include <algorithm>
#include <limits>

#include "native_common.h"

namespace {

using namespace zoo_native;  // NOLINT: the shared helpers of native_common.h

// A slot names a key in [0, Nk); -1 is an empty slot. Anything else never reaches memory: it counts as empty here
// and the caller is told (kernels/routing/native.py raises), so a direct operator call with a bad index cannot read
// outside k and v.
inline bool listed(int64_t key, int64_t Nk) { return static_cast<uint64_t>(key) < static_cast<uint64_t>(Nk); }

inline int64_t out_of_range(const int64_t* idx, int64_t count, int64_t Nk) {
    int64_t bad = 0;
#pragma omp simd reduction(+ : bad)
    for (int64_t i = 0; i < count; ++i) bad += (idx[i] < -1) | (idx[i] >= Nk);
    return bad;
}

// s[j] = scale * q . k[key_j] for W keys at once (D a multiple of W): one accumulator per key, then a transposing
// sum of the W accumulators (about 3 vector ops per key instead of a horizontal sum each). Empty slots: -inf.
template <typename T>
inline void scores_block(const T* __restrict qr, const T* __restrict kb, const int64_t* __restrict keys, int64_t n,
                         int64_t Nk, int64_t D, T scale, T* __restrict s) {
    typedef typename Lanes<T>::V V;
    constexpr int W = Lanes<T>::W;
    V acc[W];
    for (int j = 0; j < W; ++j) {
        V a = {};
        if (j < n && listed(keys[j], Nk)) {
            const T* __restrict kr = kb + keys[j] * D;
            for (int64_t d = 0; d < D; d += W) {
                V qv, kv;
                std::memcpy(&qv, qr + d, sizeof(V));
                std::memcpy(&kv, kr + d, sizeof(V));
                a += qv * kv;
            }
        }
        acc[j] = a;
    }
    transposed_sums<T>(acc);
    for (int64_t j = 0; j < n; ++j)
        s[j] = listed(keys[j], Nk) ? acc[0][j] * scale : -std::numeric_limits<T>::infinity();
}

template <typename T>
void rows(const T* __restrict q, const T* __restrict k, const T* __restrict v, const int64_t* __restrict idx,
          T* __restrict out, T* __restrict lse, const int64_t* dims, T scale, int64_t r0, int64_t r1) {
    const int64_t N = dims[1], Nk = dims[2], D = dims[3], Dv = dims[4], K = dims[5];
    constexpr int W = Lanes<T>::W;
    const T neg_inf = -std::numeric_limits<T>::infinity();
    Scratch<T> ss(K), ps(K);
    T* __restrict s = ss.p;
    T* __restrict p = ps.p;
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t bh = r / N;
        const T* __restrict qr = q + r * D;
        const int64_t* __restrict ir = idx + r * K;
        const T* __restrict kb = k + bh * Nk * D;
        const T* __restrict vb = v + bh * Nk * Dv;
        T* __restrict o = out + r * Dv;
        if (D % W == 0) {
            for (int64_t j0 = 0; j0 < K; j0 += W) scores_block(qr, kb, ir + j0, std::min<int64_t>(W, K - j0), Nk, D, scale,
                                                              s + j0);
        } else {
            for (int64_t j = 0; j < K; ++j) {
                if (!listed(ir[j], Nk)) {
                    s[j] = neg_inf;
                    continue;
                }
                const T* __restrict kr = kb + ir[j] * D;
                T acc = 0;
#pragma omp simd reduction(+ : acc)
                for (int64_t d = 0; d < D; ++d) acc += qr[d] * kr[d];
                s[j] = acc * scale;
            }
        }
        T m = neg_inf;
        for (int64_t j = 0; j < K; ++j) m = s[j] > m ? s[j] : m;
        for (int64_t d = 0; d < Dv; ++d) o[d] = 0;
        if (m == neg_inf) {  // no key listed
            lse[r] = neg_inf;
            continue;
        }
        T denom = 0;
#pragma omp simd reduction(+ : denom)
        for (int64_t j = 0; j < K; ++j) {
            p[j] = listed(ir[j], Nk) ? vexp(s[j] - m) : T(0);
            denom += p[j];
        }
        for (int64_t j = 0; j < K; ++j) {
            if (!listed(ir[j], Nk)) continue;
            const T pj = p[j];
            const T* __restrict vr = vb + ir[j] * Dv;
#pragma omp simd
            for (int64_t d = 0; d < Dv; ++d) o[d] += pj * vr[d];
        }
        const T inv = T(1) / denom;
#pragma omp simd
        for (int64_t d = 0; d < Dv; ++d) o[d] *= inv;
        lse[r] = m + std::log(denom);
    }
}

// dims: BH, N, Nk, D, Dv, K. q (BH, N, D), k (BH, Nk, D), v (BH, Nk, Dv), idx (BH, N, K) in [-1, Nk);
// out (BH, N, Dv), lse (BH * N). Work items of 32 query rows.
template <typename T>
int64_t forward(const T* q, const T* k, const T* v, const int64_t* idx, T* out, T* lse, const int64_t* dims, T scale,
                int nthreads) {
    const int64_t total = dims[0] * dims[1], per = 32;
    std::vector<int64_t> bad((total + per - 1) / per, 0);
    run_parallel((total + per - 1) / per, nthreads, [&](int64_t i) {
        const int64_t r0 = i * per, r1 = r0 + per < total ? r0 + per : total;
        bad[i] = out_of_range(idx + r0 * dims[5], (r1 - r0) * dims[5], dims[2]);
        rows<T>(q, k, v, idx, out, lse, dims, scale, r0, r1);
    });
    int64_t sum = 0;
    for (int64_t b : bad) sum += b;
    return sum;
}

}  // namespace

extern "C" {
// Both return the number of slots outside [-1, Nk) (computed as empty).
int64_t sparse_fwd_f32(const float* q, const float* k, const float* v, const int64_t* idx, float* out, float* lse,
                       const int64_t* dims, double scale, int nthreads) {
    return forward<float>(q, k, v, idx, out, lse, dims, static_cast<float>(scale), nthreads);
}
int64_t sparse_fwd_f64(const double* q, const double* k, const double* v, const int64_t* idx, double* out,
                       double* lse, const int64_t* dims, double scale, int nthreads) {
    return forward<double>(q, k, v, idx, out, lse, dims, scale, nthreads);
}
}
