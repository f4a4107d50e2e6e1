#pragma once
/// \file activation.hpp
/// \brief CPU element-wise kernels: SwiGLU (silu(gate) * up) and its backward, the residual add,
/// and inverted dropout with a counter-based (reproducible) mask.

#include <algorithm>
#include <cmath>
#include <cstdint>

#include <xsimd/xsimd.hpp>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/detail/simd.hpp"
#include "limarp/core/thread_pool.hpp"

LIMARP_CPU_KERNELS_BEGIN

namespace limarp::ops {

/// \cond
namespace cpu_detail {
/// silu(g) * u in f32 as PyTorch evaluates it: (g / (1 + exp(-g))) * u.
inline float silu_mul(float g, float u) noexcept { return (g / (1.0f + std::exp(-g))) * u; }
}  // namespace cpu_detail
/// \endcond

/// SwiGLU activation: h = silu(gate) * up with silu(g) = g / (1 + exp(-g)), in f32
/// (vectorised exp, within ~1 ulp).
///
/// \param h    [n] output; may be the same pointer as gate or up
/// \param gate [n] gate projection
/// \param up   [n] up projection
/// \param n    number of elements (T * d_ff)
/// \param pool thread pool (nullptr: ThreadPool::global())
/// \pre n >= 0; h is either the same pointer as gate/up or does not overlap them.
template <class A>
void swiglu(Cpu<A>, float* h /*[n]*/, const float* gate /*[n]*/, const float* up /*[n]*/, std::int64_t n,
            ThreadPool* pool = nullptr) {
    using B = cpu_detail::fbatch<A>;
    constexpr std::int64_t L = cpu_detail::lanes<A>;
    auto range = [&](std::int64_t b, std::int64_t e) {
        std::int64_t i = b;
        const B one(1.0f);
        for (; i + L <= e; i += L) {
            const B g = B::load_unaligned(gate + i), u = B::load_unaligned(up + i);
            ((g / (one + xsimd::exp(-g))) * u).store_unaligned(h + i);
        }
        for (; i < e; ++i) h[i] = cpu_detail::silu_mul(gate[i], up[i]);
    };
    // Split on multiples of the vector width so every chunk but the last is all-vector.
    ThreadPool& p = cpu_detail::pool_or_global(pool);
    const std::int64_t n_vec = (n + L - 1) / L;
    cpu_detail::parallel_rows(p, n_vec, 20.0 * L, [&](std::int64_t b, std::int64_t e) {
        range(b * L, std::min(n, e * L));
    });
}

/// Residual add: y += x.
///
/// \param y    [n] accumulated in place
/// \param x    [n] added
/// \param n    number of elements
/// \param pool thread pool (nullptr: ThreadPool::global())
/// \pre n >= 0; y and x do not overlap (or are the same pointer).
template <class A>
void add_inplace(Cpu<A>, float* y /*[n]*/, const float* x /*[n]*/, std::int64_t n, ThreadPool* pool = nullptr) {
    using B = cpu_detail::fbatch<A>;
    constexpr std::int64_t L = cpu_detail::lanes<A>;
    auto range = [&](std::int64_t b, std::int64_t e) {
        std::int64_t i = b;
        for (; i + L <= e; i += L) (B::load_unaligned(y + i) + B::load_unaligned(x + i)).store_unaligned(y + i);
        for (; i < e; ++i) y[i] += x[i];
    };
    ThreadPool& p = cpu_detail::pool_or_global(pool);
    const std::int64_t n_vec = (n + L - 1) / L;
    // Memory bound: threads only help for large arrays.
    cpu_detail::parallel_rows(p, n_vec, 0.25 * L, [&](std::int64_t b, std::int64_t e) {
        range(b * L, std::min(n, e * L));
    });
}

/// x *= s, element by element (e.g. the LoRA scale on the r-wide intermediate).
/// \pre n >= 0.
template <class A>
void scale_inplace(Cpu<A>, float* x /*[n]*/, float s, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) x[i] *= s;
}

