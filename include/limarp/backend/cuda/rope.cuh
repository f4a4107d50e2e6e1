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
///
/// `DeviceRopeTable` holds cos/sin for positions [0, n) computed on the host exactly as the CPU
/// `RopeTable` (same formulas, same libm), so the overloads that take it match the CPU bit for
/// bit and do no trigonometry. On an H100 at decode the table form took 2.9 us per call against
/// 3.4 us for the on-the-fly form (graph replays, benchmarks/NOTES.md); both are mostly launch
/// and dependent reads.

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cuda/detail/block_reduce.cuh"
#include "limarp/backend/cuda/detail/pdl.cuh"
#include "limarp/backend/cuda/detail/rope_math.cuh"
#include "limarp/backend/cuda/device_buffer.cuh"
#include "limarp/core/error.hpp"

namespace limarp {

/// \cond
namespace cuda_detail {

inline constexpr int kRopeHeadsPerBlock = 8;

// Rotates element pair (i, i + head_dim / 2) by (c, s) in heads [h0, h1) of token t: heads < n_a
// are in a (stride n_a * head_dim per token), the next n_b in b. Same op order as the CPU rope.
__device__ __forceinline__ void rotate_pair(float* a, float* b, int t, int n_a, int n_b, int head_dim, int h0, int h1,
                                            int i, float c, float s) {
    const int half = head_dim / 2;
    for (int h = h0; h < h1; ++h) {
        float* x = h < n_a ? a + (static_cast<long long>(t) * n_a + h) * head_dim
                           : b + (static_cast<long long>(t) * n_b + (h - n_a)) * head_dim;
        rope_rotate(x[i], x[i + half], c, s, x[i], x[i + half]);
    }
}

// Rotates heads [blockIdx.y * HPB, ...) of token blockIdx.x: heads < n_a are in a (stride
// n_a * head_dim per token), the next n_b in b. (The kernels of this header are templates, so that
// a program may include it from several translation units: one definition each, no duplicates.)
template <int = 0>
__global__ void __launch_bounds__(128)
    rope_rotate_half_kernel(float* a /*[T, n_a, hd]*/, float* b /*[T, n_b, hd]*/,
                            const std::int64_t* __restrict__ positions /*[T]*/, int n_a, int n_b, int head_dim,
                            float theta) {
    pdl_enter();  // chained launch: wait for the previous kernel, then let the next one launch
    const int t = static_cast<int>(blockIdx.x);
    const int half = head_dim / 2;
    const int h0 = static_cast<int>(blockIdx.y) * kRopeHeadsPerBlock;
    const int h1 = min(h0 + kRopeHeadsPerBlock, n_a + n_b);
    const float pos = static_cast<float>(positions[t]);
    for (int i = static_cast<int>(threadIdx.x); i < half; i += static_cast<int>(blockDim.x)) {
        float c, s;
        rope_cos_sin(i, head_dim, pos, theta, c, s);
        rotate_pair(a, b, t, n_a, n_b, head_dim, h0, h1, i, c, s);
    }
}

// The same rotation with cos/sin read from a table [n_positions, head_dim / 2].
template <int = 0>
__global__ void __launch_bounds__(128)
    rope_rotate_half_table_kernel(float* a /*[T, n_a, hd]*/, float* b /*[T, n_b, hd]*/,
                                  const std::int64_t* __restrict__ positions /*[T]*/,
                                  const float* __restrict__ cos_tab, const float* __restrict__ sin_tab, int n_a,
                                  int n_b, int head_dim) {
    pdl_enter();  // chained launch: wait for the previous kernel, then let the next one launch
    const int t = static_cast<int>(blockIdx.x);
    const int half = head_dim / 2;
    const int h0 = static_cast<int>(blockIdx.y) * kRopeHeadsPerBlock;
    const int h1 = min(h0 + kRopeHeadsPerBlock, n_a + n_b);
    const long long row = positions[t] * half;
    for (int i = static_cast<int>(threadIdx.x); i < half; i += static_cast<int>(blockDim.x)) {
        const float c = cos_tab[row + i], s = sin_tab[row + i];
        rotate_pair(a, b, t, n_a, n_b, head_dim, h0, h1, i, c, s);
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
    launch_chained(__FILE__, __LINE__, rope_rotate_half_kernel<>, grid, dim3(threads), 0, stream, a, b, positions,
                   static_cast<int>(n_a), static_cast<int>(n_b), static_cast<int>(head_dim),
                   static_cast<float>(theta));
}

}  // namespace cuda_detail
/// \endcond

/// RoPE cos/sin for positions [0, n_positions) in device memory, [n_positions, head_dim / 2] each,
/// computed on the host with the CPU `RopeTable`'s formulas (see the file comment).
class DeviceRopeTable {
public:
    DeviceRopeTable() = default;
    /// Tabulates positions [0, n_positions) for `head_dim` and base `theta` and uploads them.
    /// \pre head_dim > 0 even, n_positions >= 1, theta > 0. \throws CudaError when the upload fails
    DeviceRopeTable(std::int64_t head_dim, double theta, std::int64_t n_positions)
        : head_dim_(head_dim), n_positions_(n_positions), theta_(theta),
          cos_(static_cast<std::size_t>(n_positions * (head_dim / 2)), "rope cos table"),
          sin_(static_cast<std::size_t>(n_positions * (head_dim / 2)), "rope sin table") {
        const std::int64_t half = head_dim / 2;
        std::vector<float> inv(static_cast<std::size_t>(half)), c(cos_.size()), s(sin_.size());
        for (std::int64_t i = 0; i < half; ++i) {  // ops::rope_inv_freq
            const float e = static_cast<float>(2 * i) / static_cast<float>(head_dim);
            const float p =
                static_cast<float>(std::pow(static_cast<double>(static_cast<float>(theta)), static_cast<double>(e)));
            inv[static_cast<std::size_t>(i)] = 1.0f / p;
        }
        for (std::int64_t p = 0; p < n_positions; ++p)
            for (std::int64_t i = 0; i < half; ++i) {
                const float angle = static_cast<float>(p) * inv[static_cast<std::size_t>(i)];
                c[static_cast<std::size_t>(p * half + i)] = static_cast<float>(std::cos(static_cast<double>(angle)));
                s[static_cast<std::size_t>(p * half + i)] = static_cast<float>(std::sin(static_cast<double>(angle)));
            }
        cos_.upload(c.data(), c.size());
        sin_.upload(s.data(), s.size());
    }
    /// Head dimension the table was built for.
    std::int64_t head_dim() const noexcept { return head_dim_; }
    /// Number of tabulated positions.
    std::int64_t n_positions() const noexcept { return n_positions_; }
    /// RoPE base.
    double theta() const noexcept { return theta_; }
    /// Device pointer to cos [n_positions, head_dim / 2].
    const float* cos() const noexcept { return cos_.data(); }
    /// Device pointer to sin [n_positions, head_dim / 2].
    const float* sin() const noexcept { return sin_.data(); }

private:
    std::int64_t head_dim_ = 0, n_positions_ = 0;
    double theta_ = 0;
    DeviceBuffer<float> cos_, sin_;
};

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

/// RoPE on queries and keys in one launch with cos/sin from `table` (no trigonometry): the same
/// values as the CPU `ops::rope_rotate_half` with a `RopeTable`, bit for bit.
///
/// \param q          [T, n_heads, head_dim] device queries, rotated in place
/// \param k          [T, n_kv_heads, head_dim] device keys, rotated in place (may be null with n_kv_heads 0)
/// \param positions  [T] device absolute positions
/// \param T          tokens
/// \param n_heads    query heads
/// \param n_kv_heads key heads
/// \param table      cos/sin table of this head_dim and theta
/// \param stream     CUDA stream
/// \pre 0 <= positions[t] < table.n_positions() (not checked on the device); q and k do not overlap.
/// \throws ArgumentError when the table is empty; CudaError when the launch fails
template <int Sm>
void rope_rotate_half_qk(Cuda<Sm>, float* q /*[T, n_heads, head_dim]*/, float* k /*[T, n_kv_heads, head_dim]*/,
                         const std::int64_t* positions /*[T]*/, std::int64_t T, std::int64_t n_heads,
                         std::int64_t n_kv_heads, const DeviceRopeTable& table, cudaStream_t stream = nullptr) {
    if (table.n_positions() <= 0) throw ArgumentError("rope_rotate_half_qk (CUDA): the RoPE table is empty");
    const std::int64_t heads = n_heads + n_kv_heads, half = table.head_dim() / 2;
    if (T <= 0 || heads <= 0) return;
    const unsigned threads = static_cast<unsigned>(half >= 128 ? 128 : (half + 31) / 32 * 32);
    const dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>((heads + cuda_detail::kRopeHeadsPerBlock - 1) /
                                                                    cuda_detail::kRopeHeadsPerBlock));
    cuda_detail::launch_chained(__FILE__, __LINE__, cuda_detail::rope_rotate_half_table_kernel<>, grid, dim3(threads), 0,
                                stream, q, k, positions, table.cos(), table.sin(), static_cast<int>(n_heads),
                                static_cast<int>(n_kv_heads), static_cast<int>(table.head_dim()));
}

}  // namespace ops
}  // namespace limarp
