#pragma once
/// \file norm.hpp
/// \brief CPU RMSNorm, with the numerics of Hugging Face's MistralRMSNorm in f32.

#include <cmath>
#include <cstdint>

#include <xsimd/xsimd.hpp>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/detail/simd.hpp"
#include "limarp/core/dtype.hpp"
#include "limarp/core/thread_pool.hpp"

LIMARP_CPU_KERNELS_BEGIN

namespace limarp::ops {

/// RMSNorm of every row: y = weight * (x * (1 / sqrt(mean(x²) + eps))), all in f32 and in
/// that order (as MistralRMSNorm: the variance in f32, x times its rsqrt, then times weight).
///
/// \param y      [T, d] output; may be the same pointer as x
/// \param x      [T, d] input rows
/// \param weight [d] gain (f32 or bf16)
/// \param T      number of rows
/// \param d      row length (d_model)
/// \param eps    added to the mean square (rms_norm_eps, 1e-5 for Mistral)
/// \param pool   thread pool (nullptr: ThreadPool::global())
/// \pre T >= 0, d > 0; y and x are either the same pointer or do not overlap.
template <class A, class W>
    requires CpuWeight<W>
void rms_norm(Cpu<A>, float* y /*[T, d]*/, const float* x /*[T, d]*/, const W* weight /*[d]*/, std::int64_t T,
              std::int64_t d, float eps, ThreadPool* pool = nullptr) {
    using B = cpu_detail::fbatch<A>;
    constexpr std::int64_t L = cpu_detail::lanes<A>;
    const std::int64_t dv = d - d % L;
    auto rows = [&](std::int64_t t0, std::int64_t t1) {
        for (std::int64_t t = t0; t < t1; ++t) {
            const float* xr = x + t * d;
            float* yr = y + t * d;
            B s0(0.0f), s1(0.0f);
            std::int64_t i = 0;
            for (; i + 2 * L <= dv; i += 2 * L) {
                const B a = B::load_unaligned(xr + i), b = B::load_unaligned(xr + i + L);
                s0 = xsimd::fma(a, a, s0);
                s1 = xsimd::fma(b, b, s1);
            }
            for (; i < dv; i += L) {
                const B a = B::load_unaligned(xr + i);
                s0 = xsimd::fma(a, a, s0);
            }
            float ss = cpu_detail::hsum<A>(s0 + s1);
            for (; i < d; ++i) ss += xr[i] * xr[i];
            const float var = ss / static_cast<float>(d);
            const float inv = 1.0f / std::sqrt(var + eps);
            const B vinv(inv);
            for (i = 0; i < dv; i += L) {
                const B n = B::load_unaligned(xr + i) * vinv;
                (cpu_detail::load_f32<A>(weight + i) * n).store_unaligned(yr + i);
            }
            for (; i < d; ++i) yr[i] = cpu_detail::to_f32(weight[i]) * (xr[i] * inv);
        }
    };
    cpu_detail::parallel_rows(cpu_detail::pool_or_global(pool), T, static_cast<double>(3 * d), rows);
}

/// Backward of `rms_norm` with a frozen weight: the input gradient
/// dx = inv · (w ∘ dy) - x · inv³ / d · Σ_j x_j w_j dy_j, with inv = 1 / sqrt(mean(x²) + eps)
/// recomputed from x (nothing is saved by the forward). f32, vectorised sums.
///
/// \param dx     [T, d] input gradient (overwritten); may be the same pointer as dy
/// \param dy     [T, d] gradient of the output
/// \param x      [T, d] the forward's input
/// \param weight [d] gain (f32 or bf16), frozen: no gradient
/// \param T      number of rows
/// \param d      row length (d_model)
/// \param eps    added to the mean square, as in the forward
/// \param pool   thread pool (nullptr: ThreadPool::global())
/// \pre T >= 0, d > 0; dx does not overlap x; dx and dy are the same pointer or do not overlap.
template <class A, class W>
    requires CpuWeight<W>
void rms_norm_backward(Cpu<A>, float* dx /*[T, d]*/, const float* dy /*[T, d]*/, const float* x /*[T, d]*/,
                       const W* weight /*[d]*/, std::int64_t T, std::int64_t d, float eps, ThreadPool* pool = nullptr) {
    using B = cpu_detail::fbatch<A>;
    constexpr std::int64_t L = cpu_detail::lanes<A>;
    const std::int64_t dv = d - d % L;
    auto rows = [&](std::int64_t t0, std::int64_t t1) {
        for (std::int64_t t = t0; t < t1; ++t) {
            const float* xr = x + t * d;
            const float* gr = dy + t * d;
            float* dr = dx + t * d;
            B ss(0.0f), sg(0.0f);
            std::int64_t i = 0;
            for (; i < dv; i += L) {
                const B a = B::load_unaligned(xr + i);
                ss = xsimd::fma(a, a, ss);
                sg = xsimd::fma(a * cpu_detail::load_f32<A>(weight + i), B::load_unaligned(gr + i), sg);
            }
            float sum_sq = cpu_detail::hsum<A>(ss), sum_xwg = cpu_detail::hsum<A>(sg);
            for (; i < d; ++i) {
                sum_sq += xr[i] * xr[i];
                sum_xwg += xr[i] * cpu_detail::to_f32(weight[i]) * gr[i];
            }
            const float inv = 1.0f / std::sqrt(sum_sq / static_cast<float>(d) + eps);
            const float c = inv * inv * inv * sum_xwg / static_cast<float>(d);
            const B vinv(inv), vc(c);
            for (i = 0; i < dv; i += L) {
                const B g = B::load_unaligned(gr + i) * cpu_detail::load_f32<A>(weight + i);
                (g * vinv - B::load_unaligned(xr + i) * vc).store_unaligned(dr + i);
            }
            for (; i < d; ++i) dr[i] = gr[i] * cpu_detail::to_f32(weight[i]) * inv - xr[i] * c;
        }
    };
    cpu_detail::parallel_rows(cpu_detail::pool_or_global(pool), T, static_cast<double>(6 * d), rows);
}

}  // namespace limarp::ops

LIMARP_CPU_KERNELS_END
