#pragma once
/// \file gemm.hpp
/// \brief CPU matrix products: `matmul_wt` (y = x · wᵀ with f32 or bf16 weights, the Linear /
/// lm_head hot loop) and `matmul` (plain y = x · b).
///
/// `matmul_wt` has two paths:
/// - few rows of x (decode, T = 1 .. kGemvMaxRows): dot products that stream every weight row
///   once from memory, widening bf16 in registers; parallel over groups of output rows.
/// - more rows (prefill, training): a register-tiled GEMM. A block of weight rows is packed
///   (bf16 widened to f32, transposed into panels of NR output columns) once per block of
///   n_in and reused by every tile of x rows; an MR x NR micro-kernel broadcasts x and keeps the
///   MR x NR accumulators in registers. Parallel over (output block, row chunk) tasks.
/// Both accumulate in f32 with FMA; the GEMM sums each block of kKc inputs in registers and then
/// adds the block sums into y, which keeps rounding error well under 1e-5 relative for n_in up to
/// 16384 and beyond.

#include <algorithm>
#include <cstdint>
#include <cstring>

#include <xsimd/xsimd.hpp>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/detail/eigen.hpp"
#include "limarp/backend/cpu/detail/gemm_kernel.hpp"
#include "limarp/backend/cpu/detail/simd.hpp"
#include "limarp/backend/scaled_product.hpp"
#include "limarp/core/dtype.hpp"
#include "limarp/core/thread_pool.hpp"

LIMARP_CPU_KERNELS_BEGIN

