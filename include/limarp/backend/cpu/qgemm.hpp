#pragma once
/// \file qgemm.hpp
/// \brief CPU products with 8-bit quantized weights: `ops::qmatmul_wt` for `Int8Rowwise` and `Q8_0`.
///
/// y (=|+=) x · Wᵀ with W [n_out, n_in] quantized. Which arithmetic runs is chosen by
/// `QuantOptions` (run time) and the xsimd arch of the `Cpu<A>` tag (compile time):
///
/// | options                | Int8Rowwise                                   | Q8_0                                     |
/// |------------------------|-----------------------------------------------|------------------------------------------|
/// | int8_activations=true  | x quantized per row (absmax/127), int32 dots, | x quantized to q8_0 blocks (f32 scale),  |
/// |                        | outlier columns (|x| >= threshold) in f32     | int32 dot per block, f32 scale products  |
/// | int8_activations=false | weights widened in registers, f32 FMA         | weights widened in registers, f32 FMA    |
///
/// Shapes and paths:
/// - T <= kQGemvMaxRows (decode): a GEMV that streams every weight row once from memory, 4 rows
///   at a time (q8_0 with AVX-512: two blocks per zmm), parallel over contiguous ranges of output
///   rows (one per thread), prefetching the same offset of the next group of 4 rows (q8_0 with
///   AVX-512: both lines a 68-byte pair of blocks spans); memory bound for weights larger than
///   the caches.
/// - T > kQGemvMaxRows (prefill, scoring): a packed GEMM. x is quantized once into tiles of MR
///   rows interleaved in 4-byte groups; each task packs a panel of weight rows (NR = 32 with
///   AVX-512, 16 with AVX2) for a chunk of inputs (KC = 2048 / 1024) into [k/4][NR][4] (VNNI) or
///   [k/2][NR][2] int16 (AVX2) and reuses it for every x tile; the MR x NR micro-kernel
///   (12 x 32 int8 / 6 x 32 q8_0 with VNNI, 6 x 16 / 4 x 16 with AVX2) broadcasts 4 (VNNI) or 2
///   (AVX2) inputs of one x row and multiplies them with 16 or 8 weight rows per instruction,
///   accumulating in registers (int32 over the whole row for int8, per block of 32 then f32 for
///   q8_0). Weight-only products with T > kQGemvMaxRows dequantize blocks of 32 weight rows to
///   f32 and run the dense `ops::matmul_wt`.
///
/// Instruction sets: with AVX-512 F/BW/VL + VNNI enabled at build time (-march) and an AVX-512
/// arch tag, integer dots use `vpdpbusd` (u8 x s8: int8 row-wise activations are offset by +128
/// and the weight row sums correct for it; q8_0 GEMV uses |x| x sign(w, x)); with AVX2 + FMA they
/// use `vpmaddubsw`/`vpmaddwd`; elsewhere portable scalar loops (any T goes through the GEMV path).
/// Every path computes the same integer dots; only the f32 summation order differs.
///
/// Rounding: activations are quantized with `quantize_row_int8` (ties to even), per row for
/// Int8Rowwise (after zeroing the outlier columns) and per block of 32 for Q8_0, so a scalar
/// reference that quantizes the same way matches to f32 rounding.

#include <algorithm>
#include <cstdint>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/detail/qgemm_common.hpp"
#include "limarp/backend/cpu/detail/qgemm_int8.hpp"
#include "limarp/backend/cpu/detail/qgemm_q8_0.hpp"
#include "limarp/backend/cpu/gemm.hpp"
#include "limarp/core/thread_pool.hpp"
#include "limarp/quant/int8_rowwise.hpp"
#include "limarp/quant/q8_0.hpp"
#include "limarp/quant/scheme.hpp"

