#pragma once
/// \file loss.hpp
/// \brief CPU cross-entropy of logits rows against target ids (numerically stable, double sums),
/// its gradient, and the fused, chunked lm_head + cross-entropy forward/backward of training.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/detail/simd.hpp"
#include "limarp/backend/cpu/gemm.hpp"
#include "limarp/backend/cpu/gemm_backward.hpp"
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

/// Cross-entropy of one row and its gradient: returns logsumexp(x) - x[target] (double) and
/// writes dlogits = grad_scale * (softmax(x) - onehot(target)).
///
/// \param dlogits    [vocab] gradient (overwritten); may be the same pointer as logits
/// \param logits     [vocab] unnormalised scores
/// \param target     target id
/// \param vocab      row length
/// \param grad_scale factor of the gradient (e.g. 1 / number of counted rows for a mean)
/// \return           the row's loss
/// \pre 0 <= target < vocab; vocab > 0; logits finite.
template <class A>
double cross_entropy_row_backward(Cpu<A>, float* dlogits /*[vocab]*/, const float* logits /*[vocab]*/,
                                  std::int32_t target, std::int64_t vocab, float grad_scale) noexcept {
    using B = cpu_detail::fbatch<A>;
    constexpr std::int64_t L = cpu_detail::lanes<A>;
    const double lse = logsumexp_row(Cpu<A>{}, logits, vocab);
    const double loss = lse - static_cast<double>(logits[target]);
    const float flse = static_cast<float>(lse);
    const B vl(flse), vs(grad_scale);
    std::int64_t i = 0;
    for (; i + L <= vocab; i += L)
        (xsimd::exp(B::load_unaligned(logits + i) - vl) * vs).store_unaligned(dlogits + i);
    for (; i < vocab; ++i) dlogits[i] = std::exp(logits[i] - flse) * grad_scale;
    dlogits[target] -= grad_scale;
    return loss;
}

/// Fused lm_head + cross-entropy of training, chunked over the rows so that at most
/// `chunk_rows` x vocab logits exist at once (never [T, vocab] for a long sequence):
/// per chunk, logits = h · wᵀ (`matmul_wt`), the row losses, dlogits = grad_scale ·
/// (softmax - onehot), then dh = dlogits · w (`matmul_w`). Rows whose target is negative
/// (ignore index, e.g. -100, or a loss mask's dropped targets) count nothing, get dh = 0 and
/// cost nothing: only the counted rows are gathered into the chunks, so their logits, softmax
/// and products are never computed (training on the responses only skips the prompt's rows).
/// Deterministic: the row losses are summed in row order in double.
///
/// \param dh         [T, d] gradient of h (overwritten), or nullptr for the loss only
/// \param h          [T, d] hidden states after the final norm
/// \param w          [vocab, d] lm_head weight (f32 or bf16, used in place)
/// \param targets    [T] target id of every row; < 0: not counted
/// \param T          number of rows
/// \param d          hidden width (d_model)
/// \param vocab      vocabulary size
/// \param grad_scale factor of the gradient (1 / number of counted rows for a mean loss)
/// \param chunk_rows counted rows of logits computed at once (>= 1)
/// \param pool       thread pool (nullptr: ThreadPool::global())
/// \param dw         [vocab, d] gradient of w, added to (dw += dlogitsᵀ · h over the counted rows,
///                   chunk by chunk), or nullptr when w is frozen; needs dh
/// \return           the sum of the counted rows' losses
/// \pre targets[t] < vocab; d, vocab > 0; dh and dw do not overlap h or w.
template <class A, class W>
    requires CpuWeight<W>
double lm_head_cross_entropy(Cpu<A>, float* dh /*[T, d]*/, const float* h /*[T, d]*/, const W* w /*[vocab, d]*/,
                             const std::int32_t* targets /*[T]*/, std::int64_t T, std::int64_t d, std::int64_t vocab,
                             float grad_scale, std::int64_t chunk_rows = 256, ThreadPool* pool = nullptr,
                             float* dw = nullptr /*[vocab, d]*/) {
    if (T <= 0) return 0.0;
    // The counted rows, in order; the others only get dh = 0.
    std::vector<std::int64_t> rows;
    rows.reserve(static_cast<std::size_t>(T));
    for (std::int64_t t = 0; t < T; ++t)
        if (targets[t] >= 0) rows.push_back(t);
    const std::int64_t N = static_cast<std::int64_t>(rows.size());
    const bool all = N == T;  // every row counts: the chunks are h's and dh's own rows, no gather
    if (dh && !all) std::fill(dh, dh + T * d, 0.0f);
    if (N == 0) return 0.0;
    chunk_rows = std::max<std::int64_t>(1, std::min(chunk_rows, N));
    ThreadPool& p = cpu_detail::pool_or_global(pool);
    cpu_detail::AlignedFloats logits(static_cast<std::size_t>(chunk_rows * vocab));
    cpu_detail::AlignedFloats hbuf(all ? 0 : static_cast<std::size_t>(chunk_rows * d));   // [chunk_rows, d] gathered h
    cpu_detail::AlignedFloats dhbuf(all || !dh ? 0 : static_cast<std::size_t>(chunk_rows * d));  // [chunk_rows, d]
    std::vector<double> row_loss(static_cast<std::size_t>(chunk_rows));
    double total = 0.0;
    for (std::int64_t c0 = 0; c0 < N; c0 += chunk_rows) {
        const std::int64_t n = std::min(chunk_rows, N - c0);
        const std::int64_t* rc = rows.data() + c0;  // [n] the chunk's rows
        const float* hc = h + c0 * d;
        float* dhc = dh ? dh + c0 * d : nullptr;
        if (!all) {
            for (std::int64_t r = 0; r < n; ++r) std::copy_n(h + rc[r] * d, d, hbuf.data() + r * d);
            hc = hbuf.data();
            dhc = dh ? dhbuf.data() : nullptr;
        }
        matmul_wt(Cpu<A>{}, logits.data(), hc, w, n, d, vocab, false, &p);
        cpu_detail::parallel_rows(p, n, 25.0 * static_cast<double>(vocab), [&](std::int64_t r0, std::int64_t r1) {
            for (std::int64_t r = r0; r < r1; ++r) {
                float* x = logits.data() + r * vocab;
                const std::int32_t tgt = targets[rc[r]];
                row_loss[static_cast<std::size_t>(r)] =
                    dh ? cross_entropy_row_backward(Cpu<A>{}, x, x, tgt, vocab, grad_scale)
                       : logsumexp_row(Cpu<A>{}, x, vocab) - static_cast<double>(x[tgt]);
            }
        });
        for (std::int64_t r = 0; r < n; ++r) total += row_loss[static_cast<std::size_t>(r)];
        if (!dh) continue;
        matmul_w(Cpu<A>{}, dhc, logits.data(), w, n, vocab, d, false, &p);
        if (!all)
            for (std::int64_t r = 0; r < n; ++r) std::copy_n(dhc + r * d, d, dh + rc[r] * d);
        if (dw) matmul_at_b(Cpu<A>{}, dw, logits.data(), hc, n, vocab, d, true, &p);
    }
    return total;
}

}  // namespace limarp::ops

LIMARP_CPU_KERNELS_END
