#pragma once
/// \file rope.cuh
/// \brief CUDA rotary position embedding in Hugging Face's rotate-half layout: `ops::rope_rotate_half`
/// (one tensor) and `ops::rope_rotate_half_qk` (queries and keys in one launch), with the f32
/// numerics of the CPU `ops::rope_rotate_half`.
///
/// Numerics, as the CPU: inv_freq_i = 1 / f32(pow(f32(theta), f32(2i) / f32(head_dim))) with the
/// pow in double; angle = f32(pos) * inv_freq_i in f32; cos and sin of that angle computed in
/// double and rounded to f32; then x_i cos - x_{i+h/2} sin and x_{i+h/2} cos + x_i sin with each
/// product rounded separately (`__fmul_rn`: nvcc would otherwise contract them into FMAs). The
/// device's double pow/cos/sin are within 2 ulp of double, so the f32 results match the CPU's
/// bit for bit except where a double result lies within that of an f32 rounding boundary.
///
/// Positions are read from device memory, so a captured CUDA graph replays with the position
/// that the previous step wrote. Grid: (token, group of kRopeHeadsPerBlock heads); a thread owns
/// one pair index i (its trigonometry once) for all the heads of its block.

#include <cuda_runtime.h>

#include <cstdint>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cuda/detail/block_reduce.cuh"

namespace limarp {

/// \cond
namespace cuda_detail {

inline constexpr int kRopeHeadsPerBlock = 8;

// Rotates heads [blockIdx.y * HPB, ...) of token blockIdx.x: heads < n_a are in a (stride
// n_a * head_dim per token), the next n_b in b.
__global__ void __launch_bounds__(128)
    rope_rotate_half_kernel(float* a /*[T, n_a, hd]*/, float* b /*[T, n_b, hd]*/,
                            const std::int64_t* __restrict__ positions /*[T]*/, int n_a, int n_b, int head_dim,
                            float theta) {
    const int t = static_cast<int>(blockIdx.x);
    const int half = head_dim / 2;
    const int h0 = static_cast<int>(blockIdx.y) * kRopeHeadsPerBlock;
    const int h1 = min(h0 + kRopeHeadsPerBlock, n_a + n_b);
    const float pos = static_cast<float>(positions[t]);
    for (int i = static_cast<int>(threadIdx.x); i < half; i += static_cast<int>(blockDim.x)) {
        const float e = static_cast<float>(2 * i) / static_cast<float>(head_dim);
        const float inv = 1.0f / static_cast<float>(pow(static_cast<double>(theta), static_cast<double>(e)));
        const double angle = static_cast<double>(__fmul_rn(pos, inv));
        double sd, cd;
        sincos(angle, &sd, &cd);
        const float c = static_cast<float>(cd), s = static_cast<float>(sd);
        for (int h = h0; h < h1; ++h) {
            float* x = h < n_a ? a + (static_cast<long long>(t) * n_a + h) * head_dim
                               : b + (static_cast<long long>(t) * n_b + (h - n_a)) * head_dim;
            const float x1 = x[i], x2 = x[i + half];
            x[i] = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
            x[i + half] = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
        }
    }
}

inline void launch_rope_rotate_half(float* a, float* b, const std::int64_t* positions, std::int64_t T,
                                    std::int64_t n_a, std::int64_t n_b, std::int64_t head_dim, double theta,
                                    cudaStream_t stream) {
    const std::int64_t heads = n_a + n_b;
    if (T <= 0 || heads <= 0) return;
    const std::int64_t half = head_dim / 2;
    const unsigned threads = static_cast<unsigned>(half >= 128 ? 128 : (half + 31) / 32 * 32);
    const dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>((heads + kRopeHeadsPerBlock - 1) / kRopeHeadsPerBlock));
    launch_checked(__FILE__, __LINE__, rope_rotate_half_kernel, grid, dim3(threads), 0, stream, a, b, positions,
                   static_cast<int>(n_a), static_cast<int>(n_b), static_cast<int>(head_dim),
                   static_cast<float>(theta));
}

}  // namespace cuda_detail
/// \endcond

namespace ops {

/// Applies RoPE in place on the GPU (HF rotate-half layout): for every token t, head and
/// i < head_dim / 2, (x_i, x_{i+h/2}) -> (x_i cos - x_{i+h/2} sin, x_{i+h/2} cos + x_i sin) with
/// angle positions[t] * inv_freq_i (numerics: see the file comment). Asynchronous on `stream`.
///
/// \param x         [T, n_heads, head_dim] device queries or keys, rotated in place
/// \param positions [T] device absolute positions
/// \param T         tokens
/// \param n_heads   heads per token
/// \param head_dim  head dimension
/// \param theta     RoPE base (rope_theta)
/// \param stream    CUDA stream
/// \pre head_dim > 0 even, positions[t] >= 0, theta > 0. \throws CudaError when the launch fails
template <int Sm>
void rope_rotate_half(Cuda<Sm>, float* x /*[T, n_heads, head_dim]*/, const std::int64_t* positions /*[T]*/,
                      std::int64_t T, std::int64_t n_heads, std::int64_t head_dim, double theta,
                      cudaStream_t stream = nullptr) {
    cuda_detail::launch_rope_rotate_half(x, nullptr, positions, T, n_heads, 0, head_dim, theta, stream);
}

/// RoPE on the queries and the keys of the same tokens in one launch: the same as
/// `rope_rotate_half` on q (n_heads heads) and then on k (n_kv_heads heads).
///
/// \param q          [T, n_heads, head_dim] device queries, rotated in place
/// \param k          [T, n_kv_heads, head_dim] device keys, rotated in place
/// \param positions  [T] device absolute positions
/// \param T          tokens
/// \param n_heads    query heads
/// \param n_kv_heads key heads
/// \param head_dim   head dimension
/// \param theta      RoPE base
/// \param stream     CUDA stream
/// \pre as `rope_rotate_half`; q and k do not overlap. \throws CudaError when the launch fails
template <int Sm>
void rope_rotate_half_qk(Cuda<Sm>, float* q /*[T, n_heads, head_dim]*/, float* k /*[T, n_kv_heads, head_dim]*/,
                         const std::int64_t* positions /*[T]*/, std::int64_t T, std::int64_t n_heads,
                         std::int64_t n_kv_heads, std::int64_t head_dim, double theta, cudaStream_t stream = nullptr) {
    cuda_detail::launch_rope_rotate_half(q, k, positions, T, n_heads, n_kv_heads, head_dim, theta, stream);
}

}  // namespace ops
}  // namespace limarp
