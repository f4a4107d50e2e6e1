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

#include <Eigen/Core>
#include <xsimd/xsimd.hpp>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/detail/simd.hpp"
#include "limarp/core/dtype.hpp"
#include "limarp/core/thread_pool.hpp"

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

/// Few-rows matmul_wt: parallel over groups of output rows, every weight row read once.
template <class A, class W>
void matmul_wt_rows(float* y, const float* x, const W* w, std::int64_t T, std::int64_t n_in, std::int64_t n_out,
                    bool accumulate, ThreadPool& pool) {
    constexpr bool wide_regs = lanes<A> >= 16;  // AVX-512: 32 vector registers
    constexpr int RX = 4;
    constexpr int G = 4;  // weight rows per dot tile when T == 1
    const int g_rows = T == 1 ? G : (wide_regs ? 4 : 3);
    const std::int64_t n_groups = (n_out + g_rows - 1) / g_rows;
    auto body = [&](std::int64_t gb, std::int64_t ge) {
        for (std::int64_t gi = gb; gi < ge; ++gi) {
            const std::int64_t o = gi * g_rows;
            const int g = static_cast<int>(std::min<std::int64_t>(g_rows, n_out - o));
            for (std::int64_t t = 0; t < T; t += RX) {
                const int rx = static_cast<int>(std::min<std::int64_t>(RX, T - t));
                if (T == 1)
                    dot_tile_dispatch<A, 1, G>(1, g, y + o, n_out, x, n_in, w + o * n_in, n_in, accumulate);
                else if constexpr (wide_regs)
                    dot_tile_dispatch<A, RX, 4>(rx, g, y + t * n_out + o, n_out, x + t * n_in, n_in, w + o * n_in,
                                                n_in, accumulate);
                else
                    dot_tile_dispatch<A, RX, 3>(rx, g, y + t * n_out + o, n_out, x + t * n_in, n_in, w + o * n_in,
                                                n_in, accumulate);
            }
        }
    };
    // Each group costs ~T * g_rows * n_in multiply-adds.
    parallel_rows(pool, n_groups, static_cast<double>(T * g_rows * n_in), body);
}

// ---------------------------------------------------------------------------------------------
// GEMM path: packed weight panels + register-tiled micro-kernel.

/// Blocking parameters of the GEMM path for arch A.
template <class A>
struct GemmBlocking {
    static constexpr int NV = 2;                                     ///< vectors per micro-tile row
    static constexpr std::int64_t NR = NV * lanes<A>;                ///< output columns per panel
    static constexpr int MR = lanes<A> >= 16 ? 12 : 6;               ///< x rows per micro-tile
    static constexpr std::int64_t KC = 256;                          ///< inputs per packed block
    static constexpr std::int64_t NC = NR * ((128 + NR - 1) / NR);   ///< output rows per task
};

