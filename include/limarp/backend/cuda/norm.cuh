#pragma once
/// \file norm.cuh
/// \brief CUDA RMSNorm (`ops::rms_norm`) and the residual add fused with it (`ops::add_rms_norm`:
/// x += a; h = rms_norm(x)), with the numerics of the CPU `ops::rms_norm` (f32, Hugging Face's
/// MistralRMSNorm order: mean square, x times 1/sqrt(var + eps), then times the weight).
///
/// One block per row; a thread owns 4 consecutive elements per step (16-byte x loads, 8-byte bf16
/// weight loads) when d % 4 == 0 and the pointers are 16-byte aligned, else 1. Two passes over
/// the row: the sum of squares (the fused form adds a and stores x there), then the scaled
/// output; the second pass re-reads x from L1/L2, where the first pass left it. The sum of
/// squares uses a fixed order (per thread, warp butterfly, warps): bitwise reproducible, and
/// within f32 rounding of the CPU's (whose vector order differs).
///
/// At decode (T = 1, d_model 4096) a call moves 40-72 KB: it is bound by the launch, not by
/// bytes (benchmarks/NOTES.md, "CUDA decode kernels").

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cuda/detail/block_reduce.cuh"
#include "limarp/backend/cuda/detail/pdl.cuh"
#include "limarp/core/error.hpp"

namespace limarp {

/// \cond
namespace cuda_detail {

// h = rms_norm(x (+ a)) for row blockIdx.x; with ADD, x += a is stored back first.
template <int V, bool ADD, class W>
__global__ void __launch_bounds__(1024)
    rms_norm_kernel(float* y /*[T, d]*/, float* x /*[T, d]*/, const float* a /*[T, d] (ADD)*/,
                    const W* __restrict__ w /*[d]*/, int d, float eps) {
    pdl_enter();  // chained launch: wait for the previous kernel, then let the next one launch
    __shared__ float red[32];
    const long long off = static_cast<long long>(blockIdx.x) * d;
    float* xr = x + off;
    float* yr = y + off;
    float ss = 0.f;
    const int step = static_cast<int>(blockDim.x) * V;
    for (int i = static_cast<int>(threadIdx.x) * V; i < d; i += step) {
        if constexpr (V == 4) {
            float4 v = load4(xr + i);
            if constexpr (ADD) {
                const float4 b = load4(a + off + i);
                v = make_float4(v.x + b.x, v.y + b.y, v.z + b.z, v.w + b.w);
                *reinterpret_cast<float4*>(xr + i) = v;
            }
            ss = fmaf(v.x, v.x, ss);
            ss = fmaf(v.y, v.y, ss);
            ss = fmaf(v.z, v.z, ss);
            ss = fmaf(v.w, v.w, ss);
        } else {
            float v = xr[i];
            if constexpr (ADD) {
                v += a[off + i];
                xr[i] = v;
            }
            ss = fmaf(v, v, ss);
        }
    }
    ss = block_sum(ss, red);
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
    for (int i = static_cast<int>(threadIdx.x) * V; i < d; i += step) {
        if constexpr (V == 4) {
            const float4 v = load4(xr + i), g = load4(w + i);
            *reinterpret_cast<float4*>(yr + i) = make_float4(g.x * (v.x * inv), g.y * (v.y * inv),
                                                             g.z * (v.z * inv), g.w * (v.w * inv));
        } else {
            yr[i] = to_f32(w[i]) * (xr[i] * inv);
        }
    }
}

template <bool ADD, class W>
void launch_rms_norm(float* y, float* x, const float* a, const W* w, std::int64_t T, std::int64_t d, float eps,
                     cudaStream_t stream) {
    if (T <= 0) return;
    const bool vec = d % 4 == 0 && aligned_to(y, 16) && aligned_to(x, 16) && aligned_to(w, 4 * sizeof(W)) &&
                     (!ADD || aligned_to(a, 16));
    const std::int64_t per_thread = vec ? 4 : 1;
    const std::int64_t want = (d / per_thread + 31) / 32 * 32;
    const unsigned threads = static_cast<unsigned>(want < 32 ? 32 : (want > 1024 ? 1024 : want));
    const dim3 grid(static_cast<unsigned>(T));
    if (vec)
        launch_chained(__FILE__, __LINE__, rms_norm_kernel<4, ADD, W>, grid, dim3(threads), 0, stream, y, x, a, w,
                       static_cast<int>(d), eps);
    else
        launch_chained(__FILE__, __LINE__, rms_norm_kernel<1, ADD, W>, grid, dim3(threads), 0, stream, y, x, a, w,
                       static_cast<int>(d), eps);
}

}  // namespace cuda_detail
/// \endcond

namespace ops {

/// RMSNorm of every row on the GPU: y = weight * (x * (1 / sqrt(mean(x²) + eps))), f32, in that
/// order (as the CPU `ops::rms_norm`). Asynchronous on `stream`; the launch is checked.
///
/// \tparam W     weight type, float or __nv_bfloat16
/// \param y      [T, d] device output; may be the same pointer as x
/// \param x      [T, d] device input rows
/// \param weight [d] device gain
/// \param T      rows (tokens)
/// \param d      row length (d_model), < 2^31
/// \param eps    added to the mean square (1e-5 for Mistral)
/// \param stream CUDA stream
/// \pre d > 0; y and x are the same pointer or do not overlap. \throws CudaError when the launch fails
template <int Sm, class W>
    requires(std::is_same_v<W, float> || std::is_same_v<W, __nv_bfloat16>)
void rms_norm(Cuda<Sm>, float* y /*[T, d]*/, const float* x /*[T, d]*/, const W* weight /*[d]*/, std::int64_t T,
              std::int64_t d, float eps, cudaStream_t stream = nullptr) {
    cuda_detail::launch_rms_norm<false>(y, const_cast<float*>(x), nullptr, weight, T, d, eps, stream);
}

/// The residual add fused with the next RMSNorm: x += a, then h = rms_norm(x) with `weight`
/// (the same values as `add_inplace` followed by `rms_norm`, in one pass less). Asynchronous on
/// `stream`; the launch is checked.
///
/// \tparam W     weight type, float or __nv_bfloat16
/// \param h      [T, d] device output (normalised x)
/// \param x      [T, d] device residual stream, updated in place: x += a
/// \param a      [T, d] device addend (the attention or MLP output)
/// \param weight [d] device gain
/// \param T      rows (tokens)
/// \param d      row length (d_model), < 2^31
/// \param eps    added to the mean square
/// \param stream CUDA stream
/// \pre d > 0; h, x and a do not overlap. \throws CudaError when the launch fails
template <int Sm, class W>
    requires(std::is_same_v<W, float> || std::is_same_v<W, __nv_bfloat16>)
void add_rms_norm(Cuda<Sm>, float* h /*[T, d]*/, float* x /*[T, d]*/, const float* a /*[T, d]*/,
                  const W* weight /*[d]*/, std::int64_t T, std::int64_t d, float eps, cudaStream_t stream = nullptr) {
    cuda_detail::launch_rms_norm<true>(h, x, a, weight, T, d, eps, stream);
}

}  // namespace ops
}  // namespace limarp