namespace limarp::ops {

/// Rows of x up to which `qmatmul_wt` uses the GEMV path; more rows use the packed GEMM.
inline constexpr std::int64_t kQGemvMaxRows = 4;

/// \cond
namespace qdetail {

/// Weight-only product for many rows: dequantize blocks of weight rows to f32 and multiply with
/// the dense `matmul_wt` (one block per task, serial inside the task).
template <class A, class W>
void gemm_weight_only(float* y, const float* x, const W& w, std::int64_t T, bool accumulate, ThreadPool& pool) {
    constexpr std::int64_t R = 32;
    const std::int64_t n_out = w.n_out(), n_in = w.n_in();
    const std::int64_t n_blocks = (n_out + R - 1) / R;
    for_each_task(pool, n_blocks, [&](std::int64_t bi) {
        const std::int64_t o0 = bi * R, rows = std::min(R, n_out - o0);
        float* wf = qscratch_as<10, float>(rows * n_in);
        float* tmp = qscratch_as<11, float>(T * rows);
        for (std::int64_t r = 0; r < rows; ++r) {
            if constexpr (std::is_same_v<W, QuantizedWeight<Int8Rowwise>>) {
                const std::int8_t* q = w.row(o0 + r);
                const float s = w.scales()[o0 + r];
                for (std::int64_t k = 0; k < n_in; ++k) wf[r * n_in + k] = static_cast<float>(q[k]) * s;
            } else {
                for (std::int64_t b = 0; b < w.blocks_per_row(); ++b)
                    dequantize_block_q8_0(w.row(o0 + r) + b * 34, wf + r * n_in + 32 * b);
            }
        }
        ThreadPool serial(1);
        matmul_wt(Cpu<A>{}, tmp, x, wf, T, n_in, rows, false, &serial);
        for (std::int64_t t = 0; t < T; ++t) {
            float* yr = y + t * n_out + o0;
            const float* s = tmp + t * rows;
            for (std::int64_t r = 0; r < rows; ++r) yr[r] = accumulate ? yr[r] + s[r] : s[r];
        }
    });
}

}  // namespace qdetail
/// \endcond

/// y (=|+=) x · Wᵀ with int8 row-wise weights (LLM.int8()).
///
/// int8 activations (`opt.int8_activations`): columns k of x where some |x[t, k]| >=
/// `opt.outlier_threshold` (> 0) are outliers; every row t is quantized with the outlier
/// columns set to 0: s_x[t] = max|x[t, :]| / 127, q_x = round(x / s_x). Then
///   y[t, o] = (s_x[t] * s_w[o]) * float(sum_k q_x[t, k] q_w[o, k])
///           + s_w[o] * sum_{outlier k} x[t, k] * q_w[o, k]      (f32, in column order).
/// Weight-only: y[t, o] = s_w[o] * sum_k x[t, k] * q_w[o, k] in f32.
///
/// \param y          [T, n_out] output; overwritten, or added to when `accumulate`
/// \param x          [T, n_in] input activations (f32)
/// \param w          the quantized weight [n_out, n_in]
/// \param T          rows of x (tokens)
/// \param accumulate false: y = x · Wᵀ; true: y += x · Wᵀ
/// \param opt        activations int8 or f32, outlier threshold
/// \param pool       thread pool (nullptr: ThreadPool::global())
/// \pre y does not overlap x; x holds finite values; not called concurrently from two threads
///      with the same calling thread (activation buffers are per calling thread).
template <class A>
void qmatmul_wt(Cpu<A>, float* y /*[T, n_out]*/, const float* x /*[T, n_in]*/, const QuantizedWeight<Int8Rowwise>& w,
                std::int64_t T, bool accumulate = false, const QuantOptions& opt = {}, ThreadPool* pool = nullptr) {
    using namespace qdetail;
    if (T <= 0 || w.n_out() <= 0) return;
    ThreadPool& p = pool ? *pool : ThreadPool::global();
    constexpr QIsa I = qisa<A>();
    const std::int64_t n_in = w.n_in(), n_out = w.n_out();
    if (!opt.int8_activations) {
        if (T <= kQGemvMaxRows)
            gemv_i8w<I>(y, x, w, T, accumulate, p);
        else
            gemm_weight_only<A>(y, x, w, T, accumulate, p);
        return;
    }
    const float thr = opt.outlier_threshold;
    if (I == QIsa::Scalar || T <= kQGemvMaxRows) {
        const XQuant xq = quantize_x_int8<A, I>(x, T, n_in, thr, XFormat::S8, 0, p);
        gemv_i8<I>(y, xq, w, T, accumulate, p);
        return;
    }
#if LIMARP_QGEMM_VNNI
    if constexpr (I == QIsa::Avx512Vnni) {
        using K = GemmI8Vnni<12, 2>;
        const XQuant xq = quantize_x_int8<A, I>(x, T, n_in, thr, XFormat::U8, K::MR, p);
        K k{y, xq, w, accumulate};
        packed_gemm(k, T, n_out, n_in, p);
        return;
    }
#endif
#if LIMARP_QGEMM_AVX2
    if constexpr (I == QIsa::Avx2) {
        using K = GemmI8Avx2<6, 2>;
        const XQuant xq = quantize_x_int8<A, I>(x, T, n_in, thr, XFormat::I16, K::MR, p);
        K k{y, xq, w, accumulate};
        packed_gemm(k, T, n_out, n_in, p);
        return;
    }
#endif
    (void)n_out;
}

/// y (=|+=) x · Wᵀ + z · Bᵀ: `qmatmul_wt` with one unmerged LoRA term (B bf16 [n_out, r]
/// row-major, z [T, r] = scale · x Aᵀ) in the same pass where the GEMV path runs (T <=
/// kQGemvMaxRows, or any T on the scalar ISA with int8 activations): each thread adds the B rows
/// of its group of 4 weight rows right after them (`cpu_detail::matmul_wt_row_group`, the dot
/// tiles of the few-rows `matmul_wt`, so the term equals that of a separate bf16 `matmul_wt`
/// pass), with no second parallel pass over y, and prefetches the next group's B rows. Other
/// shapes run the product, then `matmul_wt` accumulating z · Bᵀ.
/// \pre as `qmatmul_wt`; b and z do not overlap y.
template <class A>
void qmatmul_wt_lora(Cpu<A>, float* y /*[T, n_out]*/, const float* x /*[T, n_in]*/,
                     const QuantizedWeight<Int8Rowwise>& w, std::int64_t T, bool accumulate, const QuantOptions& opt,
                     const bf16* b /*[n_out, r]*/, const float* z /*[T, r]*/, std::int64_t r,
                     ThreadPool* pool = nullptr) {
    using namespace qdetail;
    if (T <= 0 || w.n_out() <= 0) return;
    ThreadPool& p = pool ? *pool : ThreadPool::global();
    constexpr QIsa I = qisa<A>();
    const std::int64_t n_in = w.n_in(), n_out = w.n_out();
    const bool gemv = T <= kQGemvMaxRows || (opt.int8_activations && I == QIsa::Scalar);
    if (!gemv || r <= 0) {
        qmatmul_wt(Cpu<A>{}, y, x, w, T, accumulate, opt, &p);
        if (r > 0) matmul_wt(Cpu<A>{}, y, z, b, T, r, n_out, /*accumulate=*/true, &p);
        return;
    }
    const auto lora = [&](std::int64_t o, int g) {  // y[:, o .. o+g) += z · B[o .. o+g)ᵀ
        // B is a stream of its own, short rows read a group at a time, which the GEMV's weight
        // prefetch does not cover: ask for the next group's rows (usually this thread's next)
        // while this group's dots run.
        const std::int64_t o_next = o + g, g_next = std::min<std::int64_t>(g, n_out - o_next);
        if (g_next > 0) {
            const char* next = reinterpret_cast<const char*>(b + o_next * r);
            const std::int64_t bytes = g_next * r * static_cast<std::int64_t>(sizeof(bf16));
            for (std::int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(next + off, 0, 3);
        }
        cpu_detail::matmul_wt_row_group<A>(y, z, b, T, r, n_out, o, g, /*accumulate=*/true);
    };
    if (!opt.int8_activations) {
        gemv_i8w<I>(y, x, w, T, accumulate, p, lora);
        return;
    }
    const XQuant xq = quantize_x_int8<A, I>(x, T, n_in, opt.outlier_threshold, XFormat::S8, 0, p);
    gemv_i8<I>(y, xq, w, T, accumulate, p, lora);
}

/// y (=|+=) x · Wᵀ with GGUF Q8_0 weights.
///
/// int8 activations (`opt.int8_activations`; the outlier threshold does not apply): every block
/// of 32 inputs of each row of x is quantized like a q8_0 block with an f32 scale d_x, then
///   y[t, o] = sum_b (d_w[o, b] * d_x[t, b]) * float(sum_{i < 32} q_x[t, 32b + i] q_w[o, 32b + i])
/// in f32 (llama.cpp's q8_0 x q8_0 dot). Weight-only: y[t, o] = sum_b d_w[o, b] * sum_i x q_w.
///
/// \param y          [T, n_out] output; overwritten, or added to when `accumulate`
/// \param x          [T, n_in] input activations (f32)
/// \param w          the quantized weight [n_out, n_in] (n_in a multiple of 32)
/// \param T          rows of x (tokens)
/// \param accumulate false: y = x · Wᵀ; true: y += x · Wᵀ
/// \param opt        activations int8 (q8_0) or f32
/// \param pool       thread pool (nullptr: ThreadPool::global())
/// \pre y does not overlap x; x holds finite values; weights in [-127, 127].
template <class A>
void qmatmul_wt(Cpu<A>, float* y /*[T, n_out]*/, const float* x /*[T, n_in]*/, const QuantizedWeight<Q8_0>& w,
                std::int64_t T, bool accumulate = false, const QuantOptions& opt = {}, ThreadPool* pool = nullptr) {
    using namespace qdetail;
    if (T <= 0 || w.n_out() <= 0) return;
    ThreadPool& p = pool ? *pool : ThreadPool::global();
    constexpr QIsa I = qisa<A>();
    const std::int64_t n_in = w.n_in(), n_out = w.n_out();
    if (!opt.int8_activations) {
        if (T <= kQGemvMaxRows)
            gemv_q8w<I>(y, x, w, T, accumulate, p);
        else
            gemm_weight_only<A>(y, x, w, T, accumulate, p);
        return;
    }
    if (I == QIsa::Scalar || T <= kQGemvMaxRows) {
        const XQuant xq = quantize_x_q8_0<I>(x, T, n_in, XFormat::S8, 0, p);
        gemv_q8<I>(y, xq, w, T, accumulate, p);
        return;
    }
#if LIMARP_QGEMM_VNNI
    if constexpr (I == QIsa::Avx512Vnni) {
        using K = GemmQ8Vnni<6, 2>;
        const XQuant xq = quantize_x_q8_0<I>(x, T, n_in, XFormat::U8, K::MR, p);
        K k{y, xq, w, accumulate};
        packed_gemm(k, T, n_out, n_in, p);
        return;
    }
#endif
#if LIMARP_QGEMM_AVX2
    if constexpr (I == QIsa::Avx2) {
        using K = GemmQ8Avx2<4, 2>;
        const XQuant xq = quantize_x_q8_0<I>(x, T, n_in, XFormat::I16, K::MR, p);
        K k{y, xq, w, accumulate};
        packed_gemm(k, T, n_out, n_in, p);
        return;
    }
#endif
    (void)n_out;
}

}  // namespace limarp::ops