#if defined(__AVX2__)
/// In-register transpose of 8 rows of 8 floats.
inline void transpose8x8(__m256& r0, __m256& r1, __m256& r2, __m256& r3, __m256& r4, __m256& r5, __m256& r6,
                         __m256& r7) noexcept {
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    r0 = _mm256_permute2f128_ps(u0, u4, 0x20);
    r1 = _mm256_permute2f128_ps(u1, u5, 0x20);
    r2 = _mm256_permute2f128_ps(u2, u6, 0x20);
    r3 = _mm256_permute2f128_ps(u3, u7, 0x20);
    r4 = _mm256_permute2f128_ps(u0, u4, 0x31);
    r5 = _mm256_permute2f128_ps(u1, u5, 0x31);
    r6 = _mm256_permute2f128_ps(u2, u6, 0x31);
    r7 = _mm256_permute2f128_ps(u3, u7, 0x31);
}
inline __m256 load8_f32(const float* p) noexcept { return _mm256_loadu_ps(p); }
inline __m256 load8_f32(const bf16* p) noexcept {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
#endif

/// Packs rows [0, rows) x inputs [k0, k0 + kc) of `w` (row stride n_in) into panels of NR
/// output columns: dst[p][k][j] = w[p * NR + j][k0 + k], zero for rows >= rows.
template <class W>
void pack_panels(float* dst /*[ceil(rows/NR), kc, NR]*/, const W* w /*[rows, n_in]*/, std::int64_t n_in,
                 std::int64_t rows, std::int64_t k0, std::int64_t kc, std::int64_t NR) noexcept {
    const std::int64_t n_panels = (rows + NR - 1) / NR;
    for (std::int64_t p = 0; p < n_panels; ++p) {
        float* d = dst + p * kc * NR;
        for (std::int64_t j0 = 0; j0 < NR; j0 += 8) {
            const std::int64_t r0 = p * NR + j0;
            const std::int64_t nr = std::clamp<std::int64_t>(rows - r0, 0, std::min<std::int64_t>(8, NR - j0));
            std::int64_t k = 0;
#if defined(__AVX2__)
            if (nr == 8 && NR % 8 == 0) {
                const W* s = w + r0 * n_in + k0;
                for (; k + 8 <= kc; k += 8) {
                    __m256 a0 = load8_f32(s + 0 * n_in + k), a1 = load8_f32(s + 1 * n_in + k);
                    __m256 a2 = load8_f32(s + 2 * n_in + k), a3 = load8_f32(s + 3 * n_in + k);
                    __m256 a4 = load8_f32(s + 4 * n_in + k), a5 = load8_f32(s + 5 * n_in + k);
                    __m256 a6 = load8_f32(s + 6 * n_in + k), a7 = load8_f32(s + 7 * n_in + k);
                    transpose8x8(a0, a1, a2, a3, a4, a5, a6, a7);
                    float* o = d + k * NR + j0;
                    _mm256_storeu_ps(o + 0 * NR, a0);
                    _mm256_storeu_ps(o + 1 * NR, a1);
                    _mm256_storeu_ps(o + 2 * NR, a2);
                    _mm256_storeu_ps(o + 3 * NR, a3);
                    _mm256_storeu_ps(o + 4 * NR, a4);
                    _mm256_storeu_ps(o + 5 * NR, a5);
                    _mm256_storeu_ps(o + 6 * NR, a6);
                    _mm256_storeu_ps(o + 7 * NR, a7);
                }
            }
#endif
            const std::int64_t jn = std::min<std::int64_t>(8, NR - j0);
            for (; k < kc; ++k) {
                float* o = d + k * NR + j0;
                for (std::int64_t j = 0; j < jn; ++j)
                    o[j] = j < nr ? to_f32(w[(r0 + j) * n_in + k0 + k]) : 0.0f;
            }
        }
    }
}

/// The MR x NR micro-kernel: acc = x[0:MR, 0:kc] · panel[0:kc, 0:NR]; then y[0:MR, 0:n_valid]
/// = acc (add = false) or += acc (add = true).
template <class A, int MR>
inline void micro_kernel(const float* x /*[MR, ldx]*/, std::int64_t ldx, const float* wp /*[kc, NR]*/,
                         std::int64_t kc, float* y /*[MR, ldy]*/, std::int64_t ldy, std::int64_t n_valid,
                         bool add) noexcept {
    using B = fbatch<A>;
    using Blk = GemmBlocking<A>;
    constexpr int NV = Blk::NV;
    constexpr std::int64_t NR = Blk::NR, L = lanes<A>;
    B acc[MR][NV];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = B(0.0f);
    for (std::int64_t k = 0; k < kc; ++k) {
        B b[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) b[v] = B::load_aligned(wp + k * NR + v * L);
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) {
            const B a(x[r * ldx + k]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[r][v] = xsimd::fma(a, b[v], acc[r][v]);
        }
    }
    if (n_valid == NR) {
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) {
                float* p = y + r * ldy + v * L;
                B s = acc[r][v];
                if (add) s += B::load_unaligned(p);
                s.store_unaligned(p);
            }
    } else {
        alignas(64) float tmp[NR];
        for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[r][v].store_aligned(tmp + v * L);
            float* p = y + r * ldy;
            for (std::int64_t j = 0; j < n_valid; ++j) p[j] = add ? p[j] + tmp[j] : tmp[j];
        }
    }
}

/// Calls micro_kernel with a run-time row count m <= MR.
template <class A, int MR>
inline void micro_kernel_dispatch(int m, const float* x, std::int64_t ldx, const float* wp, std::int64_t kc, float* y,
                                  std::int64_t ldy, std::int64_t n_valid, bool add) noexcept {
    if constexpr (MR > 1) {
        if (m < MR) return micro_kernel_dispatch<A, MR - 1>(m, x, ldx, wp, kc, y, ldy, n_valid, add);
    }
    micro_kernel<A, MR>(x, ldx, wp, kc, y, ldy, n_valid, add);
}

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
                    micro_kernel_dispatch<A, Blk::MR>(m, x + t * n_in + k0, n_in, packed + p * kc * NR, kc,
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
inline constexpr std::int64_t kGemvMaxRows = 4;

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
