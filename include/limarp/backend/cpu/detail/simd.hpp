#pragma once
/// \file simd.hpp
/// \brief Helpers shared by the CPU kernels: f32/bf16 vector loads, thread pool selection,
/// dynamic work distribution and aligned scratch buffers.

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "limarp/backend/backend.hpp"
#include "limarp/core/dtype.hpp"
#include "limarp/core/thread_pool.hpp"

#if defined(__AVX2__) || defined(__AVX512F__) || defined(__SSE4_1__)
#include <immintrin.h>
#endif

// GCC 12.2's AVX-512 intrinsics headers trigger false -Wmaybe-uninitialized warnings (GCC PR105593,
// `_mm512_undefined_*`) in every inlined AVX-512 intrinsic, xsimd's included. The CPU kernel
// headers wrap their code in these macros to keep -march=native/x86-64-v4 builds warning-free.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#define LIMARP_CPU_KERNELS_BEGIN \
    _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define LIMARP_CPU_KERNELS_END _Pragma("GCC diagnostic pop")
#else
#define LIMARP_CPU_KERNELS_BEGIN
#define LIMARP_CPU_KERNELS_END
#endif

LIMARP_CPU_KERNELS_BEGIN

namespace limarp::ops {

/// Element types a CPU kernel accepts for weights: f32, or bf16 widened to f32 in registers.
template <class W>
concept CpuWeight = std::is_same_v<W, float> || std::is_same_v<W, bf16>;

/// \cond
namespace cpu_detail {

template <class A>
using fbatch = xsimd::batch<float, A>;

/// Number of f32 lanes of arch `A`.
template <class A>
inline constexpr std::int64_t lanes = static_cast<std::int64_t>(fbatch<A>::size);

/// The pool a kernel runs on: `pool`, or the global pool when null.
inline ThreadPool& pool_or_global(ThreadPool* pool) { return pool ? *pool : ThreadPool::global(); }

/// Scalar f32 value of one weight element.
inline float to_f32(float v) noexcept { return v; }
inline float to_f32(bf16 v) noexcept { return bf16_to_f32(v.bits); }

/// Loads `lanes<A>` consecutive elements starting at `p` as f32.
template <class A>
inline fbatch<A> load_f32(const float* p) noexcept {
    return fbatch<A>::load_unaligned(p);
}

/// Loads `lanes<A>` consecutive bf16 values starting at `p`, widened exactly to f32 (`bits << 16`).
template <class A>
inline fbatch<A> load_f32(const bf16* p) noexcept {
#if defined(__AVX512F__)
    if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
#endif
#if defined(__AVX2__)
    if constexpr (std::is_base_of_v<xsimd::avx2, A>) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
#endif
#if defined(__SSE4_1__)
    if constexpr (std::is_base_of_v<xsimd::sse4_1, A>) {
        const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
        return _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(h), 16));
    }
#endif
    alignas(64) float tmp[fbatch<A>::size];
    for (std::size_t i = 0; i < fbatch<A>::size; ++i) tmp[i] = bf16_to_f32(p[i].bits);
    return fbatch<A>::load_aligned(tmp);
}

/// Returns `v` unchanged but opaque to the optimiser, so that a product is rounded to f32
/// before it is added (no FMA contraction under -ffp-contract=fast, GCC's default for C++).
/// Used where PyTorch rounds every product separately and we want its bits.
template <class A>
inline fbatch<A> rounded(fbatch<A> v) noexcept {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    typename fbatch<A>::register_type r = v;
    __asm__("" : "+v"(r));
    return fbatch<A>(r);
#else
    volatile auto keep = v;
    return keep;
#endif
}
/// Scalar `rounded`.
inline float rounded(float v) noexcept {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __asm__("" : "+v"(v));
    return v;
#else
    volatile float keep = v;
    return keep;
#endif
}

/// Sum of the lanes of `v`.
template <class A>
inline float hsum(const fbatch<A>& v) noexcept {
    return xsimd::hadd(v);
}

/// Maximum of the lanes of `v`.
template <class A>
inline float hmax(const fbatch<A>& v) noexcept {
    alignas(64) float tmp[fbatch<A>::size];
    v.store_aligned(tmp);
    float m = tmp[0];
    for (std::size_t i = 1; i < fbatch<A>::size; ++i) m = std::max(m, tmp[i]);
    return m;
}

/// A 64-byte aligned f32 buffer.
using AlignedFloats = std::vector<float, xsimd::aligned_allocator<float, 64>>;

/// A per-thread scratch buffer of at least `n` floats (contents unspecified).
/// `Slot` distinguishes buffers used at the same time by one thread; a kernel must not call
/// another kernel that uses the same slot while it holds the pointer. Slots in use: 0 the
/// matmul_wt weight panels, 1 rope cos/sin, 2 attention tiles.
template <int Slot>
inline float* scratch(std::size_t n) {
    static thread_local AlignedFloats buf;
    if (buf.size() < n) buf.resize(n);
    return buf.data();
}

/// Runs `fn(task, thread)` for every task in [0, n_tasks) on `pool`, handing tasks out one
/// at a time in increasing order (tasks of unequal cost balance themselves). With one
/// thread, or one task, runs inline in the caller.
template <class Fn>
void parallel_dynamic(ThreadPool& pool, std::int64_t n_tasks, Fn&& fn) {
    if (n_tasks <= 0) return;
    const std::int64_t parts = std::min<std::int64_t>(pool.size(), n_tasks);
    if (parts <= 1) {
        for (std::int64_t i = 0; i < n_tasks; ++i) fn(i, 0u);
        return;
    }
    std::atomic<std::int64_t> next{0};
    pool.parallel_for(0, parts, [&](std::int64_t, std::int64_t, unsigned tid) {
        for (std::int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n_tasks;
             i = next.fetch_add(1, std::memory_order_relaxed))
            fn(i, tid);
    });
}

/// Runs `fn(begin, end)` over [0, n) split into contiguous chunks, in parallel when
/// `n * cost_per_item` is large enough to pay for waking the workers.
template <class Fn>
void parallel_rows(ThreadPool& pool, std::int64_t n, double cost_per_item, Fn&& fn) {
    if (n <= 0) return;
    constexpr double kMinParallelWork = 32768.0;  // ~ element-ops below which threads don't pay
    if (pool.size() <= 1 || static_cast<double>(n) * cost_per_item < kMinParallelWork) {
        fn(std::int64_t{0}, n);
        return;
    }
    pool.parallel_for(0, n, [&](std::int64_t b, std::int64_t e, unsigned) { fn(b, e); });
}

}  // namespace cpu_detail
/// \endcond

}  // namespace limarp::ops

LIMARP_CPU_KERNELS_END