namespace limarp::ops {

/// \cond
namespace cpu_detail {

// ---------------------------------------------------------------------------------------------
// Few-rows path: dot products of RX rows of x with G rows of w.

/// y[r, g] (=|+=) sum_k x[r, k] * w[g, k] for r < RX, g < G.
template <class A, int RX, int G, class W>
inline void dot_tile(float* y /*[RX, ldy]*/, std::int64_t ldy, const float* x /*[RX, ldx]*/, std::int64_t ldx,
                     const W* w /*[G, n_in]*/, std::int64_t n_in, bool accumulate) noexcept {
    using B = fbatch<A>;
    constexpr std::int64_t L = lanes<A>;
    B acc[RX][G];
#pragma GCC unroll 16
    for (int r = 0; r < RX; ++r)
#pragma GCC unroll 16
        for (int g = 0; g < G; ++g) acc[r][g] = B(0.0f);
    const std::int64_t kv = n_in - n_in % L;
    for (std::int64_t k = 0; k < kv; k += L) {
        B wv[G];
#pragma GCC unroll 16
        for (int g = 0; g < G; ++g) wv[g] = load_f32<A>(w + g * n_in + k);
#pragma GCC unroll 16
        for (int r = 0; r < RX; ++r) {
            const B xv = B::load_unaligned(x + r * ldx + k);
#pragma GCC unroll 16
            for (int g = 0; g < G; ++g) acc[r][g] = xsimd::fma(xv, wv[g], acc[r][g]);
        }
    }
    for (int r = 0; r < RX; ++r)
        for (int g = 0; g < G; ++g) {
            float s = hsum<A>(acc[r][g]);
            float t = 0.0f;
            for (std::int64_t k = kv; k < n_in; ++k) t += x[r * ldx + k] * to_f32(w[g * n_in + k]);
            s += t;
            float& out = y[r * ldy + g];
            out = accumulate ? out + s : s;
        }
}

/// Calls dot_tile with a run-time row count rx <= RX and group size g <= G.
template <class A, int RX, int G, class W>
inline void dot_tile_dispatch(int rx, int g, float* y, std::int64_t ldy, const float* x, std::int64_t ldx,
                              const W* w, std::int64_t n_in, bool accumulate) noexcept {
    if constexpr (RX > 1) {
        if (rx < RX) return dot_tile_dispatch<A, RX - 1, G>(rx, g, y, ldy, x, ldx, w, n_in, accumulate);
    }
    if constexpr (G > 1) {
        if (g < G) return dot_tile_dispatch<A, RX, G - 1>(rx, g, y, ldy, x, ldx, w, n_in, accumulate);
    }
    dot_tile<A, RX, G>(y, ldy, x, ldx, w, n_in, accumulate);
}

/// Weight rows per dot tile of the few-rows matmul_wt: 4 for one row of x (or with AVX-512's 32
/// vector registers), else 3.
template <class A>
inline int dot_tile_rows(std::int64_t T) noexcept {
    return T == 1 || lanes<A> >= 16 ? 4 : 3;
}

/// y[:, o .. o+g) (=|+=) x · w[o .. o+g)ᵀ for the T rows of x, in dot tiles of up to 4 x rows and
/// `dot_tile_rows<A>(T)` weight rows: one group of the few-rows matmul_wt, also the LoRA term
/// the int8 GEMV adds to each of its groups of rows (`ops::qmatmul_wt_lora`).
template <class A, class W>
inline void matmul_wt_row_group(float* y, const float* x, const W* w, std::int64_t T, std::int64_t n_in,
                                std::int64_t n_out, std::int64_t o, int g, bool accumulate) noexcept {
    constexpr int RX = 4;
    const int G = dot_tile_rows<A>(T);
    for (int g0 = 0; g0 < g; g0 += G) {
        const int gg = std::min(G, g - g0);
        const W* wg = w + (o + g0) * n_in;
        for (std::int64_t t = 0; t < T; t += RX) {
            const int rx = static_cast<int>(std::min<std::int64_t>(RX, T - t));
            if (T == 1)
                dot_tile_dispatch<A, 1, 4>(1, gg, y + o + g0, n_out, x, n_in, wg, n_in, accumulate);
            else if constexpr (lanes<A> >= 16)
                dot_tile_dispatch<A, RX, 4>(rx, gg, y + t * n_out + o + g0, n_out, x + t * n_in, n_in, wg, n_in,
                                            accumulate);
            else
                dot_tile_dispatch<A, RX, 3>(rx, gg, y + t * n_out + o + g0, n_out, x + t * n_in, n_in, wg, n_in,
                                            accumulate);
        }
    }
}

/// Few-rows matmul_wt: parallel over groups of output rows, every weight row read once.
template <class A, class W>
void matmul_wt_rows(float* y, const float* x, const W* w, std::int64_t T, std::int64_t n_in, std::int64_t n_out,
                    bool accumulate, ThreadPool& pool) {
    const int g_rows = dot_tile_rows<A>(T);
    const std::int64_t n_groups = (n_out + g_rows - 1) / g_rows;
    auto body = [&](std::int64_t gb, std::int64_t ge) {
        for (std::int64_t gi = gb; gi < ge; ++gi) {
            const std::int64_t o = gi * g_rows;
            matmul_wt_row_group<A>(y, x, w, T, n_in, n_out, o,
                                   static_cast<int>(std::min<std::int64_t>(g_rows, n_out - o)), accumulate);
        }
    };
    // Each group costs ~T * g_rows * n_in multiply-adds.
    parallel_rows(pool, n_groups, static_cast<double>(T * g_rows * n_in), body);
}

// ---------------------------------------------------------------------------------------------
// GEMM path (packing and micro-kernel in detail/gemm_kernel.hpp).

/// GEMM-path matmul_wt.
template <class A, class W>
void matmul_wt_gemm(float* y, const float* x, const W* w, std::int64_t T, std::int64_t n_in, std::int64_t n_out,
                    bool accumulate, ThreadPool& pool) {
    using Blk = GemmBlocking<A>;
    constexpr std::int64_t NR = Blk::NR, KC = Blk::KC, MR = Blk::MR;
    const std::int64_t n_threads = pool.size();
    // Output block: at most NC rows, small enough that every thread gets a block when possible.
    std::int64_t nc = std::min<std::int64_t>(Blk::NC, (n_out + n_threads - 1) / n_threads);
    nc = std::max<std::int64_t>(NR, (nc + NR - 1) / NR * NR);
    const std::int64_t n_oblocks = (n_out + nc - 1) / nc;
    // Split the rows of x too when there are fewer output blocks than threads.
    const std::int64_t t_tiles = (T + MR - 1) / MR;
    const std::int64_t t_chunks =
        std::min<std::int64_t>(t_tiles, std::max<std::int64_t>(1, (n_threads + n_oblocks - 1) / n_oblocks));
    const std::int64_t tiles_per_chunk = (t_tiles + t_chunks - 1) / t_chunks;
    const std::int64_t n_tasks = n_oblocks * t_chunks;

    auto task = [&](std::int64_t i) {
        const std::int64_t ob = i / t_chunks, tc = i % t_chunks;
        const std::int64_t o0 = ob * nc, rows = std::min(nc, n_out - o0);
        const std::int64_t t_begin = tc * tiles_per_chunk * MR, t_end = std::min(T, (tc + 1) * tiles_per_chunk * MR);
        const std::int64_t n_panels = (rows + NR - 1) / NR;
        float* packed = scratch<0>(static_cast<std::size_t>(n_panels * NR * std::min(KC, n_in)));
        for (std::int64_t k0 = 0; k0 < n_in; k0 += KC) {
            const std::int64_t kc = std::min(KC, n_in - k0);
            pack_panels(packed, w + o0 * n_in, n_in, rows, k0, kc, NR);
            const bool add = accumulate || k0 > 0;
            for (std::int64_t t = t_begin; t < t_end; t += MR) {
                const int m = static_cast<int>(std::min<std::int64_t>(MR, t_end - t));
                for (std::int64_t p = 0; p < n_panels; ++p)
                    micro_kernel_dispatch<A, Blk::MR>(m, x + t * n_in + k0, n_in, packed + p * kc * NR, NR, kc,
                                                      y + t * n_out + o0 + p * NR, n_out,
                                                      std::min(NR, rows - p * NR), add);
            }
        }
    };
    if (n_tasks == 1 || n_threads == 1) {
        for (std::int64_t i = 0; i < n_tasks; ++i) task(i);
    } else {
        pool.parallel_for(0, n_tasks, [&](std::int64_t b, std::int64_t e, unsigned) {
            for (std::int64_t i = b; i < e; ++i) task(i);
        });
    }
}

}  // namespace cpu_detail
/// \endcond

/// Rows of x up to which matmul_wt streams weights with dot products; more rows use the packed GEMM.
inline constexpr std::int64_t kGemvMaxRows = 16;

/// y (=|+=) x · wᵀ: the Linear layer product with weights stored [n_out, n_in] (as in PyTorch
/// and safetensors). f32 compute and FMA accumulation; bf16 weights are widened in registers
/// (exactly), activations are never rounded to bf16.
///
/// \param y          [T, n_out] output; overwritten, or added to when `accumulate`
/// \param x          [T, n_in] input activations
/// \param w          [n_out, n_in] weights (f32 or bf16, e.g. straight from an mmap)
/// \param T          number of rows of x (tokens)
/// \param n_in       input features
/// \param n_out      output features
/// \param accumulate false: y = x · wᵀ; true: y += x · wᵀ
/// \param pool       thread pool (nullptr: ThreadPool::global())
/// \pre T, n_in, n_out >= 0; y does not overlap x or w; all pointers row-major contiguous.
template <class A, class W>
    requires CpuWeight<W>
void matmul_wt(Cpu<A>, float* y /*[T, n_out]*/, const float* x /*[T, n_in]*/, const W* w /*[n_out, n_in]*/,
               std::int64_t T, std::int64_t n_in, std::int64_t n_out, bool accumulate = false,
               ThreadPool* pool = nullptr) {
    if (T <= 0 || n_out <= 0) return;
    if (n_in <= 0) {
        if (!accumulate) std::fill(y, y + T * n_out, 0.0f);
        return;
    }
    ThreadPool& p = cpu_detail::pool_or_global(pool);
    if (T <= kGemvMaxRows)
        cpu_detail::matmul_wt_rows<A>(y, x, w, T, n_in, n_out, accumulate, p);
    else
        cpu_detail::matmul_wt_gemm<A>(y, x, w, T, n_in, n_out, accumulate, p);
}

/// y = alpha · (x · wᵀ): `matmul_wt`, then the scale (the same arithmetic as matmul_wt followed
/// by `scale_inplace`). The CUDA backend folds alpha into its kernels (the LoRA A product and
/// its scale in one pass).
template <class A, class W>
    requires CpuWeight<W>
void matmul_wt_scaled(Cpu<A> b, float* y /*[T, n_out]*/, const float* x /*[T, n_in]*/, const W* w /*[n_out, n_in]*/,
                      std::int64_t T, std::int64_t n_in, std::int64_t n_out, float alpha, ThreadPool* pool = nullptr) {
    matmul_wt(b, y, x, w, T, n_in, n_out, false, pool);
    if (alpha != 1.0f)
        for (std::int64_t i = 0; i < T * n_out; ++i) y[i] *= alpha;
}

/// The grouped form (`ops::ScaledProduct`, bf16 weights sharing x): one `matmul_wt_scaled` per
/// product on the CPU (the CUDA backend runs one launch).
template <class A>
void matmul_wt_scaled_group(Cpu<A> b, const float* x, std::int64_t T, std::int64_t n_in, const ScaledProduct* p,
                            int n) {
    for (int i = 0; i < n; ++i) matmul_wt_scaled(b, p[i].y, x, p[i].w, T, n_in, p[i].n_out, p[i].alpha);
}

/// y (=|+=) x · b: a plain row-major matrix product (Eigen's GEMM, parallel over column blocks).
///
/// \param y          [T, n] output; overwritten, or added to when `accumulate`
/// \param x          [T, k] left operand
/// \param b          [k, n] right operand
/// \param T          rows of x and y
/// \param k          inner dimension
/// \param n          columns of b and y
/// \param accumulate false: y = x · b; true: y += x · b
/// \param pool       thread pool (nullptr: ThreadPool::global())
/// \pre T, k, n >= 0; y does not overlap x or b.
template <class A>
void matmul(Cpu<A>, float* y /*[T, n]*/, const float* x /*[T, k]*/, const float* b /*[k, n]*/, std::int64_t T,
            std::int64_t k, std::int64_t n, bool accumulate = false, ThreadPool* pool = nullptr) {
    using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    using CMap = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>;
    using MMap = Eigen::Map<RowMat, 0, Eigen::OuterStride<>>;
    if (T <= 0 || n <= 0) return;
    if (k <= 0) {
        if (!accumulate) std::fill(y, y + T * n, 0.0f);
        return;
    }
    ThreadPool& p = cpu_detail::pool_or_global(pool);
    const CMap X(x, T, k, Eigen::OuterStride<>(k));
    auto cols = [&](std::int64_t c0, std::int64_t c1) {
        const CMap Bm(b + c0, k, c1 - c0, Eigen::OuterStride<>(n));
        MMap Y(y + c0, T, c1 - c0, Eigen::OuterStride<>(n));
        if (accumulate)
            Y.noalias() += X * Bm;
        else
            Y.noalias() = X * Bm;
    };
    constexpr std::int64_t kColBlock = 64;
    const std::int64_t n_blocks = (n + kColBlock - 1) / kColBlock;
    const double work = static_cast<double>(T) * static_cast<double>(k) * static_cast<double>(n);
    if (p.size() <= 1 || n_blocks < 2 || work < 1e6) {
        cols(0, n);
        return;
    }
    p.parallel_for(0, n_blocks, [&](std::int64_t b0, std::int64_t b1, unsigned) {
        cols(b0 * kColBlock, std::min(n, b1 * kColBlock));
    });
}

}  // namespace limarp::ops

LIMARP_CPU_KERNELS_END