/// Backward of `swiglu`: with s = sigmoid(g) = 1 / (1 + exp(-g)),
/// dgate = dh · up · s · (1 + g · (1 - s)) and dup = dh · g · s. f32, vectorised exp.
///
/// \param dgate [n] gradient of the gate projection (overwritten); may be the same pointer as gate
/// \param dup   [n] gradient of the up projection (overwritten); may be the same pointer as up
/// \param dh    [n] gradient of the output h; may be the same pointer as dgate or dup
/// \param gate  [n] the forward's gate input
/// \param up    [n] the forward's up input
/// \param n     number of elements (T * d_ff)
/// \param pool  thread pool (nullptr: ThreadPool::global())
/// \pre n >= 0; apart from the aliasing allowed above, the arrays do not overlap.
template <class A>
void swiglu_backward(Cpu<A>, float* dgate /*[n]*/, float* dup /*[n]*/, const float* dh /*[n]*/,
                     const float* gate /*[n]*/, const float* up /*[n]*/, std::int64_t n, ThreadPool* pool = nullptr) {
    using B = cpu_detail::fbatch<A>;
    constexpr std::int64_t L = cpu_detail::lanes<A>;
    auto range = [&](std::int64_t b, std::int64_t e) {
        std::int64_t i = b;
        const B one(1.0f);
        for (; i + L <= e; i += L) {
            const B g = B::load_unaligned(gate + i), u = B::load_unaligned(up + i), d = B::load_unaligned(dh + i);
            const B sg = one / (one + xsimd::exp(-g));
            const B gs = g * sg;
            (d * u * sg * (one + g * (one - sg))).store_unaligned(dgate + i);
            (d * gs).store_unaligned(dup + i);
        }
        for (; i < e; ++i) {
            const float g = gate[i], u = up[i], d = dh[i];
            const float sg = 1.0f / (1.0f + std::exp(-g));
            dgate[i] = d * u * sg * (1.0f + g * (1.0f - sg));
            dup[i] = d * (g * sg);
        }
    };
    ThreadPool& p = cpu_detail::pool_or_global(pool);
    const std::int64_t n_vec = (n + L - 1) / L;
    cpu_detail::parallel_rows(p, n_vec, 30.0 * L, [&](std::int64_t b, std::int64_t e) {
        range(b * L, std::min(n, e * L));
    });
}

/// Counter-based dropout mask: element i is kept when 16 bits of SplitMix64(seed + i / 4)
/// (lane i % 4) are >= `threshold` (see `dropout_threshold`). A pure function of (seed, i), so a
/// forward, its recomputation and its backward draw the same mask.
inline bool dropout_keeps(std::uint64_t seed, std::int64_t i, std::uint32_t threshold) noexcept {
    std::uint64_t x = seed + static_cast<std::uint64_t>(i >> 2) + 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    x ^= x >> 31;
    return static_cast<std::uint32_t>((x >> (16 * (i & 3))) & 0xFFFFu) >= threshold;
}

/// The threshold of `dropout_keeps` for drop probability p: round(p * 65536), so the drop
/// probability is p rounded to a multiple of 1/65536.
inline std::uint32_t dropout_threshold(float p) noexcept {
    return static_cast<std::uint32_t>(std::lround(static_cast<double>(p) * 65536.0));
}

/// Inverted dropout with the counter-based mask of `dropout_keeps`: y = keep ? x / (1 - p) : 0
/// (as torch.nn.Dropout in training mode, with its own random stream), or y += that.
///
/// \param y          [n] output; may be the same pointer as x
/// \param x          [n] input
/// \param n          number of elements
/// \param p          drop probability, 0 <= p < 1
/// \param seed       mask seed
/// \param accumulate false: y = dropout(x); true: y += dropout(x)
/// \param pool       thread pool (nullptr: ThreadPool::global())
/// \pre 0 <= p < 1; y and x are the same pointer or do not overlap.
template <class A>
void dropout(Cpu<A>, float* y /*[n]*/, const float* x /*[n]*/, std::int64_t n, float p, std::uint64_t seed,
             bool accumulate = false, ThreadPool* pool = nullptr) {
    const std::uint32_t thr = dropout_threshold(p);
    const float inv = 1.0f / (1.0f - p);
    constexpr std::int64_t kChunk = 4096;  // elements per work item (a multiple of 4)
    cpu_detail::parallel_rows(cpu_detail::pool_or_global(pool), (n + kChunk - 1) / kChunk, 4.0 * kChunk,
                              [&](std::int64_t c0, std::int64_t c1) {
                                  const std::int64_t e = std::min(n, c1 * kChunk);
                                  for (std::int64_t i = c0 * kChunk; i < e; ++i) {
                                      const float v = dropout_keeps(seed, i, thr) ? x[i] * inv : 0.0f;
                                      y[i] = accumulate ? y[i] + v : v;
                                  }
                              });
}

}  // namespace limarp::ops

LIMARP_CPU_KERNELS_END
