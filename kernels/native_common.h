// Shared by the native CPU loops (kernels/native.py compiles each with this directory on the include path).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

namespace zoo_native {

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
// slow the per-step updates down several-fold.
template <typename T>
struct Scratch {
    std::vector<T> buf;
    T* p;
    explicit Scratch(int64_t size) : buf(size + 48, T(0)) {
        auto addr = reinterpret_cast<std::uintptr_t>(buf.data());
        p = reinterpret_cast<T*>((addr + 64 + 63) & ~std::uintptr_t(63));
    }
};

// Work items [0, items) are handed out dynamically on OpenMP threads (torch's own libgomp is already loaded in the
// process, so this shares its thread pool instead of oversubscribing the cores); each item's result is
// independent of the thread that ran it (deterministic). A std::thread pool of our own was measured slower:
// torch's idle OpenMP workers spin on the cores for a while after each torch op, and its threads competed.
template <typename F>
void run_parallel(int64_t items, int nthreads, F&& body) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nthreads > 1 && items > 1)
    for (int64_t i = 0; i < items; ++i) body(i);
}

// GCC vectors of one 64-byte line (16 floats, 8 doubles; lowered to what the target has) and lane masks.
template <typename T>
struct Lanes;
template <>
struct Lanes<float> {
    typedef float V __attribute__((vector_size(64)));
    typedef int32_t M __attribute__((vector_size(64)));
    static constexpr int W = 16;
};
template <>
struct Lanes<double> {
    typedef double V __attribute__((vector_size(64)));
    typedef int64_t M __attribute__((vector_size(64)));
    static constexpr int W = 8;
};

// One level of a transposing sum: x and y each hold 2W/(2g) keys' partial sums in groups of 2g lanes; the result
// holds twice as many keys in groups of g lanes, in key order.
template <typename T, int g, std::size_t... I>
inline typename Lanes<T>::V fold(typename Lanes<T>::V x, typename Lanes<T>::V y, std::index_sequence<I...>) {
    typedef typename Lanes<T>::M M;
    const M lo = {static_cast<typename std::remove_reference<decltype(M{}[0])>::type>((I / g) * 2 * g + I % g)...};
    const M hi = {static_cast<typename std::remove_reference<decltype(M{}[0])>::type>((I / g) * 2 * g + I % g + g)...};
    return __builtin_shuffle(x, y, lo) + __builtin_shuffle(x, y, hi);
}

template <typename T, int g>
inline void fold_level(typename Lanes<T>::V* a, int count) {
    for (int i = 0; i < count / 2; ++i)
        a[i] = fold<T, g>(a[2 * i], a[2 * i + 1], std::make_index_sequence<Lanes<T>::W>{});
    if constexpr (g > 1) fold_level<T, g / 2>(a, count / 2);
}

// The sums of W vectors' lanes, sum k in lane k of a[0] (a holds W vectors; overwritten).
template <typename T>
inline void transposed_sums(typename Lanes<T>::V* a) {
    fold_level<T, Lanes<T>::W / 2>(a, Lanes<T>::W);
}

}  // namespace zoo_native
