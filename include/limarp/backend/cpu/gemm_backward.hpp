#pragma once
/// \file gemm_backward.hpp
/// \brief CPU matrix products of the backward pass of a linear map y = x · Wᵀ (W [n_out, n_in]):
/// `matmul_w` (y = x · w with w f32 or bf16 [k, n] used in place: the input gradient
/// dx = dy · W) and `matmul_at_b` (c = aᵀ · b: the weight gradient dW += dyᵀ · x, used for the
/// LoRA factors).
///
/// Both run Eigen's GEMM on blocks of the output, one block per task, in parallel on the
/// library's thread pool (Eigen itself stays single-threaded). bf16 weights are widened to f32
/// (exactly) a block of kKBlock x kColBlock at a time into a per-thread buffer; f32 weights are
/// read in place. Accumulation is f32 throughout.

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/detail/eigen.hpp"
#include "limarp/backend/cpu/detail/simd.hpp"
#include "limarp/core/dtype.hpp"
#include "limarp/core/thread_pool.hpp"

LIMARP_CPU_KERNELS_BEGIN

namespace limarp::ops {

/// \cond
namespace cpu_detail {

/// Row-major f32 matrix and maps with an outer stride, for the Eigen products of the backward pass.
using BwdRowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using BwdMap = Eigen::Map<BwdRowMat, 0, Eigen::OuterStride<>>;
using BwdCMap = Eigen::Map<const BwdRowMat, 0, Eigen::OuterStride<>>;

/// Output columns per task of matmul_w / matmul_at_b.
inline constexpr std::int64_t kBwdColBlock = 256;
/// Output rows per task of matmul_at_b.
inline constexpr std::int64_t kBwdRowBlock = 256;
/// Rows of a bf16 weight widened to f32 at once by matmul_w.
inline constexpr std::int64_t kBwdKBlock = 256;
/// Multiply-adds below which a product runs on the calling thread only.
inline constexpr double kBwdMinParallelWork = 1e6;

/// Splits rows [0, T) into `chunks` near-equal ranges and returns range `i`.
inline std::pair<std::int64_t, std::int64_t> bwd_row_range(std::int64_t T, std::int64_t chunks, std::int64_t i) noexcept {
    return {T * i / chunks, T * (i + 1) / chunks};
}

/// Runs fn(task) for every task in [0, n), in parallel when `work` (multiply-adds) pays for it.
template <class Fn>
void bwd_run_tasks(ThreadPool& pool, std::int64_t n, double work, Fn&& fn) {
    if (pool.size() <= 1 || n <= 1 || work < kBwdMinParallelWork) {
        for (std::int64_t i = 0; i < n; ++i) fn(i);
        return;
    }
    parallel_dynamic(pool, n, [&](std::int64_t i, unsigned) { fn(i); });
}

}  // namespace cpu_detail
/// \endcond

/// \cond
namespace cpu_detail {

/// Splits the output y [T, n] of y = x · w (inner dimension k) into tasks of kBwdColBlock
/// columns (and row chunks when there are fewer column blocks than threads) and runs
/// fn(Y, r0, r1, c0, cw) for each, in parallel; Y maps y[r0:r1, c0:c0+cw]. Handles the empty cases.
template <class Fn>
void matmul_w_tasks(float* y, std::int64_t T, std::int64_t k, std::int64_t n, bool accumulate, ThreadPool* pool,
                    Fn&& fn) {
    if (T <= 0 || n <= 0) return;
    if (k <= 0) {
        if (!accumulate) std::fill(y, y + T * n, 0.0f);
        return;
    }
    ThreadPool& p = pool_or_global(pool);
    const std::int64_t n_cblocks = (n + kBwdColBlock - 1) / kBwdColBlock;
    const std::int64_t threads = static_cast<std::int64_t>(p.size());
    const std::int64_t row_chunks =
        std::clamp<std::int64_t>((threads + n_cblocks - 1) / n_cblocks, 1, std::max<std::int64_t>(1, T / 16));
    const double work = static_cast<double>(T) * static_cast<double>(k) * static_cast<double>(n);
    bwd_run_tasks(p, n_cblocks * row_chunks, work, [&](std::int64_t task) {
        const std::int64_t cb = task / row_chunks, rc = task % row_chunks;
        const std::int64_t c0 = cb * kBwdColBlock, cw = std::min(kBwdColBlock, n - c0);
        const auto [r0, r1] = bwd_row_range(T, row_chunks, rc);
        if (r1 <= r0) return;
        BwdMap Y(y + r0 * n + c0, r1 - r0, cw, Eigen::OuterStride<>(n));
        fn(Y, r0, r1, c0, cw);
    });
}

/// y (=|+=) x · w for a [k, n] right operand that is not f32 in memory: `widen(row, c0, cw, dst)`
/// writes w[row, c0 .. c0 + cw) as f32 into dst. Blocks of kBwdKBlock x kBwdColBlock are widened
/// into a per-thread buffer and multiplied by Eigen; c0 is always a multiple of kBwdColBlock.
template <class Widen>
void matmul_w_widened(float* y, const float* x, const Widen& widen, std::int64_t T, std::int64_t k, std::int64_t n,
                      bool accumulate, ThreadPool* pool) {
    matmul_w_tasks(y, T, k, n, accumulate, pool, [&](BwdMap& Y, std::int64_t r0, std::int64_t r1, std::int64_t c0,
                                                     std::int64_t cw) {
        float* wf = scratch<8>(static_cast<std::size_t>(kBwdKBlock * kBwdColBlock));
        for (std::int64_t k0 = 0; k0 < k; k0 += kBwdKBlock) {
            const std::int64_t kb = std::min(kBwdKBlock, k - k0);
            for (std::int64_t i = 0; i < kb; ++i) widen(k0 + i, c0, cw, wf + i * cw);
            const BwdCMap X(x + r0 * k + k0, r1 - r0, kb, Eigen::OuterStride<>(k));
            const BwdCMap Wm(wf, kb, cw, Eigen::OuterStride<>(cw));
            if (accumulate || k0 > 0)
                Y.noalias() += X * Wm;
            else
                Y.noalias() = X * Wm;
        }
    });
}

}  // namespace cpu_detail
/// \endcond

/// y (=|+=) x · w with `w` stored [k, n] (f32, or bf16 widened exactly in f32): the input
/// gradient of `matmul_wt`. For a linear map y = x · Wᵀ with W [n_out, n_in], the gradient of
/// the input is dx = dy · W, i.e. `matmul_w(dx, dy, W, T, n_out, n_in)`.
///
/// \param y          [T, n] output; overwritten, or added to when `accumulate`
/// \param x          [T, k] left operand (e.g. dy)
/// \param w          [k, n] right operand, row-major (e.g. a frozen weight [n_out, n_in] in place)
/// \param T          rows of x and y
/// \param k          inner dimension (rows of w)
/// \param n          columns of w and y
/// \param accumulate false: y = x · w; true: y += x · w
/// \param pool       thread pool (nullptr: ThreadPool::global())
/// \pre T, k, n >= 0; y does not overlap x or w; all pointers row-major contiguous.
template <class A, class W>
    requires CpuWeight<W>
void matmul_w(Cpu<A>, float* y /*[T, n]*/, const float* x /*[T, k]*/, const W* w /*[k, n]*/, std::int64_t T,
              std::int64_t k, std::int64_t n, bool accumulate = false, ThreadPool* pool = nullptr) {
    using namespace cpu_detail;
    if constexpr (std::is_same_v<W, float>) {
        matmul_w_tasks(y, T, k, n, accumulate, pool, [&](BwdMap& Y, std::int64_t r0, std::int64_t r1, std::int64_t c0,
                                                         std::int64_t cw) {
            const BwdCMap X(x + r0 * k, r1 - r0, k, Eigen::OuterStride<>(k));
            const BwdCMap Wm(w + c0, k, cw, Eigen::OuterStride<>(n));
            if (accumulate)
                Y.noalias() += X * Wm;
            else
                Y.noalias() = X * Wm;
        });
    } else {
        const auto widen = [w, n](std::int64_t row, std::int64_t c0, std::int64_t cw, float* dst) {
            const W* src = w + row * n + c0;
            std::int64_t j = 0;
            constexpr std::int64_t L = lanes<A>;
            for (; j + L <= cw; j += L) load_f32<A>(src + j).store_unaligned(dst + j);
            for (; j < cw; ++j) dst[j] = to_f32(src[j]);
        };
        matmul_w_widened(y, x, widen, T, k, n, accumulate, pool);
    }
}

/// c (=|+=) aᵀ · b, summing over the T rows of a and b: the weight gradient of a linear map.
/// For y = x · Wᵀ, dW += dyᵀ · x is `matmul_at_b(dW, dy, x, T, n_out, n_in, true)`.
///
/// \param c          [m, n] output; overwritten, or added to when `accumulate`
/// \param a          [T, m] left operand (transposed in the product)
/// \param b          [T, n] right operand
/// \param T          rows of a and b (the summed dimension, e.g. tokens)
/// \param m          columns of a, rows of c
/// \param n          columns of b and c
/// \param accumulate false: c = aᵀ · b; true: c += aᵀ · b
/// \param pool       thread pool (nullptr: ThreadPool::global())
/// \pre T, m, n >= 0; c does not overlap a or b; all pointers row-major contiguous.
template <class A>
void matmul_at_b(Cpu<A>, float* c /*[m, n]*/, const float* a /*[T, m]*/, const float* b /*[T, n]*/, std::int64_t T,
                 std::int64_t m, std::int64_t n, bool accumulate = false, ThreadPool* pool = nullptr) {
    using namespace cpu_detail;
    if (m <= 0 || n <= 0) return;
    if (T <= 0) {
        if (!accumulate) std::fill(c, c + m * n, 0.0f);
        return;
    }
    ThreadPool& p = pool_or_global(pool);
    const std::int64_t n_rb = (m + kBwdRowBlock - 1) / kBwdRowBlock, n_cb = (n + kBwdColBlock - 1) / kBwdColBlock;
    const double work = static_cast<double>(T) * static_cast<double>(m) * static_cast<double>(n);
    bwd_run_tasks(p, n_rb * n_cb, work, [&](std::int64_t task) {
        const std::int64_t rb = task / n_cb, cb = task % n_cb;
        const std::int64_t i0 = rb * kBwdRowBlock, mi = std::min(kBwdRowBlock, m - i0);
        const std::int64_t j0 = cb * kBwdColBlock, nj = std::min(kBwdColBlock, n - j0);
        const BwdCMap Am(a + i0, T, mi, Eigen::OuterStride<>(m));
        const BwdCMap Bm(b + j0, T, nj, Eigen::OuterStride<>(n));
        BwdMap C(c + i0 * n + j0, mi, nj, Eigen::OuterStride<>(n));
        if (accumulate)
            C.noalias() += Am.transpose() * Bm;
        else
            C.noalias() = Am.transpose() * Bm;
    });
}

}  // namespace limarp::ops

LIMARP_CPU_KERNELS_END
