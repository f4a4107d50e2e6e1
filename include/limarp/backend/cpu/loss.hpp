#pragma once
/// \file loss.hpp
/// \brief CPU cross-entropy of logits rows against target ids (numerically stable, double sums).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/detail/simd.hpp"
#include "limarp/core/thread_pool.hpp"

LIMARP_CPU_KERNELS_BEGIN

namespace limarp::ops {

/// \cond
namespace cpu_detail {
/// Chunk of a row summed in f32 registers before the partial sum is added in double.
inline constexpr std::int64_t kLseChunk = 512;
}  // namespace cpu_detail
/// \endcond

/// log(sum_i exp(x_i)) of one row, stable: max-subtracted, exp in f32 (~1 ulp), the sum of
/// exponentials accumulated in double over short f32 chunks.
///
/// \param x     [n] row of logits
/// \param n     row length (vocab)
/// \return      the log-sum-exp in double
/// \pre n > 0; x is finite.
template <class A>
double logsumexp_row(Cpu<A>, const float* x /*[n]*/, std::int64_t n) noexcept {
    using B = cpu_detail::fbatch<A>;
    constexpr std::int64_t L = cpu_detail::lanes<A>;
    const std::int64_t nv = n - n % L;
    float m = x[0];
    if (nv > 0) {
        B vm = B::load_unaligned(x);
        for (std::int64_t i = L; i < nv; i += L) vm = xsimd::max(vm, B::load_unaligned(x + i));
        m = std::max(m, cpu_detail::hmax<A>(vm));
    }
    for (std::int64_t i = nv; i < n; ++i) m = std::max(m, x[i]);
    const B bm(m);
    double total = 0.0;
    for (std::int64_t c = 0; c < nv; c += cpu_detail::kLseChunk) {
        const std::int64_t ce = std::min(nv, c + cpu_detail::kLseChunk);
        B s(0.0f);
        for (std::int64_t i = c; i < ce; i += L) s += xsimd::exp(B::load_unaligned(x + i) - bm);
        total += static_cast<double>(cpu_detail::hsum<A>(s));
    }
    for (std::int64_t i = nv; i < n; ++i) total += static_cast<double>(std::exp(x[i] - m));
    return static_cast<double>(m) + std::log(total);
}

/// Cross-entropy summed over rows: sum_t -log softmax(logits[t])[targets[t]], i.e.
/// sum_t (logsumexp(logits[t]) - logits[t, targets[t]]), in double. Divide by the number of
/// counted rows for the mean. Rows run in parallel; the total does not depend on the thread count.
///
/// \param logits  [T, vocab] unnormalised scores
/// \param targets [T] target ids
/// \param T       number of rows
/// \param vocab   row length
/// \param pool    thread pool (nullptr: ThreadPool::global())
/// \return        the summed loss (0 when T == 0)
/// \pre 0 <= targets[t] < vocab (validated by the caller); vocab > 0; logits finite.
template <class A>
double cross_entropy_rows(Cpu<A>, const float* logits /*[T, vocab]*/, const std::int32_t* targets /*[T]*/,
                          std::int64_t T, std::int64_t vocab, ThreadPool* pool = nullptr) {
    if (T <= 0) return 0.0;
    std::vector<double> row_loss(static_cast<std::size_t>(T));
    auto rows = [&](std::int64_t t0, std::int64_t t1) {
        for (std::int64_t t = t0; t < t1; ++t) {
            const float* x = logits + t * vocab;
            row_loss[static_cast<std::size_t>(t)] =
                logsumexp_row(Cpu<A>{}, x, vocab) - static_cast<double>(x[targets[t]]);
        }
    };
    cpu_detail::parallel_rows(cpu_detail::pool_or_global(pool), T, 20.0 * static_cast<double>(vocab), rows);
    double total = 0.0;
    for (double v : row_loss) total += v;
    return total;
}

}  // namespace limarp::ops

LIMARP_CPU_KERNELS_END
