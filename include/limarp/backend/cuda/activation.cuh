#pragma once
/// \file activation.cuh
/// \brief CUDA element-wise kernels of the decode step: `ops::swiglu` (h = silu(gate) * up) and
/// `ops::add_inplace` (the residual add y += x), with the CPU kernels' f32 numerics.
///
/// Grid-stride loops over 4-element (16-byte) chunks when n % 4 == 0 and the pointers are 16-byte
/// aligned, else single elements. silu(g) * u = (g / (1 + expf(-g))) * u as PyTorch writes it
/// (`expf`, not the faster `__expf`: within 2 ulp, like the CPU's vector exp within 1).
/// At decode (d_ff 14336) a call moves 172 KB: bound by the launch (benchmarks/NOTES.md).

#include <cuda_runtime.h>

#include <cstdint>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cuda/detail/block_reduce.cuh"
#include "limarp/backend/cuda/detail/pdl.cuh"

namespace limarp {

/// \cond
namespace cuda_detail {

__device__ __forceinline__ float silu_mul(float g, float u) { return (g / (1.0f + expf(-g))) * u; }

template <int V>
__global__ void __launch_bounds__(256)
    swiglu_kernel(float* h, const float* gate, const float* up, long long n) {
    pdl_enter();  // chained launch: wait for the previous kernel, then let the next one launch
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x * V;
    for (long long i = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) * V; i < n; i += stride) {
        if constexpr (V == 4) {
            const float4 g = load4(gate + i), u = load4(up + i);
            *reinterpret_cast<float4*>(h + i) =
                make_float4(silu_mul(g.x, u.x), silu_mul(g.y, u.y), silu_mul(g.z, u.z), silu_mul(g.w, u.w));
        } else {
            h[i] = silu_mul(gate[i], up[i]);
        }
    }
}

template <int V>
__global__ void __launch_bounds__(256) add_inplace_kernel(float* y, const float* x, long long n) {
    pdl_enter();  // chained launch: wait for the previous kernel, then let the next one launch
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x * V;
    for (long long i = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) * V; i < n; i += stride) {
        if constexpr (V == 4) {
            const float4 a = load4(y + i), b = load4(x + i);
            *reinterpret_cast<float4*>(y + i) = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
        } else {
            y[i] += x[i];
        }
    }
}

// Blocks of 256 threads covering n elements at V per thread, capped at 8 blocks per SM-ish (4096).
inline unsigned elementwise_blocks(std::int64_t n, int v) {
    const std::int64_t b = (n / v + 255) / 256;
    return static_cast<unsigned>(b < 1 ? 1 : (b > 4096 ? 4096 : b));
}

}  // namespace cuda_detail
/// \endcond

namespace ops {

/// SwiGLU on the GPU: h = silu(gate) * up with silu(g) = g / (1 + exp(-g)), f32. Asynchronous.
///
/// \param h      [n] device output; may be the same pointer as gate or up
/// \param gate   [n] device gate projection
/// \param up     [n] device up projection
/// \param n      elements (T * d_ff)
/// \param stream CUDA stream
/// \pre n >= 0; h is the same pointer as gate/up or does not overlap them.
/// \throws CudaError when the launch fails
template <int Sm>
void swiglu(Cuda<Sm>, float* h /*[n]*/, const float* gate /*[n]*/, const float* up /*[n]*/, std::int64_t n,
            cudaStream_t stream = nullptr) {
    using namespace cuda_detail;
    if (n <= 0) return;
    if (n % 4 == 0 && aligned_to(h, 16) && aligned_to(gate, 16) && aligned_to(up, 16))
        launch_chained(__FILE__, __LINE__, swiglu_kernel<4>, dim3(elementwise_blocks(n, 4)), dim3(256), 0, stream, h,
                       gate, up, static_cast<long long>(n));
    else
        launch_chained(__FILE__, __LINE__, swiglu_kernel<1>, dim3(elementwise_blocks(n, 1)), dim3(256), 0, stream, h,
                       gate, up, static_cast<long long>(n));
}

/// Residual add on the GPU: y += x. Asynchronous.
///
/// \param y      [n] device array, accumulated in place
/// \param x      [n] device addend
/// \param n      elements
/// \param stream CUDA stream
/// \pre n >= 0; y and x do not overlap (or are the same pointer). \throws CudaError when the launch fails
template <int Sm>
void add_inplace(Cuda<Sm>, float* y /*[n]*/, const float* x /*[n]*/, std::int64_t n, cudaStream_t stream = nullptr) {
    using namespace cuda_detail;
    if (n <= 0) return;
    if (n % 4 == 0 && aligned_to(y, 16) && aligned_to(x, 16))
        launch_chained(__FILE__, __LINE__, add_inplace_kernel<4>, dim3(elementwise_blocks(n, 4)), dim3(256), 0, stream,
                       y, x, static_cast<long long>(n));
    else
        launch_chained(__FILE__, __LINE__, add_inplace_kernel<1>, dim3(elementwise_blocks(n, 1)), dim3(256), 0, stream,
                       y, x, static_cast<long long>(n));
}

}  // namespace ops
}  // namespace limarp
