#pragma once
/// \file block_reduce.cuh
/// \brief Device helpers shared by the CUDA decode kernels: warp and block reductions with a
/// fixed summation order (bitwise reproducible run to run), bf16 <-> f32, 16-byte loads, and the
/// launch helper that checks every launch.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <mutex>
#include <type_traits>

#include "limarp/backend/cuda/check.cuh"

namespace limarp::cuda_detail {

/// Sum over the 32 lanes of a warp (xor butterfly: every lane gets the same, fixed-order sum).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/// Max over the 32 lanes of a warp.
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/// Sum over a group of G consecutive lanes (G a power of two <= 32); every lane of the group gets it.
template <int G>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/// Sum of `v` over the whole block, returned to every thread. `scratch` holds >= 32 floats of
/// shared memory; blockDim.x is a multiple of 32. Contains two __syncthreads(): every thread of
/// the block must call it. Fixed order (warp butterfly, then warp 0 over the warp sums).
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
    const int n_warps = static_cast<int>(blockDim.x) / 32;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < n_warps ? scratch[lane] : 0.f;
    return warp_sum(v);
}

/// Max of `v` over the whole block, returned to every thread (same contract as block_sum).
__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
    const int n_warps = static_cast<int>(blockDim.x) / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < n_warps ? scratch[lane] : -__int_as_float(0x7f800000);
    return warp_max(v);
}

/// f32 value of an f32 or bf16 element (bf16 -> f32 is exact).
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

/// f32 -> element type (bf16: round to nearest even, as the CPU `f32_to_bf16`).
template <class T>
__device__ __forceinline__ T from_f32(float v) {
    if constexpr (std::is_same_v<T, float>)
        return v;
    else
        return __float2bfloat16_rn(v);
}

/// The two f32 of a packed bf16 pair (low half first), exact.
__device__ __forceinline__ float2 bf16x2_to_f32(unsigned u) {
    return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
}

/// sum_i w_i x_i over 8 bf16 weights packed in `w` (low half first) and 8 f32 values x0, x1, as
/// one left-to-right expression: the bf16 GEMVs' and the fused LoRA term's step.
__device__ __forceinline__ float dot8_bf16(uint4 w, float4 x0, float4 x1) {
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&w);
    const float2 a = __bfloat1622float2(h[0]), b = __bfloat1622float2(h[1]);
    const float2 c = __bfloat1622float2(h[2]), d = __bfloat1622float2(h[3]);
    return a.x * x0.x + a.y * x0.y + b.x * x0.z + b.y * x0.w + c.x * x1.x + c.y * x1.y + d.x * x1.z + d.y * x1.w;
}

/// Loads 4 consecutive elements (f32: one 16-byte load; bf16: one 8-byte load) as f32.
/// \pre p is aligned to 4 elements.
__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 load4(const __nv_bfloat16* p) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    const float2 a = bf16x2_to_f32(u.x), b = bf16x2_to_f32(u.y);
    return make_float4(a.x, a.y, b.x, b.y);
}

/// Loads 8 consecutive elements as f32 (f32: two 16-byte loads; bf16: one 16-byte load), read
/// through the non-coherent path with no L1 allocation (data read once per kernel).
/// \pre p is aligned to 8 elements; nothing writes *p while the kernel runs, or only after every
/// read of it (the decode attention stores the new ring row once all its blocks have read it).
__device__ __forceinline__ void load8_streaming(float (&v)[8], const float* p) {
    float4 a, b;
    asm("ld.global.nc.L1::no_allocate.v4.f32 {%0, %1, %2, %3}, [%4];"
                 : "=f"(a.x), "=f"(a.y), "=f"(a.z), "=f"(a.w)
                 : "l"(p));
    asm("ld.global.nc.L1::no_allocate.v4.f32 {%0, %1, %2, %3}, [%4];"
                 : "=f"(b.x), "=f"(b.y), "=f"(b.z), "=f"(b.w)
                 : "l"(p + 4));
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
__device__ __forceinline__ void load8_streaming(float (&v)[8], const __nv_bfloat16* p) {
    uint4 u;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(u.x), "=r"(u.y), "=r"(u.z), "=r"(u.w)
                 : "l"(p));
    const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 f = bf16x2_to_f32(w[i]);
        v[2 * i] = f.x;
        v[2 * i + 1] = f.y;
    }
}

/// Launches `kernel<<<grid, block, smem, stream>>>(args...)` and checks the launch
/// (`LIMARP_CUDA_CHECK_LAUNCH`, naming the caller's file and line).
template <class... KArgs, class... Args>
void launch_checked(const char* file, int line, void (*kernel)(KArgs...), dim3 grid, dim3 block, std::size_t smem,
                    cudaStream_t stream, Args&&... args) {
    kernel<<<grid, block, smem, stream>>>(static_cast<KArgs>(args)...);
    cuda_check_launch(file, line);
}

/// Raises `Kernel`'s dynamic shared-memory limit to `bytes` (needed above the 48 KB default),
/// once per device and kernel. \throws CudaError when the device refuses
template <auto Kernel>
void opt_in_dynamic_smem(int bytes) {
    if (bytes <= 48 * 1024) return;
    constexpr int kMaxDevices = 64;
    static std::array<std::once_flag, kMaxDevices> once;
    int dev = 0;
    cuda_check(cudaGetDevice(&dev), "cudaGetDevice", __FILE__, __LINE__);
    const auto set = [bytes] {
        cuda_check(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
                   "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)", __FILE__, __LINE__);
    };
    if (dev < 0 || dev >= kMaxDevices)
        set();
    else
        std::call_once(once[static_cast<std::size_t>(dev)], set);
}

/// True when `p` is aligned to `bytes`.
inline bool aligned_to(const void* p, std::size_t bytes) noexcept {
    return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

}  // namespace limarp::cuda_detail
