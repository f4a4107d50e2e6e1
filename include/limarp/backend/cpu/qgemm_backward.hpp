#pragma once
/// \file qgemm_backward.hpp
/// \brief Input gradient of a quantized linear map y = x · Wᵀ on the CPU: `qmatmul_w` computes
/// dx (=|+=) dy · W from the 8-bit weights (`Int8Rowwise` or `Q8_0`) without ever holding the
/// f32 weight: blocks of 256 x 256 are dequantized (exactly: q · scale in f32) into a per-thread
/// buffer and multiplied by Eigen's GEMM (see `matmul_w`, which shares the driver). Accumulation
/// is f32; the result equals dy · dequantize(W) up to f32 summation order.

#include <cstdint>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/gemm_backward.hpp"
#include "limarp/quant/int8_rowwise.hpp"
#include "limarp/quant/q8_0.hpp"

LIMARP_CPU_KERNELS_BEGIN

namespace limarp::ops {

/// dx (=|+=) dy · W with W the Int8Rowwise weight [n_out, n_in] (W[o, i] = q[o, i] · scale[o]).
/// \param dx         [T, n_in] output; overwritten, or added to when `accumulate`
/// \param dy         [T, n_out]
/// \param w          the quantized weight
/// \param T          rows
/// \param accumulate false: dx = dy · W; true: dx += dy · W
/// \param pool       thread pool (nullptr: ThreadPool::global())
/// \pre dx does not overlap dy.
template <class A>
void qmatmul_w(Cpu<A>, float* dx /*[T, n_in]*/, const float* dy /*[T, n_out]*/, const QuantizedWeight<Int8Rowwise>& w,
               std::int64_t T, bool accumulate = false, ThreadPool* pool = nullptr) {
    const std::int64_t n = w.n_in();
    const std::int8_t* q = w.data();
    const float* scales = w.scales();
    const auto widen = [q, scales, n](std::int64_t row, std::int64_t c0, std::int64_t cw, float* dst) {
        const std::int8_t* src = q + row * n + c0;
        const float s = scales[row];
        for (std::int64_t j = 0; j < cw; ++j) dst[j] = s * static_cast<float>(src[j]);
    };
    cpu_detail::matmul_w_widened(dx, dy, widen, T, w.n_out(), n, accumulate, pool);
}

/// dx (=|+=) dy · W with W the Q8_0 weight [n_out, n_in] (blocks of 32 values with an f16 scale).
/// Same contract as the Int8Rowwise overload.
template <class A>
void qmatmul_w(Cpu<A>, float* dx /*[T, n_in]*/, const float* dy /*[T, n_out]*/, const QuantizedWeight<Q8_0>& w,
               std::int64_t T, bool accumulate = false, ThreadPool* pool = nullptr) {
    static_assert(cpu_detail::kBwdColBlock % kQ8_0BlockSize == 0, "column blocks must hold whole Q8_0 blocks");
    const auto widen = [&w](std::int64_t row, std::int64_t c0, std::int64_t cw, float* dst) {
        const std::uint8_t* r = w.row(row);
        for (std::int64_t b = c0 / kQ8_0BlockSize, j = 0; j < cw; ++b, j += kQ8_0BlockSize)
            dequantize_block_q8_0(r + b * static_cast<std::int64_t>(sizeof(BlockQ8_0)), dst + j);
    };
    cpu_detail::matmul_w_widened(dx, dy, widen, T, w.n_out(), w.n_in(), accumulate, pool);
}

}  // namespace limarp::ops

LIMARP_CPU_KERNELS_END
